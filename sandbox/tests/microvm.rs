//! The sandbox suite on the microVM backend, and the control-socket client
//! against a real `forge-vmm` running a freestanding test guest.
//!
//! The suite boots the guest image's Linux: it needs `FORGE_GUEST_KERNEL`
//! (vmm/guest/kernel/build.sh), a built guest image (`FORGE_GUEST_IMAGE`,
//! an image directory, else the newest in `$FORGE_DATA_DIR/images`) and a
//! /dev/kvm that runs a standard kernel (VMX/SVM). Its cases are ignored in
//! the ordinary run; `scripts/nested-kvm.sh` runs them (in a nested test
//! host where /dev/kvm is PVM). Asked for without a kernel or an image,
//! they fail, saying what is missing. The other tests here use ring-3 test
//! guests and run on every /dev/kvm, PVM included.

mod common;
mod suite;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::Harness;
use sandbox::microvm::control::ControlSocket;
use sandbox::microvm::vm::{self, VmRecord};
use sandbox::microvm::{MicrovmConfig, MicrovmSandboxes, Readiness};
use sandbox::{Backend, Error, Image, Kept, PauseMode, Spec, State};
use vmm_proto::config::ApEntry;
use vmm_proto::control::{ChildStatus, ErrorCode, Request, StateReply, VmState};

fn forge_vmm() -> PathBuf {
    common::workspace_binary("vmm", "forge-vmm")
}

/// A freestanding test guest built by the vmm crate's build script.
fn test_guest(name: &str) -> PathBuf {
    forge_vmm();
    let build = common::test_binaries_dir().join("debug/build");
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&build)
        .expect("build dir")
        .flatten()
        .map(|e| e.path().join("out/testguest").join(format!("{name}.elf")))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, p)| p)
        .expect("the vmm build script built the test guests (needs gcc)")
}

/// The guest image: `FORGE_GUEST_IMAGE` (an image directory), else the
/// newest image built in `$FORGE_DATA_DIR/images` (default /var/lib/forge).
fn guest_image() -> Result<Image, String> {
    let image = match std::env::var_os("FORGE_GUEST_IMAGE") {
        Some(dir) => {
            let manifest = Path::new(&dir).join("image.json");
            let text = std::fs::read_to_string(&manifest)
                .map_err(|e| format!("{}: {e}", manifest.display()))?;
            serde_json::from_str::<guest_image::Image>(&text).map_err(|e| e.to_string())?
        }
        None => {
            let data_dir = std::env::var_os("FORGE_DATA_DIR")
                .map_or_else(|| PathBuf::from("/var/lib/forge"), PathBuf::from);
            guest_image::list(&data_dir)
                .map_err(|e| e.to_string())?
                .into_iter()
                .next()
                .ok_or_else(|| {
                    format!(
                        "no guest image in {}/images and FORGE_GUEST_IMAGE is not set",
                        data_dir.display()
                    )
                })?
        }
    };
    Ok(Image {
        root: image.rootfs,
        ext4: Some(image.ext4),
    })
}

async fn harness(test: &str) -> Option<Harness> {
    let kernel = std::env::var_os(sandbox::probe::GUEST_KERNEL_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!(
                "{test}: {} must name a guest kernel that boots here (vmm/guest/kernel/build.sh)",
                sandbox::probe::GUEST_KERNEL_ENV
            )
        });
    let image = guest_image().unwrap_or_else(|why| panic!("{test}: {why}"));
    let data_dir = common::data_dir("microvm", test);
    let mut config = MicrovmConfig::new(&data_dir, kernel);
    config.vmm_binary = forge_vmm();
    // The forge's own knob: slow (nested, emulated) hosts raise it.
    if let Some(secs) = std::env::var("FORGE_SANDBOX_BOOT_SECS")
        .ok()
        .and_then(|secs| secs.parse().ok())
    {
        config.boot_timeout = std::time::Duration::from_secs(secs);
    }
    let sandboxes = MicrovmSandboxes::open(config).expect("open");
    let mut spec = Spec::new(image);
    spec.mem_mib = 512;
    spec.env.push(("SPEC_VAR".into(), "from-spec".into()));
    let vms = data_dir.join("vms");
    let footprint_vms = vms.clone();
    Some(Harness {
        backend: Arc::new(sandboxes),
        data_dir,
        spec,
        keeps_processes: true,
        footprint: Box::new(move |id| vec![footprint_vms.join(id)]),
        cleanup: Some(Box::new(move || {
            for entry in std::fs::read_dir(&vms).into_iter().flatten().flatten() {
                if let Ok(VmRecord { pid: Some(pid), .. }) = VmRecord::load(&entry.path()) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        })),
    })
}

suite::all_cases!(
    harness,
    ignore = "boots Linux: scripts/nested-kvm.sh runs it"
);

/// Fails, saying why, where /dev/kvm cannot be used.
fn require_kvm() {
    if let Err(err) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!("these tests run real VMs and need a usable /dev/kvm: {err}");
    }
}

/// Waits until `path` holds `text`.
async fn wait_for(path: &Path, text: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let seen = std::fs::read_to_string(path).unwrap_or_default();
        if seen.contains(text) {
            return seen;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{text:?} never appeared: {seen}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_gone(pid: i32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while vm::alive(pid) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "forge-vmm {pid} did not end"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Pause, resume, fork, pause to disk and restore of a real VM through
/// the control-socket client and the command lines the backend builds,
/// with the counter test guest (ring 3 only: it runs on PVM hosts too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_socket_drives_a_real_vmm() {
    require_kvm();
    let dir = common::data_dir("microvm", "control");
    let config = serde_json::json!({
        "vcpus": 1,
        "mem_mib": 64,
        "kernel": test_guest("counter"),
        "serial_log": dir.join("serial.log"),
        "control_socket": dir.join("ctl.sock"),
        "ap_entry": "kernel_entry",
    });
    let config_path = dir.join("vm.json");
    std::fs::write(&config_path, config.to_string()).expect("config");
    let mut vmm = tokio::process::Command::new(forge_vmm())
        .args(vm::run_args(&config_path))
        .kill_on_drop(true)
        .spawn()
        .expect("spawn forge-vmm");
    let mut ctl = ControlSocket::connect_within(&dir.join("ctl.sock"), Duration::from_secs(10))
        .await
        .expect("control socket");
    wait_for(&dir.join("serial.log"), "COUNT 2\n").await;
    let status = ctl.status().await.expect("status");
    assert_eq!(status.state, VmState::Running);
    assert_eq!(Some(status.pid), vmm.id());

    assert_eq!(ctl.pause().await.expect("pause").state, VmState::Paused);
    assert_eq!(ctl.status().await.expect("status").state, VmState::Paused);
    assert_eq!(ctl.resume().await.expect("resume").state, VmState::Running);
    let refused = ctl
        .call::<StateReply>(&Request::Pause {
            to_disk: true,
            dir: None,
            durable: true,
        })
        .await;
    assert!(
        matches!(&refused, Err(sandbox::microvm::control::ControlError::Refused { code, .. }) if *code == ErrorCode::BadRequest),
        "{refused:?}"
    );

    let children = ctl.fork(2).await.expect("fork");
    assert_eq!(children.len(), 2);
    for child in &children {
        assert_eq!(child.status, ChildStatus::Started, "{child:?}");
        let mut child_ctl = ControlSocket::connect(&child.control_socket)
            .await
            .expect("child socket");
        let child_status = child_ctl.status().await.expect("child status");
        assert_eq!(i32::try_from(child_status.pid).ok(), Some(child.pid));
        wait_for(&child.serial_log, "COUNT").await;
        child_ctl.shutdown().await.expect("child shutdown");
        wait_gone(child.pid).await;
    }

    let snapshot = dir.join("snapshot-1");
    let reply = ctl.pause_to_disk(&snapshot).await.expect("pause to disk");
    assert_eq!(reply.state, Some(VmState::PausedToDisk));
    let exit = tokio::time::timeout(Duration::from_secs(10), vmm.wait())
        .await
        .expect("the VMM ends after a pause to disk")
        .expect("wait");
    assert!(exit.success(), "{exit:?}");

    let record = VmRecord {
        id: "restored".into(),
        state: State::PausedToDisk,
        pid: None,
        control_socket: dir.join("ctl2.sock"),
        vsock_uds: dir.join("vsock2.sock"),
        serial_log: dir.join("serial2.log"),
        env: Vec::new(),
        forked_from: None,
        lineage: Vec::new(),
        snapshot: Some(snapshot.clone()),
        jail_group: None,
        readable: Vec::new(),
        mem_mib: 0,
        vcpus: 0,
    };
    let mut restored = tokio::process::Command::new(forge_vmm())
        .args(vm::restore_args(&snapshot, &record))
        .kill_on_drop(true)
        .spawn()
        .expect("spawn restore");
    let mut ctl = ControlSocket::connect_within(&record.control_socket, Duration::from_secs(10))
        .await
        .expect("restored control socket");
    // The counter goes on from where it stopped, not from 1.
    let serial = wait_for(&record.serial_log, "COUNT").await;
    assert!(
        !serial.contains("COUNT 1\n"),
        "restored guest restarted: {serial}"
    );
    assert_eq!(ctl.status().await.expect("status").state, VmState::Running);
    ctl.shutdown().await.expect("shutdown");
    let exit = tokio::time::timeout(Duration::from_secs(10), restored.wait())
        .await
        .expect("ends")
        .expect("wait");
    assert!(exit.success(), "{exit:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The last `COUNT <n>` a counter guest printed.
fn last_count(serial: &Path) -> u64 {
    std::fs::read_to_string(serial)
        .unwrap_or_default()
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("COUNT ")?.trim().parse().ok())
        .unwrap_or(0)
}

/// Every sandbox directory under `dir` is gone.
fn assert_nothing_left(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir.join("vms"))
        .expect("vms")
        .flatten()
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// A backend in `dir` whose VMMs (`vmm_binary`) run the counter test
/// guest (no agent: readiness is the VMM's), the spec of a 64 MiB VM, and
/// a way to a VM's serial log.
fn counter_backend(
    dir: &Path,
    vmm_binary: PathBuf,
) -> (MicrovmSandboxes, Spec, impl Fn(&str) -> PathBuf + use<>) {
    let mut config = MicrovmConfig::new(dir, test_guest("counter"));
    config.vmm_binary = vmm_binary;
    config.readiness = Readiness::Vmm;
    config.ap_entry = ApEntry::KernelEntry;
    config.cmdline = String::new();
    assert!(config.jail.is_some(), "VMMs are jailed by default");
    let base = dir.join("base.img");
    std::fs::write(&base, vec![0u8; 1 << 20]).expect("base disk");
    let backend = MicrovmSandboxes::open(config).expect("open");
    let mut spec = Spec::new(Image {
        root: dir.to_owned(),
        ext4: Some(base),
    });
    spec.mem_mib = 64;
    let vms = dir.join("vms");
    let serial = move |id: &str| VmRecord::load(&vms.join(id)).expect("record").serial_log;
    (backend, spec, serial)
}

/// The whole lifecycle through `dyn Backend` with real VMMs running the
/// counter test guest (no agent: readiness is the VMM's): create, stats,
/// pause and resume in memory, fork, pause to disk and restore, destroy in
/// any order, nothing left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_of_real_vms_through_the_backend() {
    require_kvm();
    let dir = common::data_dir("microvm", "lifecycle");
    let (backend, spec, serial) = counter_backend(&dir, forge_vmm());
    let backend: Arc<dyn Backend> = Arc::new(backend);

    let mut with_workspace = spec.clone();
    with_workspace.workspace = Some(dir.clone());
    let refused = backend.create(with_workspace).await;
    assert!(
        matches!(refused, Err(Error::Unsupported { .. })),
        "{refused:?}"
    );
    let refused = backend.create(Spec::new(Image::root(&dir))).await;
    assert!(
        matches!(refused, Err(Error::Unsupported { .. })),
        "{refused:?}"
    );

    let parent = backend.create(spec).await.expect("create").id;
    wait_for(&serial(&parent), "COUNT 2\n").await;
    let stats = backend.stats(&parent).await.expect("stats");
    assert_eq!(stats.state, State::Running);
    assert!(
        stats.memory_bytes > 0 && stats.cpu_usage_ns > 0,
        "{stats:?}"
    );
    assert!(stats.disk_bytes.is_some(), "{stats:?}");
    assert!(
        backend
            .exec(&parent, sandbox::Command::new(["true"]))
            .await
            .is_err()
    );

    let paused = backend
        .pause(&parent, PauseMode::Memory)
        .await
        .expect("pause");
    assert_eq!(paused.state, State::Paused);
    // Running, the guest prints a count every few milliseconds: 400 ms
    // are many counts it would have printed.
    let at_pause = common::stays(
        Duration::from_millis(400),
        "the count of a paused VM",
        async || last_count(&serial(&parent)),
    )
    .await;
    let resumed = backend.resume(&parent).await.expect("resume");
    assert_eq!(resumed.kept, [Kept::Disk, Kept::Memory, Kept::Processes]);
    wait_for(&serial(&parent), &format!("COUNT {}\n", at_pause + 2)).await;

    let forks = backend.fork(&parent, 2).await.expect("fork");
    assert_eq!(forks.len(), 2);
    for fork in &forks {
        assert_eq!(fork.sandbox.state, State::Running, "{fork:?}");
        assert_eq!(fork.sandbox.forked_from.as_deref(), Some(parent.as_str()));
        assert_eq!(fork.kept, [Kept::Disk, Kept::Memory, Kept::Processes]);
        assert_eq!(fork.note, None);
        wait_for(&serial(&fork.sandbox.id), "COUNT").await;
    }
    assert_eq!(backend.list().await.expect("list").len(), 3);

    let before_disk = last_count(&serial(&parent));
    let paused = backend
        .pause(&parent, PauseMode::Disk)
        .await
        .expect("pause to disk");
    assert_eq!(paused.state, State::PausedToDisk);
    let stats = backend.stats(&parent).await.expect("stats");
    assert_eq!((stats.state, stats.memory_bytes), (State::PausedToDisk, 0));
    let resumed = backend.resume(&parent).await.expect("restore");
    assert_eq!(resumed.sandbox.state, State::Running);
    assert_eq!(resumed.kept, [Kept::Disk, Kept::Memory, Kept::Processes]);
    // The restored guest counts on from where it stopped.
    wait_for(&serial(&parent), &format!("COUNT {}\n", before_disk + 2)).await;

    let pids: Vec<i32> = std::iter::once(parent.clone())
        .chain(forks.iter().map(|f| f.sandbox.id.clone()))
        .filter_map(|id| VmRecord::load(&dir.join("vms").join(id)).ok()?.pid)
        .collect();
    assert_eq!(pids.len(), 3);
    backend
        .destroy(&parent)
        .await
        .expect("destroy the parent first");
    assert!(matches!(
        backend.get(&parent).await,
        Err(Error::NotFound(_))
    ));
    for fork in &forks {
        let child = backend.get(&fork.sandbox.id).await.expect("fork lives on");
        assert_eq!(child.state, State::Running);
    }
    for fork in &forks {
        backend
            .destroy(&fork.sandbox.id)
            .await
            .expect("destroy fork");
    }
    for pid in pids {
        wait_gone(pid).await;
    }
    assert_nothing_left(&dir);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A VMM that cannot start (here: its kernel is missing) fails `create`
/// with the VMM's own message, and leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vmm_that_cannot_start_fails_create_with_its_reason() {
    let dir = common::data_dir("microvm", "badkernel");
    let mut config = MicrovmConfig::new(&dir, dir.join("no-such-kernel"));
    config.vmm_binary = forge_vmm();
    config.readiness = Readiness::Vmm;
    let base = dir.join("base.img");
    std::fs::write(&base, vec![0u8; 1 << 20]).expect("base disk");
    let backend = MicrovmSandboxes::open(config).expect("open");
    let spec = Spec::new(Image {
        root: dir.clone(),
        ext4: Some(base),
    });
    let err = backend.create(spec).await.expect_err("no kernel, no VM");
    let text = err.to_string();
    assert!(
        text.contains("forge-vmm ended") && text.contains("no-such-kernel"),
        "{text}"
    );
    assert!(backend.list().await.expect("list").is_empty());
    assert_nothing_left(&dir);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A jailed VMM that makes a system call off its seccomp list dies of
/// SIGSYS; the backend reports that VM crashed (its log says why), ends
/// what was left of its jail, and goes on serving: another VM starts,
/// runs and is destroyed. The VMM here is run by a wrapper that plays a
/// VMM an attacker has taken over (`FORGE_VMM_TEST_ESCAPE`): its worker
/// thread, which a booted VM's first fork starts, calls `ptrace`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vmm_killed_by_its_seccomp_filter_is_reported_crashed() {
    require_kvm();
    let dir = common::data_dir("microvm", "sigsys");
    let wrapper = dir.join("forge-vmm-escaping");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nFORGE_VMM_TEST_ESCAPE=syscall:worker exec {} \"$@\"\n",
            forge_vmm().display()
        ),
    )
    .expect("wrapper");
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let (backend, spec, serial) = counter_backend(&dir, wrapper);

    let victim = backend.create(spec.clone()).await.expect("create").id;
    wait_for(&serial(&victim), "COUNT 2\n").await;
    let fork = backend.fork(&victim, 1).await;
    assert!(fork.is_err(), "the fork's VMM died answering: {fork:?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while backend.get(&victim).await.expect("get").state != State::Crashed {
        assert!(tokio::time::Instant::now() < deadline, "never seen crashed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The jail's init writes why once it has reaped the VMM, a moment
    // after the VMM is seen dead.
    let log_path = dir.join("vms").join(&victim).join("vmm.log");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let log = std::fs::read_to_string(&log_path).expect("vmm.log");
        if log.contains("killed by SIGSYS") && log.contains("seccomp allow-list") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{log}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The backend serves on: another VM runs, and both go cleanly.
    let other = backend.create(spec).await.expect("create after a crash").id;
    wait_for(&serial(&other), "COUNT 2\n").await;
    assert_eq!(
        backend.get(&other).await.expect("get").state,
        State::Running
    );
    backend
        .destroy(&victim)
        .await
        .expect("destroy the crashed VM");
    backend.destroy(&other).await.expect("destroy");
    assert!(backend.list().await.expect("list").is_empty());
    assert_nothing_left(&dir);
    let strays = std::process::Command::new("pgrep")
        .args(["-f", &format!("{}/vms/", dir.display())])
        .output()
        .expect("pgrep");
    assert!(
        strays.stdout.is_empty(),
        "processes of the jails left: {}",
        String::from_utf8_lossy(&strays.stdout)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
