//! Lifecycle of real sandboxes: create, exec, pause/resume, fork, destroy,
//! reconcile. Needs root, btrfs-progs, busybox-static and gcc.

mod common;

use common::TestBackend;

#[test]
fn create_then_exec_runs_inside_the_sandbox() {
    let t = TestBackend::start("create");
    let sandbox = t.create();
    let out = t.sh_ok(&sandbox.id, "echo hi; hostname; echo $$; id -u");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "hi");
    assert_eq!(lines[1], sandbox.id, "hostname is the sandbox id");
    let pid: u32 = lines[2].parse().expect("pid");
    assert!(
        pid < 50,
        "shell runs in the sandbox's PID namespace (pid {pid})"
    );
    assert_eq!(lines[3], "0");
}

use std::time::Duration;

use common::{eventually, host_footprint, stays};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sandbox_container::backend::cgroup_parent;
use sandbox_container::{Kept, PauseMode, Status, reconcile};

/// How long something the tests wait for may take.
const WAIT: Duration = Duration::from_secs(10);

fn counter_value(t: &TestBackend, id: &str) -> u64 {
    t.sh_ok(id, "cat /data/counter")
        .trim()
        .parse()
        .unwrap_or_default()
}

#[test]
fn pause_in_memory_stops_cpu_and_resume_continues() {
    let t = TestBackend::start("pausemem");
    let sandbox = t.create();
    t.sh_ok(
        &sandbox.id,
        "(i=0; while :; do i=$((i+1)); echo $i > /data/counter.new; mv /data/counter.new /data/counter; sleep 0.01; done) >/dev/null 2>&1 &",
    );
    eventually(WAIT, "the counter counting", || {
        let now = counter_value(&t, &sandbox.id);
        if now >= 2 { Ok(now) } else { Err(now) }
    });
    let info = t
        .backend()
        .pause(&sandbox.id, PauseMode::Memory)
        .expect("pause");
    assert_eq!(info.status, Status::Frozen);
    // Running, the counter steps every 10 ms: 300 ms are thirty steps it
    // would have taken.
    let frozen_at = stays(
        Duration::from_millis(300),
        "the counter of a frozen sandbox",
        || {
            std::fs::read_to_string(
                t.data_dir
                    .join("layers")
                    .join(&sandbox.id)
                    .join("upper/data/counter"),
            )
            .expect("counter in the top layer")
        },
    );
    let resumed = t.backend().resume(&sandbox.id).expect("resume");
    assert_eq!(
        resumed.kept,
        vec![Kept::Disk, Kept::Memory, Kept::Processes]
    );
    let before: u64 = frozen_at.trim().parse().expect("number");
    eventually(WAIT, "the same process counting on", || {
        let now = counter_value(&t, &sandbox.id);
        assert!(
            now >= before,
            "the counter went back from {before} to {now}"
        );
        if now > before { Ok(now) } else { Err(now) }
    });
}

#[test]
fn pause_to_disk_keeps_files_and_frees_processes() {
    let t = TestBackend::start("pausedisk");
    let sandbox = t.create();
    t.sh_ok(
        &sandbox.id,
        "echo kept > /data/file; sleep 1000 >/dev/null 2>&1 &",
    );
    let info = t
        .backend()
        .pause(&sandbox.id, PauseMode::Disk)
        .expect("pause");
    assert_eq!(info.status, Status::PausedToDisk);
    let paused = host_footprint(&t.data_dir);
    assert_eq!(
        (paused.cgroups, paused.processes),
        (0, 0),
        "no cgroups or processes while paused"
    );
    assert!(
        t.backend()
            .exec(&sandbox.id, &sandbox_container::ExecRequest::new(["true"]))
            .is_err()
    );
    let resumed = t.backend().resume(&sandbox.id).expect("resume");
    assert_eq!(resumed.kept, vec![Kept::Disk]);
    assert_eq!(
        t.sh_ok(&sandbox.id, "cat /data/file; pidof sleep || echo none"),
        "kept\nnone\n"
    );
}

#[test]
fn fork_three_gives_isolated_disks_both_ways() {
    let t = TestBackend::start("fork3");
    let parent = t.create();
    t.sh_ok(
        &parent.id,
        "echo base > /data/shared; mkdir -p /root/deep/dir",
    );
    let forks = t.backend().fork(&parent.id, 3).expect("fork");
    assert_eq!(forks.len(), 3);
    for fork in &forks {
        assert_eq!(fork.kept, vec![Kept::Disk]);
        assert_eq!(
            fork.sandbox.forked_from.as_deref(),
            Some(parent.id.as_str())
        );
        assert_eq!(
            t.sh_ok(&fork.sandbox.id, "cat /data/shared; hostname"),
            format!("base\n{}\n", fork.sandbox.id)
        );
    }
    t.sh_ok(
        &forks[0].sandbox.id,
        "echo one > /data/only-one; rm /data/shared",
    );
    t.sh_ok(&parent.id, "echo parent > /data/only-parent");
    for (i, fork) in forks.iter().enumerate() {
        let seen = t.sh_ok(&fork.sandbox.id, "ls /data | tr '\\n' ' '");
        assert!(
            !seen.contains("only-parent"),
            "fork {i} sees the parent's later write: {seen}"
        );
        if i == 0 {
            assert_eq!(seen.trim(), "only-one");
        } else {
            assert_eq!(
                seen.trim(),
                "shared",
                "fork {i} sees fork 0's writes: {seen}"
            );
        }
    }
    let parent_sees = t.sh_ok(&parent.id, "ls /data | tr '\\n' ' '");
    assert_eq!(parent_sees.trim(), "only-parent shared");
    // Fork of a fork works too.
    let grandchild = t
        .backend()
        .fork(&forks[0].sandbox.id, 1)
        .expect("fork of fork");
    assert_eq!(
        t.sh_ok(&grandchild[0].sandbox.id, "cat /data/only-one"),
        "one\n"
    );
}

#[test]
fn fifty_sandboxes_at_once() {
    let t = TestBackend::start("fifty");
    let sandboxes: Vec<_> = (0..50).map(|_| t.create()).collect();
    for sandbox in &sandboxes {
        assert_eq!(
            t.sh_ok(&sandbox.id, "echo $(hostname)"),
            format!("{}\n", sandbox.id)
        );
    }
    let running = t
        .backend()
        .list()
        .expect("list")
        .iter()
        .filter(|s| s.status == Status::Running)
        .count();
    assert_eq!(running, 50);
}

#[test]
fn destroy_leaves_nothing_behind_even_after_kill_9_of_init() {
    let t = TestBackend::start("destroy");
    let before = host_footprint(&t.data_dir);
    assert_eq!(before.loop_devices, 1, "the layer store's image");
    let a = t.create();
    let b = t.create();
    t.sh_ok(&a.id, "sleep 1000 >/dev/null 2>&1 & echo x > /data/x");
    t.sh_ok(&b.id, "sleep 1000 >/dev/null 2>&1 &");
    let during = host_footprint(&t.data_dir);
    assert!(during.cgroups > before.cgroups);
    assert!(during.processes >= before.processes + 4);
    assert_eq!(
        during.mounts, before.mounts,
        "sandbox mounts are invisible on the host"
    );

    kill(Pid::from_raw(b.pid1.expect("pid1") as i32), Signal::SIGKILL).expect("kill -9 init");
    eventually(WAIT, "the killed sandbox marked crashed", || {
        match t.backend().get(&b.id).expect("get").status {
            Status::Crashed => Ok(()),
            other => Err(other),
        }
    });

    t.backend().destroy(&a.id).expect("destroy a");
    t.backend().destroy(&b.id).expect("destroy b");
    let after = host_footprint(&t.data_dir);
    assert_eq!(after, before, "destroy left something behind");
    assert_eq!((after.cgroups, after.processes), (0, 0));
    assert!(t.backend().layers().list().expect("layers").is_empty());
    assert!(matches!(
        t.backend().get(&a.id),
        Err(sandbox_container::BackendError::NotFound(_))
    ));
}

#[test]
fn reconcile_cleans_what_a_crashed_forge_left() {
    let mut t = TestBackend::start("reconcile");
    let alive = t.create();
    let crashed = t.create();
    kill(
        Pid::from_raw(crashed.pid1.expect("pid1") as i32),
        Signal::SIGKILL,
    )
    .expect("kill -9");
    // A crash mid-create: a layer and a cgroup without a record.
    t.backend().layers().create("orphan-layer").expect("layer");
    let orphan_cgroup = std::path::Path::new("/sys/fs/cgroup/pids")
        .join(cgroup_parent(&t.data_dir))
        .join("orphan-cgroup");
    std::fs::create_dir_all(&orphan_cgroup).expect("orphan cgroup");
    // The forge dies: its in-memory state is gone.
    let backend = t.backend.take().expect("backend");
    std::mem::drop(backend);
    let killed = crashed.pid1.expect("pid1");
    eventually(WAIT, "the killed PID 1 gone", || {
        if sandbox_container::state::is_sandbox_pid(killed, &crashed.id) {
            Err(killed)
        } else {
            Ok(())
        }
    });

    let report = reconcile(&t.data_dir, 8).expect("reconcile");
    assert_eq!(report.adopted, vec![alive.id.clone()]);
    assert_eq!(report.crashed, vec![crashed.id.clone()]);
    assert_eq!(report.orphan_cgroups, vec!["orphan-cgroup".to_owned()]);
    assert_eq!(report.collected_layers, vec!["orphan-layer".to_owned()]);
    assert!(!orphan_cgroup.exists());

    // A new backend picks the survivors up: the adopted one still runs, the
    // crashed one resumes from its disk.
    let fresh = TestBackend::reopen(&t);
    t.backend = Some(fresh);
    assert_eq!(t.sh_ok(&alive.id, "echo up"), "up\n");
    let resumed = t.backend().resume(&crashed.id).expect("resume crashed");
    assert_eq!(resumed.kept, vec![Kept::Disk]);
    let again = reconcile(&t.data_dir, 8).expect("second reconcile");
    assert_eq!(again.adopted.len(), 2);
    assert!(
        again.crashed.is_empty()
            && again.orphan_cgroups.is_empty()
            && again.collected_layers.is_empty()
    );
}

#[test]
fn failed_create_reports_why_and_leaves_nothing() {
    let t = TestBackend::start("badcreate");
    let before = host_footprint(&t.data_dir);
    let mut request = t.request(sandbox_container::Limits::default());
    request.init = vec!["/no/such/init".to_owned()];
    // The launcher reports ready before exec; a missing init shows up as a
    // sandbox whose PID 1 is gone.
    match t.backend().create(request) {
        Ok(info) => {
            eventually(WAIT, "a sandbox without init marked crashed", || {
                match t.backend().get(&info.id).expect("get").status {
                    Status::Crashed => Ok(()),
                    other => Err(other),
                }
            });
            t.backend().destroy(&info.id).expect("destroy");
        }
        Err(err) => assert!(err.to_string().contains("Launching"), "{err}"),
    }
    let mut request = t.request(sandbox_container::Limits::default());
    request.image_root = "/no/such/image".into();
    let err = t
        .backend()
        .create(request)
        .expect_err("missing image fails");
    assert!(
        err.to_string().contains("/no/such/image"),
        "the error names what is missing: {err}"
    );
    assert_eq!(host_footprint(&t.data_dir), before);
    assert!(t.backend().list().expect("list").is_empty());
    assert!(t.backend().layers().list().expect("layers").is_empty());
}

#[test]
fn concurrent_fork_pause_resume_on_one_sandbox_are_serialised() {
    let t = TestBackend::start("concurrent");
    let sandbox = t.create();
    t.sh_ok(&sandbox.id, "echo v > /data/v");
    let id = sandbox.id.as_str();
    let forks = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for worker in 0..4 {
            let (t, forks) = (&t, &forks);
            scope.spawn(move || {
                for round in 0..5 {
                    let b = t.backend();
                    let result = match (worker + round) % 4 {
                        0 => b.fork(id, 1).map(|f| forks.lock().expect("lock").extend(f)),
                        1 => b.pause(id, PauseMode::Memory).map(drop),
                        2 => b.pause(id, PauseMode::Disk).map(drop),
                        _ => b.resume(id).map(drop),
                    };
                    // Only a state mismatch is an acceptable refusal.
                    if let Err(err) = result {
                        assert!(
                            matches!(err, sandbox_container::BackendError::WrongState { .. }),
                            "{err}"
                        );
                    }
                }
            });
        }
    });
    t.backend().resume(id).expect("final resume");
    assert_eq!(t.sh_ok(id, "cat /data/v"), "v\n");
    for fork in forks.into_inner().expect("forks") {
        assert_eq!(t.sh_ok(&fork.sandbox.id, "cat /data/v"), "v\n");
    }
}

#[test]
fn a_layer_holding_a_nested_subvolume_is_still_destroyed() {
    let t = TestBackend::start("nestedsubvol");
    let sandbox = t.create();
    // What a sandbox could do on the layer's btrfs if a subvolume request
    // ever got through its filter: the host makes one in the run dir.
    let run = t.data_dir.join("layers").join(&sandbox.id).join("run");
    let made = std::process::Command::new("btrfs")
        .args(["subvolume", "create"])
        .arg(run.join("nested"))
        .output()
        .expect("btrfs runs");
    assert!(made.status.success(), "{made:?}");
    std::fs::write(run.join("nested/data"), vec![7u8; 1 << 20]).expect("write");
    t.backend().destroy(&sandbox.id).expect("destroy");
    assert!(!t.data_dir.join("layers").join(&sandbox.id).exists());
}

/// The v1 freezer now and then stalls in FREEZING when a task forks as it
/// freezes (CRIU then times out seizing a fork's parent). Freezing a
/// group of shells that fork all the time for a checkpoint must still
/// get there, every time. (A host without a v1 freezer freezes through
/// cgroup2, which has no such stall.)
#[test]
fn a_group_that_forks_all_the_time_freezes_for_a_checkpoint_every_time() {
    use sandbox_container::Limits;
    use sandbox_container::cgroup::{Cgroup, CgroupLayout};

    /// The group, its shells killed and the group removed however the
    /// test ends.
    struct Forking(Cgroup, CgroupLayout, String, Vec<std::process::Child>);
    impl Drop for Forking {
        fn drop(&mut self) {
            for shell in &mut self.3 {
                let _ = shell.kill();
            }
            let _ = self.0.kill_all();
            for shell in &mut self.3 {
                let _ = shell.wait();
            }
            let _ = self.0.remove();
            self.1.remove_parent(&self.2);
        }
    }

    let layout = CgroupLayout::probe().expect("cgroups are mounted");
    let parent = format!("forge-freezer-test-{}", std::process::id());
    let mut group = Forking(
        layout.group(&parent, "forking"),
        layout.clone(),
        parent,
        Vec::new(),
    );
    group
        .0
        .create(&Limits::default())
        .expect("create the group");
    for _ in 0..4 {
        let shell = std::process::Command::new("/bin/sh")
            .args(["-c", "while :; do /bin/true; sleep 0.01; done"])
            .spawn()
            .expect("spawn a shell");
        let pid = shell.id().to_string();
        group.3.push(shell);
        for dir in &group.0.paths().dirs {
            std::fs::write(dir.join("cgroup.procs"), &pid).expect("the shell joins the group");
        }
    }
    let freezer = group.0.freezer_v1_dir();
    let mut failures = Vec::new();
    for round in 0..400 {
        match group.0.freeze_for_checkpoint() {
            Ok(()) => {
                if let Some(dir) = &freezer {
                    let state = std::fs::read_to_string(dir.join("freezer.state"));
                    if !matches!(&state, Ok(s) if s.trim() == "FROZEN") {
                        failures.push(format!("round {round}: frozen, but {state:?}"));
                    }
                }
            }
            Err(err) => failures.push(format!("round {round}: {err}")),
        }
        let thawed = match &freezer {
            Some(dir) => {
                std::fs::write(dir.join("freezer.state"), "THAWED").map_err(|e| e.to_string())
            }
            None => group.0.thaw().map_err(|e| e.to_string()),
        };
        if let Err(error) = thawed {
            failures.push(format!("round {round}: thawing: {error}"));
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(failures.is_empty(), "freezes that failed: {failures:?}");
}
