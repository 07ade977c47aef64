//! virtio-vsock (virtio 1.2 §5.10), host side, over Unix sockets in
//! Firecracker's hybrid-vsock convention: a host program reaches guest port
//! `<port>` by connecting to the VM's socket and writing `CONNECT <port>\n`
//! (answered `OK <host port>\n`); a guest connection to host port `<port>`
//! reaches the Unix socket `<uds_path>_<port>`.
//!
//! The parts, one concept each:
//!
//! - [`packet`]: the 44-byte header on the wire and its ops;
//! - [`connection`]: one connection's state machine and credit, no I/O;
//! - [`handshake`]: the `CONNECT <port>` line a host program starts with;
//! - [`muxer`]: the host sockets, the `CONNECT` handshake, the map from
//!   sockets to connections, and the control packets owed to the guest;
//! - this module: the virtio device, moving packets between the queues and
//!   the muxer.
//!
//! Queues: 0 rx (device → guest), 1 tx (guest → device), 2 event. Each time
//! the guest notifies rx or tx, or a host socket is ready, the device:
//!
//! 1. drains tx: each packet goes to the muxer (payload over 64 KiB, or a
//!    chain the `virtio-vsock` crate cannot parse, is consumed unread);
//! 2. fills rx buffers, first with the control packets owed (REQUEST,
//!    RESPONSE, RST, CREDIT_UPDATE), oldest first, then with host data from
//!    each connection that has some and credit for it. A rx buffer is put
//!    back, not used, when a socket turns out to have nothing to read.
//!
//! tx goes first so that the credit and replies rx carries are current.
//! Every packet to the guest carries the device's `buf_alloc` and `fwd_cnt`.
//!
//! After a restore or fork the device posts VIRTIO_VSOCK_EVENT_TRANSPORT_RESET
//! on the event queue: the guest's connections are gone, and this is the
//! guest agent's notice that it was resumed or forked (reseed RNG, set the
//! clock).

mod connection;
mod handshake;
mod muxer;
pub(crate) use muxer::fuzz_script;
mod packet;

use std::os::fd::RawFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use virtio_vsock::packet::{PKT_HEADER_SIZE, VsockPacket};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use self::muxer::{HostRead, Muxer};
use self::packet::{Header, MAX_PKT_DATA};
use super::{FdChanges, VIRTIO_F_VERSION_1, VirtioDevice, device_type};

const RX: usize = 0;
const TX: usize = 1;
const EVENT: usize = 2;
/// VIRTIO_VSOCK_EVENT_TRANSPORT_RESET.
const EVENT_TRANSPORT_RESET: u32 = 0;
const QUEUE_SIZES: &[u16] = &[256, 256, 16];

/// The vsock device.
pub struct Vsock {
    guest_cid: u64,
    muxer: Muxer,
}

/// Errors creating the device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The listener could not be set up.
    #[error("Cannot set up the vsock socket")]
    Listener(#[source] std::io::Error),
}

impl Vsock {
    /// A device for guest `guest_cid` serving `listener` (bound at `uds_path`).
    pub fn new(
        guest_cid: u64,
        uds_path: PathBuf,
        listener: UnixListener,
    ) -> Result<Self, VsockError> {
        let muxer = Muxer::new(guest_cid, uds_path, listener).map_err(VsockError::Listener)?;
        Ok(Self { guest_cid, muxer })
    }

    /// Number of live connections.
    pub fn connection_count(&self) -> usize {
        self.muxer.connection_count()
    }

    /// Runs tx then rx; tx first so credit and replies are current.
    fn pump(
        &mut self,
        index: usize,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
        watch: &mut FdChanges,
    ) -> bool {
        let mut used = false;
        if index == TX || index == RX {
            if let Some(q) = queues.get_mut(TX) {
                used |= self.process_tx(q, mem, watch);
            }
            if let Some(q) = queues.get_mut(RX) {
                used |= self.process_rx(q, mem, watch);
            }
        }
        used
    }

    fn process_tx(&mut self, q: &mut Queue, mem: &GuestMemoryMmap, watch: &mut FdChanges) -> bool {
        let mut used = false;
        while let Some(mut chain) = q.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            if let Ok(pkt) = VsockPacket::from_tx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
                let hdr = Header::read(&pkt);
                let mut data = vec![0u8; hdr.len.min(MAX_PKT_DATA) as usize];
                let n = pkt.data_slice().map_or(0, |s| s.copy_to(&mut data[..]));
                data.truncate(n);
                self.muxer.on_guest_packet(&hdr, &data, watch);
            }
            if q.add_used(mem, head, 0).is_ok() {
                used = true;
            }
        }
        used
    }

    /// Fills rx buffers: control packets first, then host data.
    fn process_rx(&mut self, q: &mut Queue, mem: &GuestMemoryMmap, watch: &mut FdChanges) -> bool {
        let mut used = false;
        while let Some(control) = self.muxer.next_control() {
            let Some(mut chain) = q.pop_descriptor_chain(mem) else {
                return used;
            };
            let head = chain.head_index();
            let len = match VsockPacket::from_rx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
                Ok(mut pkt) => {
                    self.muxer.control_header(control).write(&mut pkt);
                    PKT_HEADER_SIZE as u32
                }
                Err(_) => 0,
            };
            self.muxer.pop_control();
            used |= q.add_used(mem, head, len).is_ok();
        }
        for ports in self.muxer.sendable_connections() {
            loop {
                let credit = self.muxer.sendable(ports);
                if credit == 0 {
                    break;
                }
                let Some(mut chain) = q.pop_descriptor_chain(mem) else {
                    return used;
                };
                let head = chain.head_index();
                let Ok(mut pkt) = VsockPacket::from_rx_virtq_chain(mem, &mut chain, MAX_PKT_DATA)
                else {
                    used |= q.add_used(mem, head, 0).is_ok();
                    continue;
                };
                let room = pkt.data_slice().map_or(0, |s| s.len()).min(credit as usize);
                let mut buf = vec![0u8; room];
                match self.muxer.read_host(ports, &mut buf, watch) {
                    HostRead::Data(hdr) => {
                        let n = hdr.len as usize;
                        if let Some(s) = pkt.data_slice() {
                            s.copy_from(&buf[..n]);
                        }
                        hdr.write(&mut pkt);
                        used |= q.add_used(mem, head, (PKT_HEADER_SIZE + n) as u32).is_ok();
                    }
                    HostRead::Ended(hdr) => {
                        hdr.write(&mut pkt);
                        used |= q.add_used(mem, head, PKT_HEADER_SIZE as u32).is_ok();
                        break;
                    }
                    HostRead::Retry => q.go_to_previous_position(),
                    HostRead::Stopped => {
                        q.go_to_previous_position();
                        break;
                    }
                }
            }
        }
        used
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.guest_cid.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = config.get(offset as usize + i).copied().unwrap_or(0);
        }
    }

    fn reset(&mut self) {
        self.muxer.clear();
    }

    fn process_queue(
        &mut self,
        index: usize,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
        watch: &mut FdChanges,
    ) -> bool {
        self.pump(index, queues, mem, watch)
    }

    fn restored(&mut self, queues: &mut [Queue], mem: &GuestMemoryMmap) -> bool {
        // Host sockets did not survive: the guest hears a transport reset
        // (its connections are gone), which is also its notice that it was
        // restored or forked.
        self.muxer.clear();
        let Some(q) = queues.get_mut(EVENT) else {
            return false;
        };
        let Some(chain) = q.pop_descriptor_chain(mem) else {
            return false;
        };
        let head = chain.head_index();
        let mut len = 0;
        if let Some(d) = chain
            .into_iter()
            .find(|d| d.is_write_only() && d.len() >= 4)
            && mem.write_obj(EVENT_TRANSPORT_RESET, d.addr()).is_ok()
        {
            len = 4;
        }
        q.add_used(mem, head, len).is_ok()
    }

    fn extra_fds(&self) -> Vec<(RawFd, EventSet)> {
        vec![(self.muxer.listener_fd(), EventSet::IN)]
    }

    fn process_fd(
        &mut self,
        fd: RawFd,
        events: EventSet,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
        watch: &mut FdChanges,
    ) -> bool {
        self.muxer.on_host_event(fd, events, watch);
        // Whatever the event freed or closed may let rx move; with the
        // device inactive there are no queues and this does nothing.
        self.pump(RX, queues, mem, watch)
    }
}
