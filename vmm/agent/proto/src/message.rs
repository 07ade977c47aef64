//! The message types of the agent protocol: one [`Frame`] per wire frame,
//! carrying a stream id and a [`Body`].
//!
//! Which bodies may appear on a stream, and in which order, is described in
//! the crate documentation. Everything here is plain data: encoding lives in
//! [`crate::frame`], behaviour in the client and the agent.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// Protocol version spoken by this crate. The agent refuses a `Hello` with a
/// different version (the whole connection is closed with an error).
pub const PROTOCOL_VERSION: u32 = 2;

/// Environment variable that gives the agent its secret: when set, every
/// `Hello` must carry the same `token` (see [`Body::Hello`]).
pub const TOKEN_ENV: &str = "SANDBOX_AGENT_TOKEN";

/// Largest encoded frame body (after the 4-byte length prefix) either side
/// accepts. A larger length prefix is a protocol error on that connection.
pub const MAX_FRAME_BYTES: usize = 1 << 20;

/// Largest data payload a sender puts in one `Data`/`Stdout`/`Stderr` frame.
pub const CHUNK_BYTES: usize = 64 * 1024;

/// Bytes of data a sender may have in flight on one stream, per direction,
/// before the receiver grants more with `Credit`.
pub const INITIAL_WINDOW_BYTES: u32 = 1 << 20;

/// vsock port the agent listens on inside a microVM.
pub const DEFAULT_VSOCK_PORT: u32 = 1024;

/// File inside the guest image that names the image version (the recipe hash).
pub const IMAGE_VERSION_PATH: &str = "/etc/sandbox-image-version";

/// Stream 0 carries the handshake and connection-level errors.
pub const CONTROL_STREAM: u32 = 0;

/// One frame on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    /// Operation this frame belongs to. Client-opened streams are odd,
    /// agent-opened streams (reserved) are even, 0 is the control stream.
    pub stream: u32,
    pub body: Body,
}

impl Frame {
    pub fn new(stream: u32, body: Body) -> Self {
        Self { stream, body }
    }
}

/// What a frame says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    // ---- handshake (stream 0) ----
    /// First frame from the client. `token` must match the secret the
    /// agent was started with ([`TOKEN_ENV`]), if it was started with one:
    /// a process inside the sandbox that reaches the agent's socket cannot
    /// drive it without it.
    Hello {
        protocol: u32,
        client: String,
        token: Option<String>,
    },
    /// The agent's answer to a compatible `Hello`.
    Welcome(Health),

    // ---- operations: the first frame on a new client stream ----
    Exec(ExecRequest),
    /// Streams the file back as `Data` frames, then `Done`.
    ReadFile {
        path: String,
    },
    /// Followed by the client's `Data` frames and `Eof`; answered by `Done`.
    WriteFile(WriteFile),
    ListDir {
        path: String,
    },
    Stat {
        path: String,
    },
    /// `mkdir -p`: creates missing parents; an existing directory is fine.
    Mkdir {
        path: String,
        mode: u32,
    },
    Remove {
        path: String,
        recursive: bool,
    },
    /// Connect to `127.0.0.1:port` (then `[::1]:port`) inside the sandbox.
    OpenPort {
        port: u16,
    },
    /// Listen on `127.0.0.1:port` inside the sandbox (0: any free port).
    /// Answered by `Listening`; then every accepted connection is announced
    /// by `Accepted` and carried on the agent-opened stream it names. This
    /// is how sandbox processes reach the host (egress proxy, git remote).
    Listen {
        port: u16,
    },
    Forked(Forked),
    Resumed(Resumed),
    Health,
    Poweroff,
    /// Starts a background process: it outlives the stream and the
    /// connection, its output (stdout and stderr interleaved) goes to a
    /// ring buffer the agent keeps. Answered by `Started`.
    Spawn(ExecRequest),
    /// Answered by `ProcessList`: the background processes, oldest first.
    Processes,
    /// A background process's output from byte `offset` (of everything it
    /// printed; bytes the ring no longer holds are skipped) as `Data`, then
    /// `Done`; with `follow`, until it has exited and everything is sent.
    ProcessOutput {
        pid: u32,
        offset: u64,
        follow: bool,
    },
    /// Sends `signal` to a background process's process group. `Done`.
    Signal {
        pid: u32,
        signal: i32,
    },

    // ---- inside a stream ----
    /// Bytes: exec stdin (client to agent), file content, port traffic.
    Data(ByteBuf),
    Stdout(ByteBuf),
    Stderr(ByteBuf),
    /// The sender will send no more `Data` on this stream (half-close).
    Eof,
    /// The receiver consumed this many data bytes; the sender may send more.
    Credit(u32),
    /// New terminal size for an exec with a pseudo-terminal.
    Resize(PtySize),
    /// Client to agent: stop the operation (kills an exec's process group,
    /// resets a port connection). The agent still ends the stream with its
    /// terminal body (`Exited` for an exec).
    Cancel,

    // ---- replies from the agent ----
    /// The exec's process was started (`pid`), or the port connected (`pid` 0).
    Started {
        pid: u32,
    },
    /// Answer to `Listen`: the port actually bound.
    Listening {
        port: u16,
    },
    /// On a `Listen` stream: a connection was accepted; its bytes travel on
    /// the new agent-opened (even) `stream`.
    Accepted {
        stream: u32,
    },
    /// Last frame of an exec stream.
    Exited(Exited),
    /// Last frame of a successful operation that returns nothing else.
    Done,
    /// Answer to `Stat`.
    Metadata(FileStat),
    /// Answer to `ListDir`.
    Entries(Vec<DirEntry>),
    /// Answer to `Forked` and `Resumed`.
    Lifecycle(LifecycleReport),
    /// Answer to `Health`.
    HealthReport(Health),
    /// Answer to `Processes`.
    ProcessList(Vec<ProcessInfo>),
    /// Last frame of a failed operation (or, on stream 0, of the connection).
    Error(RemoteError),
}

impl Body {
    /// Data bytes this body counts against the stream's flow-control window.
    pub fn window_cost(&self) -> u32 {
        match self {
            // Chunks never exceed MAX_FRAME_BYTES, which fits in u32.
            Body::Data(b) | Body::Stdout(b) | Body::Stderr(b) => {
                u32::try_from(b.len()).unwrap_or(u32::MAX)
            }
            _ => 0,
        }
    }
}

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// `argv[0]` is looked up in `PATH` when it has no slash.
    Argv(Vec<String>),
    /// Run with `/bin/sh -c`.
    Shell(String),
}

/// Pseudo-terminal size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtySize {
    pub rows: u16,
    pub cols: u16,
}

/// An exec request. Build with [`ExecRequest::argv`] or [`ExecRequest::shell`]
/// and adjust the public fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    pub command: Command,
    /// Added to (or, with `clear_env`, replacing) the agent's environment.
    pub env: Vec<(String, String)>,
    pub clear_env: bool,
    pub cwd: Option<String>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// When false the process gets `/dev/null` as stdin and `Data` frames
    /// from the client are ignored.
    pub stdin: bool,
    /// Kill the process group after this long; `Exited::timed_out` is set.
    pub timeout_ms: Option<u64>,
    /// Run on a pseudo-terminal: stdin, stdout and stderr are the terminal
    /// and all output arrives as `Stdout`.
    pub pty: Option<PtySize>,
    /// Forward at most this many bytes of stdout and stderr together; the
    /// rest is read and discarded and `Exited::truncated` is set.
    pub output_limit_bytes: Option<u64>,
}

impl ExecRequest {
    pub fn argv<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::new(Command::Argv(argv.into_iter().map(Into::into).collect()))
    }

    pub fn shell(line: impl Into<String>) -> Self {
        Self::new(Command::Shell(line.into()))
    }

    fn new(command: Command) -> Self {
        Self {
            command,
            env: Vec::new(),
            clear_env: false,
            cwd: None,
            uid: None,
            gid: None,
            stdin: false,
            timeout_ms: None,
            pty: None,
            output_limit_bytes: None,
        }
    }
}

/// How an exec's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl ExitStatus {
    pub fn success(&self) -> bool {
        matches!(self, ExitStatus::Code(0))
    }

    /// The shell convention: the code, or 128 + signal number.
    pub fn code(&self) -> i32 {
        match *self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
        }
    }
}

/// The last frame of an exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exited {
    pub status: ExitStatus,
    pub duration_ms: u64,
    /// Output beyond `output_limit_bytes` was discarded.
    pub truncated: bool,
    pub timed_out: bool,
}

/// A background process as the agent keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub pid: u32,
    /// The shell line, or the argv joined by spaces.
    pub command: String,
    pub started_unix_ms: u64,
    /// `None` while it runs.
    pub exit: Option<ExitStatus>,
    /// Bytes it printed in all.
    pub output_bytes: u64,
    /// Of those, the oldest the ring buffer no longer holds.
    pub output_dropped: u64,
}

/// Header of a file write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteFile {
    pub path: String,
    pub mode: u32,
    /// Create missing parent directories (mode 0755).
    pub create_parents: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStat {
    pub kind: FileKind,
    pub size: u64,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub modified_unix_ms: i64,
    /// Target of a symlink (not followed).
    pub link_target: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub name: String,
    pub stat: FileStat,
}

/// Sent after the VM (or container) was forked: the guest must not share
/// randomness, identity or a stale clock with its siblings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forked {
    /// Fresh random bytes from the host, mixed into the kernel pool.
    #[serde(with = "serde_bytes")]
    pub entropy: Vec<u8>,
    pub unix_time_ns: u64,
    pub hostname: String,
}

/// Sent after the sandbox was resumed from a pause.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resumed {
    pub unix_time_ns: u64,
}

/// What the agent did for one lifecycle step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepOutcome {
    Done,
    /// Not attempted, with the reason (not PID 1, clock already right...).
    Skipped(String),
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecycleReport {
    pub reseed: StepOutcome,
    pub clock: StepOutcome,
    pub hostname: StepOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub protocol: u32,
    pub agent_version: String,
    /// Content of [`IMAGE_VERSION_PATH`], when the agent runs in a built image.
    pub image_version: Option<String>,
    pub pid1: bool,
    pub hostname: String,
    pub uptime_ms: u64,
}

/// Error categories a client can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    NotFound,
    PermissionDenied,
    AlreadyExists,
    NotADirectory,
    IsADirectory,
    DirectoryNotEmpty,
    InvalidInput,
    ConnectionRefused,
    Unsupported,
    /// The peer broke the protocol (bad frame, unexpected body, version).
    Protocol,
    Io,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct RemoteError {
    pub kind: ErrorKind,
    pub message: String,
}

impl RemoteError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

impl From<&std::io::Error> for ErrorKind {
    fn from(e: &std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::NotFound => ErrorKind::NotFound,
            K::PermissionDenied => ErrorKind::PermissionDenied,
            K::AlreadyExists => ErrorKind::AlreadyExists,
            K::NotADirectory => ErrorKind::NotADirectory,
            K::IsADirectory => ErrorKind::IsADirectory,
            K::DirectoryNotEmpty => ErrorKind::DirectoryNotEmpty,
            K::InvalidInput | K::InvalidData | K::InvalidFilename => ErrorKind::InvalidInput,
            K::ConnectionRefused => ErrorKind::ConnectionRefused,
            K::Unsupported => ErrorKind::Unsupported,
            _ => ErrorKind::Io,
        }
    }
}
