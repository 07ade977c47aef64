//! The jail every `forge-vmm` of the sandbox backend runs in
//! (`forge-vmm run|restore --jail jail.json`): a bug in device emulation a
//! hostile guest reaches must not be host root.
//!
//! [`enter`] is called by the VMM's main thread, as root and before
//! anything of the VM is built (so before any guest instruction), and
//! returns in a confined process. In order:
//!
//! 1. What needs privilege is taken first and kept as descriptors: the
//!    `/dev/kvm` handle ([`crate::vstate::vm::preopen_kvm`]) and, for a
//!    booting VM, guest RAM's file on its private huge-page tmpfs (the
//!    caller, [`crate::vstate::memory::prepare`]).
//! 2. The process joins the cgroups the caller made (memory, CPU and pids
//!    limits sized from the VM; see the sandbox backend).
//! 3. New mount, PID, network, IPC and UTS namespaces. The network
//!    namespace has nothing but a down loopback: the VM's vsock is a Unix
//!    socket in the file system.
//! 4. A root of its own: a 1 MiB tmpfs on `root` holding, at their own
//!    paths, the caller's writable directories bound read-write, the
//!    files and directories it names readable (kernel, initrd, disk bases,
//!    the directories of sealed layers) bound read-only, `/dev/kvm` and
//!    nothing else from `/dev`, and an empty `/proc`. The caller names
//!    them all: a snapshot's state file is the VMM's writing, and what it
//!    names is never bound. Each
//!    bind's source is opened with `openat2(RESOLVE_NO_SYMLINKS)` and
//!    mounted through its descriptor, so a link planted in a directory a
//!    VMM could write is never followed. `pivot_root` into it, the old
//!    root detached, the tmpfs made read-only.
//! 5. fork: the child is PID 1 of the new PID namespace, the jail's init.
//!    It mounts a `/proc` showing only its own namespace's processes
//!    (`subset=pid`), then enters a new user namespace in which the
//!    caller's uid and gid map to themselves and nothing else; the parent,
//!    still root outside, writes the maps. The init takes that gid, no
//!    supplementary groups and that uid, empties its capability bounding
//!    and ambient sets (the uid change clears the rest), sets
//!    `no_new_privs` and no core dumps, and forks again: that grandchild
//!    is the VMM, and `enter` returns in it after installing the main
//!    thread's seccomp filter ([`crate::seccomp`]); vCPU and worker
//!    threads add their own at their start.
//! 6. The init reaps: the VMM, and fork children whose VMM ended (a live
//!    fork(2)'s children stay in this jail, see below). When the VMM dies
//!    of a signal it says so on stderr, SIGSYS named as a system call off
//!    the allow-list. It exits once no process is left in the namespace,
//!    with the VMM's status. The first process waits for it and exits the
//!    same way, so the caller's child lives as long as the jail does.
//!    Both run under a filter that allows waiting and exiting only.
//!
//! Fork children (`fork` on the control socket) are fork(2)s of the VMM:
//! they stay in its jail (namespaces, uid, root, cgroup, seccomp filter),
//! which is why the VMM is not PID 1 (a PID namespace dies with its first
//! process, and a paused-to-disk or destroyed parent must not take its
//! forks with it). The caller grows the jail's cgroup limits for them.
//! A paused-to-disk VM resumes in a jail of its own.
//!
//! Everything the jail leaves writable is owned by the jail's uid and is
//! hostile to the host: the caller reads it without following links.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

pub use vmm_proto::config::JailConfig;

use crate::config::VmConfig;

/// Failure to set the jail up (reported before any guest code runs).
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// The jail config cannot be used.
    #[error("Bad jail config: {0}")]
    Invalid(String),
    /// A step failed.
    #[error("Cannot set up the jail: {step}")]
    Step {
        /// What was being done.
        step: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

fn step(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> JailError {
    let step = what.into();
    move |source| JailError::Step { step, source }
}

fn check(r: libc::c_int, what: impl Into<String>) -> Result<libc::c_int, JailError> {
    if r < 0 {
        return Err(step(what)(std::io::Error::last_os_error()));
    }
    Ok(r)
}

fn cstr(p: &Path) -> Result<CString, JailError> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| JailError::Invalid(format!("{} holds a NUL byte", p.display())))
}

/// Absolute and normal: no `.` or `..`, so a path means one place.
fn normal_absolute(p: &Path) -> bool {
    p.is_absolute()
        && p.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

/// Whether `path` lies in one of `dirs`.
fn inside(path: &Path, dirs: &[PathBuf]) -> bool {
    dirs.iter().any(|d| path.starts_with(d))
}

/// Checks `jail`, and when booting, that it holds the VM of `config`.
fn validate(jail: &JailConfig, config: Option<&VmConfig>) -> Result<(), JailError> {
    let bad = |s: String| Err(JailError::Invalid(s));
    if jail.uid == 0 || jail.gid == 0 {
        return bad("the jail's uid and gid must not be 0".into());
    }
    let all = std::iter::once(&jail.root)
        .chain(&jail.writable)
        .chain(&jail.readable);
    for p in all {
        if !normal_absolute(p) || p == Path::new("/") {
            return bad(format!(
                "{} must be an absolute path without . or .. and not /",
                p.display()
            ));
        }
    }
    if inside(&jail.root, &jail.writable) || inside(&jail.root, &jail.readable) {
        return bad("the jail's root must not be inside a directory bound into it".into());
    }
    let Some(config) = config else {
        return Ok(());
    };
    let owned = [
        Some(&config.control_socket),
        Some(&config.serial_log),
        config.vsock.as_ref().map(|v| &v.uds_path),
    ];
    for p in owned.into_iter().flatten() {
        if !normal_absolute(p) || !inside(p, &jail.writable) {
            return bad(format!(
                "{} must be an absolute path inside a writable directory of the jail",
                p.display()
            ));
        }
    }
    for disk in config.disks.iter().filter(|d| !d.read_only) {
        if let Some(top) = disk.layers.last().filter(|t| !inside(t, &jail.writable)) {
            return bad(format!(
                "the writable disk layer {} must be inside a writable directory of the jail",
                top.display()
            ));
        }
    }
    let mut read = vec![&config.kernel];
    read.extend(&config.initrd);
    for disk in &config.disks {
        read.push(&disk.base);
        read.extend(&disk.layers);
    }
    for p in read {
        if !normal_absolute(p) || !(inside(p, &jail.writable) || inside(p, &jail.readable)) {
            return bad(format!(
                "{} must be an absolute path inside a directory or file bound into the jail",
                p.display()
            ));
        }
    }
    Ok(())
}

/// `open(path, O_PATH)` following no symbolic link anywhere in it.
fn open_no_symlinks(path: &Path) -> Result<OwnedFd, JailError> {
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
    const RESOLVE_NO_SYMLINKS: u64 = 0x04;
    let c = cstr(path)?;
    let how = OpenHow {
        flags: (libc::O_PATH | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: openat2 with a NUL-terminated path and an open_how of the
    // size passed; the result is checked.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            c.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(step(format!(
            "open {} without following links",
            path.display()
        ))(std::io::Error::last_os_error()));
    }
    // SAFETY: a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// A directory handle (`O_PATH`).
fn open_dir(path: &Path) -> Result<OwnedFd, JailError> {
    let c = cstr(path)?;
    // SAFETY: open with a NUL-terminated path; checked.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    check(fd, format!("open {}", path.display()))?;
    // SAFETY: a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), JailError> {
    let what = format!(
        "mount {} on {}",
        source.map_or("-".into(), |s| s.display().to_string()),
        target.display()
    );
    let source = source.map(cstr).transpose()?;
    let target_c = cstr(target)?;
    let fstype = fstype.map(|f| CString::new(f).expect("no NUL"));
    let data = data.map(|d| CString::new(d).expect("no NUL"));
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is NUL-terminated or null, as mount(2) takes.
    let r = unsafe {
        libc::mount(
            ptr(&source),
            target_c.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    };
    check(r, what).map(|_| ())
}

/// Where `host` appears under the new root.
fn under(root: &Path, host: &Path) -> PathBuf {
    root.join(host.strip_prefix("/").unwrap_or(host))
}

/// Binds `source` (opened without following links) at its own path under
/// `root`, read-only unless `writable`, never setuid, devices only for
/// `/dev/kvm`.
fn bind(root: &Path, source: &Path, writable: bool, device: bool) -> Result<(), JailError> {
    let fd = open_no_symlinks(source)?;
    // SAFETY: a stat is plain integers, valid zeroed.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on a descriptor we own into that stat.
    let r = unsafe { libc::fstat(fd.as_raw_fd(), &mut st) };
    check(r, format!("stat {}", source.display()))?;
    let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
    let target = under(root, source);
    if is_dir {
        std::fs::create_dir_all(&target).map_err(step(format!("mkdir {}", target.display())))?;
    } else {
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(step(format!("mkdir {}", parent.display())))?;
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&target)
            .map_err(step(format!("create {}", target.display())))?;
    }
    let by_fd = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    mount(Some(&by_fd), &target, None, libc::MS_BIND, None)?;
    let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NOEXEC;
    if !writable {
        flags |= libc::MS_RDONLY;
    }
    if !device {
        flags |= libc::MS_NODEV;
    }
    mount(None, &target, None, flags, None)
}

/// Steps 3 and 4: namespaces but the user's, and the new root.
fn build_root(jail: &JailConfig) -> Result<(), JailError> {
    let flags = libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS;
    // SAFETY: unshare with constant flags; checked.
    let r = unsafe { libc::unshare(flags) };
    check(r, "unshare mount, pid, net, ipc, uts")?;
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )?;
    let root = &jail.root;
    mount(
        Some(Path::new("tmpfs")),
        root,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some("size=1m,mode=0755"),
    )?;
    for dir in &jail.writable {
        bind(root, dir, true, false)?;
    }
    for path in &jail.readable {
        bind(root, path, false, false)?;
    }
    bind(root, Path::new("/dev/kvm"), true, true)?;
    let proc_dir = root.join("proc");
    std::fs::create_dir_all(&proc_dir).map_err(step("mkdir /proc"))?;
    let c_root = cstr(root)?;
    // SAFETY: chdir and pivot_root with NUL-terminated paths; checked.
    check(unsafe { libc::chdir(c_root.as_ptr()) }, "chdir to the jail")?;
    // SAFETY: as above.
    let r = unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) };
    check(r as libc::c_int, "pivot_root")?;
    // SAFETY: as above.
    let r = unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) };
    check(r, "detach the old root")?;
    // SAFETY: as above.
    check(unsafe { libc::chdir(c"/".as_ptr()) }, "chdir /")?;
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some("size=1m,mode=0755"),
    )?;
    let hostname = b"forge-vmm";
    // SAFETY: sethostname with a buffer and its length, in our own UTS
    // namespace.
    let r = unsafe { libc::sethostname(hostname.as_ptr().cast(), hostname.len()) };
    check(r, "sethostname")?;
    Ok(())
}

fn pipe() -> Result<(std::fs::File, std::fs::File), JailError> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-int array; checked.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    check(r, "pipe")?;
    // SAFETY: both ends are new descriptors nothing else owns.
    Ok(unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    })
}

/// Exits as `status` (from waitpid) says: the same code, or 128 + the
/// signal.
fn exit_as(status: libc::c_int) -> ! {
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    // SAFETY: _exit ends the process without running anything else.
    unsafe { libc::_exit(code) }
}

/// What one signal's death means, for the log.
fn signal_note(sig: libc::c_int) -> String {
    match sig {
        libc::SIGSYS => "SIGSYS: it made a system call off its seccomp allow-list".into(),
        libc::SIGKILL => "SIGKILL (killed, or out of memory in its cgroup)".into(),
        other => format!("signal {other}"),
    }
}

/// The first process, root outside: writes the init's id maps once it has
/// its user namespace, then waits for it and exits as it did.
fn keeper(
    init: libc::pid_t,
    jail: &JailConfig,
    host_proc: OwnedFd,
    from_init: std::fs::File,
    to_init: std::fs::File,
) -> ! {
    let mut from_init = from_init;
    let mut byte = [0u8; 1];
    let write_map = |file: &str, map: String| {
        let Ok(path) = CString::new(format!("{init}/{file}")) else {
            return false;
        };
        // SAFETY: openat on the host's /proc, opened before the pivot, with
        // a NUL-terminated relative path; checked.
        let fd = unsafe {
            libc::openat(
                host_proc.as_raw_fd(),
                path.as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return false;
        }
        // SAFETY: a new descriptor nothing else owns.
        let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
        f.write_all(map.as_bytes()).is_ok()
    };
    let mapped = from_init.read_exact(&mut byte).is_ok()
        && write_map("gid_map", format!("{0} {0} 1\n", jail.gid))
        && write_map("uid_map", format!("{0} {0} 1\n", jail.uid));
    drop(host_proc);
    let mut to_init = to_init;
    if mapped {
        let _ = to_init.write_all(b"m");
    }
    // `to_init` stays open while the keeper lives: the init tells a
    // keeper gone from one waiting by it.
    drop(from_init);
    let _ = crate::seccomp::install(crate::seccomp::ThreadKind::Init);
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child into a local.
        let r = unsafe { libc::waitpid(init, &mut status, 0) };
        if r == init {
            exit_as(status);
        }
        if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            // SAFETY: as in `exit_as`.
            unsafe { libc::_exit(1) }
        }
    }
}

/// Step 5 in the init: its user namespace, uid and gid, no capabilities.
fn confine_init(
    jail: &JailConfig,
    to_keeper: std::fs::File,
    from_keeper: std::fs::File,
) -> Result<(), JailError> {
    mount(
        Some(Path::new("proc")),
        Path::new("/proc"),
        Some("proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some("subset=pid"),
    )?;
    // SAFETY: unshare with a constant flag in this single-threaded child.
    let r = unsafe { libc::unshare(libc::CLONE_NEWUSER) };
    check(r, "unshare user")?;
    let mut to_keeper = to_keeper;
    to_keeper
        .write_all(b"u")
        .map_err(step("ask for the id maps"))?;
    drop(to_keeper);
    let mut from_keeper = from_keeper;
    let mut byte = [0u8; 1];
    from_keeper
        .read_exact(&mut byte)
        .map_err(step("wait for the id maps"))?;
    let (uid, gid) = (jail.uid, jail.gid);
    let from_keeper = &mut from_keeper;
    // SAFETY: credential calls with plain integers; each is checked.
    unsafe {
        check(libc::setresgid(gid, gid, gid), "setresgid")?;
        check(libc::setgroups(0, std::ptr::null()), "setgroups")?;
        for cap in 0..=63 {
            // Past the last capability the kernel knows: EINVAL, done.
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 {
                break;
            }
        }
        check(libc::setresuid(uid, uid, uid), "setresuid")?;
        // The creator of a user namespace holds every capability in it,
        // and no uid there is its root (0 is not mapped), so the change of
        // uid cleared none: empty the sets by hand.
        let header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let none = [CapData::default(); 2];
        check(
            libc::syscall(libc::SYS_capset, &header as *const CapHeader, none.as_ptr())
                as libc::c_int,
            "drop capabilities",
        )?;
        check(
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            ),
            "clear ambient capabilities",
        )?;
        check(
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
            "no_new_privs",
        )?;
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        check(
            libc::setrlimit(libc::RLIMIT_CORE, &no_core),
            "no core dumps",
        )?;
        // The uid change made the process undumpable, which hides its own
        // /proc/self/{fd,pagemap} from it; nothing outside the namespace
        // shares its uid or can name its pids.
        check(libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0), "dumpable")?;
        // The jail ends with its first process (the caller's child; the
        // uid change cleared any earlier setting): the init is killed,
        // and the kernel kills every process of its PID namespace.
        check(
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0),
            "parent-death signal",
        )?;
        // A keeper gone before that (killed) is seen as the end of its
        // pipe, which it holds open while it lives.
        check(
            libc::fcntl(from_keeper.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK),
            "keeper pipe",
        )?;
    }
    if matches!(from_keeper.read(&mut byte), Ok(0)) {
        return Err(JailError::Invalid(
            "the jail's first process is gone".into(),
        ));
    }
    Ok(())
}

/// `capset`'s header and data (version 3: two data words).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Step 6: the init's loop. Never returns.
fn reap(vmm: libc::pid_t) -> ! {
    let _ = crate::seccomp::install(crate::seccomp::ThreadKind::Init);
    let mut vmm_status = 0;
    loop {
        let mut status = 0;
        // SAFETY: waitpid into a local.
        let r = unsafe { libc::waitpid(-1, &mut status, 0) };
        if r == vmm {
            vmm_status = status;
            if libc::WIFSIGNALED(status) {
                let note = format!(
                    "forge-vmm: the VMM was killed by {}\n",
                    signal_note(libc::WTERMSIG(status))
                );
                // SAFETY: write to stderr from a buffer we own.
                unsafe { libc::write(2, note.as_ptr().cast(), note.len()) };
            }
        } else if r < 0 {
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => {}
                _ => exit_as(vmm_status),
            }
        }
    }
}

/// Confines this process as the module docs say and returns in the VMM
/// (a grandchild); the processes before it never return. `config`, when
/// booting, is the VM the jail will hold: its paths must be bound in.
pub fn enter(jail: &JailConfig, config: Option<&VmConfig>) -> Result<(), JailError> {
    validate(jail, config)?;
    crate::vstate::vm::preopen_kvm().map_err(step("open /dev/kvm"))?;
    let pid = std::process::id().to_string();
    for procs in &jail.cgroups {
        std::fs::write(procs, &pid).map_err(step(format!("join {}", procs.display())))?;
    }
    // The keeper writes the init's id maps through the host's /proc: the
    // jail's own shows only the new PID namespace.
    let host_proc = open_dir(Path::new("/proc"))?;
    build_root(jail)?;
    let (from_init, to_keeper) = pipe()?;
    let (from_keeper, to_init) = pipe()?;
    // SAFETY: the VMM is single-threaded here (nothing of the VM is
    // built); the child continues with this thread alone.
    let init = check(unsafe { libc::fork() }, "fork the jail's init")?;
    if init > 0 {
        drop(to_keeper);
        drop(from_keeper);
        keeper(init, jail, host_proc, from_init, to_init);
    }
    drop(host_proc);
    drop(from_init);
    drop(to_init);
    if let Err(e) = confine_init(jail, to_keeper, from_keeper) {
        let note = format!("forge-vmm: {e}: {}\n", e.source_text());
        // SAFETY: write to stderr from a buffer we own, then exit.
        unsafe {
            libc::write(2, note.as_ptr().cast(), note.len());
            libc::_exit(1)
        }
    }
    // SAFETY: as above: single-threaded.
    let vmm = check(unsafe { libc::fork() }, "fork the VMM")?;
    if vmm > 0 {
        reap(vmm);
    }
    crate::seccomp::install(crate::seccomp::ThreadKind::Main).map_err(|e| JailError::Step {
        step: "install the main thread's seccomp filter".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(())
}

impl JailError {
    fn source_text(&self) -> String {
        match self {
            JailError::Step { source, .. } => source.to_string(),
            JailError::Invalid(_) => String::new(),
        }
    }
}

/// The jail of `--jail <file>`: JSON, unknown fields refused.
pub fn load(path: &Path) -> Result<JailConfig, JailError> {
    let text = std::fs::read(path).map_err(step(format!("read {}", path.display())))?;
    serde_json::from_slice(&text)
        .map_err(|e| JailError::Invalid(format!("{}: {e}", path.display())))
}

/// A test hook playing a VMM an attacker has taken over, read from
/// `FORGE_VMM_TEST_ESCAPE` once a thread of a jailed VMM has its filter:
/// `open:<path>` (main thread) tries to read `<path>` and to create a file
/// next to it and prints both outcomes on stderr; `syscall:<kind>` makes a
/// call off every list (`ptrace`) on the first thread of that kind. It
/// can only make the jailed VMM fail, which is what the jail's tests
/// check it does.
pub(crate) fn test_escape(kind: crate::seccomp::ThreadKind) {
    static SPEC: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let Some(spec) = SPEC
        .get_or_init(|| std::env::var("FORGE_VMM_TEST_ESCAPE").ok())
        .as_deref()
    else {
        return;
    };
    if let Some(path) = spec.strip_prefix("open:")
        && kind == crate::seccomp::ThreadKind::Main
    {
        let read = std::fs::read(path).map(|b| b.len());
        let planted = Path::new(path).with_extension("planted");
        let wrote = std::fs::write(&planted, b"escaped");
        eprintln!(
            "escape: read {path}: {read:?}; create {}: {wrote:?}",
            planted.display()
        );
    }
    if spec.strip_prefix("syscall:") == Some(kind.name()) {
        eprintln!("escape: ptrace on a {} thread", kind.name());
        // SAFETY: PTRACE_TRACEME takes no pointers; the filter kills the
        // process before the kernel acts on it.
        unsafe { libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) };
    }
}
