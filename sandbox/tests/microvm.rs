//! The sandbox suite on the microVM backend, and the control-socket client
//! against a real `forge-vmm` running a freestanding test guest.
//!
//! The suite needs a Linux guest that boots: `FORGE_GUEST_KERNEL` naming a
//! kernel that boots on this host (hardware KVM, or a PVM-capable kernel on
//! a PVM host) and `FORGE_GUEST_IMAGE` naming a built guest image directory
//! (its `image.json` gives the ext4 disk). Elsewhere every case prints that
//! it was skipped and why.

mod common;
mod suite;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::Harness;
use sandbox::microvm::control::ControlSocket;
use sandbox::microvm::vm::{self, VmRecord};
use sandbox::microvm::{MicrovmConfig, MicrovmSandboxes};
use sandbox::{Image, Spec, State};

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

fn guest_image() -> Result<Image, String> {
    let dir = std::env::var_os("FORGE_GUEST_IMAGE")
        .ok_or("FORGE_GUEST_IMAGE does not name a built guest image")?;
    let manifest = Path::new(&dir).join("image.json");
    let text =
        std::fs::read_to_string(&manifest).map_err(|e| format!("{}: {e}", manifest.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let path = |key: &str| json[key].as_str().map(PathBuf::from);
    Ok(Image {
        root: path("rootfs").ok_or("image.json has no rootfs")?,
        ext4: Some(path("ext4").ok_or("image.json has no ext4")?),
    })
}

async fn harness(test: &str) -> Option<Harness> {
    let kernel = std::env::var_os(sandbox::probe::GUEST_KERNEL_ENV);
    let image = guest_image();
    let (kernel, image) = match (kernel, image) {
        (Some(kernel), Ok(image)) => (PathBuf::from(kernel), image),
        (None, _) => {
            let facts = sandbox::HostFacts::gather(None);
            let why = if facts.pvm && !facts.hardware_virt {
                "kvm is PVM: a standard guest kernel cannot boot, and FORGE_GUEST_KERNEL does not name a PVM-capable one"
            } else {
                "FORGE_GUEST_KERNEL does not name a guest kernel (vmm/guest/kernel/build.sh)"
            };
            println!("SKIPPED microvm {test}: {why}");
            return None;
        }
        (Some(_), Err(why)) => {
            println!("SKIPPED microvm {test}: {why}");
            return None;
        }
    };
    let data_dir = common::data_dir("microvm", test);
    let mut config = MicrovmConfig::new(&data_dir, kernel);
    config.vmm_binary = forge_vmm();
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

suite::all_cases!(harness);

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
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        println!("SKIPPED control_socket_drives_a_real_vmm: no usable /dev/kvm");
        return;
    }
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
    assert_eq!(status["state"], "running");
    assert_eq!(status["pid"], vmm.id().expect("pid"));

    assert_eq!(ctl.pause().await.expect("pause")["state"], "paused");
    assert_eq!(ctl.status().await.expect("status")["state"], "paused");
    assert_eq!(ctl.resume().await.expect("resume")["state"], "running");
    let refused = ctl
        .call(&vmm::control::Request::Pause {
            to_disk: true,
            dir: None,
            durable: true,
        })
        .await;
    assert!(
        matches!(&refused, Err(sandbox::microvm::control::ControlError::Refused { code, .. }) if code == "bad_request"),
        "{refused:?}"
    );

    let children = ctl.fork(2).await.expect("fork");
    assert_eq!(children.len(), 2);
    for child in &children {
        assert_eq!(child.status, "ok", "{child:?}");
        let mut child_ctl = ControlSocket::connect(&child.control_socket)
            .await
            .expect("child socket");
        assert_eq!(
            child_ctl.status().await.expect("child status")["pid"],
            child.pid
        );
        wait_for(&child.serial_log, "COUNT").await;
        child_ctl.shutdown().await.expect("child shutdown");
        wait_gone(child.pid).await;
    }

    let snapshot = dir.join("snapshot-1");
    let reply = ctl.pause_to_disk(&snapshot).await.expect("pause to disk");
    assert_eq!(reply["state"], "paused_to_disk");
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
    assert_eq!(ctl.status().await.expect("status")["state"], "running");
    ctl.shutdown().await.expect("shutdown");
    let exit = tokio::time::timeout(Duration::from_secs(10), restored.wait())
        .await
        .expect("ends")
        .expect("wait");
    assert!(exit.success(), "{exit:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
