//! The control socket's server: JSON lines over a Unix stream socket,
//! served on the event-loop thread. The wire layout, the [`Request`] and
//! the replies are `vmm_proto::control`'s (re-exported here); this module
//! reads request lines, acts on the [`Machine`] and writes one reply line
//! per request. A malformed line is answered with an error and the
//! connection stays open.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::rc::Rc;

pub use vmm_proto::control::{
    Answer, ErrorCode, ForkReply, Refusal, Reply, Request, SnapshotReply, StateReply, StatusReply,
    VmState,
};
use vmm_sys_util::epoll::EventSet;

use crate::event_loop::{Ops, Subscriber};
use crate::machine::Machine;
use crate::vstate::exit::ExitReason;

/// Longest request line accepted.
const MAX_LINE: usize = 64 * 1024;

/// The control socket subscriber.
pub struct ControlServer {
    listener: UnixListener,
    conns: HashMap<RawFd, (UnixStream, Vec<u8>)>,
    machine: Rc<RefCell<Machine>>,
}

fn state(state: VmState) -> Reply<Answer> {
    Reply::Done(Answer::State(StateReply { state }))
}

/// The reply line of `reply`, newline included.
fn reply_line(reply: &Reply<Answer>) -> String {
    let mut text = reply.encode().unwrap_or_else(|e| {
        let refused = Reply::<Answer>::refused(ErrorCode::ReplyFailed, e.to_string());
        // A refusal is two strings: it always encodes.
        refused.encode().unwrap_or_default()
    });
    text.push('\n');
    text
}

/// An error with its sources, one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

impl ControlServer {
    /// Serves `listener`.
    pub fn new(listener: UnixListener, machine: Rc<RefCell<Machine>>) -> Self {
        Self {
            listener,
            conns: HashMap::new(),
            machine,
        }
    }

    /// The listening fd to subscribe.
    pub fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    fn execute(&mut self, line: &[u8]) -> Reply<Answer> {
        let request: Request = match serde_json::from_slice(line) {
            Ok(r) => r,
            Err(e) => return Reply::refused(ErrorCode::BadRequest, e.to_string()),
        };
        let mut m = self.machine.borrow_mut();
        match request {
            Request::Status {} => Reply::Done(Answer::Status(StatusReply {
                state: m.vcpus.state(m.latch.is_set()),
                vcpus: m.config.vcpus,
                mem_mib: m.config.mem_mib,
                pid: std::process::id(),
                // Layer chains change on snapshot and fork: the caller
                // learns which files this VM now writes and reads.
                disks: m.config.disks.clone(),
            })),
            Request::Pause {
                to_disk: false,
                dir: None,
                ..
            } => match m.vcpus.pause() {
                Ok(()) => state(VmState::Paused),
                Err(e) => Reply::refused(ErrorCode::PauseFailed, e.to_string()),
            },
            Request::Pause {
                to_disk: true,
                dir: Some(dir),
                durable,
            } => match m.snapshot_to(&dir, true, durable) {
                Ok(snapshot) => {
                    m.latch.trigger(ExitReason::PausedToDisk);
                    Reply::Done(Answer::Snapshot(SnapshotReply {
                        state: Some(VmState::PausedToDisk),
                        snapshot,
                    }))
                }
                Err(e) => Reply::refused(ErrorCode::SnapshotFailed, error_chain(&e)),
            },
            Request::Pause { .. } => Reply::refused(
                ErrorCode::BadRequest,
                "pause takes `to_disk: true` together with `dir`, or neither",
            ),
            Request::Snapshot { dir, durable } => match m.snapshot_to(&dir, false, durable) {
                Ok(snapshot) => Reply::Done(Answer::Snapshot(SnapshotReply {
                    state: None,
                    snapshot,
                })),
                Err(e) => Reply::refused(ErrorCode::SnapshotFailed, error_chain(&e)),
            },
            Request::Fork { count, paused } => match m.fork(count, paused) {
                Ok(fork) => Reply::Done(Answer::Fork(ForkReply { fork })),
                Err(e) => Reply::refused(ErrorCode::ForkFailed, error_chain(&e)),
            },
            Request::Resume {} => match m.vcpus.resume() {
                Ok(()) => state(VmState::Running),
                Err(e) => Reply::refused(ErrorCode::ResumeFailed, e.to_string()),
            },
            Request::Shutdown {} => {
                m.latch.trigger(ExitReason::Shutdown);
                state(VmState::Exiting)
            }
        }
    }

    fn serve(&mut self, fd: RawFd, ops: &mut Ops) {
        let mut chunk = [0u8; 4096];
        let Some((stream, buf)) = self.conns.get_mut(&fd) else {
            return;
        };
        let n = match stream.read(&mut chunk) {
            Ok(0) | Err(_) => {
                ops.remove(fd);
                self.conns.remove(&fd);
                return;
            }
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut lines = Vec::new();
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            lines.push(buf.drain(..=pos).collect::<Vec<u8>>());
        }
        let overlong = buf.len() > MAX_LINE;
        if overlong {
            buf.clear();
        }
        let mut replies = Vec::new();
        for line in lines {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            replies.push(self.execute(&line));
        }
        if overlong {
            replies.push(Reply::refused(
                ErrorCode::BadRequest,
                "request line too long",
            ));
        }
        if let Some((stream, _)) = self.conns.get_mut(&fd) {
            for r in replies {
                if stream.write_all(reply_line(&r).as_bytes()).is_err() {
                    ops.remove(fd);
                    self.conns.remove(&fd);
                    return;
                }
            }
        }
    }
}

impl Subscriber for ControlServer {
    fn handle(&mut self, fd: RawFd, events: EventSet, ops: &mut Ops) {
        if fd == self.listener.as_raw_fd() {
            if let Ok((stream, _)) = self.listener.accept() {
                // A client that stops reading must not stall the event loop:
                // its replies get a second to go out, then it is dropped.
                if stream
                    .set_write_timeout(Some(std::time::Duration::from_secs(1)))
                    .is_err()
                {
                    return;
                }
                let cfd = stream.as_raw_fd();
                ops.add(cfd, EventSet::IN | EventSet::READ_HANG_UP);
                self.conns.insert(cfd, (stream, Vec::new()));
            }
            return;
        }
        if events.contains(EventSet::IN) {
            self.serve(fd, ops);
        } else {
            ops.remove(fd);
            self.conns.remove(&fd);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    use vmm_proto::control::SnapshotReport;

    use super::*;

    #[test]
    fn every_reply_is_one_line() {
        let refused = Reply::refused(ErrorCode::BadRequest, "request line too long");
        assert_eq!(
            reply_line(&refused),
            "{\"error\":{\"code\":\"bad_request\",\"message\":\"request line too long\"},\"ok\":false}\n"
        );
        assert_eq!(
            reply_line(&state(VmState::Paused)),
            "{\"ok\":true,\"state\":\"paused\"}\n"
        );
    }

    #[test]
    fn an_answer_that_is_not_json_becomes_a_refusal() {
        let snapshot = SnapshotReport {
            dir: OsStr::from_bytes(b"/snap\xff").into(),
            state_bytes: 1,
            memory_bytes: 1,
            memory_scanned_bytes: 1,
            paused_ms: 1.0,
        };
        let reply = Reply::Done(Answer::Snapshot(SnapshotReply {
            state: None,
            snapshot,
        }));
        let text = reply_line(&reply);
        let read: Reply<SnapshotReply> = serde_json::from_str(&text).expect("one JSON line");
        assert!(
            matches!(&read, Reply::Refused(r) if r.code == ErrorCode::ReplyFailed),
            "{text}"
        );
        assert!(text.ends_with('\n') && text.matches('\n').count() == 1);
    }
}
