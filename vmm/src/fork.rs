//! Live fork of a running VM (ARCHITECTURE.md decision 3).
//!
//! Steps, on the event-loop thread:
//!
//! 1. Pause the vCPUs (they wait outside KVM_RUN, holding no lock), flush
//!    the disks, capture the whole VM state in memory.
//! 2. Seal the top layer of every writable disk: it becomes a shared,
//!    read-only layer of parent and children.
//! 3. Freeze guest RAM if it is still shared (the first fork of a booted
//!    VM; see below).
//! 4. fork(2) once per child. The child has only the forking thread. It
//!    closes every inherited fd but stdio, its report pipe and guest RAM's
//!    file, waits until the parent has forked the last child (so that the
//!    children's work does not stretch the parent's pause), opens a new
//!    KVM VM over the inherited mapping, restores the
//!    captured state with its own paths (control socket, vsock socket,
//!    serial log, a new empty disk top layer), posts a vsock transport
//!    reset (the guest's notice that it was forked), and runs; it reports
//!    "ok" or its error on the pipe, then serves until its guest ends and
//!    exits with the VM's status.
//! 5. The parent stacks its own new top layer on each disk, resumes, and
//!    collects the children's reports.
//!
//! # Why the pause does not grow with guest RAM
//!
//! fork(2) copies the page tables of private memory. With guest RAM as
//! private anonymous memory on transparent huge pages that is one entry
//! and one preallocated page table per 2 MiB, and KVM re-checks all of
//! RAM: on this project's PVM hosts the pause was 1.5 ms at 256 MiB and
//! 9.5 ms at 4 GiB, fork(2) alone 1 ms and 6 ms, all memory on huge pages.
//! So a booted VM's RAM is instead a file on a private tmpfs mounted with
//! `huge=always` (`crate::vstate::memory`), mapped MAP_SHARED, and fork(2)
//! copies no page tables of shared file mappings. The first fork freezes
//! that file:
//!
//! - the shared mapping is moved out of the way with mremap, which moves
//!   page-table pages, not entries (whole 1 GiB ranges: the target address
//!   is congruent to the old one modulo 1 GiB), into a reservation marked
//!   MADV_DONTFORK, so no child ever holds it;
//! - the same file range is mapped MAP_PRIVATE at the old address, so the
//!   KVM memory slots and every device's view of guest memory stay valid;
//! - children inherit that fresh private mapping, which has no pages yet,
//!   so fork(2) copies nothing for it.
//!
//! From then on nobody writes the file: parent and children read its
//! pages and copy on write, as they would after fork(2) of private RAM, so
//! memory stays isolated. The moved-away mapping is unmapped on a
//! background thread once the vCPUs run again (munmap zaps with the
//! address-space lock held for reading, so vCPU page faults proceed).
//!
//! Later forks of the same VM, forks of children and forks of VMs restored
//! from a snapshot find RAM already private and use fork(2) as it is. The
//! private view is cut into 256 MiB mappings (alternately MADV_DONTDUMP, so
//! the kernel keeps them apart), and fork(2) copies, and has KVM re-check,
//! only the mappings written since the freeze: an idle parent forks in the
//! same time at any RAM size; one that rewrote all its RAM since pays for
//! those pages' 4 KiB entries, more than the huge-page fork would have.
//!
//! Measured with `forge-vmm bench fork` (fully touched RAM, PVM host, two
//! cores; one fork, then 100 timed forks of the same parent): parent pause
//! p50 0.8-1.2 ms at 256 MiB, 1 GiB and 4 GiB alike; the 4 GiB/256 MiB
//! ratio 0.86-0.92 at p50 and 0.84-1.36 at p99 on a quiet host. The p99
//! follows host scheduling noise (state capture, which does not depend on
//! RAM, has the same tail). What still grows with RAM is the first fork of
//! a booted VM, paid once per VM: the freeze's move makes KVM's shadow MMU
//! walk its reverse map over all of guest RAM, about 0.7-1 ms per GiB
//! (0.4 ms at 256 MiB, 2.7-3.8 ms at 4 GiB). Hosts with hardware
//! virtualisation use KVM's TDP MMU, one entry per 2 MiB mapped.
//!
//! Many children in one request: each waits (a pipe the parent closes
//! after its last fork(2)) before building its VM, because children
//! building meanwhile took the CPU from the parent, whose pause for 100
//! forks grew to 460 ms at 4 GiB; it is ~20 ms at every size now. All 100
//! children are ready in ~90 ms at 256 MiB, 110-170 ms at 1 GiB and
//! 220-250 ms at 4 GiB here. What grows with RAM is each child's new KVM
//! VM: with the shadow MMU (this PVM host) registering guest RAM allocates
//! reverse-map and write-tracking arrays per 4 KiB page, 10 MiB at 4 GiB,
//! zeroed and charged to the memory cgroup (~1 ms alone, ~4 ms of CPU a
//! child with 100 side by side); the TDP MMU of hosts with hardware
//! virtualisation allocates them only once a shadow root is needed.
//!
//! Costs elsewhere: the frozen file stays in memory while any VM maps it,
//! so a parent that rewrites all of its RAM after a fork holds the old
//! image and its new copy. Where the tmpfs cannot be mounted (no
//! CAP_SYS_ADMIN), RAM is private anonymous memory on transparent huge
//! pages and every fork copies its page tables, as before.
//!
//! Child paths append `.f<generation>c<index>` to the parent's, so forks of
//! forks get distinct names at any depth. Children are reaped by the kernel
//! (SIGCHLD is ignored in a VMM that has forked).

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

pub use vmm_proto::control::{ChildReport, ChildStatus, ForkReport};

use crate::builder::{Source, Vmm};
use crate::config::VmConfig;
use crate::machine::Machine;

/// Errors forking.
#[derive(Debug, thiserror::Error)]
pub enum ForkError {
    /// The request was out of range.
    #[error("Fork count must be 1..={max}, got {count}")]
    Count {
        /// Requested.
        count: u32,
        /// Allowed.
        max: u32,
    },
    /// Pausing or capturing failed.
    #[error("Cannot capture the VM for fork: {0}")]
    Capture(String),
    /// A disk layer could not be sealed or created.
    #[error("Cannot fork disk {index}")]
    Disk {
        /// Disk index.
        index: usize,
        /// Why.
        #[source]
        source: crate::disk::LayerError,
    },
    /// Guest RAM could not be frozen.
    #[error("Cannot freeze guest memory")]
    Memory(#[source] crate::vstate::memory::MemoryError),
    /// fork(2) or pipe(2) failed.
    #[error("fork failed")]
    Fork(#[source] std::io::Error),
}

/// Most children in one request.
pub const MAX_FORKS: u32 = 128;
/// How long the parent waits for a child's report.
const CHILD_REPORT_TIMEOUT: Duration = Duration::from_secs(20);

fn suffixed(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Closes every fd of this process except stdio and `keep`.
fn close_inherited(keep: &[RawFd]) {
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    for fd in fds {
        if fd > 2 && !keep.contains(&fd) {
            // SAFETY: closing an fd number this process inherited; the
            // objects that owned them in the parent are never used or
            // dropped in the child (it never returns to them).
            unsafe { libc::close(fd) };
        }
    }
}

/// The child side: never returns.
fn run_child(
    report: OwnedFd,
    go: OwnedFd,
    config: VmConfig,
    snapshot: crate::snapshot::VmSnapshot,
    memory: vm_memory::GuestMemoryMmap,
    memory_file: Option<PathBuf>,
    start_paused: bool,
) -> ! {
    // Guest RAM's files stay open: the regions own those fds.
    let mut keep: Vec<RawFd> = memory
        .iter()
        .filter_map(|r| r.file_offset().map(|f| f.file().as_raw_fd()))
        .collect();
    keep.push(report.as_raw_fd());
    keep.push(go.as_raw_fd());
    // A jailed VMM can no longer open /dev/kvm by its path.
    keep.extend(crate::vstate::vm::preopened_kvm_fd());
    close_inherited(&keep);
    // Wait for the parent to finish forking (it closes the other end of
    // `go` then, or dies): children building their VMs meanwhile would
    // take the CPU from the parent, whose guest stands still until the
    // last fork(2).
    let _ = std::io::copy(&mut std::fs::File::from(go), &mut std::io::sink());
    // SAFETY: restoring the default disposition in a single-threaded child.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) };
    let mut pipe = std::fs::File::from(report);
    let built = Vmm::build_from(
        &config,
        Source::Restore {
            snapshot: Box::new(snapshot),
            memory,
            memory_file,
            start_paused,
        },
    );
    let code = match built {
        Ok(vmm) => {
            let _ = pipe.write_all(b"ok");
            drop(pipe);
            match vmm.run() {
                Ok((reason, _)) => reason.exit_code(),
                Err(_) => 1,
            }
        }
        Err(e) => {
            let _ = pipe.write_all(crate::control::error_chain(&e).as_bytes());
            1
        }
    };
    std::process::exit(code)
}

fn child_config(parent: &VmConfig, tag: &str, tops: &[Option<PathBuf>]) -> VmConfig {
    let mut c = parent.clone();
    c.control_socket = suffixed(&parent.control_socket, tag);
    c.serial_log = suffixed(&parent.serial_log, tag);
    if let Some(v) = c.vsock.as_mut() {
        v.uds_path = suffixed(&v.uds_path, tag);
    }
    for (disk, top) in c.disks.iter_mut().zip(tops) {
        if let Some(top) = top {
            disk.layers.push(suffixed(top, tag));
        }
    }
    c
}

fn read_report(fd: OwnedFd) -> ChildStatus {
    let mut f = std::fs::File::from(fd);
    let mut pfd = libc::pollfd {
        fd: f.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let ready = unsafe { libc::poll(&mut pfd, 1, CHILD_REPORT_TIMEOUT.as_millis() as i32) };
    if ready <= 0 {
        return ChildStatus::Failed("no report from the child in time".into());
    }
    let mut s = String::new();
    let _ = f.read_to_string(&mut s);
    if s.is_empty() {
        ChildStatus::Failed("child exited before reporting".into())
    } else {
        ChildStatus::from(s)
    }
}

impl Machine {
    /// Forks the running VM into `count` children (see the module docs);
    /// with `start_paused` the children wait for `resume`.
    pub fn fork(&mut self, count: u32, start_paused: bool) -> Result<ForkReport, ForkError> {
        if count == 0 || count > MAX_FORKS {
            return Err(ForkError::Count {
                count,
                max: MAX_FORKS,
            });
        }
        let t = Instant::now();
        let was_paused = self.vcpus.is_paused();
        if !was_paused {
            self.vcpus
                .pause()
                .map_err(|e| ForkError::Capture(e.to_string()))?;
        }
        let vcpu_pause_ms = t.elapsed().as_secs_f64() * 1e3;
        let result = self.fork_paused(count, t, start_paused);
        if !was_paused {
            self.vcpus
                .resume()
                .map_err(|e| ForkError::Capture(e.to_string()))?;
        }
        let (mut report, pipes) = result?;
        report.vcpu_pause_ms = vcpu_pause_ms;
        for (child, fd) in report.children.iter_mut().zip(pipes) {
            child.status = read_report(fd);
        }
        Ok(report)
    }

    fn fork_paused(
        &mut self,
        count: u32,
        started: Instant,
        start_paused: bool,
    ) -> Result<(ForkReport, Vec<OwnedFd>), ForkError> {
        for t in &self.transports {
            if let Ok(t) = t.lock() {
                t.device().flush();
            }
        }
        let t_capture = Instant::now();
        let snapshot = self
            .capture()
            .map_err(|e| ForkError::Capture(crate::control::error_chain(&e)))?;
        // Seal every writable disk's top; remember the top path per disk.
        let mut tops: Vec<Option<PathBuf>> = Vec::new();
        for (index, disk) in self.config.disks.iter().enumerate() {
            if disk.read_only {
                tops.push(None);
                continue;
            }
            let transport = &self.transports[index];
            let mut t = transport
                .lock()
                .map_err(|_| ForkError::Capture("disk lock poisoned".into()))?;
            if let Some(d) = t.device_mut().disk_mut() {
                d.seal_top()
                    .map_err(|source| ForkError::Disk { index, source })?;
            }
            tops.push(disk.layers.last().cloned());
        }
        let capture_ms = t_capture.elapsed().as_secs_f64() * 1e3;
        // Freeze RAM that is still the shared memfd: from here on parent
        // and children all map it privately, and fork(2) has no page
        // tables of guest RAM to copy.
        let t_freeze = Instant::now();
        let mut retired = crate::vstate::memory::Retired::default();
        if let Some(mut from) = self.shared_ram_from {
            let frozen =
                crate::vstate::memory::freeze_shared(&self.memory, &mut from, &mut retired);
            self.shared_ram_from = (from < self.memory.num_regions()).then_some(from);
            frozen.map_err(ForkError::Memory)?;
        }
        let freeze_ms = t_freeze.elapsed().as_secs_f64() * 1e3;
        let mut fork_syscalls_ms = 0.0;
        self.fork_generation += 1;
        let generation = self.fork_generation;
        // SAFETY: setting a signal disposition; no handler code runs.
        unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };

        let mut children = Vec::new();
        let mut pipes = Vec::new();
        let (go_read, go_write) = pipe().map_err(ForkError::Fork)?;
        for k in 0..count {
            let tag = format!(".f{generation}c{k}");
            let config = child_config(&self.config, &tag, &tops);
            let mut child_snapshot = crate::snapshot::VmSnapshot {
                config: config.clone(),
                memory_regions: snapshot.memory_regions.clone(),
                vcpus: Vec::new(),
                vm: crate::snapshot::VmKvmState {
                    irqchips: Vec::new(),
                    pit: snapshot.vm.pit,
                    clock: snapshot.vm.clock,
                },
                serial: snapshot.serial.clone(),
                virtio: snapshot.virtio.clone(),
            };
            let (read_end, write_end) = pipe().map_err(ForkError::Fork)?;
            let memory = self.memory.clone();
            let t_fork = Instant::now();
            // SAFETY: the vCPU threads are paused in a channel wait and hold
            // no lock; this thread holds none either (transport locks are
            // released above). The child only runs `run_child`, which never
            // returns into the parent's frames.
            let pid = unsafe { libc::fork() };
            fork_syscalls_ms += t_fork.elapsed().as_secs_f64() * 1e3;
            if pid < 0 {
                return Err(ForkError::Fork(std::io::Error::last_os_error()));
            }
            if pid == 0 {
                drop(read_end);
                drop(go_write);
                // The child rebuilds from the parent's exact state; what was
                // left empty above is copied here, in the child, so the
                // parent does not clone large vCPU state per child.
                child_snapshot.vcpus = snapshot.vcpus;
                child_snapshot.vm.irqchips = snapshot.vm.irqchips;
                let source = self.memory_source.clone();
                run_child(
                    write_end,
                    go_read,
                    config,
                    child_snapshot,
                    memory,
                    source,
                    start_paused,
                );
            }
            drop(write_end);
            children.push(ChildReport {
                pid,
                control_socket: config.control_socket.clone(),
                vsock_uds: config.vsock.as_ref().map(|v| v.uds_path.clone()),
                serial_log: config.serial_log.clone(),
                disk_tops: config
                    .disks
                    .iter()
                    .zip(&tops)
                    .filter(|(_, t)| t.is_some())
                    .filter_map(|(d, _)| d.layers.last().cloned())
                    .collect(),
                // `fork` replaces it with the child's own report.
                status: ChildStatus::Failed("child has not reported yet".into()),
            });
            pipes.push(read_end);
        }
        // Every child is forked: let them build their VMs.
        drop(go_write);
        drop(go_read);
        // The parent's own new top layers.
        let ptag = format!(".f{generation}p");
        for (index, top) in tops.iter().enumerate() {
            let Some(top) = top else { continue };
            let new_top = suffixed(top, &ptag);
            let mut t = self.transports[index]
                .lock()
                .map_err(|_| ForkError::Capture("disk lock poisoned".into()))?;
            if let Some(d) = t.device_mut().disk_mut() {
                d.push_layer(&new_top)
                    .map_err(|source| ForkError::Disk { index, source })?;
            }
            self.config.disks[index].layers.push(new_top);
        }
        let parent_paused_ms = started.elapsed().as_secs_f64() * 1e3;
        retired.release_in_background();
        Ok((
            ForkReport {
                children,
                parent_paused_ms,
                vcpu_pause_ms: 0.0,
                capture_ms,
                freeze_ms,
                fork_syscalls_ms,
            },
            pipes,
        ))
    }
}
