//! The control socket: JSON lines over a Unix stream socket.
//!
//! Requests, one JSON object a line: `{"cmd":"status"}`, `{"cmd":"pause"}`,
//! `{"cmd":"resume"}`, `{"cmd":"shutdown"}`, `{"cmd":"snapshot","dir":D}`,
//! `{"cmd":"pause","to_disk":true,"dir":D}`, `{"cmd":"fork","count":N}`. Every request gets one line:
//! `{"ok":true, ...}` or `{"ok":false,"error":{"code","message"}}`. A
//! malformed line is answered with an error and the connection stays open.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use vmm_sys_util::epoll::EventSet;

use crate::event_loop::{Ops, Subscriber};
use crate::machine::Machine;
use crate::vstate::exit::ExitReason;

/// A control request.
#[derive(Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Report the VM state.
    Status {},
    /// Stop the vCPUs in memory; with `to_disk`, write a snapshot to
    /// `dir` and end the process (resume = `forge-vmm restore`).
    Pause {
        /// Snapshot and exit.
        #[serde(default)]
        to_disk: bool,
        /// Snapshot directory (needed with `to_disk`).
        #[serde(default)]
        dir: Option<PathBuf>,
        /// Sync the snapshot to disk before answering (default true).
        #[serde(default = "yes")]
        durable: bool,
    },
    /// Fork the running VM into `count` children.
    Fork {
        /// Number of children.
        count: u32,
        /// Children start paused (a `resume` on their socket starts them).
        #[serde(default)]
        paused: bool,
    },
    /// Write a snapshot to `dir` and keep running (or stay paused).
    Snapshot {
        /// Snapshot directory.
        dir: PathBuf,
        /// Sync the snapshot to disk before answering (default true).
        #[serde(default = "yes")]
        durable: bool,
    },
    /// Continue the vCPUs.
    Resume {},
    /// End the VM.
    Shutdown {},
}

fn yes() -> bool {
    true
}

/// Longest request line accepted.
const MAX_LINE: usize = 64 * 1024;

/// The control socket subscriber.
pub struct ControlServer {
    listener: UnixListener,
    conns: HashMap<RawFd, (UnixStream, Vec<u8>)>,
    machine: Rc<RefCell<Machine>>,
}

fn error(code: &str, message: impl Into<String>) -> Value {
    json!({ "ok": false, "error": { "code": code, "message": message.into() } })
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

    fn execute(&mut self, line: &[u8]) -> Value {
        let request: Request = match serde_json::from_slice(line) {
            Ok(r) => r,
            Err(e) => return error("bad_request", e.to_string()),
        };
        let mut m = self.machine.borrow_mut();
        match request {
            Request::Status {} => json!({
                "ok": true,
                "state": m.vcpus.state_name(m.latch.is_set()),
                "vcpus": m.config.vcpus,
                "mem_mib": m.config.mem_mib,
                "pid": std::process::id(),
                // Layer chains change on snapshot and fork: the caller
                // learns which files this VM now writes and reads.
                "disks": m.config.disks,
            }),
            Request::Pause {
                to_disk: false,
                dir: None,
                ..
            } => match m.vcpus.pause() {
                Ok(()) => json!({ "ok": true, "state": "paused" }),
                Err(e) => error("pause_failed", e.to_string()),
            },
            Request::Pause {
                to_disk: true,
                dir: Some(dir),
                durable,
            } => match m.snapshot_to(&dir, true, durable) {
                Ok(report) => {
                    m.latch.trigger(ExitReason::PausedToDisk);
                    json!({ "ok": true, "state": "paused_to_disk", "snapshot": report })
                }
                Err(e) => error("snapshot_failed", error_chain(&e)),
            },
            Request::Pause { .. } => error(
                "bad_request",
                "pause takes `to_disk: true` together with `dir`, or neither",
            ),
            Request::Snapshot { dir, durable } => match m.snapshot_to(&dir, false, durable) {
                Ok(report) => json!({ "ok": true, "snapshot": report }),
                Err(e) => error("snapshot_failed", error_chain(&e)),
            },
            Request::Fork { count, paused } => match m.fork(count, paused) {
                Ok(report) => json!({ "ok": true, "fork": report }),
                Err(e) => error("fork_failed", error_chain(&e)),
            },
            Request::Resume {} => match m.vcpus.resume() {
                Ok(()) => json!({ "ok": true, "state": "running" }),
                Err(e) => error("resume_failed", e.to_string()),
            },
            Request::Shutdown {} => {
                m.latch.trigger(ExitReason::Shutdown);
                json!({ "ok": true, "state": "exiting" })
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
            replies.push(error("bad_request", "request line too long"));
        }
        if let Some((stream, _)) = self.conns.get_mut(&fd) {
            for r in replies {
                let mut text = r.to_string();
                text.push('\n');
                if stream.write_all(text.as_bytes()).is_err() {
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
    use super::*;

    #[test]
    fn requests_parse_strictly() {
        let r: Request = serde_json::from_str(r#"{"cmd":"pause"}"#).expect("pause");
        assert_eq!(
            r,
            Request::Pause {
                to_disk: false,
                dir: None,
                durable: true
            }
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"explode"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"status","x":1}"#).is_err());
        assert!(serde_json::from_str::<Request>("not json").is_err());
    }
}
