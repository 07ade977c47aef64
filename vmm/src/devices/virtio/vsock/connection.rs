//! One vsock stream connection's protocol state, without its socket: where
//! it is in its life, the bytes waiting to go either way, and the credit
//! both ways (virtio 1.2 §5.10.6.3). The muxer owns the socket and does the
//! I/O; this module decides what it may do.
//!
//! ```text
//!   host CONNECT ──> Connecting ──guest RESPONSE──> Established <── guest REQUEST
//!                                                     │      │
//!                        host EOF: SHUTDOWN to guest  │      │  guest SHUTDOWN/RST while
//!                                                     v      v  bytes wait for the host
//!                                              HostEnded    GuestEnded
//!                                  (removed at the guest's  (removed once those bytes
//!                                   RST or SHUTDOWN)         are written, or the write fails)
//! ```
//!
//! A guest SHUTDOWN or RST with nothing left for the host removes the
//! connection at once, from any state; with bytes left (possible in any
//! state, as RW is accepted in all of them) it becomes `GuestEnded`. Host
//! data flows to the guest only while `Established`.
//!
//! Credit, per direction: the receiver advertises `buf_alloc` (its buffer)
//! and `fwd_cnt` (bytes it has consumed so far); the sender keeps its own
//! count of bytes sent and never has more than `buf_alloc` in flight:
//! `credit = buf_alloc - (sent - fwd_cnt)`. The counters are free-running
//! u32s and wrap; only their difference means anything.
//!
//! - Host → guest: `rx_cnt` counts bytes put on the rx queue; the guest's
//!   `buf_alloc`/`fwd_cnt` arrive in every packet it sends. A guest that
//!   claims to have consumed more than it was sent gets no credit.
//! - Guest → host: the device advertises [`TX_BUF_ALLOC`] and `fwd_cnt`,
//!   the bytes written to the host socket. Bytes the socket would not take
//!   wait here; a guest that sends past its credit has its connection
//!   reset. A CREDIT_UPDATE is owed once a quarter of the buffer has been
//!   forwarded since `fwd_cnt` was last told.

use std::collections::VecDeque;
use std::num::Wrapping;

/// Bytes of guest data the device buffers per connection (its `buf_alloc`).
pub(super) const TX_BUF_ALLOC: u32 = 256 * 1024;

/// Where a connection is in its life.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum State {
    /// Host-initiated, REQUEST sent, waiting for the guest's RESPONSE.
    Connecting,
    /// Data flows.
    Established,
    /// SHUTDOWN sent to the guest after host EOF; waiting for its RST.
    HostEnded,
    /// The guest ended the connection while bytes were still queued for
    /// the host: removed once they are written, answered with RST if the
    /// guest's packet was a SHUTDOWN.
    GuestEnded {
        /// Answer RST on removal.
        reply_rst: bool,
    },
}

/// What happens when the guest ends a connection.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Ending {
    /// Nothing is left for the host: remove it now.
    Now,
    /// Bytes are still queued for the host: keep it until they are written.
    Lingering,
}

/// The guest sent more than the credit it was given.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct CreditExceeded {
    /// Bytes already waiting for the host.
    pub(super) queued: usize,
    /// Bytes in the refused packet.
    pub(super) refused: usize,
}

/// One connection's protocol state.
#[derive(Debug)]
pub(super) struct Connection {
    state: State,
    /// Host bytes read with the `CONNECT` line, delivered before any more
    /// is read from the socket.
    early: Vec<u8>,
    /// Guest bytes the host socket has not taken yet.
    to_host: VecDeque<u8>,
    /// The host socket may have data: edge-triggered, so set on every
    /// readiness event and cleared only when a read would block.
    host_readable: bool,
    /// The guest's receive buffer for this connection.
    peer_buf_alloc: u32,
    /// Bytes the guest says it has consumed.
    peer_fwd_cnt: Wrapping<u32>,
    /// Bytes sent to the guest.
    rx_cnt: Wrapping<u32>,
    /// Guest bytes written to the host socket.
    fwd_cnt: Wrapping<u32>,
    /// `fwd_cnt` as last sent to the guest.
    fwd_cnt_told: Wrapping<u32>,
}

impl Connection {
    fn new(state: State, early: Vec<u8>) -> Self {
        Self {
            state,
            early,
            to_host: VecDeque::new(),
            host_readable: true,
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            fwd_cnt_told: Wrapping(0),
        }
    }

    /// A connection the guest asked for (its REQUEST was answered).
    pub(super) fn from_guest(peer_buf_alloc: u32, peer_fwd_cnt: u32) -> Self {
        let mut conn = Self::new(State::Established, Vec::new());
        conn.peer_advertised(peer_buf_alloc, peer_fwd_cnt);
        conn
    }

    /// A connection a host program asked for with `CONNECT`; `early` is what
    /// it sent after the line.
    pub(super) fn from_host(early: Vec<u8>) -> Self {
        Self::new(State::Connecting, early)
    }

    /// The guest's `buf_alloc` and `fwd_cnt`, from any packet it sent.
    pub(super) fn peer_advertised(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = Wrapping(fwd_cnt);
    }

    /// The guest's RESPONSE: true if it was awaited (the connection is now
    /// established), false if it is a protocol error.
    pub(super) fn guest_accepted(&mut self) -> bool {
        if self.state != State::Connecting {
            return false;
        }
        self.state = State::Established;
        true
    }

    /// Queues guest payload for the host; refused if it would overrun the
    /// buffer the device advertised.
    pub(super) fn queue_for_host(&mut self, data: &[u8]) -> Result<(), CreditExceeded> {
        if self.to_host.len() + data.len() > TX_BUF_ALLOC as usize {
            return Err(CreditExceeded {
                queued: self.to_host.len(),
                refused: data.len(),
            });
        }
        self.to_host.extend(data);
        Ok(())
    }

    /// The next bytes to write to the host socket (empty when none wait).
    pub(super) fn next_for_host(&self) -> &[u8] {
        self.to_host.as_slices().0
    }

    /// The host socket took `n` bytes of [`Self::next_for_host`].
    pub(super) fn written_to_host(&mut self, n: usize) {
        let n = n.min(self.to_host.len());
        self.to_host.drain(..n);
        self.fwd_cnt += Wrapping(n as u32);
    }

    /// Guest bytes still waiting for the host socket.
    pub(super) fn pending_to_host(&self) -> usize {
        self.to_host.len()
    }

    /// The guest sent SHUTDOWN (`reply_rst`) or RST, after the muxer tried
    /// to write what was queued.
    pub(super) fn guest_ended(&mut self, reply_rst: bool) -> Ending {
        if self.to_host.is_empty() {
            return Ending::Now;
        }
        self.state = State::GuestEnded { reply_rst };
        self.host_readable = false;
        Ending::Lingering
    }

    /// A `GuestEnded` connection whose bytes are written, or whose socket
    /// is `broken`, is done: Some(whether to answer RST).
    pub(super) fn finished(&self, broken: bool) -> Option<bool> {
        match self.state {
            State::GuestEnded { reply_rst } if broken || self.to_host.is_empty() => Some(reply_rst),
            _ => None,
        }
    }

    /// The host socket reported readiness.
    pub(super) fn host_ready(&mut self) {
        self.host_readable = true;
    }

    /// A read from the host socket would block.
    pub(super) fn host_drained(&mut self) {
        self.host_readable = false;
    }

    /// The host closed its end: a SHUTDOWN goes to the guest.
    pub(super) fn host_ended(&mut self) {
        self.host_readable = false;
        self.state = State::HostEnded;
    }

    /// Bytes the guest can take from the host, as far as its credit says.
    pub(super) fn peer_credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub((self.rx_cnt - self.peer_fwd_cnt).0)
    }

    /// Host bytes that may go to the guest now: none unless established and
    /// the host socket may have data, and never more than the credit.
    pub(super) fn sendable(&self) -> u32 {
        if self.state == State::Established && self.host_readable {
            self.peer_credit()
        } else {
            0
        }
    }

    /// Copies early host bytes into `buf`: None when there are none, and
    /// the socket is next.
    pub(super) fn take_early(&mut self, buf: &mut [u8]) -> Option<usize> {
        if self.early.is_empty() {
            return None;
        }
        let n = self.early.len().min(buf.len());
        buf[..n].copy_from_slice(&self.early[..n]);
        self.early.drain(..n);
        Some(n)
    }

    /// `n` host bytes were sent to the guest in a packet that also told it
    /// `fwd_cnt`; returns that `fwd_cnt`.
    pub(super) fn sent_to_guest(&mut self, n: u32) -> u32 {
        self.rx_cnt += Wrapping(n);
        self.tell_fwd_cnt()
    }

    /// `fwd_cnt`, now being told to the guest.
    pub(super) fn tell_fwd_cnt(&mut self) -> u32 {
        self.fwd_cnt_told = self.fwd_cnt;
        self.fwd_cnt.0
    }

    /// `fwd_cnt`, without counting it as told.
    pub(super) fn fwd_cnt(&self) -> u32 {
        self.fwd_cnt.0
    }

    /// Enough has been forwarded since the guest last heard `fwd_cnt` that
    /// it should be told, so a guest waiting for credit does not stall.
    pub(super) fn credit_update_due(&self) -> bool {
        (self.fwd_cnt - self.fwd_cnt_told).0 >= TX_BUF_ALLOC / 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn established(peer_buf_alloc: u32) -> Connection {
        Connection::from_guest(peer_buf_alloc, 0)
    }

    #[test]
    fn host_data_never_exceeds_the_credit_the_guest_advertised() {
        let mut conn = established(1000);
        assert_eq!(conn.sendable(), 1000);
        conn.sent_to_guest(600);
        assert_eq!(conn.sendable(), 400);
        conn.sent_to_guest(400);
        assert_eq!(conn.sendable(), 0, "credit exhausted");
        // The guest consumed 250 bytes: that much room again.
        conn.peer_advertised(1000, 250);
        assert_eq!(conn.sendable(), 250);
        // A guest that shrinks its buffer below what is in flight gets
        // nothing, not a huge unsigned credit.
        conn.peer_advertised(100, 250);
        assert_eq!(conn.sendable(), 0);
    }

    #[test]
    fn credit_survives_the_counters_wrapping() {
        let mut conn = established(4096);
        // Just short of u32::MAX sent, and all of it consumed.
        conn.sent_to_guest(u32::MAX - 9);
        conn.peer_advertised(4096, u32::MAX - 9);
        assert_eq!(conn.sendable(), 4096);
        // 100 more: rx_cnt wraps to 90.
        conn.sent_to_guest(100);
        assert_eq!(conn.rx_cnt.0, 90);
        assert_eq!(conn.sendable(), 4096 - 100);
        // The guest's fwd_cnt wraps too.
        conn.peer_advertised(4096, 40);
        assert_eq!(conn.sendable(), 4096 - 50);
    }

    #[test]
    fn a_guest_claiming_more_consumed_than_it_was_sent_gets_no_credit() {
        let mut conn = established(4096);
        conn.sent_to_guest(10);
        conn.peer_advertised(4096, 11);
        assert_eq!(conn.sendable(), 0);
    }

    #[test]
    fn guest_data_past_the_advertised_buffer_is_refused_whole() {
        let mut conn = established(0);
        let chunk = vec![7u8; 64 * 1024];
        for _ in 0..4 {
            conn.queue_for_host(&chunk).expect("within the buffer");
        }
        assert_eq!(conn.pending_to_host(), TX_BUF_ALLOC as usize);
        assert_eq!(
            conn.queue_for_host(&[1]),
            Err(CreditExceeded {
                queued: TX_BUF_ALLOC as usize,
                refused: 1
            })
        );
        assert_eq!(
            conn.pending_to_host(),
            TX_BUF_ALLOC as usize,
            "nothing kept"
        );
        // Once the host takes some, that much fits again.
        conn.written_to_host(10);
        conn.queue_for_host(&[1; 10]).expect("room freed");
        assert_eq!(conn.queue_for_host(&[1]).map_err(|e| e.refused), Err(1));
    }

    #[test]
    fn fwd_cnt_counts_written_bytes_and_wraps() {
        let mut conn = established(0);
        conn.fwd_cnt = Wrapping(u32::MAX - 1);
        conn.fwd_cnt_told = conn.fwd_cnt;
        conn.queue_for_host(&[1, 2, 3, 4]).expect("fits");
        assert_eq!(conn.next_for_host(), &[1, 2, 3, 4]);
        conn.written_to_host(3);
        assert_eq!(conn.next_for_host(), &[4]);
        assert_eq!(conn.fwd_cnt(), 1, "wrapped past u32::MAX");
        // A write report larger than what waits cannot inflate fwd_cnt.
        conn.written_to_host(100);
        assert_eq!(conn.fwd_cnt(), 2);
        assert_eq!(conn.pending_to_host(), 0);
    }

    #[test]
    fn a_credit_update_is_due_after_a_quarter_of_the_buffer_across_a_wrap() {
        let mut conn = established(0);
        conn.fwd_cnt = Wrapping(u32::MAX - 100);
        assert_eq!(conn.tell_fwd_cnt(), u32::MAX - 100);
        let quarter = (TX_BUF_ALLOC / 4) as usize;
        conn.queue_for_host(&vec![0; quarter]).expect("fits");
        conn.written_to_host(quarter - 1);
        assert!(!conn.credit_update_due());
        conn.written_to_host(1);
        assert!(
            conn.credit_update_due(),
            "fwd_cnt wrapped, difference is a quarter"
        );
        conn.sent_to_guest(0);
        assert!(
            !conn.credit_update_due(),
            "any packet to the guest tells fwd_cnt"
        );
    }

    #[test]
    fn a_guest_ending_with_nothing_queued_removes_the_connection_now() {
        let mut conn = established(4096);
        assert_eq!(conn.guest_ended(true), Ending::Now);
        assert_eq!(conn.guest_ended(false), Ending::Now);
    }

    #[test]
    fn a_guest_ending_with_bytes_queued_lingers_until_they_are_written() {
        for reply_rst in [true, false] {
            let mut conn = established(4096);
            conn.queue_for_host(b"last words").expect("fits");
            assert_eq!(conn.guest_ended(reply_rst), Ending::Lingering);
            assert_eq!(conn.state, State::GuestEnded { reply_rst });
            assert_eq!(conn.sendable(), 0, "no more host data for the guest");
            assert_eq!(conn.finished(false), None, "bytes still queued");
            conn.written_to_host(5);
            assert_eq!(conn.finished(false), None);
            assert_eq!(conn.next_for_host(), b"words");
            conn.written_to_host(5);
            assert_eq!(conn.finished(false), Some(reply_rst));
        }
    }

    #[test]
    fn a_broken_host_socket_ends_a_lingering_connection_with_its_bytes() {
        let mut conn = established(4096);
        conn.queue_for_host(b"unread").expect("fits");
        conn.guest_ended(true);
        assert_eq!(conn.finished(true), Some(true));
        // An established connection is never finished by a broken socket
        // here: the muxer resets it itself.
        let mut live = established(4096);
        live.queue_for_host(b"unread").expect("fits");
        assert_eq!(live.finished(true), None);
    }

    #[test]
    fn host_eof_stops_host_data_until_the_guest_ends_it() {
        let mut conn = established(4096);
        conn.host_ended();
        assert_eq!(conn.state, State::HostEnded);
        conn.host_ready();
        assert_eq!(conn.sendable(), 0, "readiness after EOF sends nothing");
    }

    #[test]
    fn a_host_connection_sends_nothing_before_the_guest_accepts_it() {
        let mut conn = Connection::from_host(b"early".to_vec());
        conn.peer_advertised(4096, 0);
        assert_eq!(conn.sendable(), 0);
        assert!(conn.guest_accepted());
        assert_eq!(conn.sendable(), 4096);
        assert!(!conn.guest_accepted(), "a second RESPONSE is an error");
    }

    #[test]
    fn early_bytes_come_first_in_pieces_then_the_socket() {
        let mut conn = Connection::from_host(b"hello".to_vec());
        let mut buf = [0u8; 3];
        assert_eq!(conn.take_early(&mut buf), Some(3));
        assert_eq!(&buf, b"hel");
        assert_eq!(conn.take_early(&mut buf), Some(2));
        assert_eq!(&buf[..2], b"lo");
        assert_eq!(conn.take_early(&mut buf), None);
    }

    #[test]
    fn readiness_is_edge_triggered() {
        let mut conn = established(4096);
        conn.host_drained();
        assert_eq!(conn.sendable(), 0, "would block: wait for the next edge");
        conn.host_ready();
        assert_eq!(conn.sendable(), 4096);
    }
}
