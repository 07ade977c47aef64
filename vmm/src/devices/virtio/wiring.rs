//! Puts a virtio device on the MMIO bus: a transport in its own 4 KiB
//! window, an irqfd for its interrupt line, an ioeventfd per queue on
//! QueueNotify (datamatch = queue index), and an event-loop subscriber that
//! turns those eventfds (and the device's own sockets) into queue work.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use kvm_ioctls::IoEventAddress;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::mmio::{MmioTransport, SharedTransport};
use super::{FdChanges, VirtioDevice};
use crate::devices::IrqLine;
use crate::devices::bus::Bus;
use crate::event_loop::{Ops, Subscriber};
use crate::vstate::vm::Vm;

/// Offset of QueueNotify in the window.
const QUEUE_NOTIFY: u64 = 0x50;

/// A device placed at `base` with interrupt `irq`.
pub struct Placed {
    /// The transport (registers + queues).
    pub transport: SharedTransport,
    /// Window base.
    pub base: u64,
    /// Legacy IRQ line.
    pub irq: u32,
    /// The subscriber serving its eventfds.
    pub subscriber: VirtioSubscriber,
    /// Fds to watch from the start.
    pub fds: Vec<(RawFd, EventSet)>,
}

/// Wires `device` at `base`/`irq` into `vm` and `mmio`.
pub fn place(
    vm: &Vm,
    mmio: &mut Bus,
    mem: &GuestMemoryMmap,
    device: Box<dyn VirtioDevice>,
    base: u64,
    irq: u32,
) -> std::io::Result<Placed> {
    let errno = |e: kvm_ioctls::Error| std::io::Error::from_raw_os_error(e.errno());
    let line = IrqLine::new()?;
    vm.fd().register_irqfd(line.eventfd(), irq).map_err(errno)?;
    let extra = device.extra_fds();
    let transport = MmioTransport::new(device, mem.clone(), line);
    let mut queue_evts = Vec::new();
    for q in 0..transport.queue_count() {
        let evt = EventFd::new(libc::EFD_NONBLOCK)?;
        vm.fd()
            .register_ioevent(&evt, &IoEventAddress::Mmio(base + QUEUE_NOTIFY), q as u32)
            .map_err(errno)?;
        queue_evts.push(evt);
    }
    let transport = Arc::new(Mutex::new(transport));
    mmio.insert(transport.clone(), base, crate::arch::VIRTIO_MMIO_SIZE)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut fds: Vec<(RawFd, EventSet)> = queue_evts
        .iter()
        .map(|e| (e.as_raw_fd(), EventSet::IN))
        .collect();
    fds.extend(extra);
    Ok(Placed {
        transport: transport.clone(),
        base,
        irq,
        subscriber: VirtioSubscriber {
            transport,
            queue_evts,
        },
        fds,
    })
}

/// Event-loop side of one virtio device.
pub struct VirtioSubscriber {
    transport: SharedTransport,
    queue_evts: Vec<EventFd>,
}

impl Subscriber for VirtioSubscriber {
    fn handle(&mut self, fd: RawFd, events: EventSet, ops: &mut Ops) {
        let Ok(mut t) = self.transport.lock() else {
            return;
        };
        let mut changes = FdChanges::default();
        if let Some(q) = self.queue_evts.iter().position(|e| e.as_raw_fd() == fd) {
            let _ = self.queue_evts[q].read();
            t.notify(q);
        } else {
            t.device_fd_ready(fd, events, &mut changes);
        }
        let queued = t.take_watch_changes();
        changes.add.extend(queued.add);
        changes.remove.extend(queued.remove);
        for fd in changes.remove {
            ops.remove(fd);
        }
        for (fd, ev) in changes.add {
            ops.add(fd, ev);
        }
    }
}
