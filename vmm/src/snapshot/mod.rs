//! Snapshots: a paused VM written to a directory, and read back.
//!
//! A snapshot directory holds two files:
//!
//! - `state`: the versioned, checksummed state file.
//!
//!   | offset | size | field |
//!   | --- | --- | --- |
//!   | 0 | 8 | magic `FRGSNAP1` |
//!   | 8 | 4 | format version (LE, currently 1) |
//!   | 12 | 8 | payload length in bytes (LE) |
//!   | 20 | 4 | CRC-32 (IEEE) of the payload (LE) |
//!   | 24 | n | payload: [`VmSnapshot`] as JSON |
//!
//!   The payload holds the VM config (with the disk layer chain), every
//!   vCPU's KVM state (see `vstate::vcpu_state` for the save and restore
//!   order), the irqchip (PIC ×2, IOAPIC), PIT and kvmclock, the serial
//!   UART registers and each virtio-mmio transport with its queues.
//! - `memory`: guest RAM, regions back to back in guest-address order,
//!   as a sparse file: all-zero pages are holes. Restore maps it
//!   MAP_PRIVATE, so pages load on first touch and the file never changes.
//!
//! Snapshots are taken with the vCPUs paused, on the event-loop thread, so
//! no virtio request is half-processed: every popped chain has been
//! completed into its used ring.

pub mod memory_file;

use std::io::Read;
use std::path::{Path, PathBuf};

use kvm_bindings::{kvm_clock_data, kvm_irqchip, kvm_pit_state2};
use serde::{Deserialize, Serialize};

use crate::config::VmConfig;
use crate::devices::serial::SerialSnapshot;
use crate::devices::virtio::mmio::TransportSnapshot;
use crate::vstate::vcpu_state::VcpuSnapshot;

/// Magic at the start of a state file.
pub const MAGIC: &[u8; 8] = b"FRGSNAP1";
/// Current state format version.
pub const VERSION: u32 = 1;
const HEADER_LEN: usize = 24;
/// The state file in a snapshot directory.
pub const STATE_FILE: &str = "state";
/// The memory file in a snapshot directory.
pub const MEMORY_FILE: &str = "memory";

/// The KVM state of the VM itself.
#[derive(Serialize, Deserialize)]
pub struct VmKvmState {
    /// PIC master, PIC slave, IOAPIC.
    pub irqchips: Vec<kvm_irqchip>,
    /// The PIT.
    pub pit: kvm_pit_state2,
    /// kvmclock.
    pub clock: kvm_clock_data,
}

/// Everything needed to bring a VM back.
#[derive(Serialize, Deserialize)]
pub struct VmSnapshot {
    /// The VM's configuration, disk chains as they are now.
    pub config: VmConfig,
    /// Guest RAM regions: (guest address, size).
    pub memory_regions: Vec<(u64, u64)>,
    /// Per vCPU, in index order.
    pub vcpus: Vec<VcpuSnapshot>,
    /// VM-wide KVM state.
    pub vm: VmKvmState,
    /// The UART.
    pub serial: SerialSnapshot,
    /// virtio-mmio transports in window order.
    pub virtio: Vec<TransportSnapshot>,
}

/// Errors reading or writing snapshots.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// File I/O failed.
    #[error("Snapshot I/O on {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not a state file.
    #[error("{0} is not a forge-vmm state file")]
    BadMagic(PathBuf),
    /// A version this build cannot read.
    #[error("State file version {found} is not supported (this build reads {VERSION})")]
    Version {
        /// The file's version.
        found: u32,
    },
    /// The file ends early.
    #[error("State file {0} is truncated")]
    Truncated(PathBuf),
    /// The checksum does not match.
    #[error("State file {0} is corrupted (checksum mismatch)")]
    Checksum(PathBuf),
    /// The payload does not decode.
    #[error("State file payload is invalid")]
    Decode(#[source] serde_json::Error),
    /// The memory file does not match the state.
    #[error("Memory file {path}: {reason}")]
    Memory {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Saving a vCPU or VM state failed.
    #[error("Cannot save {what}: {message}")]
    Save {
        /// Which part.
        what: &'static str,
        /// Why.
        message: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError {
    let path = path.to_owned();
    move |source| SnapshotError::Io { path, source }
}

/// CRC-32 (IEEE 802.3, reflected), bitwise: state files are small.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for b in data {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xedb8_8320 & mask);
        }
    }
    !crc
}

/// Encodes `snapshot` as state-file bytes.
pub fn encode(snapshot: &VmSnapshot) -> Result<Vec<u8>, SnapshotError> {
    let payload = serde_json::to_vec(snapshot).map_err(SnapshotError::Decode)?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Decodes state-file bytes read from `path`.
pub fn decode(path: &Path, bytes: &[u8]) -> Result<VmSnapshot, SnapshotError> {
    if bytes.len() < 8 || &bytes[..8] != MAGIC {
        return Err(SnapshotError::BadMagic(path.to_owned()));
    }
    if bytes.len() < HEADER_LEN {
        return Err(SnapshotError::Truncated(path.to_owned()));
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version != VERSION {
        return Err(SnapshotError::Version { found: version });
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[12..20]);
    let len = u64::from_le_bytes(len);
    let crc = u32::from_le_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]);
    let payload = &bytes[HEADER_LEN..];
    if (payload.len() as u64) < len {
        return Err(SnapshotError::Truncated(path.to_owned()));
    }
    let payload = &payload[..len as usize];
    if crc32(payload) != crc {
        return Err(SnapshotError::Checksum(path.to_owned()));
    }
    serde_json::from_slice(payload).map_err(SnapshotError::Decode)
}

/// Writes the state file into `dir` (atomically: temp file + rename; with
/// `durable`, synced before the rename and the directory after it).
pub fn write_state(dir: &Path, snapshot: &VmSnapshot, durable: bool) -> Result<u64, SnapshotError> {
    use std::io::Write;
    let bytes = encode(snapshot)?;
    let path = dir.join(STATE_FILE);
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(&bytes).map_err(io(&tmp))?;
    if durable {
        f.sync_all().map_err(io(&tmp))?;
    }
    drop(f);
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    if durable {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
    }
    Ok(bytes.len() as u64)
}

/// Reads and checks the state file in `dir`.
pub fn read_state(dir: &Path) -> Result<VmSnapshot, SnapshotError> {
    let path = dir.join(STATE_FILE);
    let mut bytes = Vec::new();
    std::fs::File::open(&path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io(&path))?;
    decode(&path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn damaged_state_files_are_rejected() {
        let p = Path::new("state");
        assert!(matches!(
            decode(p, b"nonsense"),
            Err(SnapshotError::BadMagic(_))
        ));
        let mut good = Vec::new();
        good.extend_from_slice(MAGIC);
        good.extend_from_slice(&VERSION.to_le_bytes());
        good.extend_from_slice(&4u64.to_le_bytes());
        good.extend_from_slice(&crc32(b"null").to_le_bytes());
        good.extend_from_slice(b"null");
        // Decodes past the checks (then fails: null is not a VmSnapshot).
        assert!(matches!(decode(p, &good), Err(SnapshotError::Decode(_))));
        let mut flipped = good.clone();
        flipped[25] ^= 1;
        assert!(matches!(
            decode(p, &flipped),
            Err(SnapshotError::Checksum(_))
        ));
        assert!(matches!(
            decode(p, &good[..good.len() - 1]),
            Err(SnapshotError::Truncated(_))
        ));
        let mut v2 = good.clone();
        v2[8] = 2;
        assert!(matches!(
            decode(p, &v2),
            Err(SnapshotError::Version { found: 2 })
        ));
    }
}
