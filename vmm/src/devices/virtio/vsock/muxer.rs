//! The host side of vsock: guest connections carried over Unix sockets, as
//! Firecracker's hybrid vsock does. The muxer owns the sockets, maps each
//! to its connection, and queues the control packets the guest is owed;
//! the device (`super`) moves packets between it and the queues.
//!
//! Host → guest, in order:
//!
//! 1. A host program connects to the VM's socket `uds_path`; the stream is
//!    a *handshake* until it has sent one line.
//! 2. It writes `CONNECT <port>\n`, in as many writes as it likes; a bad
//!    line is answered `ERR bad CONNECT line\n` and closed (`handshake`
//!    has the rules). Each handshake is read without blocking, so a slow or
//!    hostile client holds up nobody else.
//! 3. The muxer picks a fresh host port `P` (from 2^30 up), and sends the
//!    guest a REQUEST from `P` to `<port>`. Bytes after the newline are kept
//!    and delivered first.
//! 4. The guest answers RESPONSE: the program reads `OK <P>\n` and the
//!    stream is live. Any other answer (RST) closes it.
//!
//! Guest → host: a REQUEST to host port `<port>` connects to the Unix socket
//! `<uds_path>_<port>`; RESPONSE on success, RST otherwise.
//!
//! Packets from the guest that are not stream packets from its own CID to
//! the host, or that name no connection (RW, RESPONSE), are answered RST.
//! Host sockets are edge-triggered: a readable socket is read while the
//! guest has rx buffers and credit, and resumed at the next readiness event
//! or when the guest adds buffers or grants credit.
//!
//! Everything a guest can make the muxer hold is bounded. Control packets
//! wait until the guest posts rx buffers, at most [`MAX_CONTROL`] of them: a
//! guest that sends without reading loses, past that, the RSTs owed for
//! packets that name no connection, and any connection something else was
//! owed on (its socket is closed). At most [`MAX_CONNECTIONS`] connections
//! live at once: a guest REQUEST past that is answered RST, a host
//! program's CONNECT is refused. Each connection's buffers are bounded by
//! its credit (`connection`).

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use vmm_sys_util::epoll::EventSet;

use super::FdChanges;
use super::connection::{Connection, Ending, TX_BUF_ALLOC};
use super::handshake::{BAD_CONNECT, BUSY, ConnectLine, Handshake};
use super::packet::{Header, Op, Ports, SHUTDOWN_BOTH};

/// First host port handed to host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// Most control packets owed to the guest at once (16 bytes each).
pub(super) const MAX_CONTROL: usize = 1024;

/// Most live connections, both directions together.
pub(super) const MAX_CONNECTIONS: usize = 256;

/// Connects to the Unix socket at `path` without ever blocking: a service
/// whose backlog is full (it does not accept) is `WouldBlock`, answered
/// RST like a refusal, instead of stopping the VMM's event loop in
/// connect(2) until it accepts. The stream is non-blocking.
fn connect_without_waiting(path: &str) -> std::io::Result<UnixStream> {
    let bytes = path.as_bytes();
    // SAFETY: sockaddr_un is plain data; all zero is a valid empty address.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(ErrorKind::InvalidInput.into());
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (slot, byte) in addr.sun_path.iter_mut().zip(bytes) {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: creating a socket; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    let stream = unsafe { <UnixStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes for the call.
    let done = unsafe { libc::connect(fd, std::ptr::addr_of!(addr).cast::<libc::sockaddr>(), len) };
    if done != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stream)
}

/// A packet the device owes the guest that carries no data.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct Control {
    ports: Ports,
    op: Op,
}

/// What a read from a host socket gave for the guest.
#[derive(Debug)]
pub(super) enum HostRead {
    /// `header.len` bytes of the buffer go to the guest under `header`.
    Data(Header),
    /// The host closed its end: send the guest this SHUTDOWN.
    Ended(Header),
    /// Interrupted: try again with the same buffer.
    Retry,
    /// Nothing to send: the socket would block, or failed and the
    /// connection was reset.
    Stopped,
}

/// A connection and the host socket that carries it.
struct Tunnel {
    stream: UnixStream,
    conn: Connection,
}

impl Tunnel {
    /// Writes queued guest bytes to the host socket until it would block;
    /// false if the socket failed.
    fn flush(&mut self) -> bool {
        while self.conn.pending_to_host() > 0 {
            match self.stream.write(self.conn.next_for_host()) {
                Ok(0) => return false,
                Ok(n) => self.conn.written_to_host(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }
}

/// The host-side multiplexer of one vsock device.
pub(super) struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    handshakes: HashMap<RawFd, Handshake>,
    tunnels: HashMap<Ports, Tunnel>,
    by_fd: HashMap<RawFd, Ports>,
    control: VecDeque<Control>,
    next_local_port: u32,
}

impl Muxer {
    /// A muxer for guest `guest_cid` accepting host programs on `listener`
    /// (bound at `uds_path`).
    pub(super) fn new(
        guest_cid: u64,
        uds_path: PathBuf,
        listener: UnixListener,
    ) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        Ok(Self {
            guest_cid,
            uds_path,
            listener,
            handshakes: HashMap::new(),
            tunnels: HashMap::new(),
            by_fd: HashMap::new(),
            control: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
        })
    }

    /// The listening socket's fd, watched for new host programs.
    pub(super) fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// Number of live connections.
    pub(super) fn connection_count(&self) -> usize {
        self.tunnels.len()
    }

    /// Drops every connection and owed packet (device reset, restore).
    /// Handshakes in progress are kept: they belong to no guest yet.
    pub(super) fn clear(&mut self) {
        self.tunnels.clear();
        self.by_fd.clear();
        self.control.clear();
    }

    /// Queues `op` for the guest. With [`MAX_CONTROL`] already owed, the
    /// guest is not reading: the packet is dropped, and the connection it
    /// concerned, if any, with it.
    fn owe(&mut self, ports: Ports, op: Op, watch: &mut FdChanges) {
        if self.control.len() < MAX_CONTROL {
            self.control.push_back(Control { ports, op });
        } else {
            self.remove(ports, watch);
        }
    }

    /// Removes a connection, closing its socket.
    fn remove(&mut self, ports: Ports, watch: &mut FdChanges) {
        if let Some(tunnel) = self.tunnels.remove(&ports) {
            let fd = tunnel.stream.as_raw_fd();
            self.by_fd.remove(&fd);
            watch.remove.push(fd);
        }
    }

    /// Removes a connection and tells the guest with RST.
    fn reset(&mut self, ports: Ports, watch: &mut FdChanges) {
        self.remove(ports, watch);
        self.owe(ports, Op::Rst, watch);
    }

    fn attach(
        &mut self,
        ports: Ports,
        stream: UnixStream,
        conn: Connection,
        watch: &mut FdChanges,
    ) {
        let fd = stream.as_raw_fd();
        watch.add.push((
            fd,
            EventSet::IN | EventSet::OUT | EventSet::EDGE_TRIGGERED | EventSet::READ_HANG_UP,
        ));
        self.by_fd.insert(fd, ports);
        self.tunnels.insert(ports, Tunnel { stream, conn });
    }

    fn alloc_local_port(&mut self) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = self.next_local_port.wrapping_add(1).max(FIRST_LOCAL_PORT);
            if !self.tunnels.keys().any(|p| p.host == port) {
                return port;
            }
        }
    }

    /// One packet the guest sent on the tx queue, with its payload.
    pub(super) fn on_guest_packet(&mut self, hdr: &Header, data: &[u8], watch: &mut FdChanges) {
        let ports = hdr.ports_from_guest();
        if !hdr.is_stream_to_host(self.guest_cid) {
            if hdr.op() != Some(Op::Rst) {
                self.owe(ports, Op::Rst, watch);
            }
            return;
        }
        if let Some(tunnel) = self.tunnels.get_mut(&ports) {
            tunnel.conn.peer_advertised(hdr.buf_alloc, hdr.fwd_cnt);
        }
        match hdr.op() {
            Some(Op::Request) => self.connect_to_host(ports, hdr, watch),
            Some(Op::Response) => {
                let answered = self.tunnels.get_mut(&ports).is_some_and(|t| {
                    t.conn.guest_accepted()
                        && t.stream
                            .write_all(format!("OK {}\n", ports.host).as_bytes())
                            .is_ok()
                });
                if !answered {
                    self.reset(ports, watch);
                }
            }
            Some(Op::Rw) => {
                let Some(tunnel) = self.tunnels.get_mut(&ports) else {
                    self.owe(ports, Op::Rst, watch);
                    return;
                };
                // Past its credit, or the host socket failed.
                if tunnel.conn.queue_for_host(data).is_err() || !tunnel.flush() {
                    self.reset(ports, watch);
                    return;
                }
                self.maybe_credit_update(ports, watch);
            }
            Some(Op::CreditUpdate) => {}
            Some(Op::CreditRequest) => self.owe(ports, Op::CreditUpdate, watch),
            Some(op @ (Op::Shutdown | Op::Rst)) => {
                // Deliver what the guest already sent before closing; a
                // host reader that is slow keeps the connection (and only
                // it) alive until its socket drains.
                let reply_rst = op == Op::Shutdown;
                let ending = self.tunnels.get_mut(&ports).map_or(Ending::Now, |t| {
                    t.flush();
                    t.conn.guest_ended(reply_rst)
                });
                if ending == Ending::Now {
                    if reply_rst {
                        self.reset(ports, watch);
                    } else {
                        self.remove(ports, watch);
                    }
                }
            }
            None => self.reset(ports, watch),
        }
    }

    /// A guest REQUEST: connect to `<uds_path>_<port>`.
    fn connect_to_host(&mut self, ports: Ports, hdr: &Header, watch: &mut FdChanges) {
        if self.tunnels.contains_key(&ports) {
            self.reset(ports, watch);
            return;
        }
        if self.tunnels.len() >= MAX_CONNECTIONS {
            self.owe(ports, Op::Rst, watch);
            return;
        }
        let path = format!("{}_{}", self.uds_path.display(), ports.host);
        match connect_without_waiting(&path) {
            Ok(stream) => {
                let conn = Connection::from_guest(hdr.buf_alloc, hdr.fwd_cnt);
                self.attach(ports, stream, conn, watch);
                self.owe(ports, Op::Response, watch);
            }
            Err(_) => self.owe(ports, Op::Rst, watch),
        }
    }

    fn maybe_credit_update(&mut self, ports: Ports, watch: &mut FdChanges) {
        if self
            .tunnels
            .get_mut(&ports)
            .is_some_and(|t| t.conn.credit_update_due())
        {
            self.owe(ports, Op::CreditUpdate, watch);
        }
    }

    /// A watched host fd is ready: the listener, a handshake, or a
    /// connection's socket.
    pub(super) fn on_host_event(&mut self, fd: RawFd, events: EventSet, watch: &mut FdChanges) {
        if fd == self.listener.as_raw_fd() {
            self.accept_clients(watch);
        } else if self.handshakes.contains_key(&fd) {
            self.on_handshake(fd, watch);
        } else if let Some(ports) = self.by_fd.get(&fd).copied() {
            self.on_stream_event(ports, events, watch);
        }
    }

    fn accept_clients(&mut self, watch: &mut FdChanges) {
        while let Ok((stream, _)) = self.listener.accept() {
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let fd = stream.as_raw_fd();
            watch.add.push((
                fd,
                EventSet::IN | EventSet::EDGE_TRIGGERED | EventSet::READ_HANG_UP,
            ));
            self.handshakes.insert(fd, Handshake::new(stream));
        }
    }

    fn on_handshake(&mut self, fd: RawFd, watch: &mut FdChanges) {
        let Some(handshake) = self.handshakes.get_mut(&fd) else {
            return;
        };
        let line = handshake.read_available();
        if line == ConnectLine::Incomplete {
            return;
        }
        watch.remove.push(fd);
        let Some(handshake) = self.handshakes.remove(&fd) else {
            return;
        };
        let ConnectLine::Connect { port, rest } = line else {
            handshake.refuse(BAD_CONNECT);
            return;
        };
        if self.tunnels.len() >= MAX_CONNECTIONS || self.control.len() >= MAX_CONTROL {
            handshake.refuse(BUSY);
            return;
        }
        let ports = Ports {
            host: self.alloc_local_port(),
            guest: port,
        };
        let (stream, early) = handshake.into_parts(rest);
        self.attach(ports, stream, Connection::from_host(early), watch);
        self.owe(ports, Op::Request, watch);
    }

    fn on_stream_event(&mut self, ports: Ports, events: EventSet, watch: &mut FdChanges) {
        let Some(tunnel) = self.tunnels.get_mut(&ports) else {
            return;
        };
        if events.intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP) {
            tunnel.conn.host_ready();
        }
        let broken = events.contains(EventSet::OUT) && !tunnel.flush();
        if let Some(reply_rst) = tunnel.conn.finished(broken) {
            if reply_rst {
                self.reset(ports, watch);
            } else {
                self.remove(ports, watch);
            }
        } else if broken {
            self.reset(ports, watch);
        } else {
            self.maybe_credit_update(ports, watch);
        }
    }

    /// The oldest control packet owed to the guest, left in place.
    pub(super) fn next_control(&self) -> Option<Control> {
        self.control.front().copied()
    }

    /// Drops the oldest control packet: sent, or its rx buffer was bad.
    pub(super) fn pop_control(&mut self) {
        self.control.pop_front();
    }

    /// The header of `control`, with the connection's credit if it still
    /// exists.
    pub(super) fn control_header(&mut self, control: Control) -> Header {
        let (buf_alloc, fwd_cnt) = self
            .tunnels
            .get_mut(&control.ports)
            .map_or((0, 0), |t| (TX_BUF_ALLOC, t.conn.tell_fwd_cnt()));
        Header::to_guest(self.guest_cid, control.ports, control.op).with_credit(buf_alloc, fwd_cnt)
    }

    /// Connections with host data the guest may take now.
    pub(super) fn sendable_connections(&self) -> Vec<Ports> {
        self.tunnels
            .iter()
            .filter(|(_, t)| t.conn.sendable() > 0)
            .map(|(ports, _)| *ports)
            .collect()
    }

    /// Host bytes connection `ports` may send the guest now.
    pub(super) fn sendable(&self, ports: Ports) -> u32 {
        self.tunnels.get(&ports).map_or(0, |t| t.conn.sendable())
    }

    /// Reads host data for connection `ports` into `buf`, never more than
    /// [`Self::sendable`]. `buf` must not be empty: a read of nothing is
    /// taken as the host's EOF.
    pub(super) fn read_host(
        &mut self,
        ports: Ports,
        buf: &mut [u8],
        watch: &mut FdChanges,
    ) -> HostRead {
        let Some(tunnel) = self.tunnels.get_mut(&ports) else {
            return HostRead::Stopped;
        };
        let room = buf.len().min(tunnel.conn.sendable() as usize);
        let buf = &mut buf[..room];
        let read = match tunnel.conn.take_early(buf) {
            Some(n) => Ok(n),
            None => tunnel.stream.read(buf),
        };
        let header = |op| Header::to_guest(self.guest_cid, ports, op);
        match read {
            Ok(0) => {
                tunnel.conn.host_ended();
                let fwd_cnt = tunnel.conn.fwd_cnt();
                HostRead::Ended(Header {
                    flags: SHUTDOWN_BOTH,
                    ..header(Op::Shutdown).with_credit(TX_BUF_ALLOC, fwd_cnt)
                })
            }
            Ok(n) => {
                let fwd_cnt = tunnel.conn.sent_to_guest(n as u32);
                HostRead::Data(Header {
                    len: n as u32,
                    ..header(Op::Rw).with_credit(TX_BUF_ALLOC, fwd_cnt)
                })
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                tunnel.conn.host_drained();
                HostRead::Stopped
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => HostRead::Retry,
            Err(_) => {
                self.reset(ports, watch);
                HostRead::Stopped
            }
        }
    }
}

/// The fuzz target's run of a muxer (`vmm::fuzzing::vsock_muxer`): `data`
/// is a script of guest packets (any op, cid, port pair from a small set,
/// credit and payload) and drains of what the guest is owed, against a
/// muxer whose host side has one service that never accepts. After every
/// step the bounds hold: at most [`MAX_CONTROL`] owed, at most
/// [`MAX_CONNECTIONS`] connections, one watched socket per connection.
pub(crate) fn fuzz_script(data: &[u8]) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static RUN: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "vmm-vsock-fuzz-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch dir");
    let uds = dir.join("v.sock");
    let listener = UnixListener::bind(&uds).expect("the vsock socket");
    let _service = UnixListener::bind(format!("{}_7", uds.display())).expect("a host service");
    let mut muxer = Muxer::new(3, uds, listener).expect("a muxer");
    let mut watch = FdChanges::default();
    let mut input = data;
    while let Some((&step, rest)) = input.split_first() {
        input = rest;
        if step >= 0xf0 {
            while let Some(control) = muxer.next_control() {
                let _ = muxer.control_header(control);
                muxer.pop_control();
            }
            continue;
        }
        let Some((fields, rest)) = input.split_at_checked(6) else {
            break;
        };
        input = rest;
        let take = usize::from(fields[5] & 0x3f).min(input.len());
        let (payload, rest) = input.split_at(take);
        input = rest;
        let host = [7, 9, FIRST_LOCAL_PORT, FIRST_LOCAL_PORT + 1][usize::from(fields[0] & 3)];
        let hdr = Header {
            src_cid: if fields[0] & 0x80 == 0 { 3 } else { 4 },
            dst_cid: if fields[0] & 0x40 == 0 { 2 } else { 1 },
            src_port: u32::from(fields[1]),
            dst_port: host,
            len: take as u32,
            type_: if fields[0] & 0x20 == 0 { 1 } else { 2 },
            op: u16::from(step & 7),
            flags: u32::from(fields[2] & 3),
            buf_alloc: u32::from(fields[3]) << 8,
            fwd_cnt: u32::from(fields[4]) << 4,
        };
        muxer.on_guest_packet(&hdr, payload, &mut watch);
        assert!(muxer.control.len() <= MAX_CONTROL, "owed past the bound");
        assert!(
            muxer.tunnels.len() <= MAX_CONNECTIONS,
            "connections past the cap"
        );
        assert_eq!(
            muxer.by_fd.len(),
            muxer.tunnels.len(),
            "a socket per connection"
        );
    }
    drop(muxer);
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::devices::virtio::vsock::packet::{HOST_CID, TYPE_STREAM};

    const GUEST_CID: u64 = 3;
    /// Long enough that a test that should see data never times out on a
    /// busy host; a test that would hang fails here instead.
    const READ_DEADLINE: Duration = Duration::from_secs(10);

    /// A directory of this test's own, removed when dropped.
    struct TestDir(PathBuf);

    impl TestDir {
        fn new(test: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("vmm-vsock-{test}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("temp dir");
            Self(dir)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A muxer on a socket in a temp dir, driven by hand as the device
    /// and the event loop would drive it.
    struct Rig {
        _dir: TestDir,
        uds: PathBuf,
        muxer: Muxer,
        watch: FdChanges,
    }

    impl Rig {
        fn new(test: &str) -> Self {
            let dir = TestDir::new(test);
            let uds = dir.path().join("v.sock");
            let listener = UnixListener::bind(&uds).expect("bind the vsock socket");
            let muxer = Muxer::new(GUEST_CID, uds.clone(), listener).expect("muxer");
            Self {
                _dir: dir,
                uds,
                muxer,
                watch: FdChanges::default(),
            }
        }

        /// The guest sends `op` on `ports`, advertising `buf_alloc`/`fwd_cnt`.
        fn guest_sends(&mut self, op: Op, ports: Ports, credit: (u32, u32), data: &[u8]) {
            let hdr = Header {
                len: data.len() as u32,
                ..from_guest(op.wire(), ports, credit)
            };
            self.muxer.on_guest_packet(&hdr, data, &mut self.watch);
        }

        fn guest(&mut self, op: Op, ports: Ports, data: &[u8]) {
            self.guest_sends(op, ports, (64 * 1024, 0), data);
        }

        /// The control packets owed to the guest, taken as rx would.
        fn owed(&mut self) -> Vec<(Op, Ports)> {
            let mut owed = Vec::new();
            while let Some(control) = self.muxer.next_control() {
                let hdr = self.muxer.control_header(control);
                self.muxer.pop_control();
                let op = hdr.op().expect("the muxer sends defined ops");
                owed.push((
                    op,
                    Ports {
                        host: hdr.src_port,
                        guest: hdr.dst_port,
                    },
                ));
            }
            owed
        }

        fn event(&mut self, fd: RawFd, events: EventSet) {
            self.muxer.on_host_event(fd, events, &mut self.watch);
        }

        /// A host program connects to the vsock socket; returns its end and
        /// the fd the muxer watches for it.
        fn host_client(&mut self) -> (UnixStream, RawFd) {
            let client = UnixStream::connect(&self.uds).expect("connect to the vsock socket");
            client
                .set_read_timeout(Some(READ_DEADLINE))
                .expect("read timeout");
            let before = self.watch.add.len();
            self.event(self.muxer.listener_fd(), EventSet::IN);
            assert_eq!(self.watch.add.len(), before + 1, "one client accepted");
            (client, self.watch.add[before].0)
        }

        /// A host service listening where a guest REQUEST to `port` goes.
        fn host_service(&self, port: u32) -> UnixListener {
            UnixListener::bind(format!("{}_{port}", self.uds.display()))
                .expect("bind the host service")
        }

        /// The guest connects to host port `port`; returns the connection
        /// and the host program's end of it.
        fn guest_connects(&mut self, port: u32, buf_alloc: u32) -> (Ports, UnixStream) {
            let listener = self.host_service(port);
            let ports = Ports {
                host: port,
                guest: 1000 + port,
            };
            self.guest_sends(Op::Request, ports, (buf_alloc, 0), &[]);
            let (host, _) = listener.accept().expect("the muxer connected");
            host.set_read_timeout(Some(READ_DEADLINE))
                .expect("read timeout");
            assert_eq!(self.owed(), vec![(Op::Response, ports)]);
            (ports, host)
        }

        fn fd_of(&self, ports: Ports) -> RawFd {
            self.muxer.tunnels[&ports].stream.as_raw_fd()
        }

        fn pending_to_host(&self, ports: Ports) -> usize {
            self.muxer.tunnels[&ports].conn.pending_to_host()
        }

        /// Sends guest payload until the host socket, which nobody reads,
        /// is full and bytes wait in the muxer; returns all bytes sent.
        fn fill_host_socket(&mut self, ports: Ports) -> Vec<u8> {
            let mut sent = Vec::new();
            for _ in 0..256 {
                if self.pending_to_host(ports) > 0 {
                    return sent;
                }
                let chunk = pattern(sent.len(), MAX_CHUNK);
                self.guest(Op::Rw, ports, &chunk);
                sent.extend_from_slice(&chunk);
            }
            panic!("the host socket took 16 MiB without filling");
        }

        /// The host program reads until EOF, the muxer writing more each
        /// time the socket has room, as the event loop would have it do.
        fn host_reads_to_eof(&mut self, host: &mut UnixStream, fd: RawFd) -> Vec<u8> {
            let mut got = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match host.read(&mut buf) {
                    Ok(0) => return got,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) => panic!("host read after {} bytes: {e}", got.len()),
                }
                self.event(fd, EventSet::OUT);
            }
        }

        /// Reads host data for the guest into a 64 KiB rx buffer.
        fn read_for_guest(&mut self, ports: Ports) -> (HostRead, Vec<u8>) {
            let mut buf = vec![0u8; 64 * 1024];
            let read = self.muxer.read_host(ports, &mut buf, &mut self.watch);
            if let HostRead::Data(hdr) = &read {
                buf.truncate(hdr.len as usize);
            } else {
                buf.clear();
            }
            (read, buf)
        }
    }

    const MAX_CHUNK: usize = 64 * 1024;

    /// A header as guest `GUEST_CID` sends it on `ports`, without payload.
    fn from_guest(op: u16, ports: Ports, credit: (u32, u32)) -> Header {
        Header {
            src_cid: GUEST_CID,
            dst_cid: HOST_CID,
            src_port: ports.guest,
            dst_port: ports.host,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: credit.0,
            fwd_cnt: credit.1,
        }
    }

    /// Control packets of kind `op` among `owed`.
    fn count(owed: &[(Op, Ports)], op: Op) -> usize {
        owed.iter().filter(|(o, _)| *o == op).count()
    }

    fn pattern(offset: usize, len: usize) -> Vec<u8> {
        (offset..offset + len)
            .map(|o| (o.wrapping_mul(131) ^ (o >> 11)) as u8)
            .collect()
    }

    fn read_reply(client: &mut UnixStream) -> String {
        let mut reply = String::new();
        client
            .read_to_string(&mut reply)
            .expect("a reply, then EOF");
        reply
    }

    #[test]
    fn a_connect_line_split_across_reads_opens_one_connection_and_keeps_what_follows() {
        let mut rig = Rig::new("split-handshake");
        let (mut client, fd) = rig.host_client();
        for piece in [&b"CONN"[..], b"ECT 5"] {
            client.write_all(piece).expect("write");
            rig.event(fd, EventSet::IN);
            assert_eq!(rig.muxer.connection_count(), 0, "after {piece:?}");
            assert!(rig.muxer.next_control().is_none(), "after {piece:?}");
        }
        client.write_all(b"2\nearly ").expect("write");
        rig.event(fd, EventSet::IN);
        let ports = Ports {
            host: FIRST_LOCAL_PORT,
            guest: 52,
        };
        assert_eq!(rig.owed(), vec![(Op::Request, ports)]);
        assert_eq!(rig.muxer.connection_count(), 1);
        assert_eq!(rig.watch.remove, vec![fd], "the handshake watch ends");

        rig.guest_sends(Op::Response, ports, (4096, 0), &[]);
        let mut ok = [0u8; 14];
        client.read_exact(&mut ok).expect("OK line");
        assert_eq!(&ok, b"OK 1073741824\n");

        client.write_all(b"late").expect("write");
        rig.event(rig.fd_of(ports), EventSet::IN);
        let mut to_guest = Vec::new();
        while let (HostRead::Data(hdr), data) = rig.read_for_guest(ports) {
            assert_eq!(hdr.op(), Some(Op::Rw));
            assert_eq!((hdr.src_port, hdr.dst_port), (FIRST_LOCAL_PORT, 52));
            to_guest.extend_from_slice(&data);
        }
        assert_eq!(to_guest, b"early late", "bytes after the line come first");
    }

    #[test]
    fn bad_handshakes_are_refused_without_holding_up_others() {
        let mut rig = Rig::new("bad-handshakes");
        let (mut slow, slow_fd) = rig.host_client();
        let (mut long, long_fd) = rig.host_client();
        let (mut garbage, garbage_fd) = rig.host_client();
        let (mut cut, cut_fd) = rig.host_client();
        let (mut at_limit, at_limit_fd) = rig.host_client();
        let (mut good, good_fd) = rig.host_client();

        slow.write_all(b"CONN").expect("write");
        long.write_all(format!("CONNECT {:025}", 52).as_bytes())
            .expect("write");
        garbage.write_all(b"HELLO 1234\n").expect("write");
        cut.write_all(b"CONNECT 5").expect("write");
        cut.shutdown(std::net::Shutdown::Write).expect("shutdown");
        at_limit
            .write_all(format!("CONNECT {:024}", 52).as_bytes())
            .expect("write");
        good.write_all(b"CONNECT 7\n").expect("write");
        for fd in [slow_fd, long_fd, garbage_fd, cut_fd, at_limit_fd, good_fd] {
            rig.event(fd, EventSet::IN);
        }

        for (name, client) in [
            ("long", &mut long),
            ("garbage", &mut garbage),
            ("cut", &mut cut),
        ] {
            assert_eq!(read_reply(client), "ERR bad CONNECT line\n", "{name}");
        }
        let good_ports = Ports {
            host: FIRST_LOCAL_PORT,
            guest: 7,
        };
        assert_eq!(rig.owed(), vec![(Op::Request, good_ports)]);
        assert_eq!(
            rig.muxer.handshakes.len(),
            2,
            "slow and at-limit still wait"
        );

        // The 32-byte line was still waiting for its newline.
        at_limit.write_all(b"\n").expect("write");
        rig.event(at_limit_fd, EventSet::IN);
        let at_limit_ports = Ports {
            host: FIRST_LOCAL_PORT + 1,
            guest: 52,
        };
        assert_eq!(rig.owed(), vec![(Op::Request, at_limit_ports)]);
        assert_eq!(rig.muxer.connection_count(), 2);
        assert!(rig.muxer.handshakes.contains_key(&slow_fd));
    }

    #[test]
    fn a_guest_sending_past_its_credit_is_reset_and_its_unwritten_bytes_dropped() {
        let mut rig = Rig::new("credit-overflow");
        let (ports, mut host) = rig.guest_connects(5000, 4096);
        let fd = rig.fd_of(ports);
        let mut sent = rig.fill_host_socket(ports);

        // Exactly the advertised buffer is still within credit.
        let top_up = pattern(
            sent.len(),
            TX_BUF_ALLOC as usize - rig.pending_to_host(ports),
        );
        rig.guest(Op::Rw, ports, &top_up);
        sent.extend_from_slice(&top_up);
        assert_eq!(rig.muxer.connection_count(), 1, "a full buffer is allowed");
        let pending = rig.pending_to_host(ports);
        let _ = rig.owed();

        // One byte past it is not.
        let over = pattern(sent.len(), TX_BUF_ALLOC as usize - pending + 1);
        rig.guest(Op::Rw, ports, &over);
        assert_eq!(rig.muxer.connection_count(), 0);
        assert_eq!(rig.owed(), vec![(Op::Rst, ports)]);
        assert!(rig.watch.remove.contains(&fd));

        let got = rig.host_reads_to_eof(&mut host, fd);
        assert_eq!(
            got.len(),
            sent.len() - pending,
            "the host gets what its socket took, not what still waited"
        );
        assert!(got == sent[..got.len()], "delivered bytes are intact");
    }

    #[test]
    fn host_data_waits_for_the_guests_credit() {
        let mut rig = Rig::new("credit-exhausted");
        let (ports, mut host) = rig.guest_connects(5001, 10);
        host.write_all(&pattern(0, 25)).expect("write");
        rig.event(rig.fd_of(ports), EventSet::IN);

        assert_eq!(rig.muxer.sendable(ports), 10);
        let (read, first) = rig.read_for_guest(ports);
        let HostRead::Data(hdr) = read else {
            panic!("expected data, got {read:?}");
        };
        assert_eq!((hdr.len, hdr.buf_alloc), (10, TX_BUF_ALLOC));
        assert_eq!(first, pattern(0, 10));
        assert_eq!(rig.muxer.sendable(ports), 0, "credit exhausted");
        assert!(rig.muxer.sendable_connections().is_empty());

        // The guest consumed the 10 bytes: 10 more.
        rig.guest_sends(Op::CreditUpdate, ports, (10, 10), &[]);
        let (_, second) = rig.read_for_guest(ports);
        assert_eq!(second, pattern(10, 10));
        // It consumed 10 more; only 5 are left on the host.
        rig.guest_sends(Op::CreditUpdate, ports, (10, 20), &[]);
        let (_, third) = rig.read_for_guest(ports);
        assert_eq!(third, pattern(20, 5));
        assert_eq!(rig.muxer.sendable(ports), 5);
        let (read, _) = rig.read_for_guest(ports);
        assert!(matches!(read, HostRead::Stopped), "{read:?}");
        assert_eq!(
            rig.muxer.sendable(ports),
            0,
            "wait for the next readiness edge"
        );

        host.write_all(b"more").expect("write");
        rig.event(rig.fd_of(ports), EventSet::IN);
        assert_eq!(rig.muxer.sendable_connections(), vec![ports]);
        assert_eq!(rig.read_for_guest(ports).1, b"more");
    }

    /// The guest ends a connection with `op` while bytes wait for a host
    /// program that is not reading; returns what the host then reads.
    fn guest_ends_with_bytes_pending(test: &str, op: Op) -> (Rig, Ports, Vec<u8>, Vec<u8>) {
        let mut rig = Rig::new(test);
        let (ports, mut host) = rig.guest_connects(5002, 4096);
        let fd = rig.fd_of(ports);
        let sent = rig.fill_host_socket(ports);
        let _ = rig.owed();

        rig.guest(op, ports, &[]);
        assert_eq!(rig.muxer.connection_count(), 1, "kept while bytes wait");
        assert_eq!(rig.owed(), vec![], "no answer yet");
        assert_eq!(rig.muxer.sendable(ports), 0, "nothing more for the guest");

        let got = rig.host_reads_to_eof(&mut host, fd);
        assert_eq!(rig.muxer.connection_count(), 0, "removed once written");
        assert!(rig.watch.remove.contains(&fd));
        (rig, ports, sent, got)
    }

    #[test]
    fn shutdown_with_bytes_pending_delivers_them_then_answers_rst() {
        let (mut rig, ports, sent, got) =
            guest_ends_with_bytes_pending("shutdown-pending", Op::Shutdown);
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "every byte, in order");
        // CREDIT_UPDATEs may precede it, as the host drained the bytes.
        let owed = rig.owed();
        assert_eq!(owed.last(), Some(&(Op::Rst, ports)), "{owed:?}");
        assert_eq!(count(&owed, Op::Rst), 1, "{owed:?}");
    }

    #[test]
    fn rst_with_bytes_pending_delivers_them_and_answers_nothing() {
        let (mut rig, _, sent, got) = guest_ends_with_bytes_pending("rst-pending", Op::Rst);
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "every byte, in order");
        assert_eq!(count(&rig.owed(), Op::Rst), 0);
    }

    #[test]
    fn pending_bytes_are_dropped_when_the_host_goes_away() {
        let mut rig = Rig::new("pending-host-gone");
        let (ports, host) = rig.guest_connects(5003, 4096);
        let fd = rig.fd_of(ports);
        rig.fill_host_socket(ports);
        let _ = rig.owed();
        rig.guest(Op::Shutdown, ports, &[]);
        assert_eq!(rig.muxer.connection_count(), 1);

        drop(host);
        rig.event(fd, EventSet::OUT | EventSet::HANG_UP);
        assert_eq!(rig.muxer.connection_count(), 0);
        assert_eq!(rig.owed(), vec![(Op::Rst, ports)]);
    }

    #[test]
    fn a_guest_rst_drops_host_data_not_yet_sent() {
        let mut rig = Rig::new("rst-host-data");
        let (ports, mut host) = rig.guest_connects(5004, 4096);
        host.write_all(b"never read").expect("write");
        rig.event(rig.fd_of(ports), EventSet::IN);
        assert_eq!(rig.muxer.sendable_connections(), vec![ports]);

        rig.guest(Op::Rst, ports, &[]);
        assert_eq!(
            rig.muxer.connection_count(),
            0,
            "nothing waited for the host"
        );
        assert_eq!(rig.owed(), vec![]);
        assert!(rig.muxer.sendable_connections().is_empty());
        // Closing a Unix stream with unread bytes resets it, so the host
        // program learns its data went nowhere.
        let err = host
            .read(&mut [0u8; 16])
            .expect_err("the connection is reset");
        assert_eq!(err.kind(), ErrorKind::ConnectionReset);
    }

    #[test]
    fn host_eof_reaches_the_guest_after_its_data_and_waits_for_the_guest() {
        let mut rig = Rig::new("host-eof");
        let (ports, mut host) = rig.guest_connects(5005, 4096);
        host.write_all(b"bye").expect("write");
        host.shutdown(std::net::Shutdown::Write).expect("shutdown");
        rig.event(rig.fd_of(ports), EventSet::IN | EventSet::READ_HANG_UP);

        assert_eq!(rig.read_for_guest(ports).1, b"bye");
        let (read, _) = rig.read_for_guest(ports);
        let HostRead::Ended(hdr) = read else {
            panic!("expected the end, got {read:?}");
        };
        assert_eq!(
            (hdr.op(), hdr.flags, hdr.len),
            (Some(Op::Shutdown), SHUTDOWN_BOTH, 0)
        );
        assert_eq!(rig.muxer.sendable(ports), 0);
        assert_eq!(rig.muxer.connection_count(), 1, "until the guest answers");

        rig.guest(Op::Rst, ports, &[]);
        assert_eq!(rig.muxer.connection_count(), 0);
        assert_eq!(rig.owed(), vec![]);
    }

    /// A guest that sends stray packets and never posts rx buffers: what
    /// it is owed stops at `MAX_CONTROL`, and once it reads, it is owed
    /// again.
    #[test]
    fn a_guest_that_never_reads_cannot_grow_what_it_is_owed() {
        let mut rig = Rig::new("flood");
        let stray = Ports { host: 9, guest: 10 };
        for _ in 0..100_000 {
            rig.guest(Op::Rw, stray, b"x");
        }
        assert_eq!(rig.muxer.control.len(), MAX_CONTROL);
        assert_eq!(rig.owed().len(), MAX_CONTROL);
        rig.guest(Op::Rw, stray, b"x");
        assert_eq!(rig.owed(), vec![(Op::Rst, stray)]);
    }

    /// With the queue full, a connection something is owed on is closed:
    /// the flooding guest loses its own connection, the host program sees
    /// it end, and no state is kept for it.
    #[test]
    fn a_full_queue_costs_the_guest_the_connection_it_was_owed_on() {
        let mut rig = Rig::new("flood-conn");
        let (ports, mut host) = rig.guest_connects(5007, 4096);
        let stray = Ports { host: 9, guest: 10 };
        while rig.muxer.control.len() < MAX_CONTROL {
            rig.guest(Op::Rw, stray, b"x");
        }
        rig.guest(Op::CreditRequest, ports, &[]);
        assert_eq!(rig.muxer.connection_count(), 0);
        let mut rest = Vec::new();
        host.read_to_end(&mut rest).expect("the host end sees EOF");
        assert!(rest.is_empty());
        // A host program asking in meanwhile is told, not left hanging.
        let (mut client, fd) = rig.host_client();
        client.write_all(b"CONNECT 52\n").expect("write");
        rig.event(fd, EventSet::IN);
        assert_eq!(read_reply(&mut client), "ERR too many connections\n");
        assert_eq!(rig.owed().len(), MAX_CONTROL);
    }

    /// Connections are capped: a guest REQUEST past `MAX_CONNECTIONS` is
    /// answered RST without the host being dialled.
    #[test]
    fn guest_connections_stop_at_the_cap() {
        let mut rig = Rig::new("conn-cap");
        let port = 5008;
        let listener = rig.host_service(port);
        // The service stays up (its backlog has room): past the cap, only
        // the muxer's own limit answers RST.
        let accepting = std::thread::spawn(move || {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept() {
                held.push(stream);
                if held.len() == MAX_CONNECTIONS {
                    break;
                }
            }
            (listener, held)
        });
        for guest in 0..MAX_CONNECTIONS as u32 {
            let ports = Ports { host: port, guest };
            rig.guest_sends(Op::Request, ports, (4096, 0), &[]);
            assert_eq!(rig.owed(), vec![(Op::Response, ports)]);
        }
        let (_listening, held) = accepting.join().expect("the host service");
        assert_eq!(held.len(), MAX_CONNECTIONS);
        let over = Ports {
            host: port,
            guest: MAX_CONNECTIONS as u32,
        };
        rig.guest_sends(Op::Request, over, (4096, 0), &[]);
        assert_eq!(rig.owed(), vec![(Op::Rst, over)]);
        assert_eq!(rig.muxer.connection_count(), MAX_CONNECTIONS);
    }

    /// A host service that never accepts fills its backlog; the next
    /// REQUEST is answered RST at once instead of blocking the event loop.
    #[test]
    fn a_service_that_does_not_accept_cannot_stall_the_vmm() {
        let mut rig = Rig::new("backlog");
        let port = 5009;
        let listener = rig.host_service(port);
        // A backlog of one, so that it fills after a connection or two.
        // SAFETY: listen(2) on a socket this test owns.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 1) }, 0);
        let mut guest = 0;
        loop {
            let ports = Ports { host: port, guest };
            rig.guest_sends(Op::Request, ports, (4096, 0), &[]);
            let owed = rig.owed();
            if owed == vec![(Op::Rst, ports)] {
                break;
            }
            assert_eq!(owed, vec![(Op::Response, ports)]);
            guest += 1;
            assert!(
                (guest as usize) < MAX_CONNECTIONS,
                "the backlog never filled"
            );
        }
        assert_eq!(rig.muxer.connection_count(), guest as usize);
    }

    #[test]
    fn packets_that_name_no_connection_or_the_wrong_peer_get_rst() {
        let mut rig = Rig::new("strays");
        let stray = Ports { host: 9, guest: 10 };
        rig.guest(Op::Rw, stray, b"x");
        rig.guest(Op::Response, stray, &[]);
        rig.guest(Op::Shutdown, stray, &[]);
        rig.guest(Op::Rst, stray, &[]);
        rig.guest(Op::Request, stray, &[]); // nobody listens on <uds>_9
        assert_eq!(
            rig.owed(),
            vec![
                (Op::Rst, stray),
                (Op::Rst, stray),
                (Op::Rst, stray),
                (Op::Rst, stray)
            ]
        );

        let (ports, _host) = rig.guest_connects(5006, 4096);
        let foreign = Header {
            src_cid: GUEST_CID + 1,
            len: 1,
            ..from_guest(Op::Rw.wire(), ports, (0, 0))
        };
        rig.muxer.on_guest_packet(&foreign, b"x", &mut rig.watch);
        let foreign_rst = Header {
            src_cid: GUEST_CID + 1,
            ..from_guest(Op::Rst.wire(), ports, (0, 0))
        };
        rig.muxer.on_guest_packet(&foreign_rst, &[], &mut rig.watch);
        assert_eq!(
            rig.owed(),
            vec![(Op::Rst, ports)],
            "only the RW is answered"
        );
        assert_eq!(
            rig.muxer.connection_count(),
            1,
            "the real connection is untouched"
        );

        // A second REQUEST, a RESPONSE nobody waited for, or an undefined
        // op resets the connection.
        for (op, port) in [
            (Op::Request.wire(), 5010),
            (Op::Response.wire(), 5011),
            (99, 5012),
        ] {
            let (ports, _host) = rig.guest_connects(port, 4096);
            let hdr = from_guest(op, ports, (4096, 0));
            rig.muxer.on_guest_packet(&hdr, &[], &mut rig.watch);
            assert_eq!(rig.owed(), vec![(Op::Rst, ports)], "op {op}");
        }
        assert_eq!(rig.muxer.connection_count(), 1);
    }

    #[test]
    fn a_credit_request_is_answered_and_forwarding_a_quarter_buffer_sends_an_update() {
        let mut rig = Rig::new("credit-update");
        let (ports, mut host) = rig.guest_connects(5007, 4096);
        rig.guest(Op::CreditRequest, ports, &[]);
        assert_eq!(rig.owed(), vec![(Op::CreditUpdate, ports)]);

        let quarter = (TX_BUF_ALLOC / 4) as usize;
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; quarter];
            host.read_exact(&mut buf).expect("read");
            buf
        });
        let mut sent = 0;
        while sent < quarter - 1 {
            let n = (quarter - 1 - sent).min(MAX_CHUNK);
            rig.guest(Op::Rw, ports, &pattern(sent, n));
            sent += n;
            assert_eq!(rig.owed(), vec![], "{sent} bytes forwarded");
        }
        rig.guest(Op::Rw, ports, &pattern(sent, 1));
        // The host may not have taken the last bytes yet: offer it the
        // socket until it has (the reader thread drains it).
        let deadline = std::time::Instant::now() + READ_DEADLINE;
        while rig.pending_to_host(ports) > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "host never took the bytes"
            );
            rig.event(rig.fd_of(ports), EventSet::OUT);
            std::thread::yield_now();
        }
        assert_eq!(rig.owed(), vec![(Op::CreditUpdate, ports)]);
        assert_eq!(reader.join().expect("reader"), pattern(0, quarter));
    }
}
