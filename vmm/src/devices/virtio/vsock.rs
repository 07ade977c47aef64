//! virtio-vsock (virtio 1.2 §5.10), host side, over Unix sockets in
//! Firecracker's convention:
//!
//! - Host → guest: a host program connects to the VM's socket `uds_path`
//!   and writes `CONNECT <port>\n`; the device sends the guest a REQUEST
//!   for `<port>` from a fresh host port `P`; once the guest answers
//!   RESPONSE the host program reads `OK <P>\n` and the stream is live.
//! - Guest → host: a REQUEST to host port `<port>` connects to the Unix
//!   socket `<uds_path>_<port>`; RESPONSE on success, RST otherwise.
//!
//! Queues: 0 rx (device → guest), 1 tx (guest → device), 2 event. Flow
//! control follows the spec's credit scheme: the device never sends more
//! than the guest's `buf_alloc - (rx_cnt - fwd_cnt)`, advertises its own
//! `TX_BUF_ALLOC` per connection and reports `fwd_cnt` as bytes reach the
//! host socket. Host sockets are edge-triggered: a readable socket is
//! drained when rx buffers and credit allow, and resumed when the guest
//! adds buffers or grants credit. Packet parsing uses `virtio-vsock`.
//!
//! After a restore or fork the device posts VIRTIO_VSOCK_EVENT_TRANSPORT_RESET
//! on the event queue: the guest's connections are gone, and this is the
//! guest agent's notice that it was resumed or forked (reseed RNG, set the
//! clock).

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::num::Wrapping;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use virtio_vsock::packet::{PKT_HEADER_SIZE, VsockPacket};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use super::{FdChanges, VIRTIO_F_VERSION_1, VirtioDevice, device_type};

const RX: usize = 0;
const TX: usize = 1;
const EVENT: usize = 2;
/// VIRTIO_VSOCK_EVENT_TRANSPORT_RESET.
const EVENT_TRANSPORT_RESET: u32 = 0;
const QUEUE_SIZES: &[u16] = &[256, 256, 16];
const HOST_CID: u64 = 2;
const TYPE_STREAM: u16 = 1;

const OP_REQUEST: u16 = 1;
const OP_RESPONSE: u16 = 2;
const OP_RST: u16 = 3;
const OP_SHUTDOWN: u16 = 4;
const OP_RW: u16 = 5;
const OP_CREDIT_UPDATE: u16 = 6;
const OP_CREDIT_REQUEST: u16 = 7;
const SHUTDOWN_BOTH: u32 = 3;

/// Bytes of guest data the device buffers per connection.
const TX_BUF_ALLOC: u32 = 256 * 1024;
/// Largest packet payload accepted or produced.
const MAX_PKT_DATA: u32 = 64 * 1024;
/// First host port handed to host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// Longest `CONNECT <port>\n` line.
const MAX_CONNECT_LINE: usize = 32;

/// (host port, guest port).
type Key = (u32, u32);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ConnState {
    /// Host-initiated, REQUEST sent, waiting for the guest's RESPONSE.
    Connecting,
    /// Data flows.
    Established,
    /// SHUTDOWN sent to the guest after host EOF; waiting for its RST.
    Closing,
}

struct Conn {
    stream: UnixStream,
    state: ConnState,
    /// Host bytes read before the stream became live (after CONNECT).
    early: Vec<u8>,
    /// Guest bytes not yet written to the host socket.
    to_host: VecDeque<u8>,
    host_readable: bool,
    /// The guest closed while bytes were still queued for the host: close
    /// once they are written (and answer RST if `Some(true)`).
    close_when_flushed: Option<bool>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    rx_cnt: Wrapping<u32>,
    fwd_cnt: Wrapping<u32>,
    fwd_cnt_told: Wrapping<u32>,
}

impl Conn {
    fn new(stream: UnixStream, state: ConnState) -> Self {
        Self {
            stream,
            state,
            early: Vec::new(),
            to_host: VecDeque::new(),
            host_readable: true,
            close_when_flushed: None,
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            fwd_cnt_told: Wrapping(0),
        }
    }

    fn peer_credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub((self.rx_cnt - self.peer_fwd_cnt).0)
    }

    /// Writes buffered guest bytes to the host socket; false on error.
    fn flush_to_host(&mut self) -> bool {
        while !self.to_host.is_empty() {
            let (a, _) = self.to_host.as_slices();
            match self.stream.write(a) {
                Ok(0) => return false,
                Ok(n) => {
                    self.to_host.drain(..n);
                    self.fwd_cnt += Wrapping(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }
}

/// A packet the device owes the guest that carries no data.
#[derive(Clone, Copy, Debug)]
struct Control {
    key: Key,
    op: u16,
    flags: u32,
}

/// The vsock device.
pub struct Vsock {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    /// Host connections that have not yet sent `CONNECT <port>\n`.
    handshakes: HashMap<RawFd, (UnixStream, Vec<u8>)>,
    conns: HashMap<Key, Conn>,
    by_fd: HashMap<RawFd, Key>,
    control: VecDeque<Control>,
    next_local_port: u32,
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
        listener
            .set_nonblocking(true)
            .map_err(VsockError::Listener)?;
        Ok(Self {
            guest_cid,
            uds_path,
            listener,
            handshakes: HashMap::new(),
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            control: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
        })
    }

    /// Number of live connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    fn close(&mut self, key: Key, watch: &mut FdChanges) {
        if let Some(conn) = self.conns.remove(&key) {
            let fd = conn.stream.as_raw_fd();
            self.by_fd.remove(&fd);
            watch.remove.push(fd);
        }
    }

    fn reset_conn(&mut self, key: Key, watch: &mut FdChanges) {
        self.close(key, watch);
        self.control.push_back(Control {
            key,
            op: OP_RST,
            flags: 0,
        });
    }

    fn alloc_local_port(&mut self) -> u32 {
        loop {
            let p = self.next_local_port;
            self.next_local_port = self.next_local_port.wrapping_add(1).max(FIRST_LOCAL_PORT);
            if !self.conns.keys().any(|(l, _)| *l == p) {
                return p;
            }
        }
    }

    fn watch_stream(stream: &UnixStream, watch: &mut FdChanges) {
        watch.add.push((
            stream.as_raw_fd(),
            EventSet::IN | EventSet::OUT | EventSet::EDGE_TRIGGERED | EventSet::READ_HANG_UP,
        ));
    }

    /// One guest packet from the tx queue.
    fn on_guest_packet(&mut self, hdr: &Header, data: &[u8], watch: &mut FdChanges) {
        let key = (hdr.dst_port, hdr.src_port);
        if hdr.dst_cid != HOST_CID || hdr.src_cid != self.guest_cid || hdr.type_ != TYPE_STREAM {
            if hdr.op != OP_RST {
                self.control.push_back(Control {
                    key,
                    op: OP_RST,
                    flags: 0,
                });
            }
            return;
        }
        if let Some(conn) = self.conns.get_mut(&key) {
            conn.peer_buf_alloc = hdr.buf_alloc;
            conn.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        }
        match hdr.op {
            OP_REQUEST => {
                if self.conns.contains_key(&key) {
                    self.reset_conn(key, watch);
                    return;
                }
                let path = format!("{}_{}", self.uds_path.display(), hdr.dst_port);
                match UnixStream::connect(&path).and_then(|s| s.set_nonblocking(true).map(|()| s)) {
                    Ok(stream) => {
                        Self::watch_stream(&stream, watch);
                        self.by_fd.insert(stream.as_raw_fd(), key);
                        let mut conn = Conn::new(stream, ConnState::Established);
                        conn.peer_buf_alloc = hdr.buf_alloc;
                        conn.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
                        self.conns.insert(key, conn);
                        self.control.push_back(Control {
                            key,
                            op: OP_RESPONSE,
                            flags: 0,
                        });
                    }
                    Err(_) => self.control.push_back(Control {
                        key,
                        op: OP_RST,
                        flags: 0,
                    }),
                }
            }
            OP_RESPONSE => match self.conns.get_mut(&key) {
                Some(conn) if conn.state == ConnState::Connecting => {
                    conn.state = ConnState::Established;
                    let ok = format!("OK {}\n", key.0);
                    if conn.stream.write_all(ok.as_bytes()).is_err() {
                        self.reset_conn(key, watch);
                    }
                }
                _ => self.reset_conn(key, watch),
            },
            OP_RW => {
                let Some(conn) = self.conns.get_mut(&key) else {
                    self.control.push_back(Control {
                        key,
                        op: OP_RST,
                        flags: 0,
                    });
                    return;
                };
                if conn.to_host.len() + data.len() > TX_BUF_ALLOC as usize {
                    // The guest ignored our credit.
                    self.reset_conn(key, watch);
                    return;
                }
                conn.to_host.extend(data);
                if !conn.flush_to_host() {
                    self.reset_conn(key, watch);
                    return;
                }
                self.maybe_credit_update(key);
            }
            OP_CREDIT_UPDATE => {}
            OP_CREDIT_REQUEST => self.control.push_back(Control {
                key,
                op: OP_CREDIT_UPDATE,
                flags: 0,
            }),
            OP_SHUTDOWN | OP_RST => {
                // Deliver what the guest already sent before closing; a
                // host reader that is slow keeps the connection (and only
                // it) alive until its socket drains.
                let drained = self
                    .conns
                    .get_mut(&key)
                    .is_none_or(|c| c.flush_to_host() && c.to_host.is_empty());
                match (drained, hdr.op == OP_SHUTDOWN) {
                    (true, true) => self.reset_conn(key, watch),
                    (true, false) => self.close(key, watch),
                    (false, reply_rst) => {
                        if let Some(c) = self.conns.get_mut(&key) {
                            c.state = ConnState::Closing;
                            c.host_readable = false;
                            c.close_when_flushed = Some(reply_rst);
                        }
                    }
                }
            }
            _ => self.reset_conn(key, watch),
        }
    }

    fn maybe_credit_update(&mut self, key: Key) {
        if let Some(conn) = self.conns.get_mut(&key)
            && (conn.fwd_cnt - conn.fwd_cnt_told).0 >= TX_BUF_ALLOC / 4
        {
            conn.fwd_cnt_told = conn.fwd_cnt;
            self.control.push_back(Control {
                key,
                op: OP_CREDIT_UPDATE,
                flags: 0,
            });
        }
    }

    fn process_tx(&mut self, q: &mut Queue, mem: &GuestMemoryMmap, watch: &mut FdChanges) -> bool {
        let mut used = false;
        while let Some(mut chain) = q.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let parsed = VsockPacket::from_tx_virtq_chain(mem, &mut chain, MAX_PKT_DATA)
                .ok()
                .map(|pkt| {
                    let hdr = Header::of(&pkt);
                    let mut data = vec![0u8; hdr.len.min(MAX_PKT_DATA) as usize];
                    let n = pkt.data_slice().map_or(0, |s| s.copy_to(&mut data[..]));
                    data.truncate(n);
                    (hdr, data)
                });
            if let Some((hdr, data)) = parsed {
                self.on_guest_packet(&hdr, &data, watch);
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
        while let Some(c) = self.control.front().copied() {
            let Some(mut chain) = q.pop_descriptor_chain(mem) else {
                return used;
            };
            let head = chain.head_index();
            let len = match VsockPacket::from_rx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
                Ok(mut pkt) => {
                    let (fwd, buf_alloc) = self.conns.get_mut(&c.key).map_or((0, 0), |conn| {
                        conn.fwd_cnt_told = conn.fwd_cnt;
                        (conn.fwd_cnt.0, TX_BUF_ALLOC)
                    });
                    self.fill_header(&mut pkt, c.key, c.op, 0, fwd, buf_alloc)
                        .set_flags(c.flags);
                    PKT_HEADER_SIZE as u32
                }
                Err(_) => 0,
            };
            self.control.pop_front();
            used |= q.add_used(mem, head, len).is_ok();
        }
        let keys: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| c.state == ConnState::Established && c.host_readable)
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            while let Some(conn) = self.conns.get_mut(&key) {
                let credit = conn.peer_credit();
                if credit == 0 || !conn.host_readable {
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
                let read = if conn.early.is_empty() {
                    conn.stream.read(&mut buf)
                } else {
                    let n = conn.early.len().min(room);
                    buf[..n].copy_from_slice(&conn.early[..n]);
                    conn.early.drain(..n);
                    Ok(n)
                };
                match read {
                    Ok(0) => {
                        // Host EOF: tell the guest, wait for its RST.
                        conn.host_readable = false;
                        conn.state = ConnState::Closing;
                        let fwd = conn.fwd_cnt.0;
                        self.fill_header(&mut pkt, key, OP_SHUTDOWN, 0, fwd, TX_BUF_ALLOC)
                            .set_flags(SHUTDOWN_BOTH);
                        used |= q.add_used(mem, head, PKT_HEADER_SIZE as u32).is_ok();
                        break;
                    }
                    Ok(n) => {
                        if let Some(s) = pkt.data_slice() {
                            s.copy_from(&buf[..n]);
                        }
                        conn.rx_cnt += Wrapping(n as u32);
                        conn.fwd_cnt_told = conn.fwd_cnt;
                        let fwd = conn.fwd_cnt.0;
                        self.fill_header(&mut pkt, key, OP_RW, n as u32, fwd, TX_BUF_ALLOC);
                        used |= q.add_used(mem, head, (PKT_HEADER_SIZE + n) as u32).is_ok();
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        conn.host_readable = false;
                        q.go_to_previous_position();
                        break;
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {
                        q.go_to_previous_position();
                    }
                    Err(_) => {
                        q.go_to_previous_position();
                        self.reset_conn(key, watch);
                        break;
                    }
                }
            }
        }
        used
    }

    fn fill_header<'p, 'm>(
        &self,
        pkt: &'p mut VsockPacket<'m, ()>,
        key: Key,
        op: u16,
        len: u32,
        fwd_cnt: u32,
        buf_alloc: u32,
    ) -> &'p mut VsockPacket<'m, ()> {
        pkt.set_src_cid(HOST_CID)
            .set_dst_cid(self.guest_cid)
            .set_src_port(key.0)
            .set_dst_port(key.1)
            .set_type(TYPE_STREAM)
            .set_op(op)
            .set_len(len)
            .set_flags(0)
            .set_buf_alloc(buf_alloc)
            .set_fwd_cnt(fwd_cnt)
    }

    fn on_listener(&mut self, watch: &mut FdChanges) {
        while let Ok((stream, _)) = self.listener.accept() {
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            watch.add.push((
                stream.as_raw_fd(),
                EventSet::IN | EventSet::EDGE_TRIGGERED | EventSet::READ_HANG_UP,
            ));
            self.handshakes
                .insert(stream.as_raw_fd(), (stream, Vec::new()));
        }
    }

    /// Reads `CONNECT <port>\n` from a new host connection.
    fn on_handshake(&mut self, fd: RawFd, watch: &mut FdChanges) {
        let Some((stream, buf)) = self.handshakes.get_mut(&fd) else {
            return;
        };
        let mut chunk = [0u8; 64];
        let failed = loop {
            match stream.read(&mut chunk) {
                Ok(0) => break true,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break true,
            }
        };
        let line_end = buf.iter().position(|b| *b == b'\n');
        if line_end.is_none() && !failed && buf.len() <= MAX_CONNECT_LINE {
            return;
        }
        watch.remove.push(fd);
        let Some((mut stream, buf)) = self.handshakes.remove(&fd) else {
            return;
        };
        let port = line_end.and_then(|end| {
            std::str::from_utf8(&buf[..end])
                .ok()?
                .trim()
                .strip_prefix("CONNECT ")?
                .trim()
                .parse::<u32>()
                .ok()
        });
        let Some(port) = port else {
            let _ = stream.write_all(b"ERR bad CONNECT line\n");
            return;
        };
        let local = self.alloc_local_port();
        let key = (local, port);
        let mut conn = Conn::new(stream, ConnState::Connecting);
        if let Some(end) = line_end {
            conn.early = buf[end + 1..].to_vec();
        }
        Self::watch_stream(&conn.stream, watch);
        self.by_fd.insert(conn.stream.as_raw_fd(), key);
        self.conns.insert(key, conn);
        self.control.push_back(Control {
            key,
            op: OP_REQUEST,
            flags: 0,
        });
    }
}

/// The fields of a packet header the device acts on.
struct Header {
    src_cid: u64,
    dst_cid: u64,
    src_port: u32,
    dst_port: u32,
    len: u32,
    type_: u16,
    op: u16,
    buf_alloc: u32,
    fwd_cnt: u32,
}

impl Header {
    fn of(p: &VsockPacket<'_, ()>) -> Self {
        Self {
            src_cid: p.src_cid(),
            dst_cid: p.dst_cid(),
            src_port: p.src_port(),
            dst_port: p.dst_port(),
            len: p.len(),
            type_: p.type_(),
            op: p.op(),
            buf_alloc: p.buf_alloc(),
            fwd_cnt: p.fwd_cnt(),
        }
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
        self.conns.clear();
        self.by_fd.clear();
        self.control.clear();
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
        self.conns.clear();
        self.by_fd.clear();
        self.control.clear();
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
        vec![(self.listener.as_raw_fd(), EventSet::IN)]
    }

    fn process_fd(
        &mut self,
        fd: RawFd,
        events: EventSet,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
        watch: &mut FdChanges,
    ) -> bool {
        if fd == self.listener.as_raw_fd() {
            self.on_listener(watch);
        } else if self.handshakes.contains_key(&fd) {
            self.on_handshake(fd, watch);
        } else if let Some(key) = self.by_fd.get(&fd).copied() {
            let mut broken = false;
            if let Some(conn) = self.conns.get_mut(&key) {
                if events.intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP) {
                    conn.host_readable = true;
                }
                if events.contains(EventSet::OUT) {
                    broken = !conn.flush_to_host();
                }
                if let Some(reply_rst) = conn.close_when_flushed
                    && (broken || conn.to_host.is_empty())
                {
                    if reply_rst {
                        self.reset_conn(key, watch);
                    } else {
                        self.close(key, watch);
                    }
                    return self.pump(RX, queues, mem, watch);
                }
            }
            if broken {
                self.reset_conn(key, watch);
            } else {
                self.maybe_credit_update(key);
            }
        }
        if queues.len() > TX {
            self.pump(RX, queues, mem, watch)
        } else {
            false
        }
    }
}

impl Vsock {
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
}
