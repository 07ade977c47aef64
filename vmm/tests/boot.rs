//! Boots the freestanding test guests on the real /dev/kvm.

mod common;

use std::time::Duration;

use common::TestVm;
use serde_json::json;

const T: Duration = Duration::from_secs(60);

#[test]
fn hello_guest_prints_ready_and_reset_exits_cleanly() {
    let vm = TestVm::new("hello");
    let (status, serial, err) = vm.run(T);
    assert!(status.success(), "exit {status:?}, stderr: {err}");
    assert_eq!(serial, "READY\n");
    assert!(
        !vm.dir.path("ctl.sock").exists(),
        "control socket removed at exit"
    );
}

#[test]
fn memtest_guest_writes_and_verifies_all_ram() {
    let vm = TestVm::new("memtest").set("mem_mib", json!(96));
    let (status, serial, err) = vm.run(T);
    assert!(status.success(), "exit {status:?}, stderr: {err}");
    // 96 MiB less the low MiB and the 16 MiB+image hole.
    assert!(serial.contains("MEMTEST OK 94 MiB"), "serial: {serial}");
}

#[test]
fn ram_above_the_mmio_gap_is_usable() {
    // 3400 MiB: 3.25 GiB below the gap, 72 MiB from 4 GiB up.
    let vm = TestVm::new("memtest")
        .set("mem_mib", json!(3400))
        .set("cmdline", json!("stride=4096"));
    let (status, serial, err) = vm.run(T);
    assert!(status.success(), "exit {status:?}, stderr: {err}");
    // All RAM less the low MiB and the 16 MiB + image hole.
    assert!(serial.contains("MEMTEST OK 3398 MiB"), "serial: {serial}");
}

#[test]
fn two_vcpu_guest_sees_both_cpus() {
    let vm = TestVm::new("smp").set("vcpus", json!(2));
    let (status, serial, err) = vm.run(T);
    assert!(status.success(), "exit {status:?}, stderr: {err}");
    assert!(serial.contains("SMP 2 CPUS OK"), "serial: {serial}");
}

#[test]
fn four_vcpu_guest_sees_all_cpus() {
    let vm = TestVm::new("smp").set("vcpus", json!(4));
    let (status, serial, err) = vm.run(T);
    assert!(status.success(), "exit {status:?}, stderr: {err}");
    assert!(serial.contains("SMP 4 CPUS OK"), "serial: {serial}");
}
