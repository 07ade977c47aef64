//! The control socket of a running `forge-vmm`: JSON lines over a Unix
//! stream socket, one request a line, one reply line per request, in order.
//!
//! ```text
//! request  = {"cmd":"status"}
//!          | {"cmd":"pause"}                                  (in memory)
//!          | {"cmd":"pause","to_disk":true,"dir":D}           (snapshot, then exit)
//!          | {"cmd":"snapshot","dir":D}                       (and keep going)
//!          | {"cmd":"fork","count":N}                         (N running children)
//!          | {"cmd":"resume"} | {"cmd":"shutdown"}
//!            pause, pause to disk and snapshot also take "durable" (default true)
//!            and fork "paused" (default false); unknown fields are refused.
//! reply    = {"ok":true, <fields of the answer>}
//!          | {"ok":false,"error":{"code":C,"message":M}}
//! answers  status                 {"state","vcpus","mem_mib","pid","disks":[DiskConfig]}
//!          pause, resume, shutdown {"state"}
//!          pause to disk          {"state":"paused_to_disk","snapshot":{"dir","state_bytes","memory_bytes","paused_ms"}}
//!          snapshot               {"snapshot":{...}}
//!          fork                   {"fork":{"children":[{"pid","control_socket","vsock_uds",
//!                                  "serial_log","disk_tops","status"}],"parent_paused_ms",...}}
//! ```
//!
//! The VMM writes a reply's keys in sorted order ([`Reply::encode`]). A
//! malformed line is answered with `bad_request` and the connection stays
//! open. The reader of a reply knows which request it sent, so it reads the
//! matching answer type ([`StatusReply`], [`StateReply`], ...) through
//! [`Reply`]; answers accept fields they do not know, so the VMM can add
//! some without breaking older callers.

use std::fmt;
use std::path::PathBuf;

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::config::DiskConfig;

/// A control request.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
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

/// One reply line: what a request answered, or why it was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply<T> {
    /// `{"ok":true, <fields of T>}`.
    Done(T),
    /// `{"ok":false,"error":{"code","message"}}`.
    Refused(Refusal),
}

impl<T> Reply<T> {
    /// A refusal with `code` and `message`.
    pub fn refused(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Refused(Refusal {
            code,
            message: message.into(),
        })
    }

    /// The answer, or the refusal as an error.
    pub fn into_result(self) -> Result<T, Refusal> {
        match self {
            Self::Done(answer) => Ok(answer),
            Self::Refused(refusal) => Err(refusal),
        }
    }
}

impl<T: Serialize> Reply<T> {
    /// The reply line, without its newline. Keys come out sorted (a JSON
    /// map's order), so the bytes do not depend on the order fields are
    /// declared in here.
    pub fn encode(&self) -> Result<String, serde_json::Error> {
        Ok(serde_json::to_value(self)?.to_string())
    }
}

impl<T: Serialize> Serialize for Reply<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Done<'a, T> {
            ok: bool,
            #[serde(flatten)]
            answer: &'a T,
        }
        #[derive(Serialize)]
        struct Refused<'a> {
            ok: bool,
            error: &'a Refusal,
        }
        match self {
            Self::Done(answer) => Done { ok: true, answer }.serialize(serializer),
            Self::Refused(error) => Refused { ok: false, error }.serialize(serializer),
        }
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Reply<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // `ok` decides which of two shapes the rest has; serde's tags are
        // strings, this one is a boolean.
        let mut fields = Map::<String, Value>::deserialize(deserializer)?;
        match fields.remove("ok") {
            Some(Value::Bool(true)) => T::deserialize(Value::Object(fields))
                .map(Self::Done)
                .map_err(D::Error::custom),
            Some(Value::Bool(false)) => {
                let error = fields
                    .remove("error")
                    .ok_or_else(|| D::Error::missing_field("error"))?;
                Refusal::deserialize(error)
                    .map(Self::Refused)
                    .map_err(D::Error::custom)
            }
            Some(other) => Err(D::Error::custom(format!(
                "`ok` must be true or false, not {other}"
            ))),
            None => Err(D::Error::missing_field("ok")),
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// What kind of failure.
    pub code: ErrorCode,
    /// What happened, with its causes, one line.
    pub message: String,
}

/// The kinds of refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The line is not a request, or its fields do not go together.
    BadRequest,
    /// The vCPUs did not stop.
    PauseFailed,
    /// The vCPUs did not continue.
    ResumeFailed,
    /// A snapshot (or pause to disk) could not be written.
    SnapshotFailed,
    /// The VM could not be forked.
    ForkFailed,
    /// The answer could not be written as JSON (a path that is not UTF-8).
    ReplyFailed,
    /// A code this build does not know, from a newer VMM: the message
    /// still says what happened.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The code as it is on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::PauseFailed => "pause_failed",
            Self::ResumeFailed => "resume_failed",
            Self::SnapshotFailed => "snapshot_failed",
            Self::ForkFailed => "fork_failed",
            Self::ReplyFailed => "reply_failed",
            Self::Unknown => "unknown",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the VM is doing, as a reply states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// The vCPUs run.
    Running,
    /// The vCPUs are stopped; RAM is kept.
    Paused,
    /// A snapshot was written and the process is ending.
    PausedToDisk,
    /// The VM ended or is ending (a shutdown, the guest powered off).
    Exiting,
}

/// The answer to `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReply {
    /// What the VM is doing.
    pub state: VmState,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// The VMM's process id.
    pub pid: u32,
    /// The disks with their layer chains as they are now: snapshots and
    /// forks stack new top layers, and the caller learns which files this
    /// VM now writes and reads.
    pub disks: Vec<DiskConfig>,
}

/// The answer to `pause` (in memory), `resume` and `shutdown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateReply {
    /// The state the VM is in now.
    pub state: VmState,
}

/// The answer to `snapshot` and to `pause` to disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotReply {
    /// `paused_to_disk` after a pause to disk; absent after a snapshot,
    /// which leaves the VM as it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<VmState>,
    /// What was written.
    pub snapshot: SnapshotReport,
}

/// What a snapshot wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotReport {
    /// The directory.
    pub dir: PathBuf,
    /// Size of the state file.
    pub state_bytes: u64,
    /// Non-zero guest memory written.
    pub memory_bytes: u64,
    /// Guest memory read to find it: the pages the VMM held or its
    /// memory file held data for, not the whole of RAM.
    #[serde(default)]
    pub memory_scanned_bytes: u64,
    /// How long the vCPUs were stopped.
    pub paused_ms: f64,
}

/// The answer to `fork`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForkReply {
    /// What the fork did.
    pub fork: ForkReport,
}

/// What a fork did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForkReport {
    /// The children.
    pub children: Vec<ChildReport>,
    /// How long the parent's vCPUs were stopped.
    pub parent_paused_ms: f64,
    /// Of which: stopping the vCPUs.
    pub vcpu_pause_ms: f64,
    /// Of which: capturing vCPU and device state.
    pub capture_ms: f64,
    /// Of which: freezing shared guest RAM (0 when it was already private).
    pub freeze_ms: f64,
    /// Of which: the fork(2) calls themselves.
    pub fork_syscalls_ms: f64,
}

/// One child of a fork.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildReport {
    /// Process id.
    pub pid: i32,
    /// Control socket.
    pub control_socket: PathBuf,
    /// vsock Unix socket, if the VM has vsock.
    pub vsock_uds: Option<PathBuf>,
    /// Serial log.
    pub serial_log: PathBuf,
    /// Each writable disk's new top layer.
    pub disk_tops: Vec<PathBuf>,
    /// Whether the child came up.
    pub status: ChildStatus,
}

/// Whether a fork's child came up. On the wire a string: `"ok"`, or the
/// child's error (an error message is never just `ok`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum ChildStatus {
    /// The child rebuilt the VM and runs it (or waits for `resume`).
    Started,
    /// The child failed, and ended.
    Failed(String),
}

impl From<String> for ChildStatus {
    fn from(text: String) -> Self {
        if text == "ok" {
            Self::Started
        } else {
            Self::Failed(text)
        }
    }
}

impl From<ChildStatus> for String {
    fn from(status: ChildStatus) -> Self {
        match status {
            ChildStatus::Started => "ok".to_owned(),
            ChildStatus::Failed(error) => error,
        }
    }
}

/// Any answer, for the VMM, which writes them; a caller reads the one type
/// its request is answered with.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Answer {
    /// To `status`.
    Status(StatusReply),
    /// To `pause` in memory, `resume`, `shutdown`.
    State(StateReply),
    /// To `snapshot` and `pause` to disk.
    Snapshot(SnapshotReply),
    /// To `fork`.
    Fork(ForkReply),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<T: Serialize>(reply: Reply<T>) -> String {
        reply.encode().expect("encode")
    }

    fn read<T: DeserializeOwned>(line: &str) -> Reply<T> {
        serde_json::from_str(line).expect("decode")
    }

    fn report() -> SnapshotReport {
        SnapshotReport {
            dir: "/s".into(),
            state_bytes: 1,
            memory_bytes: 2,
            memory_scanned_bytes: 3,
            paused_ms: 1.5,
        }
    }

    #[test]
    fn requests_are_written_with_these_names() {
        let pause = Request::Pause {
            to_disk: false,
            dir: None,
            durable: true,
        };
        let to_disk = Request::Pause {
            to_disk: true,
            dir: Some("/s".into()),
            durable: true,
        };
        let cases = [
            (Request::Status {}, r#"{"cmd":"status"}"#),
            (
                pause,
                r#"{"cmd":"pause","to_disk":false,"dir":null,"durable":true}"#,
            ),
            (
                to_disk,
                r#"{"cmd":"pause","to_disk":true,"dir":"/s","durable":true}"#,
            ),
            (
                Request::Snapshot {
                    dir: "/s".into(),
                    durable: false,
                },
                r#"{"cmd":"snapshot","dir":"/s","durable":false}"#,
            ),
            (
                Request::Fork {
                    count: 2,
                    paused: false,
                },
                r#"{"cmd":"fork","count":2,"paused":false}"#,
            ),
            (Request::Resume {}, r#"{"cmd":"resume"}"#),
            (Request::Shutdown {}, r#"{"cmd":"shutdown"}"#),
        ];
        for (request, json) in cases {
            assert_eq!(serde_json::to_string(&request).expect("encode"), json);
            assert_eq!(
                serde_json::from_str::<Request>(json).expect("decode"),
                request
            );
        }
    }

    #[test]
    fn requests_parse_strictly_with_defaults() {
        let r: Request = serde_json::from_str(r#"{"cmd":"pause"}"#).expect("pause");
        assert_eq!(
            r,
            Request::Pause {
                to_disk: false,
                dir: None,
                durable: true
            }
        );
        let r: Request = serde_json::from_str(r#"{"cmd":"fork","count":3}"#).expect("fork");
        assert_eq!(
            r,
            Request::Fork {
                count: 3,
                paused: false
            }
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"explode"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"status","x":1}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"fork"}"#).is_err());
        assert!(serde_json::from_str::<Request>("not json").is_err());
    }

    #[test]
    fn status_reply_has_these_keys_sorted() {
        let status = StatusReply {
            state: VmState::Running,
            vcpus: 1,
            mem_mib: 64,
            pid: 7,
            disks: vec![DiskConfig {
                base: "b".into(),
                layers: vec!["t".into(), "t.s1".into()],
                read_only: false,
            }],
        };
        let json = concat!(
            r#"{"disks":[{"base":"b","layers":["t","t.s1"],"read_only":false}],"#,
            r#""mem_mib":64,"ok":true,"pid":7,"state":"running","vcpus":1}"#
        );
        assert_eq!(line(Reply::Done(Answer::Status(status.clone()))), json);
        assert_eq!(read::<StatusReply>(json), Reply::Done(status));
    }

    #[test]
    fn state_replies_name_every_state() {
        for (state, name) in [
            (VmState::Running, "running"),
            (VmState::Paused, "paused"),
            (VmState::PausedToDisk, "paused_to_disk"),
            (VmState::Exiting, "exiting"),
        ] {
            let json = format!(r#"{{"ok":true,"state":"{name}"}}"#);
            assert_eq!(line(Reply::Done(Answer::State(StateReply { state }))), json);
            assert_eq!(read::<StateReply>(&json), Reply::Done(StateReply { state }));
        }
    }

    #[test]
    fn snapshot_replies_carry_the_report_and_after_a_pause_the_state() {
        let snapshot = r#""snapshot":{"dir":"/s","memory_bytes":2,"memory_scanned_bytes":3,"paused_ms":1.5,"state_bytes":1}"#;
        let live = SnapshotReply {
            state: None,
            snapshot: report(),
        };
        let json = format!(r#"{{"ok":true,{snapshot}}}"#);
        assert_eq!(line(Reply::Done(Answer::Snapshot(live.clone()))), json);
        assert_eq!(read::<SnapshotReply>(&json), Reply::Done(live));
        let paused = SnapshotReply {
            state: Some(VmState::PausedToDisk),
            snapshot: report(),
        };
        let json = format!(r#"{{"ok":true,{snapshot},"state":"paused_to_disk"}}"#);
        assert_eq!(line(Reply::Done(Answer::Snapshot(paused.clone()))), json);
        assert_eq!(read::<SnapshotReply>(&json), Reply::Done(paused));
    }

    #[test]
    fn fork_reply_lists_children_with_their_status() {
        let child = |k: i32, status| ChildReport {
            pid: 100 + k,
            control_socket: format!("/v/ctl.sock.f1c{k}").into(),
            vsock_uds: (k == 0).then(|| "/v/vsock.sock.f1c0".into()),
            serial_log: format!("/v/serial.log.f1c{k}").into(),
            disk_tops: vec![format!("/v/top.layer.f1c{k}").into()],
            status,
        };
        let fork = ForkReply {
            fork: ForkReport {
                children: vec![
                    child(0, ChildStatus::Started),
                    child(1, ChildStatus::Failed("Cannot map guest memory".into())),
                ],
                parent_paused_ms: 1.0,
                vcpu_pause_ms: 0.25,
                capture_ms: 0.5,
                freeze_ms: 0.0,
                fork_syscalls_ms: 0.125,
            },
        };
        let json = concat!(
            r#"{"fork":{"capture_ms":0.5,"children":["#,
            r#"{"control_socket":"/v/ctl.sock.f1c0","disk_tops":["/v/top.layer.f1c0"],"pid":100,"#,
            r#""serial_log":"/v/serial.log.f1c0","status":"ok","vsock_uds":"/v/vsock.sock.f1c0"},"#,
            r#"{"control_socket":"/v/ctl.sock.f1c1","disk_tops":["/v/top.layer.f1c1"],"pid":101,"#,
            r#""serial_log":"/v/serial.log.f1c1","status":"Cannot map guest memory","vsock_uds":null}],"#,
            r#""fork_syscalls_ms":0.125,"freeze_ms":0.0,"parent_paused_ms":1.0,"vcpu_pause_ms":0.25},"#,
            r#""ok":true}"#
        );
        assert_eq!(line(Reply::Done(Answer::Fork(fork.clone()))), json);
        assert_eq!(read::<ForkReply>(json), Reply::Done(fork));
    }

    #[test]
    fn refusals_carry_code_and_message_for_any_request() {
        let json =
            r#"{"error":{"code":"bad_request","message":"missing field `count`"},"ok":false}"#;
        let refused = Reply::<Answer>::refused(ErrorCode::BadRequest, "missing field `count`");
        assert_eq!(line(refused), json);
        let expected = Refusal {
            code: ErrorCode::BadRequest,
            message: "missing field `count`".into(),
        };
        assert_eq!(read::<ForkReply>(json).into_result(), Err(expected.clone()));
        assert_eq!(read::<StatusReply>(json), Reply::Refused(expected));
    }

    #[test]
    fn error_codes_are_written_as_named() {
        for code in [
            ErrorCode::BadRequest,
            ErrorCode::PauseFailed,
            ErrorCode::ResumeFailed,
            ErrorCode::SnapshotFailed,
            ErrorCode::ForkFailed,
            ErrorCode::ReplyFailed,
        ] {
            let json = serde_json::to_string(&code).expect("encode");
            assert_eq!(json, format!("\"{code}\""));
            assert_eq!(
                serde_json::from_str::<ErrorCode>(&json).expect("decode"),
                code
            );
        }
        let newer: ErrorCode = serde_json::from_str(r#""disk_full""#).expect("decode");
        assert_eq!(newer, ErrorCode::Unknown);
    }

    #[test]
    fn answers_tolerate_new_fields_but_replies_need_ok() {
        let reply = read::<StateReply>(r#"{"ok":true,"state":"paused","since_ms":3}"#);
        assert_eq!(
            reply,
            Reply::Done(StateReply {
                state: VmState::Paused
            })
        );
        for bad in [
            r#"{"state":"paused"}"#,
            r#"{"ok":"yes","state":"paused"}"#,
            r#"{"ok":false}"#,
            r#"{"ok":true}"#,
            r#"{"ok":true,"state":"sleeping"}"#,
        ] {
            assert!(
                serde_json::from_str::<Reply<StateReply>>(bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn child_status_ok_is_started_anything_else_failed() {
        assert_eq!(ChildStatus::from("ok".to_owned()), ChildStatus::Started);
        assert_eq!(
            ChildStatus::from("child exited before reporting".to_owned()),
            ChildStatus::Failed("child exited before reporting".into())
        );
    }
}
