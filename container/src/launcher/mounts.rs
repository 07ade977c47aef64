//! The sandbox's file system view, built in its own mount namespace by the
//! launcher's second stage (which is already PID 1 of the new PID namespace,
//! so the `/proc` it mounts shows only the sandbox's processes).
//!
//! Ordered steps: overlay root (lower dirs read-only, top layer writable) →
//! `/proc` (with `/proc/sys` and friends read-only and kernel-internal files
//! masked) → read-only `/sys` → a small `/dev` tmpfs with bind-mounted
//! character devices, devpts and `/dev/shm` → `/run` tmpfs with the agent's
//! socket directory bind-mounted at [`GUEST_SOCKET_DIR`] → extra bind mounts
//! from the spec (e.g. the host's agent binary) → `pivot_root` and
//! detach the old root. Nothing here propagates to the host: the first
//! stage made every mount private before this runs, and all of it goes away
//! with the namespace when the sandbox's last process exits.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::unistd::{chdir, pivot_root};

use crate::spec::{Bind, GUEST_SOCKET_DIR, LaunchSpec};

/// A failed step of building the root.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("Mounting {what} at {target} failed")]
    Mount {
        what: &'static str,
        target: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("Preparing {path} failed")]
    Prepare {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Switching to the new root failed")]
    PivotRoot(#[source] nix::Error),
}

/// Character devices bind-mounted from the host's `/dev`.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];
/// Kernel-internal `/proc` entries remounted read-only.
const PROC_READ_ONLY: &[&str] = &["sys", "sysrq-trigger", "bus", "fs", "irq"];
/// `/proc` files hidden behind `/dev/null`.
const PROC_MASKED_FILES: &[&str] = &[
    "kcore",
    "keys",
    "latency_stats",
    "timer_list",
    "sched_debug",
    "kallsyms",
];
/// Directories hidden behind an empty read-only tmpfs.
const MASKED_DIRS: &[&str] = &["proc/acpi", "proc/scsi", "sys/firmware"];

fn mnt(
    what: &'static str,
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), MountError> {
    mount(source, target, fstype, flags, data).map_err(|source| MountError::Mount {
        what,
        target: target.to_path_buf(),
        source,
    })
}

fn prepare(result: std::io::Result<()>, path: &Path) -> Result<(), MountError> {
    result.map_err(|source| MountError::Prepare {
        path: path.to_path_buf(),
        source,
    })
}

fn ensure_dir(path: &Path) -> Result<(), MountError> {
    prepare(fs::create_dir_all(path), path)
}

fn ensure_file(path: &Path) -> Result<(), MountError> {
    if path.exists() {
        return Ok(());
    }
    prepare(fs::write(path, b""), path)
}

/// Bind `source` onto `target` and remount it read-only with `extra` flags.
fn bind_read_only(source: &Path, target: &Path, extra: MsFlags) -> Result<(), MountError> {
    mnt(
        "bind",
        Some(source),
        target,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    mnt(
        "read-only remount",
        None,
        target,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | extra,
        None,
    )
}

/// Make every mount of this (new) namespace private, so nothing propagates
/// back to the host. Runs in the first stage right after `unshare`.
pub fn make_private() -> Result<(), MountError> {
    mnt(
        "private propagation",
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )
}

/// Overlayfs option string. Paths are absolute; the kernel limits the whole
/// string to a page, which the layer store's short paths keep well under.
pub fn overlay_options(spec: &LaunchSpec) -> String {
    let lower: Vec<String> = spec
        .lower_dirs
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        spec.upper_dir.display(),
        spec.work_dir.display()
    )
}

fn mount_proc(root: &Path) -> Result<(), MountError> {
    let proc_dir = root.join("proc");
    ensure_dir(&proc_dir)?;
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mnt(
        "proc",
        Some(Path::new("proc")),
        &proc_dir,
        Some("proc"),
        hardened,
        None,
    )?;
    for entry in PROC_READ_ONLY {
        let path = proc_dir.join(entry);
        if path.exists() {
            bind_read_only(&path, &path, hardened)?;
        }
    }
    for entry in PROC_MASKED_FILES {
        let path = proc_dir.join(entry);
        if path.exists() {
            mnt(
                "mask",
                Some(Path::new("/dev/null")),
                &path,
                None,
                MsFlags::MS_BIND,
                None,
            )?;
        }
    }
    Ok(())
}

fn mount_dev(root: &Path) -> Result<(), MountError> {
    let dev = root.join("dev");
    ensure_dir(&dev)?;
    mnt(
        "dev tmpfs",
        Some(Path::new("tmpfs")),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=755,size=64k"),
    )?;
    for name in DEVICES {
        let target = dev.join(name);
        ensure_file(&target)?;
        let source = Path::new("/dev").join(name);
        mnt(
            "device",
            Some(&source),
            &target,
            None,
            MsFlags::MS_BIND,
            None,
        )?;
    }
    let links = [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ];
    for (name, target) in links {
        let path = dev.join(name);
        prepare(symlink(target, &path), &path)?;
    }
    let pts = dev.join("pts");
    ensure_dir(&pts)?;
    mnt(
        "devpts",
        Some(Path::new("devpts")),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    let shm = dev.join("shm");
    ensure_dir(&shm)?;
    mnt(
        "shm tmpfs",
        Some(Path::new("shm")),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777,size=65536k"),
    )
}

fn mount_run(root: &Path, socket_dir: &Path) -> Result<(), MountError> {
    let run = root.join("run");
    ensure_dir(&run)?;
    mnt(
        "run tmpfs",
        Some(Path::new("tmpfs")),
        &run,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=755,size=16m"),
    )?;
    let guest = root.join(GUEST_SOCKET_DIR.trim_start_matches('/'));
    ensure_dir(&guest)?;
    prepare(
        fs::set_permissions(&guest, fs::Permissions::from_mode(0o755)),
        &guest,
    )?;
    mnt(
        "socket dir",
        Some(socket_dir),
        &guest,
        None,
        MsFlags::MS_BIND | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None,
    )
}

fn mask_dirs(root: &Path) -> Result<(), MountError> {
    for dir in MASKED_DIRS {
        let path = root.join(dir);
        if path.is_dir() {
            mnt(
                "mask tmpfs",
                Some(Path::new("tmpfs")),
                &path,
                Some("tmpfs"),
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some("size=0"),
            )?;
        }
    }
    Ok(())
}

fn mount_binds(root: &Path, binds: &[Bind]) -> Result<(), MountError> {
    for bind in binds {
        let target = root.join(bind.target.strip_prefix("/").unwrap_or(&bind.target));
        if bind.source.is_dir() {
            ensure_dir(&target)?;
        } else {
            if let Some(parent) = target.parent() {
                ensure_dir(parent)?;
            }
            ensure_file(&target)?;
        }
        if bind.read_only {
            bind_read_only(
                &bind.source,
                &target,
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            )?;
        } else {
            mnt(
                "bind",
                Some(&bind.source),
                &target,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            )?;
        }
    }
    Ok(())
}

/// Mount only the overlay root at `spec.root_dir` (a checkpoint restore
/// recreates every other mount itself).
pub fn mount_overlay(spec: &LaunchSpec) -> Result<(), MountError> {
    mnt(
        "overlay root",
        Some(Path::new("overlay")),
        &spec.root_dir,
        Some("overlay"),
        MsFlags::MS_NODEV,
        Some(&overlay_options(spec)),
    )
}

/// Mounts of a sandbox whose source lies outside it, as (path inside, host
/// source): a checkpoint must name them as external and map them again on
/// restore.
pub fn external_mounts(spec: &LaunchSpec) -> Vec<(PathBuf, PathBuf)> {
    let mut out = vec![(PathBuf::from(GUEST_SOCKET_DIR), spec.socket_dir.clone())];
    for name in DEVICES {
        out.push((Path::new("/dev").join(name), Path::new("/dev").join(name)));
    }
    for entry in PROC_MASKED_FILES {
        let path = Path::new("/proc").join(entry);
        if path.exists() {
            out.push((path, PathBuf::from("/dev/null")));
        }
    }
    for bind in &spec.binds {
        out.push((bind.target.clone(), bind.source.clone()));
    }
    out
}

/// Build the sandbox's root at `spec.root_dir` and switch into it.
pub fn build_root(spec: &LaunchSpec) -> Result<(), MountError> {
    let root = spec.root_dir.as_path();
    mount_overlay(spec)?;
    mount_proc(root)?;
    let sys = root.join("sys");
    ensure_dir(&sys)?;
    mnt(
        "sysfs",
        Some(Path::new("sysfs")),
        &sys,
        Some("sysfs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )?;
    mount_dev(root)?;
    mount_run(root, &spec.socket_dir)?;
    mount_binds(root, &spec.binds)?;
    mask_dirs(root)?;
    ensure_dir(&root.join("tmp"))?;
    prepare(
        fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)),
        &root.join("tmp"),
    )?;

    chdir(root).map_err(MountError::PivotRoot)?;
    pivot_root(".", ".").map_err(MountError::PivotRoot)?;
    umount2(".", MntFlags::MNT_DETACH).map_err(MountError::PivotRoot)?;
    chdir("/").map_err(MountError::PivotRoot)?;
    Ok(())
}
