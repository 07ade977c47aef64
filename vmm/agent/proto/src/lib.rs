//! The protocol between the host (forge, container backend) and the
//! `sandbox-agent` inside a sandbox, and the host-side async client.
//!
//! This crate is the single definition of the wire format: the agent and
//! every host-side caller import it. It owns the message types
//! ([`message`]), the framing ([`frame`]) and the [`Client`].
//!
//! # Transport
//!
//! Any reliable byte stream: a Unix socket (container sandboxes), vsock
//! (microVMs; on the host the VMM's Unix socket after `CONNECT <port>`), or
//! anything else implementing `AsyncRead + AsyncWrite` ([`Client::handshake`]).
//!
//! # Wire layout
//!
//! ```text
//! frame   = length:u32be  body:bincode(Frame { stream: u32, body: Body })
//!           1 <= length <= MAX_FRAME_BYTES (1 MiB)
//! ```
//!
//! # Connection
//!
//! 1. The client sends `Hello { protocol, client, token }` on stream 0.
//! 2. The agent answers `Welcome(Health)` if `protocol == PROTOCOL_VERSION`
//!    and `token` is the secret it was started with (if any), or `Error`
//!    on stream 0 and closes.
//! 3. Operations are multiplexed over the one connection. The client opens
//!    a stream by sending a frame with a new odd stream id (1, 3, 5, ...)
//!    whose body is an operation (`Exec`, `ReadFile`, `OpenPort`, ...).
//!    The agent opens even ids (2, 4, ...) only for connections accepted on
//!    a `Listen` stream, announcing each with `Accepted { stream }` first.
//! 4. Every stream ends with exactly one terminal body from the agent:
//!    `Exited`, `Done`, `Started` (of a `Spawn`), `Metadata`, `Entries`,
//!    `Lifecycle`, `HealthReport`, `ProcessList` or `Error`. Frames for unknown streams are dropped by both sides.
//! 5. A frame that is too long or does not decode is a protocol error: the
//!    agent sends `Error` on stream 0 and closes that connection (its
//!    processes are killed); other connections are unaffected.
//!
//! # Streams
//!
//! ```text
//! Exec:      C: Exec, [Data.. Eof] [Resize] [Cancel]
//!            A: Started{pid}, (Stdout|Stderr)*, Exited      | Error
//! ReadFile:  A: Data*, Done                                  | Error
//! WriteFile: C: WriteFile, Data*, Eof      A: Done           | Error
//! OpenPort:  C: OpenPort, Data*, Eof       A: Started, Data*, Eof, Done | Error
//! Listen:    C: Listen, [Cancel]           A: Listening, Accepted{id}*, Done | Error
//! accepted:  C: Data*, Eof                 A: Data*, Eof, Done        | Error
//! Spawn:     C: Spawn                      A: Started{pid}            | Error
//! ProcessOutput: C: ProcessOutput{pid, offset, follow}
//!                                          A: Data*, Done             | Error
//! others:    C: request                    A: one reply      | Error
//! ```
//!
//! # Flow control
//!
//! `Data`, `Stdout` and `Stderr` bytes count against a per-stream,
//! per-direction window of [`INITIAL_WINDOW_BYTES`]. The receiver returns
//! `Credit(n)` once it consumed `n` bytes. A slow consumer therefore stops
//! only its own stream; a process whose output is not read blocks on a full
//! pipe, and memory stays bounded by the windows.

pub mod client;
pub mod frame;
pub mod message;

pub use client::{
    Client, ClientError, Exec, ExecEvent, ExecInput, FileReader, Output, PortListener, PortStream,
    ProcessOutput,
};
pub use message::*;
