//! Boots the project's Linux guest kernel (vmm/guest/kernel/build.sh) as an
//! ELF vmlinux and as a bzImage. Both need a /dev/kvm that runs a standard
//! kernel's ring 0 (VMX/SVM), so they are ignored in the ordinary run:
//! `scripts/nested-kvm.sh` runs them, in a nested test host on hosts whose
//! /dev/kvm is PVM, or directly where it is hardware. Asked for without a
//! kernel they fail, saying what is missing.
//!
//! Without a root disk the kernel panics at mount time and `panic=-1
//! reboot=k` resets the VM, which ends `forge-vmm` cleanly: that is the
//! pass condition after the banner and the probed virtio-mmio devices.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::TestVm;
use serde_json::json;

/// The kernel named by `var`, which must exist.
fn kernel(var: &str) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        panic!("{var} must name the guest kernel (vmm/guest/kernel/build.sh prints it)")
    });
    assert!(path.is_file(), "{var}={} does not exist", path.display());
    path
}

fn boots_to_its_banner_and_resets(kernel: PathBuf) {
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
    let (status, serial, err) = vm.run(Duration::from_secs(180));
    assert!(
        serial.contains("Linux version"),
        "no banner; stderr: {err}; serial: {serial}"
    );
    assert!(
        serial.contains("virtio_mmio") || serial.contains("virtio-mmio"),
        "virtio-mmio devices not probed; serial: {serial}"
    );
    assert!(
        serial.contains("Brought up 1 node, 2 CPUs"),
        "the second vCPU did not come up; serial: {serial}"
    );
    for problem in ["WARNING:", "XSAVE consistency problem", "BUG:"] {
        assert!(
            !serial.contains(problem),
            "the kernel reported {problem:?}; serial: {serial}"
        );
    }
    assert!(status.success(), "exit {status:?}, stderr: {err}");
}

#[test]
#[ignore = "needs a /dev/kvm that boots Linux: scripts/nested-kvm.sh runs it"]
fn elf_vmlinux_boots_to_its_banner_and_resets() {
    boots_to_its_banner_and_resets(kernel("FORGE_GUEST_KERNEL"));
}

#[test]
#[ignore = "needs a /dev/kvm that boots Linux: scripts/nested-kvm.sh runs it"]
fn bzimage_boots_to_its_banner_and_resets() {
    boots_to_its_banner_and_resets(kernel("FORGE_GUEST_BZIMAGE"));
}
