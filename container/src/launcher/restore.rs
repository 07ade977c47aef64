//! `sandbox-init restore <spec.json> <images dir> <criu>`: start a sandbox
//! from a CRIU checkpoint instead of a fresh PID 1.
//!
//! Ordered steps: join the new sandbox's cgroups (CRIU is told to leave
//! cgroups alone, so restored tasks stay in ours) → become a child
//! subreaper (the restored PID 1 is re-parented to us when `criu restore
//! --restore-detached` exits) → private mount namespace with the new
//! sandbox's overlay root mounted at `root_dir` (`--root`; CRIU recreates
//! every other mount, mapping the external ones to this sandbox's sources)
//! → run CRIU → set the new hostname in the restored UTS namespace → report
//! `ready <pid1>` and supervise PID 1 like stage 1 does.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::prctl::set_child_subreaper;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{Pid, dup2_stdout, sethostname};

use super::{LaunchError, join_cgroups, mounts, ns_err, read_spec};

/// CRIU's key for the external mount at `guest_path`.
pub fn external_key(guest_path: &Path) -> String {
    format!("m{}", guest_path.to_string_lossy().replace('/', "_"))
}

pub(super) fn restore(args: &[String]) -> Result<i32, LaunchError> {
    let [spec_path, images, criu] = args else {
        return Err(LaunchError::Usage);
    };
    let spec = read_spec(Path::new(spec_path))?;
    let images = PathBuf::from(images);
    join_cgroups(&spec)?;
    set_child_subreaper(true).map_err(ns_err("set_child_subreaper"))?;
    unshare(CloneFlags::CLONE_NEWNS).map_err(ns_err("unshare"))?;
    mounts::make_private()?;
    mounts::mount_overlay(&spec)?;

    let pidfile = images.join("restored.pid");
    let _ = fs::remove_file(&pidfile);
    let mut command = Command::new(criu);
    command
        .arg("restore")
        .arg("-D")
        .arg(&images)
        .arg("--root")
        .arg(&spec.root_dir)
        .args(["--restore-detached", "--manage-cgroups=ignore", "-v2"])
        .arg("--pidfile")
        .arg(&pidfile)
        .arg("-o")
        .arg(images.join("restore.log"));
    for (guest, host) in mounts::external_mounts(&spec) {
        command
            .arg("--external")
            .arg(format!("mnt[{}]:{}", external_key(&guest), host.display()));
    }
    let status = command.status().map_err(|source| LaunchError::Spawn {
        what: "criu restore".into(),
        source,
    })?;
    if !status.success() {
        return Err(LaunchError::Stage2(format!(
            "criu restore failed; see {}",
            images.join("restore.log").display()
        )));
    }
    let pid1: i32 = fs::read_to_string(&pidfile)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| LaunchError::Stage2("criu wrote no pid file".into()))?;

    let uts = PathBuf::from(format!("/proc/{pid1}/ns/uts"));
    let uts_file = OpenOptions::new()
        .read(true)
        .open(&uts)
        .map_err(|source| LaunchError::NamespaceFile { path: uts, source })?;
    setns(&uts_file, CloneFlags::CLONE_NEWUTS).map_err(ns_err("setns uts"))?;
    sethostname(&spec.hostname).map_err(ns_err("sethostname"))?;

    let mut stdout = std::io::stdout();
    writeln!(stdout, "ready {pid1}").map_err(LaunchError::Stdio)?;
    stdout.flush().map_err(LaunchError::Stdio)?;
    let devnull = File::open("/dev/null").map_err(LaunchError::Stdio)?;
    dup2_stdout(&devnull).map_err(|e| LaunchError::Stdio(e.into()))?;

    loop {
        match waitpid(Pid::from_raw(pid1), None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, signal, _)) => return Ok(128 + signal as i32),
            Ok(_) => {}
            Err(nix::Error::EINTR) => {}
            Err(_) => return Ok(1),
        }
    }
}
