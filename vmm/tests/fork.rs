//! Live fork: parent and children keep running with isolated memory and
//! disks, forks of forks work, and twenty children at once work.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{
    Control, TestVm, ended, eventually, last_count, stays, wait_count_past, wait_file, wait_timeout,
};
use serde_json::{Value, json};
use vmm::disk::LayeredDisk;

const T: Duration = Duration::from_secs(60);

/// Kills forked VMs a failed test would leave behind.
struct Reaper(Vec<u64>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = std::process::Command::new("kill")
                .arg("-9")
                .arg(pid.to_string())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

fn fork(ctl: &mut Control, count: u32, reaper: &mut Reaper) -> Vec<Value> {
    let r = ctl.raw(&json!({ "cmd": "fork", "count": count }).to_string());
    assert_eq!(r["ok"], true, "{r}");
    let children = r["fork"]["children"].as_array().expect("children").clone();
    assert_eq!(children.len(), count as usize);
    for c in &children {
        reaper.0.push(c["pid"].as_u64().expect("pid"));
        assert_eq!(c["status"], "ok", "{c}");
    }
    children
}

fn path(v: &Value, key: &str) -> PathBuf {
    PathBuf::from(v[key].as_str().expect("path"))
}

/// Tokens ("ROUND n 0x...") printed after line `from`.
fn tokens(log: &str, from: usize) -> Vec<String> {
    log.lines()
        .skip(from)
        .filter_map(|l| l.strip_prefix("ROUND "))
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_owned))
        .collect()
}

#[test]
fn fork_three_children_keep_memory_and_disks_isolated() {
    let vm = TestVm::new("forkmem");
    let base = vm.dir.path("base.img");
    std::fs::write(&base, vec![0u8; 1 << 20]).expect("base");
    let top = vm.dir.path("top.layer");
    let vm = vm
        .set("rng", json!(true))
        .set("disks", json!([{ "base": base, "layers": [top] }]));
    let mut parent = vm.spawn();
    let mut reaper = Reaper(vec![u64::from(parent.id())]);
    vm.wait_serial("ROUND 2 ", T);
    let mut ctl = vm.control();
    let children = fork(&mut ctl, 3, &mut reaper);
    let parent_lines = vm.serial().lines().count();

    let mut logs = vec![(vm.dir.path("serial.log"), parent_lines)];
    for c in &children {
        logs.push((path(c, "serial_log"), 0));
    }
    let mut all: Vec<Vec<String>> = Vec::new();
    for (log, from) in &logs {
        // Three rounds each after the fork: fresh tokens, checked in guest.
        let start = std::time::Instant::now();
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            assert!(!text.contains("FAIL"), "{}: {text}", log.display());
            let t = tokens(&text, *from);
            if t.len() >= 4 {
                all.push(t[1..].to_vec());
                break;
            }
            assert!(start.elapsed() < T, "{} stalled: {text}", log.display());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // No VM ever saw a token another VM chose after the fork.
    for (i, a) in all.iter().enumerate() {
        for (j, b) in all.iter().enumerate() {
            if i != j {
                assert!(
                    a.iter().all(|t| !b.contains(t)),
                    "VMs {i} and {j} share tokens"
                );
            }
        }
    }
    for c in &children {
        let mut cc = Control::connect(&path(c, "control_socket"));
        assert_eq!(cc.cmd("status")["state"], "running");
        cc.cmd("shutdown");
    }
    ctl.cmd("shutdown");
    assert!(wait_timeout(&mut parent, T).success());
    // The children are not ours to wait for; their disks are read once
    // they are done writing.
    for c in &children {
        let pid = c["pid"].as_u64().expect("pid");
        eventually(T, "a shut down child ending", || {
            if ended(pid) { Ok(()) } else { Err(pid) }
        });
    }

    // Each disk chain: base + sealed shared layer + the VM's own top.
    let own_top = |c: Option<&Value>| match c {
        Some(c) => PathBuf::from(c["disk_tops"][0].as_str().expect("top")),
        None => PathBuf::from(format!("{}.f1p", top.display())),
    };
    let vms: Vec<Option<&Value>> = std::iter::once(None)
        .chain(children.iter().map(Some))
        .collect();
    for (i, c) in vms.iter().enumerate() {
        let chain = [top.clone(), own_top(*c)];
        let disk = LayeredDisk::open(&base, &chain, true).expect("chain");
        let mut block = [0u8; 8];
        disk.read_at(8 * 512, &mut block).expect("read");
        let on_disk = format!("0x{:016x}", u64::from_le_bytes(block));
        for (j, other) in all.iter().enumerate() {
            if i != j {
                assert!(
                    !other.contains(&on_disk),
                    "VM {i}'s disk holds VM {j}'s token"
                );
            }
        }
    }
    assert_eq!(std::fs::read(&base).expect("base"), vec![0u8; 1 << 20]);
}

#[test]
fn forks_of_forks_of_forks_keep_counting() {
    let vm = TestVm::new("counter");
    let mut root = vm.spawn();
    let mut reaper = Reaper(vec![u64::from(root.id())]);
    vm.wait_serial("COUNT 2\n", T);
    let mut ctl = vm.control();
    let mut logs = vec![vm.dir.path("serial.log")];
    let mut controls = Vec::new();
    let mut current = vm.dir.path("ctl.sock");
    for _ in 0..3 {
        let mut c = Control::connect(&current);
        let child = fork(&mut c, 1, &mut reaper).remove(0);
        current = path(&child, "control_socket");
        logs.push(path(&child, "serial_log"));
        controls.push(current.clone());
    }
    for log in &logs {
        let at = last_count(&std::fs::read_to_string(log).unwrap_or_default());
        wait_count_past(log, at + 1, T);
    }
    for c in controls.iter().rev() {
        Control::connect(c).cmd("shutdown");
    }
    ctl.cmd("shutdown");
    assert!(wait_timeout(&mut root, T).success());
}

#[test]
fn twenty_children_at_once() {
    let vm = TestVm::new("counter").set("mem_mib", json!(32));
    let mut parent = vm.spawn();
    let mut reaper = Reaper(vec![u64::from(parent.id())]);
    vm.wait_serial("COUNT 1\n", T);
    let mut ctl = vm.control();
    let children = fork(&mut ctl, 20, &mut reaper);
    for c in &children {
        let mut cc = Control::connect(&path(c, "control_socket"));
        let st = cc.cmd("status");
        assert_eq!(st["state"], "running", "{st}");
        assert_eq!(st["pid"], c["pid"]);
    }
    for c in &children {
        let log = path(c, "serial_log");
        let at = last_count(&std::fs::read_to_string(&log).unwrap_or_default());
        wait_count_past(&log, at, T);
        Control::connect(&path(c, "control_socket")).cmd("shutdown");
    }
    ctl.cmd("shutdown");
    assert!(wait_timeout(&mut parent, T).success());
}

#[test]
fn paused_fork_children_wait_for_resume() {
    let vm = TestVm::new("counter");
    let mut parent = vm.spawn();
    let mut reaper = Reaper(vec![u64::from(parent.id())]);
    vm.wait_serial("COUNT 2\n", T);
    let mut ctl = vm.control();
    let r = ctl.raw(&json!({ "cmd": "fork", "count": 1, "paused": true }).to_string());
    assert_eq!(r["ok"], true, "{r}");
    let child = &r["fork"]["children"][0];
    reaper.0.push(child["pid"].as_u64().expect("pid"));
    let log = path(child, "serial_log");
    let mut cc = Control::connect(&path(child, "control_socket"));
    assert_eq!(cc.cmd("status")["state"], "paused");
    // The parent keeps running meanwhile: each count it prints is one the
    // child, forked at most one count ago, would have printed had it run.
    let child_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let at = last_count(&vm.serial());
    eventually(T, "the parent counting twice", || {
        assert_eq!(child_log(), "", "a paused child ran");
        let now = last_count(&vm.serial());
        if now >= at + 2 { Ok(now) } else { Err(now) }
    });
    assert_eq!(child_log(), "", "a paused child ran");
    assert_eq!(cc.cmd("resume")["ok"], true);
    wait_file(&log, "COUNT", T);
    cc.cmd("shutdown");
    ctl.cmd("shutdown");
    assert!(wait_timeout(&mut parent, T).success());
}

#[test]
fn forked_child_hears_a_vsock_transport_reset_and_the_parent_does_not() {
    let vm = TestVm::new("vsock");
    let uds = vm.dir.path("v.sock");
    let vm = vm
        .set("vsock", json!({ "guest_cid": 3, "uds_path": uds }))
        .set("cmdline", json!("reset_watch=1"));
    let mut parent = vm.spawn();
    let mut reaper = Reaper(vec![u64::from(parent.id())]);
    vm.wait_serial("EVENT READY", T);
    let mut ctl = vm.control();
    let forked = Instant::now();
    let child = fork(&mut ctl, 1, &mut reaper).remove(0);
    assert!(
        path(&child, "vsock_uds").exists(),
        "the child listens on its own vsock socket"
    );
    wait_file(&path(&child, "serial_log"), "TRANSPORT RESET", T);
    // Told at the fork too, the parent would print it about as soon as the
    // child did: twice the child's time is long enough to see it.
    let told = stays(
        (2 * forked.elapsed()).max(Duration::from_millis(200)),
        "whether the parent was told of a transport reset",
        || vm.serial().contains("TRANSPORT RESET"),
    );
    assert!(!told, "parent was told");
    ctl.cmd("shutdown");
    assert!(wait_timeout(&mut parent, T).success());
}

/// The first fork re-maps a booted VM's RAM privately, so pages that
/// nobody touched since are in neither process's page tables: snapshots of
/// the parent and of the (still paused) child taken right after the fork
/// must hold them all the same.
#[test]
fn snapshots_right_after_a_fork_hold_every_page() {
    let vm = TestVm::new("pagecheck").set("mem_mib", json!(64));
    let mut parent = vm.spawn();
    let mut reaper = Reaper(vec![u64::from(parent.id())]);
    vm.wait_serial("FILLED\n", T);
    let mut ctl = vm.control();
    let r = ctl.raw(&json!({ "cmd": "fork", "count": 1, "paused": true }).to_string());
    assert_eq!(r["ok"], true, "{r}");
    let child = r["fork"]["children"][0].clone();
    reaper.0.push(child["pid"].as_u64().expect("pid"));
    assert_eq!(child["status"], "ok", "{child}");

    let snaps = [vm.dir.path("snap-parent"), vm.dir.path("snap-child")];
    let pause = |ctl: &mut Control, dir: &PathBuf| {
        let r = ctl.raw(&json!({ "cmd": "pause", "to_disk": true, "dir": dir }).to_string());
        assert_eq!(r["ok"], true, "{r}");
    };
    pause(&mut ctl, &snaps[0]);
    assert!(wait_timeout(&mut parent, T).success());
    assert!(
        !vm.serial().contains("VERIFIED"),
        "the parent re-read its RAM before the snapshot: the test proves nothing"
    );
    pause(
        &mut Control::connect(&path(&child, "control_socket")),
        &snaps[1],
    );

    for (i, snap) in snaps.iter().enumerate() {
        let log = vm.dir.path(&format!("restored{i}.log"));
        let sock = vm.dir.path(&format!("restored{i}.sock"));
        let mut restored = common::spawn_restore(
            snap,
            &[
                std::path::Path::new("--serial-log"),
                &log,
                std::path::Path::new("--control-socket"),
                &sock,
            ],
        );
        reaper.0.push(u64::from(restored.id()));
        let text = wait_file(&log, "VERIFIED 1\n", T);
        assert!(!text.contains("FAIL"), "{text}");
        Control::connect(&sock).cmd("shutdown");
        assert!(wait_timeout(&mut restored, T).success());
    }
}
