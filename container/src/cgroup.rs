//! Cgroups of sandboxes: probing the host's layout, one group per sandbox in
//! every hierarchy, limits, freeze/thaw, kill-all, stats and removal.
//!
//! Supports a v1/v2 hybrid (limits through the v1 `memory`, `cpu` and `pids`
//! controllers, `cgroup.freeze`/`cgroup.kill` through the cgroup2 mount,
//! usually `/sys/fs/cgroup/unified`) and a pure cgroup2 host (everything in
//! one tree, controllers enabled in the parent's `cgroup.subtree_control`).
//! Without any cgroup2 mount, freezing falls back to the v1 `freezer`.
//!
//! Layout: `<hierarchy>/<parent>/<sandbox id>`, where `<parent>` is derived
//! from the data directory, so two forges (or tests) on one host never touch
//! each other's groups and `reconcile` knows which groups are its own.

use std::fs;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::spec::{CgroupPaths, Limits};

/// Failure of a cgroup operation.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("No usable cgroup hierarchy for {0} (neither v1 controller nor cgroup2)")]
    Missing(&'static str),
    #[error("Cgroup file {path} could not be accessed")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cgroup {path} did not reach the {state} state in time")]
    Timeout { path: PathBuf, state: &'static str },
}

/// How long a v1 freezer may stay between states before it is asked again.
const V1_FREEZER_NUDGE: Duration = Duration::from_millis(50);

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(io_err(path))
}

fn read(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(io_err(path))
}

/// Where each controller lives on this host.
#[derive(Debug, Clone, Default)]
pub struct CgroupLayout {
    memory_v1: Option<PathBuf>,
    cpu_v1: Option<PathBuf>,
    cpuacct_v1: Option<PathBuf>,
    pids_v1: Option<PathBuf>,
    freezer_v1: Option<PathBuf>,
    /// The cgroup2 mount, if any.
    unified: Option<PathBuf>,
    /// True when limits go through cgroup2 (pure v2 host).
    unified_limits: bool,
}

/// Resource usage of one sandbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CgroupStats {
    pub memory_bytes: u64,
    pub cpu_usage_ns: u64,
    pub pids: u64,
}

impl CgroupLayout {
    /// Read `/proc/self/mountinfo` to find the hierarchies.
    pub fn probe() -> Result<Self, CgroupError> {
        let mountinfo = Path::new("/proc/self/mountinfo");
        let text = read(mountinfo)?;
        let mut layout = Self::default();
        for line in text.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let mount_point = left.split(' ').nth(4).map(PathBuf::from);
            let mut right = right.split(' ');
            let (fstype, options) = (right.next(), right.nth(1).unwrap_or(""));
            let Some(mount_point) = mount_point else {
                continue;
            };
            match fstype {
                Some("cgroup2") => {
                    layout.unified.get_or_insert(mount_point);
                }
                Some("cgroup") => {
                    for option in options.split(',') {
                        let slot = match option {
                            "memory" => &mut layout.memory_v1,
                            "cpu" => &mut layout.cpu_v1,
                            "cpuacct" => &mut layout.cpuacct_v1,
                            "pids" => &mut layout.pids_v1,
                            "freezer" => &mut layout.freezer_v1,
                            _ => continue,
                        };
                        slot.get_or_insert(mount_point.clone());
                    }
                }
                _ => {}
            }
        }
        if let Some(unified) = &layout.unified {
            let controllers =
                fs::read_to_string(unified.join("cgroup.controllers")).unwrap_or_default();
            layout.unified_limits =
                layout.memory_v1.is_none() && controllers.split_whitespace().any(|c| c == "memory");
        }
        if !layout.unified_limits && layout.memory_v1.is_none() {
            return Err(CgroupError::Missing("memory"));
        }
        if layout.unified.is_none() && layout.freezer_v1.is_none() {
            return Err(CgroupError::Missing("freezer"));
        }
        Ok(layout)
    }

    /// Every hierarchy a sandbox's processes join (deduplicated: v1
    /// controllers can be co-mounted).
    fn roots(&self) -> Vec<&Path> {
        let mut roots: Vec<&Path> = Vec::new();
        let all = [
            &self.memory_v1,
            &self.cpu_v1,
            &self.cpuacct_v1,
            &self.pids_v1,
            &self.freezer_v1,
            &self.unified,
        ];
        for root in all.into_iter().flatten() {
            if !roots.contains(&root.as_path()) {
                roots.push(root);
            }
        }
        roots
    }

    /// The group of sandbox `id` under `parent` (not created).
    pub fn group(&self, parent: &str, id: &str) -> Cgroup {
        Cgroup {
            layout: self.clone(),
            rel: PathBuf::from(parent).join(id),
        }
    }

    /// Remove the (empty) parent group of a data directory from every
    /// hierarchy; a parent that still has sandboxes stays.
    pub fn remove_parent(&self, parent: &str) {
        for root in self.roots() {
            // ENOTEMPTY/EBUSY: sandboxes remain, which is fine.
            let _ = fs::remove_dir(root.join(parent));
        }
    }

    /// Names of existing groups under `parent` (in any hierarchy).
    pub fn list(&self, parent: &str) -> Vec<String> {
        let mut names = Vec::new();
        for root in self.roots() {
            let Ok(entries) = fs::read_dir(root.join(parent)) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.path().is_dir() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if !names.contains(&name) {
                        names.push(name);
                    }
                }
            }
        }
        names
    }
}

/// One sandbox's group across all hierarchies.
#[derive(Debug, Clone)]
pub struct Cgroup {
    layout: CgroupLayout,
    rel: PathBuf,
}

impl Cgroup {
    fn dir(&self, root: &Path) -> PathBuf {
        root.join(&self.rel)
    }

    /// The directories processes must join.
    pub fn paths(&self) -> CgroupPaths {
        CgroupPaths {
            dirs: self.layout.roots().iter().map(|r| self.dir(r)).collect(),
        }
    }

    /// Create the group in every hierarchy and apply `limits`.
    pub fn create(&self, limits: &Limits) -> Result<(), CgroupError> {
        let layout = &self.layout;
        if layout.unified_limits
            && let Some(unified) = &layout.unified
        {
            // Pure v2: controllers must be enabled on every ancestor.
            let mut dir = unified.clone();
            for part in self.rel.parent().into_iter().flat_map(Path::components) {
                // Best effort: a controller may already be enabled or be
                // unavailable; the limit writes below report real failures.
                let _ = fs::write(dir.join("cgroup.subtree_control"), "+memory +cpu +pids");
                dir.push(part);
                fs::create_dir_all(&dir).map_err(io_err(&dir))?;
            }
            let _ = fs::write(dir.join("cgroup.subtree_control"), "+memory +cpu +pids");
        }
        for root in layout.roots() {
            let dir = self.dir(root);
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }
        self.apply_limits(limits)
    }

    fn apply_limits(&self, limits: &Limits) -> Result<(), CgroupError> {
        let layout = &self.layout;
        let mem = (limits.mem_mib * 1024 * 1024).to_string();
        let quota_us = limits.cpu_millis * 100;
        if layout.unified_limits {
            let Some(unified) = &layout.unified else {
                return Err(CgroupError::Missing("cgroup2"));
            };
            let dir = self.dir(unified);
            write(&dir.join("memory.max"), &mem)?;
            let _ = fs::write(dir.join("memory.swap.max"), "0");
            write(&dir.join("cpu.max"), &format!("{quota_us} 100000"))?;
            let weight = 1 + (limits.cpu_shares.saturating_sub(2) * 9999) / 262_142;
            write(&dir.join("cpu.weight"), &weight.to_string())?;
            write(&dir.join("pids.max"), &limits.pids_max.to_string())?;
            return Ok(());
        }
        let memory = layout
            .memory_v1
            .as_ref()
            .ok_or(CgroupError::Missing("memory"))?;
        let dir = self.dir(memory);
        let limit = dir.join("memory.limit_in_bytes");
        let memsw = dir.join("memory.memsw.limit_in_bytes");
        // v1 keeps memory <= memory+swap: a raise goes to memsw first.
        let current = fs::read_to_string(&limit)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok());
        let raising = current.is_some_and(|c| c < limits.mem_mib * 1024 * 1024);
        let mut order = vec![limit.as_path()];
        if memsw.exists() {
            if raising {
                order.insert(0, memsw.as_path());
            } else {
                order.push(memsw.as_path());
            }
        }
        for file in order {
            write(file, &mem)?;
        }
        let _ = fs::write(dir.join("memory.swappiness"), "0");
        if let Some(cpu) = &layout.cpu_v1 {
            let dir = self.dir(cpu);
            write(&dir.join("cpu.cfs_period_us"), "100000")?;
            write(&dir.join("cpu.cfs_quota_us"), &quota_us.to_string())?;
            write(&dir.join("cpu.shares"), &limits.cpu_shares.to_string())?;
        }
        let pids = layout
            .pids_v1
            .as_ref()
            .ok_or(CgroupError::Missing("pids"))?;
        write(
            &self.dir(pids).join("pids.max"),
            &limits.pids_max.to_string(),
        )?;
        Ok(())
    }

    /// The group's directory in the v1 freezer hierarchy, if there is one
    /// (CRIU freezes through it while dumping).
    pub fn freezer_v1_dir(&self) -> Option<PathBuf> {
        self.layout.freezer_v1.as_ref().map(|f| self.dir(f))
    }

    /// True when the group exists in at least one hierarchy.
    pub fn exists(&self) -> bool {
        self.layout.roots().iter().any(|r| self.dir(r).is_dir())
    }

    /// Host pids of every process in the group.
    pub fn pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        for root in self.layout.roots() {
            let Ok(text) = fs::read_to_string(self.dir(root).join("cgroup.procs")) else {
                continue;
            };
            for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                if !pids.contains(&pid) {
                    pids.push(pid);
                }
            }
        }
        pids
    }

    /// Stop every process (no CPU; memory kept) and wait until frozen.
    pub fn freeze(&self) -> Result<(), CgroupError> {
        self.set_frozen(true)
    }

    /// Undo [`Cgroup::freeze`].
    pub fn thaw(&self) -> Result<(), CgroupError> {
        self.set_frozen(false)
    }

    fn set_frozen(&self, frozen: bool) -> Result<(), CgroupError> {
        let deadline = Instant::now() + Duration::from_secs(5);
        if let Some(unified) = &self.layout.unified {
            let dir = self.dir(unified);
            write(&dir.join("cgroup.freeze"), if frozen { "1" } else { "0" })?;
            let want = if frozen { "frozen 1" } else { "frozen 0" };
            loop {
                let events = read(&dir.join("cgroup.events"))?;
                if events.lines().any(|l| l == want) {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    return Err(CgroupError::Timeout {
                        path: dir,
                        state: "frozen",
                    });
                }
                sleep(Duration::from_micros(200));
            }
        }
        self.set_frozen_v1(frozen, deadline)
    }

    /// Freezes the group through the v1 freezer, the one CRIU's
    /// `--freeze-cgroup` works with, and waits until it is frozen. CRIU
    /// freezing the group itself waits for the transition in 100 ms sleeps;
    /// frozen beforehand, it seizes the tasks at once. Without a v1
    /// freezer, [`Cgroup::freeze`].
    pub fn freeze_for_checkpoint(&self) -> Result<(), CgroupError> {
        if self.layout.freezer_v1.is_none() {
            return self.freeze();
        }
        self.set_frozen_v1(true, Instant::now() + Duration::from_secs(5))
    }

    fn set_frozen_v1(&self, frozen: bool, deadline: Instant) -> Result<(), CgroupError> {
        let freezer = self
            .layout
            .freezer_v1
            .as_ref()
            .ok_or(CgroupError::Missing("freezer"))?;
        let state = self.dir(freezer).join("freezer.state");
        let want = if frozen { "FROZEN" } else { "THAWED" };
        write(&state, want)?;
        let mut asked = Instant::now();
        let mut asks = 0u32;
        loop {
            if read(&state)?.trim() == want {
                return Ok(());
            }
            if Instant::now() > deadline {
                if frozen {
                    // Neither frozen nor running is no state to leave a
                    // group in; CRIU, for one, skips its own retries for a
                    // group it finds FREEZING and stalls seizing it.
                    let _ = fs::write(&state, "THAWED");
                }
                return Err(CgroupError::Timeout {
                    path: state,
                    state: want,
                });
            }
            if asked.elapsed() >= V1_FREEZER_NUDGE {
                // The v1 freezer can stall in FREEZING, for seconds or for
                // good, when a task forks while it goes over the group: the
                // child escapes the pass. Asking again starts a new pass;
                // now and then a thaw first lets a stuck task move on.
                asks += 1;
                if frozen && asks.is_multiple_of(4) {
                    write(&state, "THAWED")?;
                }
                write(&state, want)?;
                asked = Instant::now();
            }
            sleep(Duration::from_micros(200));
        }
    }

    /// Whether the group is frozen now.
    pub fn is_frozen(&self) -> bool {
        if let Some(unified) = &self.layout.unified {
            return fs::read_to_string(self.dir(unified).join("cgroup.events"))
                .map(|e| e.lines().any(|l| l == "frozen 1"))
                .unwrap_or(false);
        }
        self.layout.freezer_v1.as_ref().is_some_and(|f| {
            fs::read_to_string(self.dir(f).join("freezer.state"))
                .map(|s| s.trim() == "FROZEN")
                .unwrap_or(false)
        })
    }

    /// SIGKILL every process in the group and wait until it is empty. Uses
    /// `cgroup.kill` where the kernel has it; otherwise freezes the group (so
    /// nothing can fork in between), kills each pid and thaws.
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let kill_file = self
            .layout
            .unified
            .as_ref()
            .map(|u| self.dir(u).join("cgroup.kill"))
            .filter(|p| p.exists());
        loop {
            let pids = self.pids();
            if pids.is_empty() {
                return Ok(());
            }
            if let Some(file) = &kill_file {
                write(file, "1")?;
            } else {
                let frozen = self.freeze().is_ok();
                for pid in &pids {
                    // The process may be gone already.
                    let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
                }
                if frozen {
                    self.thaw()?;
                }
            }
            if Instant::now() > deadline {
                return Err(CgroupError::Timeout {
                    path: self.rel.clone(),
                    state: "empty",
                });
            }
            sleep(Duration::from_millis(1));
        }
    }

    /// Remove the (empty) group from every hierarchy.
    pub fn remove(&self) -> Result<(), CgroupError> {
        for root in self.layout.roots() {
            let dir = self.dir(root);
            if !dir.exists() {
                continue;
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if Instant::now() > deadline => {
                        return Err(CgroupError::Io {
                            path: dir,
                            source: e,
                        });
                    }
                    Err(_) => sleep(Duration::from_millis(2)),
                }
            }
        }
        Ok(())
    }

    /// Current usage.
    pub fn stats(&self) -> CgroupStats {
        let num = |path: PathBuf| -> u64 {
            fs::read_to_string(path)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0)
        };
        let layout = &self.layout;
        if layout.unified_limits
            && let Some(unified) = &layout.unified
        {
            let dir = self.dir(unified);
            let usage_usec = fs::read_to_string(dir.join("cpu.stat"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("usage_usec ").map(str::to_owned))
                })
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
            return CgroupStats {
                memory_bytes: num(dir.join("memory.current")),
                cpu_usage_ns: usage_usec * 1000,
                pids: num(dir.join("pids.current")),
            };
        }
        CgroupStats {
            memory_bytes: layout
                .memory_v1
                .as_ref()
                .map_or(0, |m| num(self.dir(m).join("memory.usage_in_bytes"))),
            cpu_usage_ns: layout
                .cpuacct_v1
                .as_ref()
                .map_or(0, |c| num(self.dir(c).join("cpuacct.usage"))),
            pids: layout
                .pids_v1
                .as_ref()
                .map_or(0, |p| num(self.dir(p).join("pids.current"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_finds_memory_and_freezer() {
        let layout = CgroupLayout::probe().expect("cgroups are mounted on this host");
        assert!(layout.unified_limits || layout.memory_v1.is_some());
        assert!(layout.unified.is_some() || layout.freezer_v1.is_some());
        assert!(!layout.roots().is_empty());
    }
}
