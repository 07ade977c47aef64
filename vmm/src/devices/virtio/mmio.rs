//! The virtio-mmio transport, version 2 (virtio 1.2 §4.2.2).
//!
//! Register map (offsets in the device's 4 KiB window; 32-bit accesses):
//!
//! | offset | register |
//! | --- | --- |
//! | 0x000 | MagicValue `virt` · 0x004 Version (2) · 0x008 DeviceID · 0x00c VendorID |
//! | 0x010 | DeviceFeatures · 0x014 DeviceFeaturesSel |
//! | 0x020 | DriverFeatures · 0x024 DriverFeaturesSel |
//! | 0x030 | QueueSel · 0x034 QueueNumMax · 0x038 QueueNum · 0x044 QueueReady |
//! | 0x050 | QueueNotify (served by an ioeventfd per queue) |
//! | 0x060 | InterruptStatus · 0x064 InterruptACK · 0x070 Status |
//! | 0x080/0x084 | QueueDesc low/high · 0x090/0x094 QueueDriver · 0x0a0/0x0a4 QueueDevice |
//! | 0x0fc | ConfigGeneration · 0x100.. device configuration |
//!
//! The guest is untrusted: a write out of order (queue addresses while the
//! queue is live, features after FEATURES_OK), of the wrong width, or with
//! rings outside guest RAM never reaches the device; a device whose rings
//! are invalid at DRIVER_OK is marked DEVICE_NEEDS_RESET and stays inert.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestMemoryMmap;

use super::VirtioDevice;
use crate::devices::IrqLine;
use crate::devices::bus::BusDevice;

const MAGIC: u32 = 0x7472_6976;
const VERSION: u32 = 2;
const VENDOR: u32 = 0x4652_4745; // "FRGE"

/// Device status bits.
pub mod status {
    /// ACKNOWLEDGE.
    pub const ACKNOWLEDGE: u32 = 1;
    /// DRIVER.
    pub const DRIVER: u32 = 2;
    /// DRIVER_OK.
    pub const DRIVER_OK: u32 = 4;
    /// FEATURES_OK.
    pub const FEATURES_OK: u32 = 8;
    /// DEVICE_NEEDS_RESET.
    pub const NEEDS_RESET: u32 = 0x40;
    /// FAILED.
    pub const FAILED: u32 = 0x80;
}

/// InterruptStatus bit: a used ring changed.
pub const INT_VRING: u32 = 1;
/// InterruptStatus bit: configuration changed.
pub const INT_CONFIG: u32 = 2;

/// One queue in a snapshot (virtio-queue's `QueueState`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QueueSnapshot {
    /// Largest size offered.
    pub max_size: u16,
    /// Next avail index to read.
    pub next_avail: u16,
    /// Next used index to write.
    pub next_used: u16,
    /// VIRTIO_F_RING_EVENT_IDX negotiated.
    pub event_idx: bool,
    /// Size chosen by the driver.
    pub size: u16,
    /// QueueReady.
    pub ready: bool,
    /// Descriptor table address.
    pub desc_table: u64,
    /// Driver (avail) ring address.
    pub avail_ring: u64,
    /// Device (used) ring address.
    pub used_ring: u64,
}

/// A transport's registers and queues in a snapshot.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TransportSnapshot {
    /// Device type, checked on restore.
    pub device_type: u32,
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// Features the driver accepted.
    pub driver_features: u64,
    /// QueueSel.
    pub queue_sel: u32,
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// Status.
    pub status: u32,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// The queues.
    pub queues: Vec<QueueSnapshot>,
}

/// One virtio-mmio device window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    queues: Vec<Queue>,
    mem: GuestMemoryMmap,
    irq: IrqLine,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    interrupt_status: u32,
    status: u32,
    config_generation: u32,
    /// Fd changes from queue work, applied by the event loop.
    pending_watch: super::FdChanges,
}

/// A transport shared by the vCPUs (registers) and the event loop (queues).
pub type SharedTransport = Arc<Mutex<MmioTransport>>;

impl MmioTransport {
    /// Wraps `device`; interrupts go to `irq`.
    pub fn new(device: Box<dyn VirtioDevice>, mem: GuestMemoryMmap, irq: IrqLine) -> Self {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|max| Queue::new(*max).expect("queue sizes are powers of two"))
            .collect();
        Self {
            device,
            queues,
            mem,
            irq,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            interrupt_status: 0,
            status: 0,
            config_generation: 0,
            pending_watch: super::FdChanges::default(),
        }
    }

    /// The device function.
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    /// The device function, mutably.
    pub fn device_mut(&mut self) -> &mut dyn VirtioDevice {
        self.device.as_mut()
    }

    /// Number of queues.
    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    /// The interrupt line (for irqfd registration).
    pub fn irq(&self) -> &IrqLine {
        &self.irq
    }

    /// Whether the driver finished set-up and the device is usable.
    pub fn is_active(&self) -> bool {
        self.status & status::DRIVER_OK != 0 && self.status & status::NEEDS_RESET == 0
    }

    fn selected(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn signal_used(&mut self) {
        self.interrupt_status |= INT_VRING;
        let _ = self.irq.trigger();
    }

    /// Processes queue `index` after a notification.
    pub fn notify(&mut self, index: usize) {
        if !self.is_active() || index >= self.queues.len() {
            return;
        }
        if self
            .device
            .process_queue(index, &mut self.queues, &self.mem, &mut self.pending_watch)
        {
            self.signal_used();
        }
    }

    /// An extra device fd is ready.
    pub fn device_fd_ready(
        &mut self,
        fd: std::os::fd::RawFd,
        events: vmm_sys_util::epoll::EventSet,
        watch: &mut super::FdChanges,
    ) {
        let active = self.is_active();
        if self.device.process_fd(
            fd,
            events,
            if active { &mut self.queues } else { &mut [] },
            &self.mem,
            watch,
        ) && active
        {
            self.signal_used();
        }
    }

    /// Registers and queue positions for a snapshot.
    pub fn snapshot(&self) -> TransportSnapshot {
        TransportSnapshot {
            device_type: self.device.device_type(),
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            interrupt_status: self.interrupt_status,
            status: self.status,
            config_generation: self.config_generation,
            queues: self
                .queues
                .iter()
                .map(|q| {
                    let s = q.state();
                    QueueSnapshot {
                        max_size: s.max_size,
                        next_avail: s.next_avail,
                        next_used: s.next_used,
                        event_idx: s.event_idx_enabled,
                        size: s.size,
                        ready: s.ready,
                        desc_table: s.desc_table,
                        avail_ring: s.avail_ring,
                        used_ring: s.used_ring,
                    }
                })
                .collect(),
        }
    }

    /// Loads registers and queues from a snapshot; the device function is
    /// re-activated if the driver had finished set-up.
    pub fn restore(&mut self, s: &TransportSnapshot) -> Result<(), String> {
        if s.device_type != self.device.device_type() || s.queues.len() != self.queues.len() {
            return Err(format!(
                "snapshot has device type {} with {} queues, the VM has {} with {}",
                s.device_type,
                s.queues.len(),
                self.device.device_type(),
                self.queues.len()
            ));
        }
        let mut queues = Vec::with_capacity(s.queues.len());
        for q in &s.queues {
            let state = QueueState {
                max_size: q.max_size,
                next_avail: q.next_avail,
                next_used: q.next_used,
                event_idx_enabled: q.event_idx,
                size: q.size,
                ready: q.ready,
                desc_table: q.desc_table,
                avail_ring: q.avail_ring,
                used_ring: q.used_ring,
            };
            queues.push(Queue::try_from(state).map_err(|e| e.to_string())?);
        }
        self.queues = queues;
        self.device_features_sel = s.device_features_sel;
        self.driver_features_sel = s.driver_features_sel;
        self.driver_features = s.driver_features;
        self.queue_sel = s.queue_sel;
        self.interrupt_status = s.interrupt_status;
        self.status = s.status;
        self.config_generation = s.config_generation;
        if self.is_active() {
            self.device.activate(self.driver_features);
        }
        Ok(())
    }

    /// Processes every queue once (after a restore, work the guest queued
    /// before the snapshot is picked up), then tells the device it was
    /// restored.
    pub fn kick_after_restore(&mut self) {
        if !self.is_active() {
            return;
        }
        let used = self.device.restored(&mut self.queues, &self.mem);
        for i in 0..self.queues.len() {
            self.notify(i);
        }
        if used {
            self.signal_used();
        }
    }

    /// Fd changes the device asked for since the last call.
    pub fn take_watch_changes(&mut self) -> super::FdChanges {
        std::mem::take(&mut self.pending_watch)
    }

    fn reset(&mut self) {
        for q in &mut self.queues {
            q.reset();
        }
        self.device.reset();
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.interrupt_status = 0;
        self.status = 0;
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        // Bits are only ever added until reset.
        if value & old != old {
            return;
        }
        let added = value & !old;
        if added & status::FEATURES_OK != 0 && self.driver_features & !(self.device.features()) != 0
        {
            // The driver accepted something never offered: refuse FEATURES_OK.
            self.status = value & !status::FEATURES_OK;
            return;
        }
        if added & status::DRIVER_OK != 0 {
            let ready = old & status::FEATURES_OK != 0
                && self
                    .queues
                    .iter()
                    .all(|q| !q.ready() || q.is_valid(&self.mem));
            if !ready {
                self.status = value | status::NEEDS_RESET;
                self.interrupt_status |= INT_CONFIG;
                let _ = self.irq.trigger();
                return;
            }
            self.status = value;
            self.device.activate(self.driver_features);
            return;
        }
        self.status = value;
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            0x000 => MAGIC,
            0x004 => VERSION,
            0x008 => self.device.device_type(),
            0x00c => VENDOR,
            0x010 => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            0x034 => self.selected().map_or(0, |q| u32::from(q.max_size())),
            0x044 => self.selected().map_or(0, |q| u32::from(q.ready())),
            0x060 => self.interrupt_status,
            0x070 => self.status,
            0x0fc => self.config_generation,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, v: u32) {
        let features_open =
            self.status & status::DRIVER != 0 && self.status & status::FEATURES_OK == 0;
        let queue_open =
            self.status & status::FEATURES_OK != 0 && self.status & status::DRIVER_OK == 0;
        match offset {
            0x014 => self.device_features_sel = v,
            0x020 if features_open => match self.driver_features_sel {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
                1 => {
                    self.driver_features =
                        (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                }
                _ => {}
            },
            0x024 => self.driver_features_sel = v,
            0x030 => self.queue_sel = v,
            0x038 if queue_open => {
                if let Some(q) = self.selected()
                    && v <= u32::from(q.max_size())
                {
                    q.set_size(v as u16);
                }
            }
            0x044 if queue_open => {
                if let Some(q) = self.selected() {
                    q.set_ready(v == 1);
                }
            }
            0x050 => self.notify(v as usize),
            0x064 => self.interrupt_status &= !v,
            0x070 => self.set_status(v),
            0x080 | 0x084 | 0x090 | 0x094 | 0x0a0 | 0x0a4 if queue_open => {
                if let Some(q) = self.selected() {
                    if q.ready() {
                        return;
                    }
                    let (low, high) = if offset & 4 == 0 {
                        (Some(v), None)
                    } else {
                        (None, Some(v))
                    };
                    match offset & !4 {
                        0x080 => q.set_desc_table_address(low, high),
                        0x090 => q.set_avail_ring_address(low, high),
                        _ => q.set_used_ring_address(low, high),
                    }
                }
            }
            _ => {}
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= 0x100 {
            self.device.read_config(offset - 0x100, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_register(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= 0x100 {
            self.device.write_config(offset - 0x100, data);
            self.config_generation = self.config_generation.wrapping_add(1);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            return;
        }
        let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        self.write_register(offset, v);
    }
}
