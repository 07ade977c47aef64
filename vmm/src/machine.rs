//! A running VM as the control socket sees it: vCPU threads, KVM VM,
//! guest memory and devices, and the operations on all of them at once
//! (pause, resume, snapshot). Owned by the event-loop thread.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use vm_memory::GuestMemoryMmap;
pub use vmm_proto::control::SnapshotReport;

use crate::config::VmConfig;
use crate::devices::serial::SerialConsole;
use crate::devices::virtio::mmio::SharedTransport;
use crate::snapshot::memory_file::Scan;
use crate::snapshot::{self, SnapshotError, VmSnapshot, memory_file};
use crate::vcpus::VcpuSet;
use crate::vstate::exit::ExitLatch;
use crate::vstate::vm::Vm;

/// The live parts of one VM. Field order is drop order: vCPU threads end
/// before the VM fd closes, and memory is unmapped last.
pub struct Machine {
    /// vCPU threads.
    pub vcpus: VcpuSet,
    /// The config, kept current (disk chains change on fork).
    pub config: VmConfig,
    /// The end-of-VM latch.
    pub latch: Arc<ExitLatch>,
    /// The UART.
    pub serial: Arc<Mutex<SerialConsole>>,
    /// virtio transports in window order.
    pub transports: Vec<SharedTransport>,
    /// The KVM VM.
    pub vm: Vm,
    /// Guest RAM.
    pub memory: GuestMemoryMmap,
    /// Forks made so far (names the children's paths).
    pub fork_generation: u32,
    /// The memory file guest RAM is privately mapped from, if restored.
    pub memory_source: Option<PathBuf>,
    /// Guest RAM regions from this index on are still the booted VM's
    /// shared memfd mapping (no fork has frozen them yet): the next fork
    /// freezes them instead of copying page tables (see `crate::fork`).
    /// None once every region is private.
    pub shared_ram_from: Option<usize>,
    /// Snapshots taken so far (names new disk top layers).
    pub snapshot_generation: u32,
}

fn suffixed(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

fn save_err(what: &'static str) -> impl FnOnce(String) -> SnapshotError {
    move |message| SnapshotError::Save { what, message }
}

impl Machine {
    /// The whole VM state; the vCPUs must be paused.
    pub fn capture(&mut self) -> Result<VmSnapshot, SnapshotError> {
        let vcpus = self
            .vcpus
            .save_all()
            .map_err(|e| save_err("vCPU")(e.to_string()))?;
        let vm = self
            .vm
            .save_state()
            .map_err(|e| save_err("VM")(e.to_string()))?;
        let serial = self
            .serial
            .lock()
            .map_err(|_| save_err("serial")("lock poisoned".into()))?
            .snapshot();
        let mut virtio = Vec::with_capacity(self.transports.len());
        for t in &self.transports {
            let t = t
                .lock()
                .map_err(|_| save_err("virtio")("lock poisoned".into()))?;
            virtio.push(t.snapshot());
        }
        Ok(VmSnapshot {
            config: self.config.clone(),
            memory_regions: memory_file::regions_of(&self.memory),
            vcpus,
            vm,
            serial,
            virtio,
        })
    }

    /// Seals the top layer of every writable disk, so the snapshot refers
    /// to layers nobody writes again (any number of restores can stack
    /// their own top on them). A VM that keeps running gets a new top.
    fn seal_disks_for_snapshot(&mut self, keep_running: bool) -> Result<(), SnapshotError> {
        self.snapshot_generation += 1;
        let tag = format!(".s{}", self.snapshot_generation);
        for (index, disk) in self.config.disks.clone().iter().enumerate() {
            let Some(top) = disk.layers.last().filter(|_| !disk.read_only) else {
                continue;
            };
            let mut t = self.transports[index]
                .lock()
                .map_err(|_| save_err("disk")("lock poisoned".into()))?;
            let Some(d) = t.device_mut().disk_mut() else {
                continue;
            };
            d.seal_top().map_err(|e| save_err("disk")(e.to_string()))?;
            if keep_running {
                let new_top = suffixed(top, &tag);
                d.push_layer(&new_top)
                    .map_err(|e| save_err("disk")(e.to_string()))?;
                self.config.disks[index].layers.push(new_top);
            }
        }
        Ok(())
    }

    /// Pauses (if running), writes a snapshot into `dir`, and resumes
    /// unless `stay_paused`. `durable` syncs the files to disk before
    /// answering (a host crash then cannot lose or tear the snapshot).
    pub fn snapshot_to(
        &mut self,
        dir: &Path,
        stay_paused: bool,
        durable: bool,
    ) -> Result<SnapshotReport, SnapshotError> {
        let t = Instant::now();
        let was_paused = self.vcpus.is_paused();
        if !was_paused {
            self.vcpus
                .pause()
                .map_err(|e| save_err("vCPU")(e.to_string()))?;
        }
        let result = (|| {
            std::fs::create_dir_all(dir).map_err(|source| SnapshotError::Io {
                path: dir.to_owned(),
                source,
            })?;
            for t in &self.transports {
                if let Ok(t) = t.lock() {
                    t.device().flush();
                }
            }
            let state = self.capture()?;
            self.seal_disks_for_snapshot(!stay_paused)?;
            let target = dir.join(snapshot::MEMORY_FILE);
            // Into the file RAM is mapped from: only what changed. Anywhere
            // else: what this process holds and what that file holds.
            let scan = match &self.memory_source {
                Some(src) if same_file(src, &target) => Scan::Dirty,
                _ => Scan::Present,
            };
            let memory = memory_file::write(&self.memory, &target, scan, durable)?;
            let state_bytes = snapshot::write_state(dir, &state, durable)?;
            Ok(SnapshotReport {
                dir: dir.to_owned(),
                state_bytes,
                memory_bytes: memory.written,
                memory_scanned_bytes: memory.scanned,
                paused_ms: 0.0,
            })
        })();
        if !was_paused && !stay_paused {
            self.vcpus
                .resume()
                .map_err(|e| save_err("vCPU")(e.to_string()))?;
        }
        result.map(|mut r| {
            r.paused_ms = t.elapsed().as_secs_f64() * 1e3;
            r
        })
    }
}
