//! `sandbox-init`: the launcher the library spawns for every sandbox, and
//! for every host-side exec into one. It is plain Rust over `nix` and
//! `rustix` (no shell tools), so a sandbox is up in milliseconds.
//!
//! Modes (first argument):
//! - `launch <spec.json>`: stage 1, as host root. Joins the sandbox's
//!   cgroups, creates its user namespace (`userns`), prepares the mounts
//!   only host root can make (idmapped layers, the overlay root: `mounts`)
//!   in a private mount namespace, then joins the user namespace as its
//!   root and unshares the mount, UTS, IPC, network, cgroup and PID
//!   namespaces (all owned by it), sets the hostname, brings up loopback
//!   and spawns `stage2`, PID 1 of the new PID namespace, handing it the
//!   spec on stdin (it cannot read the host's files any more). Stage 1 stays
//!   as a tiny supervisor: it prints `ready <host pid of PID 1>` on stdout
//!   once stage 2 is ready (or `error: ...` and exits 1) and exits with
//!   PID 1's status.
//! - `stage2`: builds the root inside (see `mounts`), applies rlimits,
//!   drops capabilities, installs seccomp, reports ready, closes every
//!   inherited descriptor and execs the init program (or runs the built-in
//!   reaper when the spec has none).
//! - `enter <spec.json> <pid1> <uid> <gid> <cwd> -- <argv>...`: joins the
//!   cgroups and namespaces of a running sandbox (its user namespace
//!   first), drops privileges the same way and runs `argv` inside, exiting
//!   with its status (128 + signal when killed). Environment is passed
//!   through as given.
//! - `restore <spec.json> <images> <criu>`: like `launch`, but PID 1 and
//!   its tree come from a CRIU checkpoint (see `restore`).
//! - `userns`: the helper that holds a new user namespace while stage 1
//!   maps it (see `userns`).

pub mod mounts;
pub mod net;
pub mod privileges;
pub mod restore;
pub mod seccomp;
pub mod userns;

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, dup2_stderr, dup2_stdin, dup2_stdout, execve, sethostname};

use crate::spec::{CONSOLE_LOG, GUEST_SOCKET_DIR, LaunchSpec};
use crate::sys;

/// Any failure of the launcher; printed as `error: ...` for the library.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(
        "Usage: sandbox-init launch <spec.json> | stage2 | userns | restore <spec.json> <images> <criu> | enter <spec.json> <pid1> <uid> <gid> <cwd> -- <argv>"
    )]
    Usage,
    #[error("Reading the launch spec {path} failed")]
    Spec {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Parsing the launch spec failed")]
    SpecFormat(#[source] serde_json::Error),
    #[error("Joining cgroup {path} failed")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Namespace operation {what} failed")]
    Namespace {
        what: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("Opening namespace {path} failed")]
    NamespaceFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Mount(#[from] mounts::MountError),
    #[error(transparent)]
    Net(#[from] net::NetError),
    #[error(transparent)]
    Privilege(#[from] privileges::PrivilegeError),
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    #[error("Spawning {what} failed")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Stage 2 failed: {0}")]
    Stage2(String),
    #[error("Invalid init program or environment")]
    InvalidInit,
    #[error("Executing init {program} failed")]
    Exec {
        program: String,
        #[source]
        source: nix::Error,
    },
    #[error("Standard stream redirection failed")]
    Stdio(#[source] std::io::Error),
}

fn ns_err(what: &'static str) -> impl FnOnce(nix::Error) -> LaunchError {
    move |source| LaunchError::Namespace { what, source }
}

fn read_spec(path: &Path) -> Result<LaunchSpec, LaunchError> {
    let bytes = fs::read(path).map_err(|source| LaunchError::Spec {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(LaunchError::SpecFormat)
}

fn join_cgroups(spec: &LaunchSpec) -> Result<(), LaunchError> {
    let pid = std::process::id().to_string();
    for dir in &spec.cgroups.dirs {
        let path = dir.join("cgroup.procs");
        fs::write(&path, &pid).map_err(|source| LaunchError::Cgroup { path, source })?;
    }
    Ok(())
}

fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

/// Entry point of the `sandbox-init` binary; returns the process exit code.
/// The forge may also call this from its own `main` when started under a
/// launcher name, so no second binary needs installing.
pub fn run(args: &[String]) -> i32 {
    let result = match args.get(1).map(String::as_str) {
        Some("launch") => args.get(2).map(|p| stage1(Path::new(p))),
        Some("stage2") => Some(stage2().map(|()| 0)),
        Some("userns") => Some(userns::hold()),
        Some("enter") => Some(enter(&args[2..])),
        Some("restore") => Some(restore::restore(&args[2..])),
        // Run by CRIU during `restore`, with no arguments.
        None => std::env::var("CRTOOLS_SCRIPT_ACTION")
            .ok()
            .map(|action| restore::action_script(&action)),
        _ => None,
    };
    match result.unwrap_or(Err(LaunchError::Usage)) {
        Ok(code) => code,
        Err(err) => {
            let mut message = err.to_string();
            let mut source = std::error::Error::source(&err);
            while let Some(cause) = source {
                message.push_str(": ");
                message.push_str(&cause.to_string());
                source = cause.source();
            }
            // Stages 1 and 2 report on stdout (stage 2 to stage 1, stage 1
            // to the library); everything goes to stderr (the console log).
            if matches!(
                args.get(1).map(String::as_str),
                Some("launch" | "stage2" | "restore")
            ) {
                println!("error: {message}");
            }
            eprintln!("sandbox-init: {message}");
            if args.get(1).map(String::as_str) == Some("enter") {
                return 125;
            }
            1
        }
    }
}

fn stage1(spec_path: &Path) -> Result<i32, LaunchError> {
    let spec = read_spec(spec_path)?;
    join_cgroups(&spec)?;
    let userns = userns::create(&spec.ids)?;
    unshare(CloneFlags::CLONE_NEWNS).map_err(ns_err("unshare mount"))?;
    mounts::make_private()?;
    mounts::prepare(&spec, &userns)?;
    // Stage 2 starts in the scaffold: as the sandbox's root it could not
    // pass the host-only directories above it.
    nix::unistd::chdir(&spec.root_dir).map_err(ns_err("chdir"))?;
    // From here on this process is the sandbox's root, not the host's.
    userns::enter(&userns)?;
    drop(userns);
    unshare(
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWNET
            | CloneFlags::CLONE_NEWCGROUP
            | CloneFlags::CLONE_NEWPID,
    )
    .map_err(ns_err("unshare"))?;
    userns::limit()?;
    sethostname(&spec.hostname).map_err(ns_err("sethostname"))?;
    net::loopback_up()?;
    mounts::make_private()?;

    let spec_bytes = serde_json::to_vec(&spec).map_err(LaunchError::SpecFormat)?;
    let mut child = Command::new("/proc/self/exe")
        .arg("stage2")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|source| LaunchError::Spawn {
            what: "stage 2".into(),
            source,
        })?;
    if let Some(mut input) = child.stdin.take() {
        // A stage 2 that died before reading reports below as an early exit.
        let _ = input.write_all(&spec_bytes);
    }
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        // A read error is reported like an early exit below.
        let _ = BufReader::new(out).read_line(&mut line);
    }
    if line.trim() != "ready" {
        let status = child.wait().map_err(|source| LaunchError::Spawn {
            what: "stage 2 wait".into(),
            source,
        })?;
        return Err(LaunchError::Stage2(
            match line.trim().strip_prefix("error: ") {
                Some(reason) => reason.to_owned(),
                None => format!("exited with {} before ready", exit_code(status)),
            },
        ));
    }
    let mut stdout = std::io::stdout();
    writeln!(stdout, "ready {}", child.id()).map_err(LaunchError::Stdio)?;
    stdout.flush().map_err(LaunchError::Stdio)?;
    // The library stops reading after `ready`: detach from its pipe.
    let devnull = File::open("/dev/null").map_err(LaunchError::Stdio)?;
    dup2_stdout(&devnull).map_err(|e| LaunchError::Stdio(e.into()))?;
    let status = child.wait().map_err(|source| LaunchError::Spawn {
        what: "stage 2 wait".into(),
        source,
    })?;
    Ok(exit_code(status))
}

fn stage2() -> Result<(), LaunchError> {
    let mut bytes = Vec::new();
    std::io::stdin()
        .read_to_end(&mut bytes)
        .map_err(|source| LaunchError::Spec {
            path: PathBuf::from("stdin"),
            source,
        })?;
    let spec: LaunchSpec = serde_json::from_slice(&bytes).map_err(LaunchError::SpecFormat)?;
    // PID 1 leads its own session: nothing inside refers to a session or
    // process group outside the PID namespace (a checkpoint requires this).
    nix::unistd::setsid().map_err(ns_err("setsid"))?;
    mounts::build_root(&spec)?;
    privileges::apply_rlimits(&spec.limits)?;
    let filters = seccomp::build()?;
    let init = prepare_init(&spec)?;
    privileges::drop_capabilities()?;
    seccomp::install(&filters)?;

    let mut stdout = std::io::stdout();
    writeln!(stdout, "ready").map_err(LaunchError::Stdio)?;
    stdout.flush().map_err(LaunchError::Stdio)?;
    // Stage 1 stops reading after `ready`. PID 1's standard streams point
    // inside the sandbox (its /dev/null, the console log in the run dir),
    // so nothing it holds refers to a host file outside its root.
    let inside = |path: &str, append: bool| {
        OpenOptions::new()
            .read(!append)
            .append(append)
            .create(append)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(LaunchError::Stdio)
    };
    let null = inside("/dev/null", false)?;
    let console = inside(&format!("{GUEST_SOCKET_DIR}/{CONSOLE_LOG}"), true)?;
    dup2_stdin(&null).map_err(|e| LaunchError::Stdio(e.into()))?;
    dup2_stdout(&console).map_err(|e| LaunchError::Stdio(e.into()))?;
    dup2_stderr(&console).map_err(|e| LaunchError::Stdio(e.into()))?;
    drop((null, console));
    // Whatever else reached this process (a build tool's jobserver pipe
    // that whoever started the forge leaked) must not reach PID 1: it
    // would be a live descriptor to something on the host.
    sys::close_from(3).map_err(LaunchError::Stdio)?;

    match init {
        Some((program, argv, env)) => {
            let err = match execve(&program, &argv, &env) {
                Err(err) => err,
                Ok(never) => match never {},
            };
            Err(LaunchError::Exec {
                program: program.to_string_lossy().into_owned(),
                source: err,
            })
        }
        None => reap_forever(),
    }
}

type InitProgram = (CString, Vec<CString>, Vec<CString>);

fn prepare_init(spec: &LaunchSpec) -> Result<Option<InitProgram>, LaunchError> {
    let Some(program) = spec.init.first() else {
        return Ok(None);
    };
    let cstr = |s: &str| CString::new(s).map_err(|_| LaunchError::InvalidInit);
    let argv = spec
        .init
        .iter()
        .map(|a| cstr(a))
        .collect::<Result<Vec<_>, _>>()?;
    let env = spec
        .env
        .iter()
        .map(|(k, v)| cstr(&format!("{k}={v}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some((cstr(program)?, argv, env)))
}

/// The built-in PID 1: reap every child, exit on SIGTERM or SIGINT.
fn reap_forever() -> Result<(), LaunchError> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.thread_block().map_err(ns_err("sigprocmask"))?;
    loop {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
        match set.wait() {
            Ok(Signal::SIGTERM) | Ok(Signal::SIGINT) => std::process::exit(0),
            _ => {}
        }
    }
}

/// The namespaces `enter` joins: all of PID 1's, in one `setns` through
/// its pidfd (the user namespace first, which grants the capabilities to
/// join the others it owns).
const ENTER_NAMESPACES: CloneFlags = CloneFlags::CLONE_NEWUSER
    .union(CloneFlags::CLONE_NEWIPC)
    .union(CloneFlags::CLONE_NEWUTS)
    .union(CloneFlags::CLONE_NEWNET)
    .union(CloneFlags::CLONE_NEWCGROUP)
    .union(CloneFlags::CLONE_NEWPID)
    .union(CloneFlags::CLONE_NEWNS);

fn enter(args: &[String]) -> Result<i32, LaunchError> {
    let [spec_path, pid1, uid, gid, cwd, dashes, argv @ ..] = args else {
        return Err(LaunchError::Usage);
    };
    if dashes != "--" || argv.is_empty() {
        return Err(LaunchError::Usage);
    }
    let parse = |s: &str| s.parse::<u32>().map_err(|_| LaunchError::Usage);
    let (pid1, uid, gid) = (parse(pid1)?, parse(uid)?, parse(gid)?);
    let spec = read_spec(Path::new(spec_path))?;
    join_cgroups(&spec)?;

    // A pidfd, checked to be the sandbox's PID 1 after it was taken: a
    // recycled pid cannot lead into another sandbox.
    let pidfd = crate::state::sandbox_pidfd(pid1, &spec.id).ok_or_else(|| {
        LaunchError::Stage2(format!("pid {pid1} is not PID 1 of sandbox {}", spec.id))
    })?;
    setns(&pidfd, ENTER_NAMESPACES).map_err(ns_err("setns"))?;
    drop(pidfd);
    userns::become_root()?;
    nix::unistd::chdir("/").map_err(ns_err("chdir"))?;

    privileges::apply_rlimits(&spec.limits)?;
    let filters = seccomp::build()?;
    privileges::drop_capabilities()?;
    seccomp::install(&filters)?;

    let status = Command::new(&argv[0])
        .args(&argv[1..])
        .current_dir(cwd)
        .uid(uid)
        .gid(gid)
        .status()
        .map_err(|source| LaunchError::Spawn {
            what: argv[0].clone(),
            source,
        })?;
    Ok(exit_code(status))
}
