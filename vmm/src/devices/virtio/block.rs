//! virtio-blk (virtio 1.2 §5.2) over a [`LayeredDisk`].
//!
//! A request is a descriptor chain: a 16-byte header (type u32, reserved
//! u32, sector u64) the device reads, data buffers, and a final one-byte
//! status the device writes. Supported: IN, OUT, FLUSH, GET_ID. A chain
//! whose buffers lie outside guest RAM, have the wrong direction or reach
//! past the disk's end completes with VIRTIO_BLK_S_IOERR; nothing outside
//! the guest's memory is ever touched (every access goes through
//! `GuestMemoryMmap`, which checks bounds).

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryMmap};

use super::{FdChanges, VIRTIO_F_VERSION_1, VirtioDevice, device_type};
use crate::disk::LayeredDisk;

const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;

const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;

const SECTOR: u64 = 512;
/// Largest data payload of one request.
const MAX_REQUEST_BYTES: u64 = 4 << 20;
const QUEUE_SIZES: &[u16] = &[256];
const ID_LEN: usize = 20;

/// A block device.
pub struct Block {
    disk: LayeredDisk,
    id: String,
}

impl Block {
    /// A device serving `disk`, answering GET_ID with `id` (≤ 20 bytes).
    pub fn new(disk: LayeredDisk, id: &str) -> Self {
        Self {
            disk,
            id: id.chars().take(ID_LEN).collect(),
        }
    }

    /// The disk.
    pub fn disk(&self) -> &LayeredDisk {
        &self.disk
    }

    /// Serves one request; returns the used length.
    fn serve(&mut self, descs: &[Descriptor], mem: &GuestMemoryMmap) -> u32 {
        let Some((status_desc, rest)) = descs.split_last() else {
            return 0;
        };
        if !status_desc.is_write_only() || status_desc.len() < 1 {
            return 0;
        }
        let (status, written) = match rest.split_first() {
            Some((header, data)) => self.execute(header, data, mem),
            None => (S_IOERR, 0),
        };
        if mem.write_obj(status, status_desc.addr()).is_err() {
            return 0;
        }
        written + 1
    }

    fn execute(
        &mut self,
        header: &Descriptor,
        data: &[Descriptor],
        mem: &GuestMemoryMmap,
    ) -> (u8, u32) {
        if header.is_write_only() || header.len() < 16 {
            return (S_IOERR, 0);
        }
        let mut raw = [0u8; 16];
        if mem.read_slice(&mut raw, header.addr()).is_err() {
            return (S_IOERR, 0);
        }
        let kind = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
        let mut s = [0u8; 8];
        s.copy_from_slice(&raw[8..16]);
        let sector = u64::from_le_bytes(s);
        let total: u64 = data.iter().map(|d| u64::from(d.len())).sum();
        match kind {
            T_IN | T_OUT => {
                let want_write_only = kind == T_IN;
                if data.iter().any(|d| d.is_write_only() != want_write_only)
                    || total > MAX_REQUEST_BYTES
                {
                    return (S_IOERR, 0);
                }
                let Some(mut offset) = sector.checked_mul(SECTOR) else {
                    return (S_IOERR, 0);
                };
                if offset
                    .checked_add(total)
                    .is_none_or(|e| e > self.disk.size())
                {
                    return (S_IOERR, 0);
                }
                let mut moved = 0u32;
                for d in data {
                    let ok = if kind == T_IN {
                        // Straight into guest RAM when the buffer lies in
                        // one region (always, for sane drivers); else bounce.
                        match mem.get_slice(d.addr(), d.len() as usize) {
                            Ok(slice) => self.disk.read_to_guest(offset, &slice).is_ok(),
                            Err(_) => {
                                let mut buf = vec![0u8; d.len() as usize];
                                self.disk.read_at(offset, &mut buf).is_ok()
                                    && mem.write_slice(&buf, d.addr()).is_ok()
                            }
                        }
                    } else {
                        let mut buf = vec![0u8; d.len() as usize];
                        mem.read_slice(&mut buf, d.addr()).is_ok()
                            && self.disk.write_at(offset, &buf).is_ok()
                    };
                    if !ok {
                        return (S_IOERR, if kind == T_IN { moved } else { 0 });
                    }
                    offset += u64::from(d.len());
                    moved += d.len();
                }
                (S_OK, if kind == T_IN { moved } else { 0 })
            }
            T_FLUSH => match self.disk.flush() {
                Ok(()) => (S_OK, 0),
                Err(_) => (S_IOERR, 0),
            },
            T_GET_ID => {
                let Some(d) = data.first().filter(|d| d.is_write_only()) else {
                    return (S_IOERR, 0);
                };
                let mut id = [0u8; ID_LEN];
                id[..self.id.len()].copy_from_slice(self.id.as_bytes());
                let n = (d.len() as usize).min(ID_LEN);
                match mem.write_slice(&id[..n], d.addr()) {
                    Ok(()) => (S_OK, n as u32),
                    Err(_) => (S_IOERR, 0),
                }
            }
            _ => (S_UNSUPP, 0),
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn features(&self) -> u64 {
        let ro = if self.disk.is_read_only() {
            VIRTIO_BLK_F_RO
        } else {
            0
        };
        VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH | ro
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn flush(&self) {
        let _ = self.disk.flush();
    }

    fn disk_mut(&mut self) -> Option<&mut LayeredDisk> {
        Some(&mut self.disk)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // capacity (u64, sectors) is the only field offered.
        let config = (self.disk.size() / SECTOR).to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = config.get(offset as usize + i).copied().unwrap_or(0);
        }
    }

    fn process_queue(
        &mut self,
        index: usize,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
        _watch: &mut FdChanges,
    ) -> bool {
        let Some(q) = queues.get_mut(index) else {
            return false;
        };
        let mut used = false;
        while let Some(chain) = q.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let descs: Vec<Descriptor> = chain.collect();
            let len = self.serve(&descs, mem);
            if q.add_used(mem, head, len).is_ok() {
                used = true;
            }
        }
        used
    }
}
