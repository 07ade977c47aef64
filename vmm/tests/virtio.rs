//! virtio-blk, virtio-rng and hostile-guest behaviour, driven by test guests.

mod common;

use std::time::Duration;

use common::TestVm;
use serde_json::json;
use vmm::disk::LayeredDisk;

const T: Duration = Duration::from_secs(60);
const DISK_BYTES: usize = 1 << 20;

fn base_pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 7 + 3) & 0xff) as u8).collect()
}

/// The guest also checks that completions raise its interrupt line through
/// the irqfd (the PIC's IRR bit) and the InterruptStatus/ACK registers.
#[test]
fn block_guest_write_lands_in_top_layer_never_in_base() {
    let vm = TestVm::new("blk");
    let base = vm.dir.path("base.img");
    std::fs::write(&base, base_pattern(DISK_BYTES)).expect("base image");
    let lower = vm.dir.path("lower.layer");
    let top = vm.dir.path("top.layer");
    // A lower layer that already holds sector 100's block proves reads
    // walk the chain: it carries the base pattern, so the guest check holds.
    {
        let mut d = LayeredDisk::open(&base, std::slice::from_ref(&lower), false).expect("lower");
        d.write_at(100 * 512, &base_pattern(DISK_BYTES)[100 * 512..101 * 512])
            .expect("seed lower");
        d.seal_top_and_push(&top).expect("seal");
    }
    let vm = vm
        .set("disks", json!([{ "base": base, "layers": [lower, top] }]))
        .set("cmdline", json!("write_sector=24"));
    let (status, serial, err) = vm.run(T);
    assert!(status.success(), "exit {status:?}, stderr: {err}");
    assert!(
        serial.contains(&format!("BLK OK capacity={}", DISK_BYTES / 512)),
        "serial: {serial}"
    );
    assert_eq!(
        std::fs::read(&base).expect("base"),
        base_pattern(DISK_BYTES),
        "base image must never change"
    );
    let chain = [lower.clone(), top.clone()];
    let disk = LayeredDisk::open(&base, &chain, true).expect("reopen chain");
    let mut block = vec![0u8; 4096];
    disk.read_at(24 * 512, &mut block).expect("read");
    let want: Vec<u8> = (0..4096).map(|i| 0xa5 ^ (i as u8)).collect();
    assert_eq!(block, want, "guest data readable through the chain");
    // The top layer alone holds it; the lower (sealed) layer does not.
    let lower_only = LayeredDisk::open(&base, std::slice::from_ref(&lower), true).expect("lower");
    lower_only.read_at(24 * 512, &mut block).expect("read");
    assert_eq!(block, base_pattern(DISK_BYTES)[24 * 512..24 * 512 + 4096]);
}

#[test]
fn read_only_disk_rejects_guest_writes() {
    let vm = TestVm::new("blk");
    let base = vm.dir.path("base.img");
    std::fs::write(&base, base_pattern(DISK_BYTES)).expect("base image");
    let vm = vm.set("disks", json!([{ "base": base, "read_only": true }]));
    let (status, serial, _) = vm.run(T);
    // The guest's write fails, so it reports FAIL and resets.
    assert!(status.success());
    assert!(serial.contains("FAIL: write"), "serial: {serial}");
    assert_eq!(
        std::fs::read(&base).expect("base"),
        base_pattern(DISK_BYTES)
    );
}

#[test]
fn rng_guest_gets_entropy() {
    let vm = TestVm::new("rng").set("rng", json!(true));
    let (status, serial, err) = vm.run(T);
    assert!(status.success(), "exit {status:?}, stderr: {err}");
    assert!(serial.contains("RNG OK"), "serial: {serial}");
}

#[test]
fn hostile_guest_gets_failed_requests_not_a_crashed_vmm() {
    let vm = TestVm::new("badvirtio");
    let base = vm.dir.path("base.img");
    std::fs::write(&base, base_pattern(DISK_BYTES)).expect("base image");
    let top = vm.dir.path("top.layer");
    let vm = vm.set("disks", json!([{ "base": base, "layers": [top] }]));
    let (status, serial, err) = vm.run(T);
    assert!(status.success(), "exit {status:?}, stderr: {err}");
    assert!(serial.contains("BADVIRTIO OK"), "serial: {serial}");
}
