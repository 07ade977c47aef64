//! The sandbox's user namespace. Root inside maps to the sandbox's own
//! unprivileged host id range ([`IdMap`]), so a process that escapes every
//! other wall is still nobody on the host: host files it does not own are
//! out of reach, and capabilities it holds count only inside.
//!
//! Creating one takes a helper process (`sandbox-init userns`): a process
//! cannot write its own full id map, and the launcher must still be host
//! root afterwards to make the idmapped mounts. Steps:
//! 1. spawn the helper; it unshares `CLONE_NEWUSER` and says `ready`;
//! 2. write its `uid_map` and `gid_map` (as host root: no `setgroups`
//!    restriction is needed, so root inside may call `setgroups`);
//! 3. open its `ns/user`; that descriptor keeps the namespace alive;
//! 4. close the helper's stdin: it exits.
//!
//! The descriptor then serves twice: as the id mapping of idmapped mounts
//! (`mounts`), and as the namespace the launcher joins ([`enter`]) before it
//! creates every other namespace, so those are owned by it.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use nix::sched::{CloneFlags, setns, unshare};
use nix::unistd::{Gid, Uid, setgroups, setresgid, setresuid};

use super::{LaunchError, ns_err};
use crate::spec::IdMap;

/// `sandbox-init userns`: unshare a user namespace, say `ready`, and hold
/// it until stdin closes.
pub(super) fn hold() -> Result<i32, LaunchError> {
    unshare(CloneFlags::CLONE_NEWUSER).map_err(ns_err("unshare user"))?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "ready").map_err(LaunchError::Stdio)?;
    stdout.flush().map_err(LaunchError::Stdio)?;
    let mut sink = Vec::new();
    // EOF (the launcher is done with us) or an error: either way, exit.
    let _ = std::io::stdin().read_to_end(&mut sink);
    Ok(0)
}

/// A new user namespace with `ids` mapped (see the module docs).
pub fn create(ids: &IdMap) -> Result<OwnedFd, LaunchError> {
    let mut helper = Command::new("/proc/self/exe")
        .arg("userns")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|source| LaunchError::Spawn {
            what: "user namespace helper".into(),
            source,
        })?;
    let result = (|| {
        let mut line = String::new();
        if let Some(out) = helper.stdout.take() {
            // EOF is handled below as "not ready".
            let _ = BufReader::new(out).read_line(&mut line);
        }
        if line.trim() != "ready" {
            return Err(LaunchError::Stage2(
                "the user namespace helper exited before unsharing".into(),
            ));
        }
        let proc_dir = PathBuf::from(format!("/proc/{}", helper.id()));
        for map in ["uid_map", "gid_map"] {
            let path = proc_dir.join(map);
            fs::write(&path, ids.map_line()).map_err(|source| LaunchError::NamespaceFile {
                path: path.clone(),
                source,
            })?;
        }
        let path = proc_dir.join("ns/user");
        let file =
            File::open(&path).map_err(|source| LaunchError::NamespaceFile { path, source })?;
        Ok(OwnedFd::from(file))
    })();
    drop(helper.stdin.take());
    // The helper exits once its stdin is closed; a kill covers a helper
    // that failed to read it.
    let _ = helper.kill();
    let _ = helper.wait();
    result
}

/// Joins `userns` and becomes root inside it (the sandbox's host base id),
/// with no supplementary groups. Afterwards the caller holds every
/// capability in the namespace and none outside.
pub fn enter(userns: &OwnedFd) -> Result<(), LaunchError> {
    setns(userns, CloneFlags::CLONE_NEWUSER).map_err(ns_err("setns user"))?;
    become_root()
}

/// Per-user-namespace limits every sandbox gets (`/proc/sys/user/*` of
/// its namespace). The kernel counts such resources at every level up to
/// the host's root, where all sandboxes share one budget with host root;
/// these bound what one sandbox takes of it (the host raises its own, see
/// `scripts/setup-host.sh`). No user namespace may be created inside, a
/// second wall behind the seccomp filter; a few of the other kinds may,
/// because CRIU makes them inside while it checkpoints (the sandbox itself
/// cannot: that needs `CAP_SYS_ADMIN`).
pub const LIMITS: &[(&str, u64)] = &[
    ("max_inotify_instances", 128),
    ("max_inotify_watches", 262_144),
    ("max_fanotify_groups", 0),
    ("max_fanotify_marks", 0),
    ("max_user_namespaces", 0),
    ("max_mnt_namespaces", 16),
    ("max_pid_namespaces", 16),
    ("max_net_namespaces", 16),
    ("max_uts_namespaces", 16),
    ("max_ipc_namespaces", 16),
    ("max_cgroup_namespaces", 16),
    ("max_time_namespaces", 16),
];

/// Applies [`LIMITS`] to the user namespace the caller is root of (after
/// it created the namespaces it needs). A limit this kernel does not have
/// is skipped.
pub fn limit() -> Result<(), LaunchError> {
    for (name, value) in LIMITS {
        let path = std::path::Path::new("/proc/sys/user").join(name);
        match fs::write(&path, value.to_string()) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(LaunchError::NamespaceFile { path, source }),
        }
    }
    Ok(())
}

/// Root of the user namespace the caller is in.
pub fn become_root() -> Result<(), LaunchError> {
    setgroups(&[]).map_err(ns_err("setgroups"))?;
    let (root_gid, root_uid) = (Gid::from_raw(0), Uid::from_raw(0));
    setresgid(root_gid, root_gid, root_gid).map_err(ns_err("setresgid"))?;
    setresuid(root_uid, root_uid, root_uid).map_err(ns_err("setresuid"))?;
    Ok(())
}
