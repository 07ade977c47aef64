//! The line a host program sends before its stream carries data:
//! `CONNECT <port>\n`, `<port>` the guest port as a decimal u32, with
//! surrounding whitespace (and so a `\r`) ignored. It may arrive in any
//! number of reads; bytes after the newline are the first data for the
//! guest. The muxer answers a good line `OK <host port>\n` once the guest
//! accepts, and a bad one [`BAD_CONNECT`] before closing:
//!
//! - no newline within [`MAX_CONNECT_LINE`] bytes (nothing longer is
//!   buffered while waiting),
//! - EOF or a read error before the newline,
//! - a line that is not UTF-8, not `CONNECT `, or whose port is no u32.
//!
//! A handshake's socket is non-blocking: reading one never waits, so a
//! slow or silent client holds up nobody else.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;

/// Longest `CONNECT <port>` line waited for without its newline.
pub(super) const MAX_CONNECT_LINE: usize = 32;
/// The answer to a bad handshake.
pub(super) const BAD_CONNECT: &[u8] = b"ERR bad CONNECT line\n";
/// The answer when the VM holds as many connections as it may, or its
/// guest is not taking what it is owed.
pub(super) const BUSY: &[u8] = b"ERR too many connections\n";

/// Where a host client's `CONNECT` line stands.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum ConnectLine {
    /// No newline yet; wait for more.
    Incomplete,
    /// A good line: connect to guest `port`; bytes from `rest` on are data.
    Connect { port: u32, rest: usize },
    /// Garbage, too long, or cut short: refuse.
    Refused,
}

impl ConnectLine {
    /// Judges what a client has sent so far; `closed`: it will send no more.
    pub(super) fn parse(received: &[u8], closed: bool) -> Self {
        let Some(end) = received.iter().position(|b| *b == b'\n') else {
            return if closed || received.len() > MAX_CONNECT_LINE {
                Self::Refused
            } else {
                Self::Incomplete
            };
        };
        let port = std::str::from_utf8(&received[..end])
            .ok()
            .and_then(|line| line.trim().strip_prefix("CONNECT "))
            .and_then(|port| port.trim().parse::<u32>().ok());
        match port {
            Some(port) => Self::Connect {
                port,
                rest: end + 1,
            },
            None => Self::Refused,
        }
    }
}

/// A host client that has not finished its `CONNECT` line.
pub(super) struct Handshake {
    stream: UnixStream,
    received: Vec<u8>,
}

impl Handshake {
    /// A client just accepted; `stream` must be non-blocking.
    pub(super) fn new(stream: UnixStream) -> Self {
        Self {
            stream,
            received: Vec::new(),
        }
    }

    /// Reads all that is available and judges the line so far.
    pub(super) fn read_available(&mut self) -> ConnectLine {
        let mut chunk = [0u8; 64];
        let closed = loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => break true,
                Ok(n) => self.received.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break true,
            }
        };
        ConnectLine::parse(&self.received, closed)
    }

    /// Answers a bad line; the stream closes when `self` drops.
    /// Tells the client why (`BAD_CONNECT`, `BUSY`) and closes.
    pub(super) fn refuse(mut self, why: &[u8]) {
        // The client may be gone already: nothing to tell then.
        let _ = self.stream.write_all(why);
    }

    /// The stream, and the data that followed the line (from `rest`).
    pub(super) fn into_parts(self, rest: usize) -> (UnixStream, Vec<u8>) {
        let early = self.received.get(rest..).unwrap_or_default().to_vec();
        (self.stream, early)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines_are_parsed_strictly() {
        use ConnectLine::{Connect, Incomplete, Refused};
        let long_wait = format!("CONNECT {:024}", 52);
        assert_eq!(long_wait.len(), MAX_CONNECT_LINE);
        let too_long = format!("{long_wait}0");
        let long_line = format!("{long_wait}\n");
        let cases: &[(&[u8], bool, ConnectLine)] = &[
            (b"", false, Incomplete),
            (b"CONNECT 52", false, Incomplete),
            (b"CONNECT 52", true, Refused),
            (b"CONNECT 52\n", false, Connect { port: 52, rest: 11 }),
            (b"CONNECT 52\n", true, Connect { port: 52, rest: 11 }),
            (
                b"CONNECT 52\r\nearly",
                false,
                Connect { port: 52, rest: 12 },
            ),
            (b" CONNECT  52 \n", false, Connect { port: 52, rest: 14 }),
            (long_wait.as_bytes(), false, Incomplete),
            (too_long.as_bytes(), false, Refused),
            (long_line.as_bytes(), false, Connect { port: 52, rest: 33 }),
            (b"connect 52\n", false, Refused),
            (b"CONNECT\n", false, Refused),
            (b"CONNECT -1\n", false, Refused),
            (b"CONNECT 4294967296\n", false, Refused),
            (
                b"CONNECT 4294967295\n",
                false,
                Connect {
                    port: u32::MAX,
                    rest: 19,
                },
            ),
            (b"CONNECT \xff\n", false, Refused),
            (b"HELLO 1234\n", false, Refused),
        ];
        for (received, closed, want) in cases {
            assert_eq!(
                ConnectLine::parse(received, *closed),
                *want,
                "{:?} closed={closed}",
                String::from_utf8_lossy(received)
            );
        }
    }

    #[test]
    fn a_line_split_across_reads_is_judged_only_when_whole() {
        let (mut client, server) = UnixStream::pair().expect("socket pair");
        server.set_nonblocking(true).expect("non-blocking");
        let mut handshake = Handshake::new(server);
        assert_eq!(
            handshake.read_available(),
            ConnectLine::Incomplete,
            "nothing yet"
        );
        for piece in [&b"CONN"[..], b"ECT", b" 5"] {
            client.write_all(piece).expect("write");
            assert_eq!(
                handshake.read_available(),
                ConnectLine::Incomplete,
                "after {piece:?}"
            );
        }
        client.write_all(b"2\nfirst data").expect("write");
        let line = handshake.read_available();
        assert_eq!(line, ConnectLine::Connect { port: 52, rest: 11 });
        let (_, early) = handshake.into_parts(11);
        assert_eq!(early, b"first data");
    }

    #[test]
    fn a_client_that_hangs_up_mid_line_is_refused() {
        let (mut client, server) = UnixStream::pair().expect("socket pair");
        server.set_nonblocking(true).expect("non-blocking");
        let mut handshake = Handshake::new(server);
        client.write_all(b"CONNECT 5").expect("write");
        client
            .shutdown(std::net::Shutdown::Write)
            .expect("shutdown");
        assert_eq!(handshake.read_available(), ConnectLine::Refused);
        handshake.refuse(BAD_CONNECT);
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).expect("reply, then EOF");
        assert_eq!(reply, BAD_CONNECT);
    }
}
