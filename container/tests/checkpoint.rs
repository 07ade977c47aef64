//! With a working CRIU: pause to disk and fork keep processes and memory.
//! A shell counting in memory (PID 1 of the sandbox) must continue from the
//! same value in the parent, in each fork, and after pause to disk/resume.
//! Skipped with a printed reason when no CRIU ≥ 4 passes `criu check`
//! (`container/scripts/build-criu.sh` builds one).

mod common;

use std::time::Duration;

use common::TestBackend;
use sandbox_container::{Kept, Limits, PauseMode, SandboxInfo, Status};

const COUNTER: &str = "i=0; while :; do i=$((i+1)); echo $i > /tmp/counter.new; mv /tmp/counter.new /tmp/counter; sleep 0.05; done";

fn counter(t: &TestBackend, id: &str) -> u64 {
    t.sh_ok(id, "cat /tmp/counter")
        .trim()
        .parse()
        .expect("counter value")
}

fn counting_sandbox(t: &TestBackend) -> Option<SandboxInfo> {
    if !t.require_criu() {
        return None;
    }
    let mut request = t.request(Limits::default());
    request.init = vec!["/bin/sh".into(), "-c".into(), COUNTER.into()];
    let sandbox = t.backend().create(request).expect("create");
    std::thread::sleep(Duration::from_millis(1000));
    Some(sandbox)
}

#[test]
fn fork_keeps_a_counting_process_in_every_copy() {
    let t = TestBackend::start("criufork");
    let Some(parent) = counting_sandbox(&t) else {
        return;
    };
    let before = counter(&t, &parent.id);
    assert!(before >= 5, "the counter runs ({before})");
    let forks = t.backend().fork(&parent.id, 3).expect("fork");
    let after_fork_parent = counter(&t, &parent.id);
    std::thread::sleep(Duration::from_millis(300));
    for fork in &forks {
        assert_eq!(
            fork.kept,
            vec![Kept::Disk, Kept::Memory, Kept::Processes],
            "{fork:?}"
        );
        let value = counter(&t, &fork.sandbox.id);
        // A fresh process would count from 1 again.
        assert!(
            value > before,
            "fork {} continued from {before}: {value}",
            fork.sandbox.id
        );
        assert_eq!(
            t.sh_ok(&fork.sandbox.id, "hostname").trim(),
            fork.sandbox.id
        );
    }
    assert!(
        counter(&t, &parent.id) > after_fork_parent,
        "the parent keeps counting"
    );
    // Each copy counts on its own disk: stopping one leaves the others.
    t.backend()
        .pause(&forks[0].sandbox.id, PauseMode::Memory)
        .expect("freeze fork 0");
    let on_disk = || {
        std::fs::read_to_string(
            t.data_dir
                .join("layers")
                .join(&forks[0].sandbox.id)
                .join("upper/tmp/counter"),
        )
        .expect("counter in the fork's layer")
    };
    let frozen = on_disk();
    let other = counter(&t, &forks[1].sandbox.id);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(on_disk(), frozen);
    assert!(counter(&t, &forks[1].sandbox.id) > other);
}

#[test]
fn pause_to_disk_and_resume_keep_the_process() {
    let t = TestBackend::start("criupause");
    let Some(sandbox) = counting_sandbox(&t) else {
        return;
    };
    let before = counter(&t, &sandbox.id);
    let paused = t
        .backend()
        .pause(&sandbox.id, PauseMode::Disk)
        .expect("pause");
    assert_eq!(paused.status, Status::PausedToDisk);
    assert!(paused.checkpoint, "{:?}", paused.checkpoint_error);
    let stats = t.backend().stats(&sandbox.id).expect("stats");
    assert_eq!(stats.cgroup.pids, 0, "no processes while paused to disk");
    let resumed = t.backend().resume(&sandbox.id).expect("resume");
    assert_eq!(
        resumed.kept,
        vec![Kept::Disk, Kept::Memory, Kept::Processes]
    );
    std::thread::sleep(Duration::from_millis(300));
    let after = counter(&t, &sandbox.id);
    assert!(after > before, "counting continued from {before}: {after}");
    // And once more, from the restored sandbox.
    t.backend()
        .pause(&sandbox.id, PauseMode::Disk)
        .expect("pause again");
    let resumed = t.backend().resume(&sandbox.id).expect("resume again");
    assert_eq!(
        resumed.kept,
        vec![Kept::Disk, Kept::Memory, Kept::Processes]
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(counter(&t, &sandbox.id) > after);
}

#[test]
fn a_checkpoint_past_the_host_budget_keeps_the_disk_and_says_why() {
    let t = TestBackend::start_with("criubudget", |config| {
        config.checkpoint_budget.host_bytes = Some(1 << 20);
    });
    let Some(sandbox) = counting_sandbox(&t) else {
        return;
    };
    let paused = t
        .backend()
        .pause(&sandbox.id, PauseMode::Disk)
        .expect("pause");
    assert!(!paused.checkpoint, "no checkpoint was written");
    let reason = paused.checkpoint_error.expect("a reason");
    assert!(reason.contains("budget"), "{reason}");
    assert!(
        !t.data_dir
            .join("layers")
            .join(format!(".images-{}", sandbox.id))
            .join("checkpoint")
            .exists()
    );
    let resumed = t.backend().resume(&sandbox.id).expect("resume");
    assert_eq!(resumed.kept, vec![Kept::Disk]);
}

#[test]
fn a_checkpoint_is_written_under_a_quota_it_cannot_pass() {
    let t = TestBackend::start("criuquota");
    let Some(sandbox) = counting_sandbox(&t) else {
        return;
    };
    t.backend()
        .pause(&sandbox.id, PauseMode::Disk)
        .expect("pause");
    let room = t
        .data_dir
        .join("layers")
        .join(format!(".images-{}", sandbox.id));
    let limits = std::process::Command::new("btrfs")
        .args(["qgroup", "show", "-re", "--raw"])
        .arg(&room)
        .output()
        .expect("btrfs runs");
    let text = String::from_utf8_lossy(&limits.stdout);
    let cap = (Limits::default().mem_mib << 20) + sandbox_container::checkpoint::TMPFS_SLACK_BYTES;
    assert!(
        text.contains(&cap.to_string()),
        "the images subvolume is limited to {cap} bytes: {text}"
    );
    let resumed = t.backend().resume(&sandbox.id).expect("resume");
    assert_eq!(
        resumed.kept,
        vec![Kept::Disk, Kept::Memory, Kept::Processes]
    );
    t.backend().destroy(&sandbox.id).expect("destroy");
    assert!(!room.exists(), "destroy removes the images subvolume");
}

#[test]
fn deleted_open_files_cannot_grow_a_checkpoint_past_its_quota() {
    let t = TestBackend::start("criughosts");
    if !t.require_criu() {
        return;
    }
    // 256 MiB of memory, so a 384 MiB cap; 600 deleted files of 1 MiB held
    // open, each of which CRIU would copy into the images.
    let mut request = t.request(Limits {
        mem_mib: 256,
        ..Limits::default()
    });
    request.init = vec!["/bin/probe".into(), "ghosts".into(), "600".into()];
    let sandbox = t.backend().create(request).expect("create");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !t
        .sh_ok(&sandbox.id, "ls -l /proc/1/fd | grep -c deleted || true")
        .trim()
        .starts_with("600")
    {
        assert!(std::time::Instant::now() < deadline, "the ghosts are ready");
        std::thread::sleep(Duration::from_millis(200));
    }
    let paused = t
        .backend()
        .pause(&sandbox.id, PauseMode::Disk)
        .expect("pause");
    assert!(!paused.checkpoint, "the checkpoint did not fit");
    let reason = paused.checkpoint_error.expect("why");
    assert!(
        reason.contains("quota") || reason.contains("space"),
        "the dump ran into its quota: {reason}"
    );
    let room = t
        .data_dir
        .join("layers")
        .join(format!(".images-{}", sandbox.id));
    let used = sandbox_container::checkpoint::images_bytes(&room.join("checkpoint"));
    assert!(used <= 400 << 20, "{} MiB of images kept", used >> 20);
}
