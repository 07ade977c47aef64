//! Boots a Linux guest kernel where one can boot: hardware KVM (VMX/SVM)
//! with `FORGE_GUEST_KERNEL` naming a vmlinux (vmm/guest/kernel/build.sh),
//! or a PVM host with `FORGE_GUEST_KERNEL` naming a PVM-capable kernel.
//! Elsewhere it prints that it was skipped and why. Without a root disk the
//! kernel panics at mount time and `panic=-1 reboot=k` resets the VM, which
//! ends `forge-vmm` cleanly: that is the pass condition after the banner.

mod common;

use std::time::Duration;

use common::TestVm;
use serde_json::json;

fn hardware_virtualization() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|c| {
            c.lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
        })
        .unwrap_or(false)
}

#[test]
fn linux_guest_boots_to_its_banner_and_resets() {
    let Some(kernel) = std::env::var_os("FORGE_GUEST_KERNEL") else {
        let why = if hardware_virtualization() {
            "FORGE_GUEST_KERNEL is not set (build one with vmm/guest/kernel/build.sh)"
        } else {
            "this host has no VMX/SVM (PVM: a standard kernel's ring 0 cannot run) \
             and FORGE_GUEST_KERNEL does not name a PVM-capable kernel"
        };
        println!("SKIPPED linux_guest_boots_to_its_banner_and_resets: {why}");
        return;
    };
    let vm = TestVm::new("hello")
        .set("kernel", json!(kernel))
        .set("mem_mib", json!(256))
        .set("vcpus", json!(2))
        .set("ap_entry", json!("sipi"))
        .set("rng", json!(true))
        .set(
            "cmdline",
            json!("console=ttyS0 earlyprintk=serial reboot=k panic=-1 nomodule i8042.noaux"),
        );
    let (status, serial, err) = vm.run(Duration::from_secs(120));
    assert!(
        serial.contains("Linux version"),
        "no banner; serial: {serial}"
    );
    assert!(
        serial.contains("virtio_mmio") || serial.contains("virtio-mmio"),
        "virtio-mmio devices not probed; serial: {serial}"
    );
    assert!(status.success(), "exit {status:?}, stderr: {err}");
}
