//! `sandbox-init restore <spec.json> <images dir> <criu>`: start a sandbox
//! from a CRIU checkpoint instead of a fresh PID 1.
//!
//! Ordered steps: join the new sandbox's cgroups (CRIU is told to restore
//! tasks and their cgroup namespace there, see `cgroup_root`) → become a
//! child subreaper (the restored PID 1 is re-parented to us when `criu
//! restore --restore-detached` exits) → a user namespace with the
//! sandbox's id map, used only to idmap its mounts → private mount
//! namespace with the sandbox's scaffold (`mounts::prepare`: overlay root,
//! run dir, devices, binds) → run CRIU with `--root` at the overlay (CRIU
//! recreates every other mount, mapping the external ones to this
//! scaffold's sources, and recreates the user namespace from the images,
//! whose id map the backend set to this sandbox's) → set the new hostname
//! in the restored UTS namespace → report `ready <pid1>` and supervise
//! PID 1 like stage 1 does.
//!
//! The network namespace is restored empty (`--empty-ns net`; checkpoints
//! do not save it either, see `checkpoint`): a sandbox has loopback only,
//! and CRIU would otherwise save and restore it with eight runs of `ip`,
//! `iptables-save` and `iptables-restore`, ~13 ms each way here. CRIU runs
//! this binary as its action script ([`action_script`]), which brings
//! loopback up once the namespaces exist and before any socket is
//! restored. Addresses, routes and firewall rules a sandbox added to its
//! own namespace are not carried.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::prctl::set_child_subreaper;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{Pid, dup2_stdout, sethostname};

use super::{LaunchError, join_cgroups, mounts, ns_err, read_spec, userns};

/// CRIU's key for the external mount at `guest_path`.
pub fn external_key(guest_path: &Path) -> String {
    format!("m{}", guest_path.to_string_lossy().replace('/', "_"))
}

/// CRIU's `--cgroup-root` for the group at `dir`
/// (`<hierarchy>/<parent>/<id>`): re-roots what was dumped in the
/// hierarchy's controllers (a v1 hierarchy's directory is named after
/// them; cgroup2 has the empty name) at `/<parent>/<id>`. The restored
/// cgroup namespace is rooted there too. Without it a cgroup2 namespace
/// stayed rooted at the group the sandbox was dumped from: a fork's, or a
/// sandbox's moved from a node with another group parent, which the next
/// dump refused ("… is not a suffix of …"), so such a sandbox could never
/// be paused to disk or forked with its processes again.
fn cgroup_root(dir: &Path) -> Option<String> {
    let parts: Vec<_> = dir.iter().rev().take(3).collect();
    let [id, parent, hierarchy] = parts[..] else {
        return None;
    };
    let unified = nix::sys::statfs::statfs(dir)
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC);
    let controllers = if unified {
        String::new()
    } else {
        hierarchy.to_string_lossy().into_owned()
    };
    let root = Path::new("/").join(parent).join(id);
    Some(format!("{controllers}:{}", root.display()))
}

/// Every process of the tree under `pid` (host pids), from procfs.
fn tree(pid: i32) -> Vec<i32> {
    let mut out = vec![pid];
    let mut next = 0;
    while next < out.len() {
        let current = out[next];
        next += 1;
        let Ok(tasks) = fs::read_dir(format!("/proc/{current}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let children = fs::read_to_string(task.path().join("children")).unwrap_or_default();
            out.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<i32>().ok()),
            );
        }
    }
    out
}

/// Make sure the restored tree is in this sandbox's groups in every
/// hierarchy, where CRIU put it ([`cgroup_root`]) unless a task escaped
/// it. Two passes catch a child forked while its parent was being moved.
///
/// A process is moved only where one of its threads is not in the group
/// yet: every write to `cgroup.procs` waits for an RCU grace period in the
/// kernel, even for a process already there (~7 ms a restore here when all
/// were written).
fn place_tree(pid1: i32, dirs: &[PathBuf]) {
    for _ in 0..2 {
        let tree = tree(pid1);
        for dir in dirs {
            let members = thread_ids(dir);
            for pid in &tree {
                let placed = fs::read_dir(format!("/proc/{pid}/task"))
                    .map(|tasks| {
                        tasks
                            .flatten()
                            .filter_map(|t| t.file_name().to_str()?.parse::<i32>().ok())
                            .all(|tid| members.contains(&tid))
                    })
                    .unwrap_or(false);
                if !placed {
                    // A task may exit meanwhile; the sandbox keeps working.
                    let _ = fs::write(dir.join("cgroup.procs"), pid.to_string());
                }
            }
        }
    }
}

/// Every thread in the group at `dir`: `cgroup.threads` on cgroup2,
/// `tasks` on v1.
fn thread_ids(dir: &Path) -> std::collections::HashSet<i32> {
    fs::read_to_string(dir.join("cgroup.threads"))
        .or_else(|_| fs::read_to_string(dir.join("tasks")))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// This binary as CRIU's action script during a restore, for `action`
/// (CRIU's `CRTOOLS_SCRIPT_ACTION`): at `setup-namespaces`, when the
/// restored namespaces exist and no task of the sandbox runs yet, bring up
/// loopback in the network namespace of the restored PID 1
/// (`CRTOOLS_INIT_PID`). Every other action needs nothing.
pub(super) fn action_script(action: &str) -> Result<i32, LaunchError> {
    if action != "setup-namespaces" {
        return Ok(0);
    }
    let pid: u32 = std::env::var("CRTOOLS_INIT_PID")
        .ok()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| LaunchError::Stage2("CRIU named no restored PID 1".into()))?;
    let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
    let ns = File::open(&path).map_err(|source| LaunchError::NamespaceFile { path, source })?;
    setns(&ns, CloneFlags::CLONE_NEWNET).map_err(ns_err("setns net"))?;
    super::net::loopback_up()?;
    Ok(0)
}

pub(super) fn restore(args: &[String]) -> Result<i32, LaunchError> {
    let [spec_path, images, criu] = args else {
        return Err(LaunchError::Usage);
    };
    let spec = read_spec(Path::new(spec_path))?;
    let images = PathBuf::from(images);
    join_cgroups(&spec)?;
    let cgroup_roots: Vec<String> = spec
        .cgroups
        .dirs
        .iter()
        .filter_map(|dir| cgroup_root(dir))
        .collect();
    set_child_subreaper(true).map_err(ns_err("set_child_subreaper"))?;
    let idmap = userns::create(&spec.ids)?;
    unshare(CloneFlags::CLONE_NEWNS).map_err(ns_err("unshare"))?;
    mounts::make_private()?;
    let scaffold = mounts::prepare(&spec, &idmap)?;
    drop(idmap);

    // Several forks restore from one images directory at once: the pid file
    // and the log go into this sandbox's own (host-only) directory.
    let own_dir = Path::new(spec_path)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| images.clone());
    let pidfile = own_dir.join("restored.pid");
    let log_path = own_dir.join("restore.log");
    let _ = fs::remove_file(&pidfile);
    let mut command = Command::new(criu);
    command
        .arg("restore")
        .arg("-D")
        .arg(&images)
        .arg("--root")
        .arg(scaffold.root())
        .args(["--restore-detached", "-v2", "--empty-ns", "net"]);
    let this = std::env::current_exe().map_err(|source| LaunchError::Spawn {
        what: "criu restore (finding sandbox-init)".into(),
        source,
    })?;
    command.arg("--action-script").arg(this);
    // Tasks go into this sandbox's own groups (created by the backend),
    // wherever the parent's were: each joined hierarchy's dumped paths are
    // re-rooted there; other hierarchies keep their (root) paths.
    command.arg("--manage-cgroups=soft");
    for root in &cgroup_roots {
        command.arg("--cgroup-root").arg(root);
    }
    command
        .arg("--pidfile")
        .arg(&pidfile)
        .arg("-o")
        .arg(&log_path);
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
        let log = fs::read_to_string(&log_path).unwrap_or_default();
        let reason = log
            .lines()
            .filter(|l| l.contains("Error (") && !l.contains("RLIMIT_NOFILE"))
            .map(str::trim)
            .next()
            .unwrap_or("no error line in the log");
        return Err(LaunchError::Stage2(format!(
            "criu restore failed: {reason}"
        )));
    }
    let pid1: i32 = fs::read_to_string(&pidfile)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| LaunchError::Stage2("criu wrote no pid file".into()))?;

    place_tree(pid1, &spec.cgroups.dirs);

    // Into the restored namespaces (this process only supervises from
    // here on): the new hostname, and the user namespace's limits, which a
    // checkpoint does not carry.
    let mut joined = Vec::new();
    for name in ["user", "uts"] {
        let path = PathBuf::from(format!("/proc/{pid1}/ns/{name}"));
        let file = OpenOptions::new()
            .read(true)
            .open(&path)
            .map_err(|source| LaunchError::NamespaceFile { path, source })?;
        joined.push(file);
    }
    setns(&joined[0], CloneFlags::CLONE_NEWUSER).map_err(ns_err("setns user"))?;
    userns::become_root()?;
    userns::limit()?;
    setns(&joined[1], CloneFlags::CLONE_NEWUTS).map_err(ns_err("setns uts"))?;
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
