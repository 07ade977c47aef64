//! With a working CRIU: pause to disk and fork keep processes and memory.
//! A shell counting in memory (PID 1 of the sandbox) must continue from the
//! same value in the parent, in each fork, and after pause to disk/resume.
//! Skipped with a printed reason when no CRIU ≥ 4 passes `criu check`
//! (`container/scripts/build-criu.sh` builds one).

mod common;

use std::time::Duration;

use common::{TestBackend, eventually};
use sandbox_container::{Kept, Limits, PauseMode, SandboxInfo, Status};

/// How long a counter gets to reach a value: CRIU restores can be slow.
const WAIT: Duration = Duration::from_secs(30);

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
    counted_to(t, &sandbox.id, 20);
    Some(sandbox)
}

/// Waits until the counter in `id` (which may not have started) reaches
/// `n`: far enough that a copy counting from 1 again would read below it.
fn counted_to(t: &TestBackend, id: &str, n: u64) {
    eventually(WAIT, &format!("the counter in {id} reaching {n}"), || {
        let now: u64 = t
            .sh_ok(id, "cat /tmp/counter 2>/dev/null || echo 0")
            .trim()
            .parse()
            .expect("counter value");
        if now >= n { Ok(now) } else { Err(now) }
    });
}

/// Waits until the counter in `id` passes `above` and returns it; a value
/// below `above` on the way means the count started over.
fn counter_past(t: &TestBackend, id: &str, above: u64) -> u64 {
    eventually(
        WAIT,
        &format!("the counter in {id} passing {above}"),
        || {
            let now = counter(t, id);
            assert!(
                now >= above,
                "the counter in {id} went back from {above} to {now}"
            );
            if now > above { Ok(now) } else { Err(now) }
        },
    )
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
    for fork in &forks {
        assert_eq!(
            fork.kept,
            vec![Kept::Disk, Kept::Memory, Kept::Processes],
            "{fork:?}"
        );
        // A fresh process would count from 1 again.
        counter_past(&t, &fork.sandbox.id, before);
        assert_eq!(
            t.sh_ok(&fork.sandbox.id, "hostname").trim(),
            fork.sandbox.id
        );
    }
    // The parent keeps counting.
    counter_past(&t, &parent.id, after_fork_parent);
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
    // Both count at one pace: five steps of fork 1 are five that fork 0
    // would have taken had it not been frozen.
    eventually(WAIT, "fork 1 counting five steps", || {
        assert_eq!(on_disk(), frozen, "the frozen fork counted");
        let now = counter(&t, &forks[1].sandbox.id);
        if now >= other + 5 { Ok(now) } else { Err(now) }
    });
    assert_eq!(on_disk(), frozen, "the frozen fork counted");
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
    let after = counter_past(&t, &sandbox.id, before);
    // And once more, from the restored sandbox.
    through_disk(&t, &sandbox.id);
    counter_past(&t, &sandbox.id, after);
}

/// Pauses `id` to disk and resumes it, which must keep everything.
fn through_disk(t: &TestBackend, id: &str) {
    t.backend().pause(id, PauseMode::Disk).expect("pause");
    let resumed = t.backend().resume(id).expect("resume");
    assert_eq!(
        resumed.kept,
        vec![Kept::Disk, Kept::Memory, Kept::Processes],
        "{:?}",
        resumed.sandbox.checkpoint_error
    );
}

/// One fork of `id`, which must keep everything; the fork's id.
fn fork_keeping_all(t: &TestBackend, id: &str) -> String {
    let forks = t.backend().fork(id, 1).expect("fork");
    assert_eq!(
        forks[0].kept,
        vec![Kept::Disk, Kept::Memory, Kept::Processes]
    );
    forks[0].sandbox.id.clone()
}

/// A checkpoint kills the sandbox's processes once they are written; a
/// look at the sandbox meanwhile (the API polling it, an exec arriving)
/// must not take that for a crash and record it.
#[test]
fn a_sandbox_looked_at_while_it_is_paused_to_disk_is_never_crashed() {
    let t = TestBackend::start("criulook");
    let Some(sandbox) = counting_sandbox(&t) else {
        return;
    };
    let id = &sandbox.id;
    let pausing = std::sync::atomic::AtomicBool::new(true);
    let seen = std::thread::scope(|scope| {
        let looker = scope.spawn(|| {
            let mut seen = Vec::new();
            while pausing.load(std::sync::atomic::Ordering::Relaxed) {
                let status = t.backend().get(id).expect("get").status;
                if seen.last() != Some(&status) {
                    seen.push(status);
                }
            }
            seen
        });
        let mut before = counter(&t, id);
        for round in 0..5 {
            let paused = t.backend().pause(id, PauseMode::Disk).expect("pause");
            assert_eq!(paused.status, Status::PausedToDisk, "round {round}");
            assert!(paused.checkpoint, "{:?}", paused.checkpoint_error);
            let resumed = t.backend().resume(id).expect("resume");
            assert_eq!(
                resumed.kept,
                vec![Kept::Disk, Kept::Memory, Kept::Processes],
                "round {round}"
            );
            before = counter_past(&t, id, before);
        }
        pausing.store(false, std::sync::atomic::Ordering::Relaxed);
        looker.join().expect("the looker")
    });
    assert!(
        !seen.contains(&Status::Crashed),
        "a look during the pause saw: {seen:?}"
    );
    assert_eq!(t.backend().get(id).expect("get").status, Status::Running);
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

#[test]
fn criu_finds_its_feature_cache_made_once_per_boot_where_run_is_no_tmpfs() {
    let t = TestBackend::start("kdat");
    if !t.require_criu() {
        return;
    }
    let criu = sandbox_container::backend::BackendConfig::new(&t.data_dir)
        .criu
        .expect("a CRIU path");
    // A directory on disk standing in for a /run that is no tmpfs.
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("kdat-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    sandbox_container::checkpoint::ensure_kdat_cache(&criu, &dir);
    let cache = dir.join("criu.kdat");
    let made = std::fs::metadata(&cache).expect("the cache is made");
    assert!(made.len() > 0);
    let mark = std::fs::read_to_string(dir.join("criu.kdat.forge-boot")).expect("its mark");
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").expect("boot id");
    assert!(mark.starts_with(boot.trim()), "{mark}");
    // Made once: a second call in this boot leaves it alone.
    std::thread::sleep(Duration::from_millis(20));
    sandbox_container::checkpoint::ensure_kdat_cache(&criu, &dir);
    let again = std::fs::metadata(&cache).expect("still there");
    assert_eq!(made.modified().ok(), again.modified().ok());
    // Another boot's (or a missing) mark makes it again.
    std::fs::write(dir.join("criu.kdat.forge-boot"), "another-boot\n").expect("mark");
    sandbox_container::checkpoint::ensure_kdat_cache(&criu, &dir);
    let mark = std::fs::read_to_string(dir.join("criu.kdat.forge-boot")).expect("its mark");
    assert!(mark.starts_with(boot.trim()), "{mark}");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// What a sandbox must not see of the kernel (the launcher's masked
/// directories), checked from inside: each one present is empty, cannot
/// be written, and is a read-only tmpfs in the mount table.
const MASKS_HOLD: &str = "for d in /proc/acpi /proc/asound /proc/scsi /sys/firmware \
     /sys/devices/virtual/powercap /sys/kernel/debug /sys/kernel/tracing /sys/fs/cgroup; do \
       [ -d $d ] || continue; \
       [ -z \"$(ls -A $d)\" ] || echo \"$d shows entries\"; \
       touch $d/x 2>/dev/null && echo \"$d is writable\"; \
       grep -q \" $d ro,[^-]* - tmpfs \" /proc/self/mountinfo || echo \"$d is no read-only tmpfs\"; \
       echo \"masked $d\"; \
     done";

fn masks_hold(t: &TestBackend, id: &str) {
    let out = t.sh_ok(id, MASKS_HOLD);
    let masked = out.lines().filter(|l| l.starts_with("masked ")).count();
    assert!(masked >= 3, "too few masked directories checked:\n{out}");
    assert_eq!(
        masked,
        out.lines().count(),
        "a mask does not hold in {id}:\n{out}"
    );
}

/// The masks share one file system (one archive in a checkpoint, not one
/// per mask): restored by pause to disk and by a fork, each still hides
/// what it hid.
#[test]
fn masks_hold_in_restored_and_forked_sandboxes() {
    let t = TestBackend::start("criumasks");
    let Some(sandbox) = counting_sandbox(&t) else {
        return;
    };
    masks_hold(&t, &sandbox.id);
    through_disk(&t, &sandbox.id);
    masks_hold(&t, &sandbox.id);
    let fork = fork_keeping_all(&t, &sandbox.id);
    masks_hold(&t, &fork);
    masks_hold(&t, &sandbox.id);
}

/// The network namespace is not saved but made afresh with loopback up
/// before sockets come back: a server listening on loopback before a
/// pause to disk, and in a fork, is the same process and still answers.
#[test]
fn a_loopback_server_keeps_serving_after_restore_and_in_a_fork() {
    let t = TestBackend::start("criunet");
    let Some(sandbox) = counting_sandbox(&t) else {
        return;
    };
    let id = &sandbox.id;
    t.sh_ok(
        id,
        "mkdir -p /tmp/www && echo served > /tmp/www/index.html && \
         httpd -p 127.0.0.1:8080 -h /tmp/www && pidof httpd > /tmp/httpd.pid",
    );
    // The server's pid, recorded before any request (busybox httpd forks
    // a child per connection), and whether it still runs.
    let serving = |id: &str| {
        let out = t.sh_ok(
            id,
            "wget -q -O - http://127.0.0.1:8080/index.html; \
             p=$(cat /tmp/httpd.pid); [ -d /proc/$p ] && echo $p",
        );
        let mut lines = out.lines();
        assert_eq!(lines.next(), Some("served"), "{out}");
        lines.next().unwrap_or_default().to_owned()
    };
    let server = serving(id);
    assert!(!server.is_empty(), "httpd runs");
    through_disk(&t, id);
    assert_eq!(serving(id), server, "the same server answers");
    let fork = fork_keeping_all(&t, id);
    assert_eq!(serving(&fork), server, "the fork's copy answers");
    assert_eq!(serving(id), server, "the parent's still answers");
}

/// A fork (restored into groups other than its parent's) keeps its
/// processes through a pause to disk, and so does a fork of that fork.
#[test]
fn a_fork_and_a_fork_of_it_keep_their_processes_through_a_pause_to_disk() {
    let t = TestBackend::start("criuforkagain");
    let Some(sandbox) = counting_sandbox(&t) else {
        return;
    };
    let fork = fork_keeping_all(&t, &sandbox.id);
    let counted = counter_past(&t, &fork, 0);
    through_disk(&t, &fork);
    counter_past(&t, &fork, counted);
    let grandchild = fork_keeping_all(&t, &fork);
    let counted = counter_past(&t, &grandchild, 0);
    through_disk(&t, &grandchild);
    counter_past(&t, &grandchild, counted);
}
