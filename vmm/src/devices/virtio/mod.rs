//! virtio devices over the MMIO transport (virtio 1.2 §4.2, version 2).
//!
//! [`mmio::MmioTransport`] owns the registers, the queues and the interrupt
//! line; a [`VirtioDevice`] owns only its function (block, vsock, rng) and
//! is handed the queues and guest memory to process. Queue notifications
//! arrive as ioeventfds on the event loop; interrupts leave as irqfds.

pub mod block;
pub mod mmio;
pub mod rng;
pub mod vsock;
pub mod wiring;

use std::os::fd::RawFd;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;

/// VIRTIO_F_VERSION_1: modern device.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Device type ids.
pub mod device_type {
    /// Block device.
    pub const BLOCK: u32 = 2;
    /// Entropy source.
    pub const RNG: u32 = 4;
    /// Socket device.
    pub const VSOCK: u32 = 19;
}

/// The function of one virtio device.
pub trait VirtioDevice: Send {
    /// Device type id.
    fn device_type(&self) -> u32;
    /// Feature bits offered.
    fn features(&self) -> u64;
    /// Maximum size of each queue; the length is the queue count.
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads device configuration space at `offset`.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device configuration space (ignored by default).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// The driver set DRIVER_OK with `features` accepted.
    fn activate(&mut self, _features: u64) {}
    /// The driver reset the device: drop any in-flight state.
    fn reset(&mut self) {}
    /// Processes queue `index`; returns whether any used ring changed.
    /// `watch` collects host fds to start or stop watching.
    fn process_queue(
        &mut self,
        index: usize,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
        watch: &mut FdChanges,
    ) -> bool;
    /// The layered disk behind this device, if it is a block device.
    fn disk_mut(&mut self) -> Option<&mut crate::disk::LayeredDisk> {
        None
    }
    /// Makes written data durable (before a snapshot).
    fn flush(&self) {}
    /// The VM was restored from a snapshot or forked: reset host-side
    /// state that did not survive (sockets) and tell the guest if the
    /// device has a way to. Returns whether a used ring changed.
    fn restored(&mut self, _queues: &mut [Queue], _mem: &GuestMemoryMmap) -> bool {
        false
    }
    /// Extra fds (host sockets) the device wants watched, beyond queues.
    fn extra_fds(&self) -> Vec<(RawFd, EventSet)> {
        Vec::new()
    }
    /// One of the extra fds is ready; returns whether a used ring changed.
    /// `added`/`removed` collect fds to start or stop watching.
    fn process_fd(
        &mut self,
        _fd: RawFd,
        _events: EventSet,
        _queues: &mut [Queue],
        _mem: &GuestMemoryMmap,
        _watch: &mut FdChanges,
    ) -> bool {
        false
    }
}

/// Fds a device starts or stops watching while it runs.
#[derive(Default)]
pub struct FdChanges {
    /// Start watching.
    pub add: Vec<(RawFd, EventSet)>,
    /// Stop watching (before close).
    pub remove: Vec<RawFd>,
}
