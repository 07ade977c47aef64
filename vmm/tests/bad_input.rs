//! Configs that must be refused with a clear message before any KVM call.

mod common;

use std::time::Duration;

use common::TestVm;
use serde_json::json;

const T: Duration = Duration::from_secs(20);

fn refused(vm: &TestVm, expect: &str) {
    let (status, serial, err) = vm.run(T);
    assert_eq!(status.code(), Some(1), "stderr: {err}");
    assert!(err.contains(expect), "stderr {err:?} lacks {expect:?}");
    assert!(serial.is_empty(), "guest must not have run");
}

#[test]
fn missing_kernel_is_refused() {
    let vm = TestVm::new("hello").set("kernel", json!("/nonexistent/vmlinux"));
    refused(&vm, "Kernel /nonexistent/vmlinux");
}

#[test]
fn truncated_kernel_is_refused() {
    let vm = TestVm::new("hello");
    let full = std::fs::read(common::guest("hello")).expect("guest");
    for len in [10, 100, 0x1010, full.len() - 16] {
        let p = vm.dir.path(&format!("trunc{len}.elf"));
        std::fs::write(&p, &full[..len]).expect("write");
        let vm2 = TestVm::new("hello").set("kernel", json!(p));
        refused(&vm2, "truncated");
    }
}

#[test]
fn non_elf_kernel_is_refused() {
    let vm = TestVm::new("hello");
    let p = vm.dir.path("notakernel");
    std::fs::write(&p, vec![0x42u8; 8192]).expect("write");
    let vm = vm.set("kernel", json!(p));
    refused(&vm, "not an ELF or bzImage");
}

#[test]
fn zero_and_oversized_memory_are_refused() {
    refused(&TestVm::new("hello").set("mem_mib", json!(0)), "mem_mib");
    let host = vmm::config::host_memory_mib();
    refused(
        &TestVm::new("hello").set("mem_mib", json!(host + 1)),
        "more than the host",
    );
}

#[test]
fn missing_disk_is_refused() {
    let vm = TestVm::new("hello").set(
        "disks",
        json!([{ "base": "/nonexistent/base.img", "layers": ["/tmp/x.layer"] }]),
    );
    refused(&vm, "Disk /nonexistent/base.img");
}

#[test]
fn unknown_fields_are_refused() {
    let vm = TestVm::new("hello").set("vcpu_count", json!(2));
    refused(&vm, "unknown field `vcpu_count`");
}
