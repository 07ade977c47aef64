//! The sandbox's file system view, built in two halves.
//!
//! **Host half** ([`prepare`], stage 1 as host root, in a private mount
//! namespace of its own, nothing visible on the host): a small tmpfs, the
//! *scaffold*, at the spec's `root_dir`, holding
//!
//! | scaffold path | what |
//! | --- | --- |
//! | `lower/<i>` | idmapped, read-only clone of lower directory `i` |
//! | `top` | idmapped clone of the top layer (`upper/`, `work/`, `run/`) |
//! | `dev/<name>` | read-only, nosuid clone of the host's `/dev/<name>` |
//! | `bind/<i>` | idmapped, nosuid, nodev clone of bind source `i` (read-only when asked) |
//! | `root` | the overlay root: the lower clones under the top's `upper/` |
//!
//! Idmapped mounts show files owned by id `n` on disk as owned by the
//! sandbox's `host_base + n`, and store what the sandbox writes the other
//! way round: layers stay in the image's own ids whatever range a sandbox
//! gets, and no layer is ever copied or chowned. The overlay is mounted
//! with the sandbox root's fsuid so its own work files map too.
//!
//! **Sandbox half** ([`build_root`], stage 2 as root of the user namespace,
//! in the mount namespace that namespace owns): `/proc` (kernel internals
//! masked, `/proc/sys` and friends read-only), read-only `/sys` (firmware,
//! power capping and the like masked), a `/dev` tmpfs with the device clones
//! bound in plus devpts and `/dev/shm`, a `/run` tmpfs with the top layer's
//! `run/` at [`GUEST_SOCKET_DIR`], the binds, then `pivot_root` and detach
//! the old root. Every mount point inside the root is resolved beneath it
//! without following a link (the image and the sandbox's own earlier runs
//! decide what is there), and mounted through the descriptor resolution
//! returned. Host mounts copied into this namespace are locked by the
//! kernel: the sandbox cannot unmount or remount them to look underneath.
//!
//! Nothing propagates to the host: every namespace involved was made
//! private first, and all of it goes away with the sandbox's last process.

use std::fs;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};

use caps::CapSet;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::unistd::{Gid, Uid, chdir, pivot_root, setfsgid, setfsuid};
use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::mount::{MoveMountFlags, OpenTreeFlags};

use crate::spec::{Bind, GUEST_SOCKET_DIR, LaunchSpec, RUN_DIR};
use crate::sys;

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
    #[error("Cloning {source_path} to {target} failed")]
    Clone {
        source_path: PathBuf,
        target: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Preparing {path} failed")]
    Prepare {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Mount point {path} inside the sandbox is not a plain path (a link or `..`)")]
    Unsafe {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Switching to the new root failed")]
    PivotRoot(#[source] nix::Error),
}

/// Character devices the sandbox sees, cloned read-only from the host's
/// `/dev` (read-only: `chmod` or `chown` of them fails, reads and writes
/// of the devices work).
pub const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];
/// Kernel-internal `/proc` entries remounted read-only.
const PROC_READ_ONLY: &[&str] = &["sys", "sysrq-trigger", "bus", "fs", "irq"];
/// `/proc` files hidden behind `/dev/null` (runc's masked paths and the
/// page-frame files, which tell which physical pages hold what).
pub const PROC_MASKED_FILES: &[&str] = &[
    "kcore",
    "keys",
    "latency_stats",
    "timer_list",
    "timer_stats",
    "sched_debug",
    "kallsyms",
    "kpageflags",
    "kpagecount",
    "kpagecgroup",
    "interrupts",
];
/// Directories hidden behind an empty read-only tmpfs.
const MASKED_DIRS: &[&str] = &[
    "proc/acpi",
    "proc/asound",
    "proc/scsi",
    "sys/firmware",
    "sys/devices/virtual/powercap",
    "sys/kernel/debug",
    "sys/kernel/tracing",
    "sys/fs/cgroup",
];

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

fn prepare_err(path: &Path) -> impl FnOnce(std::io::Error) -> MountError + '_ {
    move |source| MountError::Prepare {
        path: path.to_path_buf(),
        source,
    }
}

fn ensure_dir(path: &Path) -> Result<(), MountError> {
    fs::create_dir_all(path).map_err(prepare_err(path))
}

/// Make every mount of this (new) namespace private, so nothing propagates
/// back to the host. Runs right after each `unshare(CLONE_NEWNS)`.
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

/// The scaffold of one launch (see the module docs).
#[derive(Debug, Clone)]
pub struct Scaffold {
    dir: PathBuf,
}

impl Scaffold {
    /// The scaffold by its host path (for host root, who can reach it).
    pub fn of(spec: &LaunchSpec) -> Self {
        Self {
            dir: spec.root_dir.clone(),
        }
    }

    /// The scaffold as the working directory (stage 1 leaves stage 2 there:
    /// the sandbox's root cannot pass the host-only directories above it).
    pub fn here() -> Self {
        Self {
            dir: PathBuf::from("."),
        }
    }

    pub fn lower(&self, index: usize) -> PathBuf {
        self.dir.join("lower").join(index.to_string())
    }

    pub fn top(&self) -> PathBuf {
        self.dir.join("top")
    }

    /// The top layer's run directory, bound at [`GUEST_SOCKET_DIR`].
    pub fn run(&self) -> PathBuf {
        self.top().join(RUN_DIR)
    }

    pub fn device(&self, name: &str) -> PathBuf {
        self.dir.join("dev").join(name)
    }

    pub fn bind(&self, index: usize) -> PathBuf {
        self.dir.join("bind").join(index.to_string())
    }

    /// Where the overlay root is mounted.
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }
}

/// How a host tree is cloned into the scaffold.
#[derive(Debug, Clone, Copy)]
struct CloneAs<'a> {
    idmap: Option<&'a OwnedFd>,
    read_only: bool,
    nosuid: bool,
    nodev: bool,
    recursive: bool,
}

/// A detached clone of `source` with `how`'s attributes, attached at
/// `target`.
fn clone_tree(source: &Path, target: &Path, how: CloneAs<'_>) -> Result<(), MountError> {
    let err = |e: std::io::Error| MountError::Clone {
        source_path: source.to_path_buf(),
        target: target.to_path_buf(),
        source: e,
    };
    // A link as the last component is refused: sources are named by the
    // host, and a bind must be of what it names.
    let mut flags = OpenTreeFlags::OPEN_TREE_CLONE
        | OpenTreeFlags::OPEN_TREE_CLOEXEC
        | OpenTreeFlags::AT_SYMLINK_NOFOLLOW;
    if how.recursive {
        flags |= OpenTreeFlags::AT_RECURSIVE;
    }
    let tree =
        rustix::mount::open_tree(rustix::fs::CWD, source, flags).map_err(|e| err(e.into()))?;
    let attrs = sys::Attrs {
        idmap: how.idmap.map(|fd| fd.as_fd()),
        read_only: how.read_only,
        nosuid: how.nosuid,
        nodev: how.nodev,
    };
    sys::mount_setattr(tree.as_fd(), attrs).map_err(err)?;
    rustix::mount::move_mount(
        &tree,
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| err(e.into()))
}

/// An empty file or directory at `target` to mount `source` on.
fn mount_point_like(source: &Path, target: &Path) -> Result<(), MountError> {
    let is_dir = fs::metadata(source).map_err(prepare_err(source))?.is_dir();
    if is_dir {
        ensure_dir(target)
    } else {
        fs::write(target, b"").map_err(prepare_err(target))
    }
}

/// Runs `mount` with the sandbox root's fsuid and fsgid (and every
/// capability still effective), so files the kernel creates for it on an
/// idmapped mount map back to on-disk root. Restores host root after.
fn as_sandbox_root<T>(
    spec: &LaunchSpec,
    mount: impl FnOnce() -> Result<T, MountError>,
) -> Result<T, MountError> {
    let base = spec.ids.host_base;
    setfsgid(Gid::from_raw(base));
    setfsuid(Uid::from_raw(base));
    // Changing the fsuid away from 0 drops the file capabilities from the
    // effective set; the permitted set still has them.
    let raised = caps::read(None, CapSet::Permitted)
        .and_then(|permitted| caps::set(None, CapSet::Effective, &permitted));
    let result = match raised {
        Ok(()) => mount(),
        Err(e) => Err(MountError::Prepare {
            path: spec.root_dir.clone(),
            source: std::io::Error::other(e.to_string()),
        }),
    };
    setfsuid(Uid::from_raw(0));
    setfsgid(Gid::from_raw(0));
    result
}

/// Overlayfs option string. Paths are absolute; the kernel limits the whole
/// string to a page, which the scaffold's short paths keep well under.
pub fn overlay_options(scaffold: &Scaffold, lower_count: usize) -> String {
    let lower: Vec<String> = (0..lower_count)
        .map(|i| scaffold.lower(i).display().to_string())
        .collect();
    format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        scaffold.top().join("upper").display(),
        scaffold.top().join("work").display()
    )
}

/// The host half: the scaffold at `spec.root_dir` with the overlay root in
/// it, every id mapped through `userns`. Runs as host root in a private
/// mount namespace.
pub fn prepare(spec: &LaunchSpec, userns: &OwnedFd) -> Result<Scaffold, MountError> {
    let scaffold = Scaffold::of(spec);
    mnt(
        "scaffold tmpfs",
        Some(Path::new("tmpfs")),
        &spec.root_dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=755,size=64k"),
    )?;
    for dir in ["lower", "dev", "bind", "top", "root"] {
        ensure_dir(&spec.root_dir.join(dir))?;
    }
    let mapped = CloneAs {
        idmap: Some(userns),
        read_only: false,
        nosuid: false,
        nodev: true,
        recursive: false,
    };
    for (i, lower) in spec.lower_dirs.iter().enumerate() {
        let target = scaffold.lower(i);
        ensure_dir(&target)?;
        let read_only = CloneAs {
            read_only: true,
            ..mapped
        };
        clone_tree(lower, &target, read_only)?;
    }
    clone_tree(&spec.top_dir, &scaffold.top(), mapped)?;
    let options = overlay_options(&scaffold, spec.lower_dirs.len());
    as_sandbox_root(spec, || {
        mnt(
            "overlay root",
            Some(Path::new("overlay")),
            &scaffold.root(),
            Some("overlay"),
            MsFlags::MS_NODEV,
            Some(&options),
        )
    })?;
    for name in DEVICES {
        let source = Path::new("/dev").join(name);
        let target = scaffold.device(name);
        mount_point_like(&source, &target)?;
        let device = CloneAs {
            idmap: None,
            read_only: true,
            nosuid: true,
            nodev: false,
            recursive: false,
        };
        clone_tree(&source, &target, device)?;
    }
    for (i, bind) in spec.binds.iter().enumerate() {
        let target = scaffold.bind(i);
        mount_point_like(&bind.source, &target)?;
        let how = CloneAs {
            read_only: bind.read_only,
            nosuid: true,
            recursive: true,
            ..mapped
        };
        match clone_tree(&bind.source, &target, how) {
            // A file system without idmapping support: bound as it is, so
            // its files show as unmapped (nobody) inside.
            Err(MountError::Clone { source, .. })
                if source.raw_os_error() == Some(libc::EINVAL) =>
            {
                eprintln!(
                    "sandbox-init: {} cannot be idmapped; bound without mapping",
                    bind.source.display()
                );
                clone_tree(&bind.source, &target, CloneAs { idmap: None, ..how })?;
            }
            other => other?,
        }
    }
    Ok(scaffold)
}

/// Resolves mount points inside a root the sandbox controls: beneath it,
/// never through a link, creating what is missing.
struct Inside {
    root: OwnedFd,
    root_path: PathBuf,
}

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// A resolved mount point: hold it while mounting on [`Self::path`].
struct Point {
    fd: OwnedFd,
    shown: PathBuf,
}

impl Point {
    /// `/proc/self/fd/N`: mounting there mounts on exactly the inode the
    /// descriptor holds.
    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }
}

impl Inside {
    fn open(root: &Path) -> Result<Self, MountError> {
        let fd = rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| prepare_err(root)(e.into()))?;
        Ok(Self {
            root: fd,
            root_path: root.to_path_buf(),
        })
    }

    fn unsafe_path(&self, relative: &Path, source: std::io::Error) -> MountError {
        MountError::Unsafe {
            path: Path::new("/").join(relative),
            source,
        }
    }

    /// The directory (`dir`) or file at `relative` below the root, created
    /// (mode 0755 / 0644) with its parents where missing.
    fn point(&self, relative: &Path, dir: bool) -> Result<Point, MountError> {
        let parts: Vec<&std::ffi::OsStr> = relative
            .components()
            .map(|c| match c {
                Component::Normal(name) => Ok(name),
                _ => Err(self.unsafe_path(
                    relative,
                    std::io::Error::other("only plain names may appear in a mount point"),
                )),
            })
            .collect::<Result<_, _>>()?;
        let Some((last, parents)) = parts.split_last() else {
            return Err(self.unsafe_path(relative, std::io::Error::other("empty mount point")));
        };
        let mut current =
            rustix::io::dup(&self.root).map_err(|e| prepare_err(relative)(e.into()))?;
        for name in parents {
            current = self.step(&current, name, true, relative)?;
        }
        let fd = self.step(&current, last, dir, relative)?;
        Ok(Point {
            fd,
            shown: self.root_path.join(relative),
        })
    }

    /// `name` under `parent`, created if missing, as an `O_PATH` descriptor.
    fn step(
        &self,
        parent: &OwnedFd,
        name: &std::ffi::OsStr,
        dir: bool,
        whole: &Path,
    ) -> Result<OwnedFd, MountError> {
        let created = if dir {
            rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o755)).map(|_| ())
        } else {
            rustix::fs::openat2(
                parent,
                name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o644),
                RESOLVE,
            )
            .map(drop)
        };
        match created {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(self.unsafe_path(whole, e.into())),
        }
        let mut flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        if dir {
            flags |= OFlags::DIRECTORY;
        }
        rustix::fs::openat2(parent, name, flags, Mode::empty(), RESOLVE)
            .map_err(|e| self.unsafe_path(whole, e.into()))
    }

    /// Bind `source` (a scaffold path, the host's) at `target` inside.
    fn bind(&self, source: &Path, target: &Path, dir: bool) -> Result<(), MountError> {
        let point = self.point(target, dir)?;
        mnt(
            "bind",
            Some(source),
            &point.path(),
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )
    }
}

/// Adds `flags` to the bind mount at `target`.
fn remount_bind(target: &Path, flags: MsFlags) -> Result<(), MountError> {
    mnt(
        "remount",
        None,
        target,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags,
        None,
    )
}

fn mount_proc(inside: &Inside, scaffold: &Scaffold) -> Result<(), MountError> {
    let point = inside.point(Path::new("proc"), true)?;
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mnt(
        "proc",
        Some(Path::new("proc")),
        &point.path(),
        Some("proc"),
        hardened,
        None,
    )?;
    // From here on the paths are inside the new procfs, which only the
    // kernel writes.
    let proc_dir = inside.root_path.join("proc");
    for entry in PROC_READ_ONLY {
        let path = proc_dir.join(entry);
        if path.exists() {
            mnt(
                "bind",
                Some(&path),
                &path,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            )?;
            remount_bind(&path, MsFlags::MS_RDONLY | hardened)?;
        }
    }
    let null = scaffold.device("null");
    for entry in PROC_MASKED_FILES {
        let path = proc_dir.join(entry);
        if path.exists() {
            mnt("mask", Some(&null), &path, None, MsFlags::MS_BIND, None)?;
        }
    }
    Ok(())
}

fn mount_sys(inside: &Inside) -> Result<(), MountError> {
    let point = inside.point(Path::new("sys"), true)?;
    mnt(
        "sysfs",
        Some(Path::new("sysfs")),
        &point.path(),
        Some("sysfs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )
}

fn mount_dev(inside: &Inside, scaffold: &Scaffold) -> Result<(), MountError> {
    let point = inside.point(Path::new("dev"), true)?;
    mnt(
        "dev tmpfs",
        Some(Path::new("tmpfs")),
        &point.path(),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=755,size=64k"),
    )?;
    // A tmpfs this process just mounted: nothing else can write in it.
    let dev = inside.root_path.join("dev");
    for name in DEVICES {
        let target = dev.join(name);
        fs::write(&target, b"").map_err(prepare_err(&target))?;
        mnt(
            "device",
            Some(&scaffold.device(name)),
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
        symlink(target, &path).map_err(prepare_err(&path))?;
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

fn mount_run(inside: &Inside, scaffold: &Scaffold) -> Result<(), MountError> {
    let point = inside.point(Path::new("run"), true)?;
    mnt(
        "run tmpfs",
        Some(Path::new("tmpfs")),
        &point.path(),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=755,size=16m"),
    )?;
    let guest = inside
        .root_path
        .join(GUEST_SOCKET_DIR.trim_start_matches('/'));
    ensure_dir(&guest)?;
    fs::set_permissions(&guest, fs::Permissions::from_mode(0o755)).map_err(prepare_err(&guest))?;
    mnt(
        "run dir",
        Some(&scaffold.run()),
        &guest,
        None,
        MsFlags::MS_BIND,
        None,
    )?;
    remount_bind(
        &guest,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
    )
}

fn mount_binds(inside: &Inside, scaffold: &Scaffold, binds: &[Bind]) -> Result<(), MountError> {
    for (i, bind) in binds.iter().enumerate() {
        let source = scaffold.bind(i);
        let dir = source.is_dir();
        let target = bind.target.strip_prefix("/").unwrap_or(&bind.target);
        inside.bind(&source, target, dir)?;
    }
    Ok(())
}

/// Hides every existing [`MASKED_DIRS`] entry behind one empty read-only
/// tmpfs: mounted on the first, bound read-only onto the others. One file
/// system rather than one per mask, because a checkpoint archives (and a
/// restore unpacks) each tmpfs's content with a `tar` of its own, ~3.5 ms
/// apiece here; binds of one are saved as binds.
fn mask_dirs(root: &Path) -> Result<(), MountError> {
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mut first: Option<PathBuf> = None;
    // Below /proc and /sys only: kernel file systems the sandbox cannot
    // write, so these paths lead where they say.
    for dir in MASKED_DIRS {
        let path = root.join(dir);
        if !path.is_dir() {
            continue;
        }
        match &first {
            None => {
                mnt(
                    "mask tmpfs",
                    Some(Path::new("tmpfs")),
                    &path,
                    Some("tmpfs"),
                    flags,
                    Some("size=0"),
                )?;
                first = Some(path);
            }
            Some(mask) => {
                mnt("mask bind", Some(mask), &path, None, MsFlags::MS_BIND, None)?;
                mnt(
                    "mask bind",
                    None,
                    &path,
                    None,
                    MsFlags::MS_REMOUNT | MsFlags::MS_BIND | flags,
                    None,
                )?;
            }
        }
    }
    Ok(())
}

/// `/tmp` world-writable and sticky, if it is a plain directory (a sandbox
/// that replaced it with a link keeps its choice).
fn open_tmp(inside: &Inside) -> Result<(), MountError> {
    let point = match inside.point(Path::new("tmp"), true) {
        Ok(point) => point,
        Err(MountError::Unsafe { .. }) => {
            eprintln!("sandbox-init: /tmp is not a plain directory; left as it is");
            return Ok(());
        }
        Err(other) => return Err(other),
    };
    let dir = rustix::fs::openat(
        &point.fd,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| prepare_err(&point.shown)(e.into()))?;
    rustix::fs::fchmod(&dir, Mode::from_raw_mode(0o1777))
        .map_err(|e| prepare_err(&point.shown)(e.into()))
}

/// The sandbox half: every mount inside the overlay root the host half
/// prepared, then switch into it. Runs as root of the sandbox's user
/// namespace, in the mount namespace it owns.
/// Starts in the scaffold (see [`Scaffold::here`]).
pub fn build_root(spec: &LaunchSpec) -> Result<(), MountError> {
    let scaffold = Scaffold::here();
    let root = scaffold.root();
    // The overlay came from the host half's namespace, so it is locked
    // here and `pivot_root` refuses a locked mount: switch to a bind of it
    // made in this namespace.
    mnt(
        "root bind",
        Some(&root),
        &root,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    let inside = Inside::open(&root)?;
    mount_proc(&inside, &scaffold)?;
    mount_sys(&inside)?;
    mount_dev(&inside, &scaffold)?;
    mount_run(&inside, &scaffold)?;
    mount_binds(&inside, &scaffold, &spec.binds)?;
    mask_dirs(&root)?;
    open_tmp(&inside)?;

    chdir(&root).map_err(MountError::PivotRoot)?;
    pivot_root(".", ".").map_err(MountError::PivotRoot)?;
    umount2(".", MntFlags::MNT_DETACH).map_err(MountError::PivotRoot)?;
    chdir("/").map_err(MountError::PivotRoot)?;
    Ok(())
}

/// Mounts of a sandbox whose source lies outside it, as (path inside,
/// scaffold source): a checkpoint names them as external, and a restore
/// maps them to the same places in the new sandbox's scaffold.
pub fn external_mounts(spec: &LaunchSpec) -> Vec<(PathBuf, PathBuf)> {
    let scaffold = Scaffold::of(spec);
    let mut out = vec![(PathBuf::from(GUEST_SOCKET_DIR), scaffold.run())];
    for name in DEVICES {
        out.push((Path::new("/dev").join(name), scaffold.device(name)));
    }
    for entry in PROC_MASKED_FILES {
        let path = Path::new("/proc").join(entry);
        if path.exists() {
            out.push((path, scaffold.device("null")));
        }
    }
    for (i, bind) in spec.binds.iter().enumerate() {
        out.push((bind.target.clone(), scaffold.bind(i)));
    }
    out
}
