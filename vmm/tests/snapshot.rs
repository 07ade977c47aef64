//! Snapshot, pause to disk and restore with the counter guest.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use common::{
    Control, TestVm, last_count, spawn_restore, stderr_of, wait_count_past, wait_file, wait_timeout,
};
use serde_json::json;

const T: Duration = Duration::from_secs(30);

#[test]
fn pause_to_disk_ends_the_process_and_restore_keeps_counting() {
    let vm = TestVm::new("counter");
    let mut child = vm.spawn();
    vm.wait_serial("COUNT 3\n", T);
    let snap = vm.dir.path("snap");
    let r = vm
        .control()
        .raw(&json!({ "cmd": "pause", "to_disk": true, "dir": snap }).to_string());
    assert_eq!(r["ok"], true, "{r}");
    let status = wait_timeout(&mut child, T);
    assert!(status.success(), "paused-to-disk exit {status:?}");
    assert!(!vm.dir.path("ctl.sock").exists(), "no process, no socket");
    let paused_at = last_count(&vm.serial());

    // Sparse: a 64 MiB guest that touched little stores little.
    let mem = std::fs::metadata(snap.join("memory")).expect("memory file");
    assert_eq!(mem.len(), 64 << 20);
    assert!(mem.blocks() * 512 < 8 << 20, "memory file is not sparse");

    let log2 = vm.dir.path("serial2.log");
    let mut resumed = spawn_restore(&snap, &[Path::new("--serial-log"), &log2]);
    let text = wait_file(&log2, &format!("COUNT {}\n", paused_at + 2), T);
    // The guest continues where it stopped: the first whole COUNT line of
    // the new log is the next count (a line cut by the pause finishes
    // first, without its prefix).
    let first: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("COUNT ")?.parse().ok())
        .expect("a COUNT line");
    assert!(
        first == paused_at + 1 || first == paused_at + 2,
        "resumed at {first}, paused at {paused_at}"
    );
    vm.control().cmd("shutdown");
    assert!(wait_timeout(&mut resumed, T).success());
}

#[test]
fn live_snapshot_keeps_the_vm_running_and_restores_as_a_second_vm() {
    let vm = TestVm::new("counter");
    let mut child = vm.spawn();
    vm.wait_serial("COUNT 2\n", T);
    let snap = vm.dir.path("snap");
    let mut ctl = vm.control();
    let r = ctl.raw(&json!({ "cmd": "snapshot", "dir": snap }).to_string());
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(ctl.cmd("status")["state"], "running");
    let at = last_count(&vm.serial());
    vm.wait_serial(&format!("COUNT {}\n", at + 2), T);

    // A second VM from the same snapshot, on its own paths.
    let ctl2 = vm.dir.path("ctl2.sock");
    let log2 = vm.dir.path("serial2.log");
    let mut twin = spawn_restore(
        &snap,
        &[
            Path::new("--control-socket"),
            &ctl2,
            Path::new("--serial-log"),
            &log2,
        ],
    );
    wait_file(&log2, "COUNT", T);
    let mut c2 = Control::connect(&ctl2);
    assert_eq!(c2.cmd("status")["pid"], twin.id());
    c2.cmd("shutdown");
    ctl.cmd("shutdown");
    assert!(wait_timeout(&mut twin, T).success());
    assert!(wait_timeout(&mut child, T).success());
}

#[test]
fn damaged_snapshots_are_refused_before_any_vcpu_runs() {
    let vm = TestVm::new("counter");
    let mut child = vm.spawn();
    vm.wait_serial("COUNT 1\n", T);
    let snap = vm.dir.path("snap");
    let r = vm
        .control()
        .raw(&json!({ "cmd": "pause", "to_disk": true, "dir": snap }).to_string());
    assert_eq!(r["ok"], true, "{r}");
    assert!(wait_timeout(&mut child, T).success());
    let state = std::fs::read(snap.join("state")).expect("state");

    let check = |name: &str, state_bytes: Option<Vec<u8>>, drop_memory: bool, expect: &str| {
        let d = vm.dir.path(name);
        std::fs::create_dir_all(&d).expect("dir");
        if let Some(b) = state_bytes {
            std::fs::write(d.join("state"), b).expect("state");
        }
        if !drop_memory {
            std::fs::copy(snap.join("memory"), d.join("memory")).expect("memory");
        }
        let log = d.join("serial.log");
        let mut p = spawn_restore(&d, &[Path::new("--serial-log"), &log]);
        let status = wait_timeout(&mut p, T);
        let err = stderr_of(&mut p);
        assert_eq!(status.code(), Some(1), "{name}: {err}");
        assert!(
            err.contains(expect),
            "{name}: stderr {err:?} lacks {expect:?}"
        );
        assert!(
            std::fs::read_to_string(&log).unwrap_or_default().is_empty(),
            "{name}: guest ran"
        );
    };
    let mut corrupt = state.clone();
    let mid = corrupt.len() / 2;
    corrupt[mid] ^= 0x20;
    check("corrupt", Some(corrupt), false, "checksum mismatch");
    check(
        "truncated",
        Some(state[..state.len() - 10].to_vec()),
        false,
        "truncated",
    );
    let mut v9 = state.clone();
    v9[8] = 9;
    check("version", Some(v9), false, "version 9 is not supported");
    check("nomemory", Some(state.clone()), true, "Memory file");
    check("nostate", None, false, "Snapshot I/O");
}

#[test]
fn pausing_a_resumed_vm_again_writes_only_what_changed() {
    // The counter guest after a restore dirties a few pages (its stack and
    // counter); the second snapshot into the same directory writes those
    // and leaves the rest of the file as it was.
    let vm = TestVm::new("counter");
    let mut child = vm.spawn();
    vm.wait_serial("COUNT 2\n", T);
    let snap = vm.dir.path("snap");
    let pause = json!({ "cmd": "pause", "to_disk": true, "dir": snap }).to_string();
    let first = vm.control().raw(&pause);
    assert_eq!(first["ok"], true, "{first}");
    assert!(wait_timeout(&mut child, T).success());

    let log2 = vm.dir.path("serial2.log");
    let mut resumed = spawn_restore(&snap, &[Path::new("--serial-log"), &log2]);
    // A whole count line: paused between `COUNT ` and its number, the log
    // would hold no count to go on from.
    wait_count_past(&log2, 0, T);
    let second = vm.control().raw(&pause);
    assert_eq!(second["ok"], true, "{second}");
    assert!(wait_timeout(&mut resumed, T).success());
    let written = second["snapshot"]["memory_bytes"].as_u64().expect("bytes");
    assert!(
        written <= 64 * 4096,
        "second snapshot rewrote {written} bytes of memory"
    );
    let at = last_count(&std::fs::read_to_string(&log2).expect("log2"));

    let log3 = vm.dir.path("serial3.log");
    let mut again = spawn_restore(&snap, &[Path::new("--serial-log"), &log3]);
    wait_file(&log3, &format!("COUNT {}\n", at + 2), T);
    vm.control().cmd("shutdown");
    assert!(wait_timeout(&mut again, T).success());
}

#[test]
fn pausing_a_resumed_vm_into_a_new_directory_reads_only_pages_with_data() {
    // A restored guest's RAM is a private map of the first snapshot's
    // sparse file. A snapshot elsewhere reads the pages that file holds
    // and the ones the guest touched since, never the whole of RAM: in a
    // slow nested host, reading every page of a large VM outlasted the
    // forge's deadline for a pause to disk.
    let vm = TestVm::new("counter");
    let mut child = vm.spawn();
    vm.wait_serial("COUNT 2\n", T);
    let pause = |dir: &Path| json!({ "cmd": "pause", "to_disk": true, "dir": dir }).to_string();
    let snap = vm.dir.path("snap");
    let first = vm.control().raw(&pause(&snap));
    assert_eq!(first["ok"], true, "{first}");
    assert!(wait_timeout(&mut child, T).success());

    let log2 = vm.dir.path("serial2.log");
    let mut resumed = spawn_restore(&snap, &[Path::new("--serial-log"), &log2]);
    wait_file(&log2, "COUNT", T);
    let snap2 = vm.dir.path("snap2");
    let second = vm.control().raw(&pause(&snap2));
    assert_eq!(second["ok"], true, "{second}");
    assert!(wait_timeout(&mut resumed, T).success());
    let scanned = second["snapshot"]["memory_scanned_bytes"]
        .as_u64()
        .expect("scanned bytes");
    assert!(
        scanned < 8 << 20,
        "the second snapshot read {scanned} bytes of a 64 MiB guest"
    );
    let mem = std::fs::metadata(snap2.join("memory")).expect("memory file");
    assert!(mem.blocks() * 512 < 8 << 20, "memory file is not sparse");
    let at = last_count(&std::fs::read_to_string(&log2).expect("log2"));

    let log3 = vm.dir.path("serial3.log");
    let mut again = spawn_restore(&snap2, &[Path::new("--serial-log"), &log3]);
    wait_file(&log3, &format!("COUNT {}\n", at + 2), T);
    vm.control().cmd("shutdown");
    assert!(wait_timeout(&mut again, T).success());
}

#[test]
fn restores_of_a_live_snapshot_write_their_own_disk_layers() {
    let vm = TestVm::new("forkmem");
    let base = vm.dir.path("base.img");
    std::fs::write(&base, vec![0u8; 1 << 20]).expect("base");
    let top = vm.dir.path("top.layer");
    let vm = vm
        .set("rng", json!(true))
        .set("disks", json!([{ "base": base, "layers": [top] }]));
    let mut child = vm.spawn();
    vm.wait_serial("ROUND 2 ", T);
    let snap = vm.dir.path("snap");
    let mut ctl = vm.control();
    let r = ctl.raw(&json!({ "cmd": "snapshot", "dir": snap }).to_string());
    assert_eq!(r["ok"], true, "{r}");
    let sealed = std::fs::read(&top).expect("sealed top");
    let st = ctl.cmd("status");
    assert_eq!(
        st["disks"][0]["layers"],
        json!([top, vm.dir.path("top.layer.s1")]),
        "status names the new top layer: {st}"
    );

    let ctl2 = vm.dir.path("ctl2.sock");
    let log2 = vm.dir.path("serial2.log");
    let mut twin = spawn_restore(
        &snap,
        &[
            Path::new("--control-socket"),
            &ctl2,
            Path::new("--serial-log"),
            &log2,
        ],
    );
    // Both keep writing and checking their disks for a few rounds.
    let n = vm.serial().matches("ROUND").count();
    vm.wait_serial(&format!("ROUND {} ", n + 3), T);
    let twin_log = wait_file(&log2, "ROUND", T);
    let first: u64 = twin_log
        .lines()
        .find_map(|l| l.strip_prefix("ROUND ")?.split(' ').next()?.parse().ok())
        .expect("round");
    wait_file(&log2, &format!("ROUND {} ", first + 3), T);
    assert!(
        !vm.serial().contains("FAIL")
            && !std::fs::read_to_string(&log2)
                .expect("log")
                .contains("FAIL")
    );
    Control::connect(&ctl2).cmd("shutdown");
    ctl.cmd("shutdown");
    assert!(wait_timeout(&mut twin, T).success());
    assert!(wait_timeout(&mut child, T).success());

    assert_eq!(
        std::fs::read(&top).expect("top"),
        sealed,
        "sealed layer changed"
    );
    let names: Vec<String> = std::fs::read_dir(&vm.dir.0)
        .expect("dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    assert!(names.iter().any(|n| n == "top.layer.s1"), "{names:?}");
    assert!(
        names.iter().any(|n| n.starts_with("top.layer.r")),
        "{names:?}"
    );
}

#[test]
fn two_vcpus_both_keep_counting_across_pause_to_disk() {
    let vm = TestVm::new("counter").set("vcpus", json!(2));
    let mut child = vm.spawn();
    vm.wait_serial("CPU1 2\n", T);
    let snap = vm.dir.path("snap");
    let r = vm
        .control()
        .raw(&json!({ "cmd": "pause", "to_disk": true, "dir": snap }).to_string());
    assert_eq!(r["ok"], true, "{r}");
    assert!(wait_timeout(&mut child, T).success());
    let cpu1 = |log: &str| {
        log.lines()
            .filter_map(|l| l.strip_prefix("CPU1 ")?.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
    };
    let before = vm.serial();
    let (c0, c1) = (last_count(&before), cpu1(&before));

    let log2 = vm.dir.path("serial2.log");
    let mut resumed = spawn_restore(&snap, &[Path::new("--serial-log"), &log2]);
    wait_file(&log2, &format!("COUNT {}\n", c0 + 2), T);
    wait_file(&log2, &format!("CPU1 {}\n", c1 + 2), T);
    let after = std::fs::read_to_string(&log2).expect("log2");
    assert!(
        after
            .lines()
            .filter_map(|l| l.strip_prefix("CPU1 ")?.parse::<u64>().ok())
            .all(|n| n > c1),
        "vCPU 1 went back in time"
    );
    vm.control().cmd("shutdown");
    assert!(wait_timeout(&mut resumed, T).success());
}
