//! Sandboxes on another host: [`serve`] offers a host's [`Backend`] on a
//! TCP listener (a sandbox node), and [`RemoteBackend`] is a [`Backend`]
//! whose sandboxes live on such a node (the control plane's side), so
//! everything built on `dyn Backend` works unchanged across machines.
//!
//! # The node protocol
//!
//! Each connection carries one operation. The caller writes one JSON line,
//! `{"v":1,"key":"…","op":{"op":"create",…}}`; the node checks the key
//! (compared in constant time), runs the operation and answers one JSON
//! line, `{"ok":…}` or `{"error":{"kind":…}}`, then closes. The errors a
//! caller acts on keep their kind across the wire ([`Error::NotFound`],
//! [`Error::WrongState`], [`Error::Invalid`], [`Error::PathEscapes`],
//! [`Error::Unsupported`], [`Error::TooLarge`], [`Error::Unresponsive`]);
//! anything else arrives as [`Error::Node`] with the node's message.
//!
//! `agent` is the exception: after its `ok` (the agent's secret and
//! environment) the connection is the sandbox agent's own byte stream
//! ([`Backend::agent_stream`]), and the caller shakes hands with the agent
//! through it. Exec, files, ports and terminals then run exactly as they do
//! on the node, streaming, with the agent's own errors; the caller keeps
//! one such connection per sandbox, as the local backends do.
//!
//! `export` and `import` carry a sandbox paused to disk between nodes
//! ([`Backend::export`], [`Backend::import`]): after `export`'s `ok` the
//! connection is the sandbox's stream, to its end; `import`'s request is
//! followed by the stream (the caller then closes its sending side) and its
//! answer comes once the node took it, or refused it (early, possibly).
//! The stream bounds and checks itself (the container backend's `moving`
//! module); the whole import must arrive within [`ANSWER_TIMEOUT`].
//!
//! # Bounds
//!
//! A node serves at most [`MAX_CONNECTIONS`] connections at once (agent
//! connections included; the next waits to be accepted), of which at most
//! [`MAX_PENDING_PER_SOURCE`] from one address that have not made their
//! request yet (the next is closed), and takes at most [`MAX_IMPORTS`]
//! imports at once (the next waits, within its answer time). It must see
//! the TLS handshake and a request of at most [`MAX_REQUEST_BYTES`] within
//! [`REQUEST_TIMEOUT`] of the connection, and a wrong key gets an error and
//! the connection closed. The caller opens at most [`MAX_DIALS_AT_ONCE`]
//! connections to a node at once, each until its request is written,
//! reads an answer of at most [`MAX_ANSWER_BYTES`] to a listing and
//! [`MAX_ITEM_ANSWER_BYTES`] to anything else, keeps at most [`MAX_ERROR_TEXT`] of a node's error, and
//! gives up on a node that does not connect within [`CONNECT_TIMEOUT`] or
//! answer within [`QUICK_ANSWER_TIMEOUT`] (a question) or
//! [`ANSWER_TIMEOUT`] (an operation that does something).
//!
//! # TLS
//!
//! [`serve_tls`] wraps every connection in TLS with the node's
//! [`NodeIdentity`] (a key and self-signed certificate made at each start),
//! and [`RemoteBackend::connect_tls`] accepts only the certificate whose
//! SHA-256 the node reported through the control plane ([`tls`]). A node
//! reachable beyond loopback is meant to be served so.
//!
//! A node starts every sandbox from its own image: the spec's image names
//! a path on the caller's host, which means nothing on the node. A spec
//! with a host workspace directory is refused for the same reason.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, oneshot};
use tokio_rustls::{TlsAcceptor, TlsConnector};

pub mod tls;

pub use tls::NodeIdentity;

use crate::agent::{Agent, AgentIo, AgentStream};
use crate::error::{Error, Result, chain};
use crate::spec::{BackendKind, Carried, Image, PauseMode, SandboxInfo, Spec, State, Stats};
use crate::{Backend, BoxFuture, Carrier};

/// The protocol's version: a node refuses requests of another.
pub const PROTOCOL_VERSION: u32 = 1;

/// Connections a node serves at once.
pub const MAX_CONNECTIONS: usize = 1024;

/// Imports a node takes at once; more wait their turn (each stages a
/// whole sandbox on the node's disk before it is a sandbox).
pub const MAX_IMPORTS: usize = 2;

/// Largest request line a node reads.
pub const MAX_REQUEST_BYTES: u64 = 1 << 20;

/// Connections one source (an IPv4 address, or the /64 of an IPv6 one,
/// which one host usually holds whole) may have open before their requests
/// are read (the TLS handshake and the request line, at most
/// [`REQUEST_TIMEOUT`]); more are closed at once, so one peer saying
/// nothing cannot hold every one of [`MAX_CONNECTIONS`] slots. A caller
/// with the key holds its slot past that, however many it keeps.
pub const MAX_PENDING_PER_SOURCE: usize = 64;

/// Connections a caller opens to one node at once, each until its request
/// is written: a control plane asking many things at once stays within
/// the node's share for its address, with room for three more behind
/// the same address.
pub const MAX_DIALS_AT_ONCE: usize = MAX_PENDING_PER_SOURCE / 4;

/// How long a caller has, from its connection, to finish the TLS
/// handshake and send its request: the control plane does both at once,
/// and a connection that does neither holds one of the node's slots.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest answer line a caller reads to a listing of many sandboxes.
pub const MAX_ANSWER_BYTES: u64 = 64 << 20;

/// Largest answer line a caller reads to any other operation (a fork's
/// copies included).
pub const MAX_ITEM_ANSWER_BYTES: u64 = 1 << 20;

/// Longest text of a node's error a caller keeps (the rest is cut).
pub const MAX_ERROR_TEXT: usize = 4096;

/// How long a caller waits for a node's answer to a question that changes
/// nothing (describe, get, list, stats).
pub const QUICK_ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a caller waits for a node to accept its connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a caller waits for a node's answer to an operation that does
/// something: longer than any takes on a healthy node (a fork of many
/// copies, a large pause to disk).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(600);

/// How long a node has to answer an import whose stream failed on this
/// side (it only drops what it received).
const SHORT_STREAM_ANSWER: Duration = Duration::from_secs(30);

/// A failure of the stream an import sends, told apart from a failure to
/// write it to the node (the node closing the connection: its answer says
/// why).
#[derive(Debug)]
struct SourceFailed(std::io::Error);

impl std::fmt::Display for SourceFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SourceFailed {}

/// The stream an import sends, its read errors marked [`SourceFailed`].
struct Source<'a>(Carrier<'a>);

impl tokio::io::AsyncRead for Source<'_> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.0
            .as_mut()
            .poll_read(cx, buf)
            .map_err(|error| std::io::Error::new(error.kind(), SourceFailed(error)))
    }
}

fn source_failed(error: &std::io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|inner| inner.is::<SourceFailed>())
}

/// One operation of the node protocol.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Op {
    Describe,
    Create {
        vcpus: u8,
        mem_mib: u64,
        disk_mib: u64,
        env: Vec<(String, String)>,
    },
    Get {
        id: String,
    },
    List,
    Agent {
        id: String,
    },
    Pause {
        id: String,
        mode: PauseMode,
    },
    Resume {
        id: String,
    },
    Fork {
        id: String,
        count: usize,
    },
    Snapshot {
        id: String,
    },
    Destroy {
        id: String,
    },
    Stats {
        id: String,
    },
    CollectGarbage,
    /// The answer is followed by the sandbox's stream ([`Backend::export`]).
    Export {
        id: String,
    },
    /// The request is followed by the sandbox's stream; the answer comes
    /// once it is taken ([`Backend::import`]).
    Import {
        id: String,
        vcpus: u8,
        mem_mib: u64,
        disk_mib: u64,
    },
}

#[derive(Serialize, Deserialize)]
struct Request {
    v: u32,
    key: String,
    op: Op,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Answer<T> {
    Ok(T),
    Error(WireError),
}

/// What a node says of itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Description {
    backend: BackendKind,
}

/// What a caller needs to shake hands with an agent through the tunnel.
#[derive(Serialize, Deserialize)]
struct AgentHello {
    token: Option<String>,
    env: Vec<(String, String)>,
}

/// An [`Error`] on the wire.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum WireError {
    NotFound {
        id: String,
    },
    WrongState {
        id: String,
        state: State,
        needed: String,
    },
    PathEscapes {
        path: String,
    },
    Unsupported {
        backend: BackendKind,
        what: String,
    },
    Invalid {
        message: String,
    },
    TooLarge {
        id: String,
        what: String,
        limit: u64,
    },
    Unresponsive {
        id: String,
        what: String,
        secs: u64,
    },
    Refused {
        message: String,
    },
    Failed {
        message: String,
    },
}

impl From<&Error> for WireError {
    fn from(error: &Error) -> Self {
        match error {
            Error::NotFound(id) => WireError::NotFound { id: id.clone() },
            Error::WrongState { id, state, needed } => WireError::WrongState {
                id: id.clone(),
                state: *state,
                needed: (*needed).to_owned(),
            },
            Error::PathEscapes { path } => WireError::PathEscapes { path: path.clone() },
            Error::Unsupported { backend, what } => WireError::Unsupported {
                backend: *backend,
                what: what.clone(),
            },
            Error::Invalid(message) => WireError::Invalid {
                message: message.clone(),
            },
            Error::TooLarge { id, what, limit } => WireError::TooLarge {
                id: id.clone(),
                what: what.clone(),
                limit: *limit,
            },
            Error::Unresponsive { id, what, secs } => WireError::Unresponsive {
                id: id.clone(),
                what: what.clone(),
                secs: *secs,
            },
            other => WireError::Failed {
                message: chain(other),
            },
        }
    }
}

/// `text` cut to [`MAX_ERROR_TEXT`] bytes (at a character's end): a
/// node's words end up in API answers and logs.
fn clip(mut text: String) -> String {
    if text.len() > MAX_ERROR_TEXT {
        let mut end = MAX_ERROR_TEXT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("… (cut)");
    }
    text
}

impl WireError {
    /// The error a caller of node `node` sees, every text of the node's
    /// cut to [`MAX_ERROR_TEXT`].
    fn into_error(self, node: &str) -> Error {
        match self.clipped() {
            WireError::NotFound { id } => Error::NotFound(id),
            WireError::WrongState { id, state, needed } => Error::WrongState {
                id,
                state,
                needed: needed_state(&needed),
            },
            WireError::PathEscapes { path } => Error::PathEscapes { path },
            WireError::Unsupported { backend, what } => Error::Unsupported { backend, what },
            WireError::Invalid { message } => Error::Invalid(message),
            WireError::TooLarge { id, what, limit } => Error::TooLarge { id, what, limit },
            WireError::Unresponsive { id, what, secs } => Error::Unresponsive { id, what, secs },
            WireError::Refused { message } | WireError::Failed { message } => Error::Node {
                node: node.to_owned(),
                message,
            },
        }
    }

    fn clipped(self) -> Self {
        match self {
            WireError::NotFound { id } => WireError::NotFound { id: clip(id) },
            WireError::WrongState { id, state, needed } => WireError::WrongState {
                id: clip(id),
                state,
                needed,
            },
            WireError::PathEscapes { path } => WireError::PathEscapes { path: clip(path) },
            WireError::Unsupported { backend, what } => WireError::Unsupported {
                backend,
                what: clip(what),
            },
            WireError::Invalid { message } => WireError::Invalid {
                message: clip(message),
            },
            WireError::TooLarge { id, what, limit } => WireError::TooLarge {
                id: clip(id),
                what: clip(what),
                limit,
            },
            WireError::Unresponsive { id, what, secs } => WireError::Unresponsive {
                id: clip(id),
                what: clip(what),
                secs,
            },
            WireError::Refused { message } => WireError::Refused {
                message: clip(message),
            },
            WireError::Failed { message } => WireError::Failed {
                message: clip(message),
            },
        }
    }
}

/// The backends' words for the state an operation needs, as the static
/// text [`Error::WrongState`] holds.
fn needed_state(needed: &str) -> &'static str {
    const KNOWN: [&str; 5] = [
        "running",
        "running or paused",
        "paused",
        "paused to disk",
        "running, paused or paused to disk",
    ];
    KNOWN
        .into_iter()
        .find(|known| *known == needed)
        .unwrap_or("in another state")
}

/// Equal byte strings, in time that depends only on their lengths.
fn same_key(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// Serve `backend` on `listener` to callers presenting `key`, starting
/// every sandbox from `image`, until the task is dropped. Each connection
/// runs on a task of its own. In clear: for loopback, or a network that is
/// private to the control plane and its nodes.
pub async fn serve(
    backend: Arc<dyn Backend>,
    image: Image,
    key: String,
    listener: TcpListener,
) -> std::io::Result<()> {
    serve_with(backend, image, key, listener, None).await
}

/// [`serve`], every connection in TLS as `identity`.
pub async fn serve_tls(
    backend: Arc<dyn Backend>,
    image: Image,
    key: String,
    listener: TcpListener,
    identity: &NodeIdentity,
) -> std::io::Result<()> {
    serve_with(backend, image, key, listener, Some(identity.acceptor())).await
}

async fn serve_with(
    backend: Arc<dyn Backend>,
    image: Image,
    key: String,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
) -> std::io::Result<()> {
    let node = Arc::new(Node {
        backend,
        image,
        key,
        tunnels: Mutex::default(),
        imports: Semaphore::new(MAX_IMPORTS),
    });
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let pending = Arc::new(Mutex::new(HashMap::new()));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return Ok(());
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            // A connection reset before accept(2), or out of descriptors
            // for a moment: the listener itself is fine.
            Err(error) if transient(&error) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(error) => return Err(error),
        };
        let Some(waiting) = Pending::take(&pending, source_of(peer.ip())) else {
            // Closed unread, its slot free again.
            continue;
        };
        let _ = stream.set_nodelay(true);
        let node = node.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            // The handshake and the request share one deadline.
            let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
            match tls {
                None => node.connection(stream, deadline, waiting).await,
                Some(acceptor) => {
                    let accepted = tokio::time::timeout_at(deadline, acceptor.accept(stream)).await;
                    if let Ok(Ok(stream)) = accepted {
                        node.connection(stream, deadline, waiting).await;
                    }
                }
            }
            drop(slot);
        });
    }
}

/// The source whose share ([`MAX_PENDING_PER_SOURCE`]) a connection from
/// `peer` counts against.
fn source_of(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let [a, b, c, d, ..] = v6.segments();
                IpAddr::V6(Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

/// One connection of a source whose request is not read yet
/// ([`MAX_PENDING_PER_SOURCE`]); dropped, it no longer counts.
struct Pending {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    source: IpAddr,
}

impl Pending {
    /// Counts a connection from `source`, or `None` when it has as many
    /// pending as it may.
    fn take(counts: &Arc<Mutex<HashMap<IpAddr, usize>>>, source: IpAddr) -> Option<Self> {
        let mut map = counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = map.entry(source).or_insert(0);
        if *count >= MAX_PENDING_PER_SOURCE {
            return None;
        }
        *count += 1;
        Some(Self {
            counts: counts.clone(),
            source,
        })
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = map.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.source);
            }
        }
    }
}

fn transient(error: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        error.kind(),
        K::ConnectionAborted | K::ConnectionReset | K::Interrupted
    ) || matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

struct Node {
    backend: Arc<dyn Backend>,
    image: Image,
    key: String,
    /// The open agent tunnels of each sandbox, to close before an
    /// operation that cannot keep them (a checkpoint cannot hold a
    /// connection to the host).
    tunnels: Mutex<HashMap<String, Vec<Tunnel>>>,
    /// Turns to import ([`MAX_IMPORTS`]).
    imports: Semaphore,
}

/// An open agent tunnel: a word to close it, and its answer once closed.
struct Tunnel {
    close: oneshot::Sender<()>,
    closed: oneshot::Receiver<()>,
}

impl Node {
    async fn connection<S: AgentIo + 'static>(
        &self,
        stream: S,
        deadline: tokio::time::Instant,
        waiting: Pending,
    ) {
        let mut conn = BufReader::new(stream);
        let request = tokio::time::timeout_at(deadline, read_line(&mut conn, MAX_REQUEST_BYTES))
            .await
            .unwrap_or_else(|_| Err("no request within the time allowed".to_owned()));
        let request = request.and_then(|line| {
            serde_json::from_slice::<Request>(&line)
                .map_err(|e| format!("a malformed request: {e}"))
        });
        let request = match request {
            Ok(request) if request.v != PROTOCOL_VERSION => Err(format!(
                "protocol version {} is not this node's {PROTOCOL_VERSION}",
                request.v
            )),
            Ok(request) if !same_key(request.key.as_bytes(), self.key.as_bytes()) => {
                Err("the node key is wrong".to_owned())
            }
            other => other,
        };
        let op = match request {
            Ok(request) => request.op,
            Err(message) => {
                let refusal: Answer<()> = Answer::Error(WireError::Refused { message });
                if write_answer(&mut conn, &refusal).await.is_ok() {
                    linger(conn).await;
                }
                return;
            }
        };
        // A caller with the key: no longer pending, however long it stays.
        drop(waiting);
        match op {
            Op::Agent { id } => return self.tunnel(conn, &id).await,
            Op::Export { id } => return self.export(conn, &id).await,
            Op::Import {
                id,
                vcpus,
                mem_mib,
                disk_mib,
            } => {
                let mut spec = Spec::new(self.image.clone());
                spec.vcpus = vcpus;
                spec.mem_mib = mem_mib;
                spec.disk_mib = disk_mib;
                return self.import(conn, &id, spec).await;
            }
            _ => {}
        }
        let answer = self.run(op).await;
        let _ = write_answer(&mut conn, &answer).await;
    }

    /// Answer the agent's secret, then pass bytes both ways until either
    /// side closes or an operation on the sandbox needs it closed.
    async fn tunnel<S: AgentIo>(&self, mut conn: BufReader<S>, id: &str) {
        let stream = match self.backend.agent_stream(id).await {
            Ok(stream) => stream,
            Err(error) => {
                let answer: Answer<()> = Answer::Error(WireError::from(&error));
                let _ = write_answer(&mut conn, &answer).await;
                return;
            }
        };
        let AgentStream { mut io, token, env } = stream;
        let hello = Answer::Ok(AgentHello { token, env });
        if write_answer(&mut conn, &hello).await.is_err() {
            return;
        }
        let (close, mut close_rx) = oneshot::channel();
        let (closed_tx, closed) = oneshot::channel();
        self.tunnels_of()
            .entry(id.to_owned())
            .or_default()
            .push(Tunnel { close, closed });
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut conn, &mut io) => {}
            _ = &mut close_rx => {}
        }
        drop(io);
        drop(conn);
        let _ = closed_tx.send(());
        // This tunnel's entry goes (its receiver dropped), and the
        // sandbox's once it has none left.
        drop(close_rx);
        let mut tunnels = self.tunnels_of();
        if let Some(open) = tunnels.get_mut(id) {
            open.retain(|t| !t.close.is_closed());
            if open.is_empty() {
                tunnels.remove(id);
            }
        }
    }

    /// Answer, then send sandbox `id`'s stream and close.
    async fn export<S: AgentIo>(&self, mut conn: BufReader<S>, id: &str) {
        let mut stream = match self.backend.export(id).await {
            Ok(stream) => stream,
            Err(error) => {
                let answer: Answer<()> = Answer::Error(WireError::from(&error));
                let _ = write_answer(&mut conn, &answer).await;
                return;
            }
        };
        if write_answer(&mut conn, &Answer::Ok(())).await.is_err() {
            return;
        }
        let sent = tokio::time::timeout(ANSWER_TIMEOUT, async {
            tokio::io::copy(&mut stream, conn.get_mut()).await?;
            conn.get_mut().shutdown().await
        });
        let _ = sent.await;
    }

    /// Take sandbox `id` from the stream after the request, within
    /// [`ANSWER_TIMEOUT`], then answer.
    async fn import<S: AgentIo>(&self, mut conn: BufReader<S>, id: &str, spec: Spec) {
        let imported = tokio::time::timeout(ANSWER_TIMEOUT, async {
            let _turn = self
                .imports
                .acquire()
                .await
                .map_err(|_| Error::Invalid("the node is stopping".into()))?;
            self.backend.import(id, spec, Box::pin(&mut conn)).await
        })
        .await
        .unwrap_or_else(|_| {
            Err(Error::Invalid(format!(
                "the sandbox's stream did not arrive within {ANSWER_TIMEOUT:?}"
            )))
        });
        let answer = match imported {
            Ok(info) => Answer::Ok(info),
            Err(error) => Answer::Error(WireError::from(&error)),
        };
        let refused = matches!(answer, Answer::Error(_));
        if write_answer(&mut conn, &answer).await.is_ok() && refused {
            // The caller may still be sending: let it read the refusal.
            linger(conn).await;
        }
    }

    fn tunnels_of(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Tunnel>>> {
        // Plain handles: a panic cannot leave the map inconsistent.
        self.tunnels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Close `id`'s agent tunnels and wait until they are.
    async fn close_tunnels(&self, id: &str) {
        let open = self.tunnels_of().remove(id).unwrap_or_default();
        for tunnel in open {
            let _ = tunnel.close.send(());
            let _ = tunnel.closed.await;
        }
    }

    async fn run(&self, op: Op) -> Answer<serde_json::Value> {
        let backend = &*self.backend;
        let result = match op {
            Op::Describe => to_value(Ok(Description {
                backend: backend.kind(),
            })),
            Op::Create {
                vcpus,
                mem_mib,
                disk_mib,
                env,
            } => {
                let mut spec = Spec::new(self.image.clone());
                spec.vcpus = vcpus;
                spec.mem_mib = mem_mib;
                spec.disk_mib = disk_mib;
                spec.env = env;
                to_value(backend.create(spec).await)
            }
            Op::Get { id } => to_value(backend.get(&id).await),
            Op::List => to_value(backend.list().await),
            Op::Pause { id, mode } => {
                if mode == PauseMode::Disk {
                    self.close_tunnels(&id).await;
                }
                to_value(backend.pause(&id, mode).await)
            }
            Op::Resume { id } => to_value(backend.resume(&id).await),
            Op::Fork { id, count } => {
                self.close_tunnels(&id).await;
                to_value(backend.fork(&id, count).await)
            }
            Op::Snapshot { id } => {
                self.close_tunnels(&id).await;
                to_value(backend.snapshot(&id).await)
            }
            Op::Destroy { id } => {
                self.close_tunnels(&id).await;
                to_value(backend.destroy(&id).await)
            }
            Op::Stats { id } => to_value(backend.stats(&id).await),
            Op::CollectGarbage => to_value(backend.collect_garbage().await),
            // Handled by `tunnel`, `export` and `import` before `run`.
            Op::Agent { id } | Op::Export { id } | Op::Import { id, .. } => Err(Error::Invalid(
                format!("the stream of {id} is carried on a connection of its own"),
            )),
        };
        match result {
            Ok(value) => Answer::Ok(value),
            Err(error) => Answer::Error(WireError::from(&error)),
        }
    }
}

/// After a refusal: stop writing, and read what the caller still sends
/// (a bounded amount, for a bounded time) before closing, so that the
/// refusal is not lost to a reset of a connection closed with unread data.
async fn linger<S: AgentIo>(mut conn: BufReader<S>) {
    if conn.get_mut().shutdown().await.is_err() {
        return;
    }
    let mut rest = (&mut conn).take(MAX_REQUEST_BYTES);
    let mut sink = tokio::io::sink();
    let drain = tokio::io::copy(&mut rest, &mut sink);
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

fn to_value<T: Serialize>(result: Result<T>) -> Result<serde_json::Value> {
    result.and_then(|value| {
        serde_json::to_value(value).map_err(|e| Error::Invalid(format!("unencodable answer: {e}")))
    })
}

/// One line, without its newline; more than `limit` bytes or a close
/// before the newline is an error.
async fn read_line<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    limit: u64,
) -> std::result::Result<Vec<u8>, String> {
    let mut line = Vec::new();
    let read = (&mut *reader)
        .take(limit + 1)
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| format!("reading failed: {e}"))?;
    if line.last() != Some(&b'\n') {
        return Err(if read as u64 > limit {
            format!("a line longer than {limit} bytes")
        } else {
            "the connection closed mid-line".to_owned()
        });
    }
    line.pop();
    Ok(line)
}

async fn write_answer<T: Serialize, S: AgentIo>(
    conn: &mut BufReader<S>,
    answer: &Answer<T>,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(answer).map_err(std::io::Error::other)?;
    line.push(b'\n');
    conn.get_mut().write_all(&line).await?;
    conn.get_mut().flush().await
}

/// Sandboxes on a node that [`serve`]s them: every operation is one
/// connection to it, and each sandbox's agent one kept connection.
pub struct RemoteBackend {
    /// The node's name, in errors.
    node: String,
    addr: SocketAddr,
    key: String,
    /// TLS pinned to the node's certificate, when it serves TLS.
    tls: Option<TlsConnector>,
    kind: BackendKind,
    /// Each sandbox's kept agent connection, and its environment.
    clients: Mutex<HashMap<String, KeptAgent>>,
    /// Turns to connect and send a request ([`MAX_DIALS_AT_ONCE`]).
    dials: Semaphore,
}

type KeptAgent = (agent_proto::Client, Vec<(String, String)>);

impl std::fmt::Debug for RemoteBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteBackend")
            .field("node", &self.node)
            .field("addr", &self.addr)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl RemoteBackend {
    /// The node `node` at `addr`, in clear, asked what it runs; `key` is
    /// its secret.
    pub async fn connect(node: impl Into<String>, addr: SocketAddr, key: String) -> Result<Self> {
        Self::open(node.into(), addr, key, None).await
    }

    /// [`RemoteBackend::connect`] over TLS, accepting only the certificate
    /// whose SHA-256 (hex) is `pin`, as the node reported it.
    pub async fn connect_tls(
        node: impl Into<String>,
        addr: SocketAddr,
        key: String,
        pin: &str,
    ) -> Result<Self> {
        Self::open(node.into(), addr, key, Some(tls::connector(pin)?)).await
    }

    async fn open(
        node: String,
        addr: SocketAddr,
        key: String,
        tls: Option<TlsConnector>,
    ) -> Result<Self> {
        let mut backend = Self {
            node,
            addr,
            key,
            tls,
            kind: BackendKind::Container,
            clients: Mutex::default(),
            dials: Semaphore::new(MAX_DIALS_AT_ONCE),
        };
        let description: Description = backend.call(Op::Describe).await?;
        backend.kind = description.backend;
        Ok(backend)
    }

    /// The node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    fn failed(&self, message: String) -> Error {
        Error::Node {
            node: self.node.clone(),
            message,
        }
    }

    /// Send `op` and read the node's answer; the connection is returned for
    /// `agent`, whose answer is followed by the agent's stream.
    async fn request<T: DeserializeOwned>(
        &self,
        op: Op,
    ) -> Result<(T, BufReader<Box<dyn AgentIo>>)> {
        let what = match &op {
            Op::Agent { .. } => "its agent",
            _ => "the operation",
        };
        // Questions are answered at once; a listing may be long.
        let wait = match &op {
            Op::Describe | Op::Get { .. } | Op::List | Op::Stats { .. } => QUICK_ANSWER_TIMEOUT,
            _ => ANSWER_TIMEOUT,
        };
        let most = match &op {
            Op::List => MAX_ANSWER_BYTES,
            _ => MAX_ITEM_ANSWER_BYTES,
        };
        let mut line = serde_json::to_vec(&Request {
            v: PROTOCOL_VERSION,
            key: self.key.clone(),
            op,
        })
        .map_err(|e| Error::Invalid(format!("unencodable request: {e}")))?;
        line.push(b'\n');
        let turn = self.dial_turn().await?;
        let mut conn = BufReader::new(self.dial().await?);
        let exchange = async {
            conn.get_mut()
                .write_all(&line)
                .await
                .map_err(|e| e.to_string())?;
            drop(turn);
            read_line(&mut conn, most).await
        };
        let answer = tokio::time::timeout(wait, exchange)
            .await
            .map_err(|_| self.failed(format!("no answer for {what} within {wait:?}")))?
            .map_err(|e| self.failed(format!("the node's answer for {what}: {e}")))?;
        match serde_json::from_slice::<Answer<T>>(&answer) {
            Ok(Answer::Ok(value)) => Ok((value, conn)),
            Ok(Answer::Error(error)) => Err(error.into_error(&self.node)),
            Err(e) => Err(self.failed(format!("a malformed answer for {what}: {e}"))),
        }
    }

    /// A turn to connect, held until the request is written.
    async fn dial_turn(&self) -> Result<tokio::sync::SemaphorePermit<'_>> {
        tokio::time::timeout(CONNECT_TIMEOUT, self.dials.acquire())
            .await
            .map_err(|_| {
                self.failed(format!(
                    "no turn to connect to {} within {CONNECT_TIMEOUT:?}",
                    self.addr
                ))
            })?
            .map_err(|_| self.failed("the caller is closing".to_owned()))
    }

    /// A connection to the node, in TLS when it serves so.
    async fn dial(&self) -> Result<Box<dyn AgentIo>> {
        let connect = async {
            let stream = TcpStream::connect(self.addr)
                .await
                .map_err(|e| format!("connecting to {} failed: {e}", self.addr))?;
            let _ = stream.set_nodelay(true);
            let Some(tls) = &self.tls else {
                return Ok(Box::new(stream) as Box<dyn AgentIo>);
            };
            let stream = tls
                .connect(tls::server_name(), stream)
                .await
                .map_err(|e| format!("TLS with {} failed: {e}", self.addr))?;
            Ok(Box::new(stream) as Box<dyn AgentIo>)
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| {
                self.failed(format!(
                    "no connection to {} within {CONNECT_TIMEOUT:?}",
                    self.addr
                ))
            })?
            .map_err(|message: String| self.failed(message))
    }

    async fn call<T: DeserializeOwned>(&self, op: Op) -> Result<T> {
        Ok(self.request(op).await?.0)
    }

    /// Sends `stream` after the request to import it as sandbox `id`, and
    /// reads the node's answer (which may come early: a refusal).
    async fn send_import(&self, id: &str, spec: Spec, stream: Carrier<'_>) -> Result<SandboxInfo> {
        let mut stream = Source(stream);
        let mut line = serde_json::to_vec(&Request {
            v: PROTOCOL_VERSION,
            key: self.key.clone(),
            op: Op::Import {
                id: id.to_owned(),
                vcpus: spec.vcpus,
                mem_mib: spec.mem_mib,
                disk_mib: spec.disk_mib,
            },
        })
        .map_err(|e| Error::Invalid(format!("unencodable request: {e}")))?;
        line.push(b'\n');
        let turn = self.dial_turn().await?;
        let (read, mut write) = tokio::io::split(self.dial().await?);
        let mut read = BufReader::new(read);
        let exchange = async {
            let sending = async {
                write.write_all(&line).await?;
                drop(turn);
                tokio::io::copy(&mut stream, &mut write).await?;
                // The end of the stream is the end of what this side
                // sends: a stream cut short ends there for the node too.
                write.shutdown().await
            };
            let answering = read_line(&mut read, MAX_ITEM_ANSWER_BYTES);
            tokio::pin!(answering);
            let sent = tokio::select! {
                sent = sending => sent,
                answer = &mut answering => return answer,
            };
            match sent {
                Ok(()) => answering.await,
                // The stream itself failed: the node sees it end short
                // (and drops what it received), and the cause is this
                // side's.
                Err(error) if source_failed(&error) => {
                    let _ = write.shutdown().await;
                    let _ = tokio::time::timeout(SHORT_STREAM_ANSWER, answering).await;
                    Err(format!("sending the sandbox failed: {error}"))
                }
                // A refusal may have closed the connection: its answer
                // says why.
                Err(error) => answering
                    .await
                    .map_err(|_| format!("sending the sandbox failed: {error}")),
            }
        };
        let answer = tokio::time::timeout(ANSWER_TIMEOUT, exchange)
            .await
            .map_err(|_| {
                self.failed(format!(
                    "no answer for the import within {ANSWER_TIMEOUT:?}"
                ))
            })?
            .map_err(|e| self.failed(format!("the node's answer for the import: {e}")))?;
        match serde_json::from_slice::<Answer<SandboxInfo>>(&answer) {
            Ok(Answer::Ok(info)) => Ok(info),
            Ok(Answer::Error(error)) => Err(error.into_error(&self.node)),
            Err(e) => Err(self.failed(format!("a malformed answer for the import: {e}"))),
        }
    }

    fn clients(&self) -> std::sync::MutexGuard<'_, HashMap<String, KeptAgent>> {
        // The map holds plain handles: a panic cannot leave it inconsistent.
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn forget(&self, id: &str) {
        self.clients().remove(id);
    }
}

impl Backend for RemoteBackend {
    fn kind(&self) -> BackendKind {
        self.kind
    }

    fn create(&self, spec: Spec) -> BoxFuture<'_, Result<SandboxInfo>> {
        Box::pin(async move {
            if spec.workspace.is_some() {
                return Err(Error::Unsupported {
                    backend: self.kind,
                    what: format!("show a host directory in a sandbox on node {}", self.node),
                });
            }
            self.call(Op::Create {
                vcpus: spec.vcpus,
                mem_mib: spec.mem_mib,
                disk_mib: spec.disk_mib,
                env: spec.env,
            })
            .await
        })
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<SandboxInfo>> {
        Box::pin(self.call(Op::Get { id: id.to_owned() }))
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<SandboxInfo>>> {
        Box::pin(self.call(Op::List))
    }

    fn agent<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Agent>> {
        Box::pin(async move {
            let kept = self
                .clients()
                .get(id)
                .filter(|(c, _)| !c.is_closed())
                .cloned();
            let (client, env) = match kept {
                // The sandbox may have been paused since, by any caller:
                // its state is asked as the local backends read theirs.
                Some(kept) => {
                    let info = self.get(id).await?;
                    if info.state != State::Running {
                        return Err(Error::WrongState {
                            id: id.to_owned(),
                            state: info.state,
                            needed: "running",
                        });
                    }
                    kept
                }
                None => {
                    let (hello, conn) = self
                        .request::<AgentHello>(Op::Agent { id: id.to_owned() })
                        .await?;
                    let client =
                        agent_proto::Client::handshake_with_token(conn, hello.token.as_deref())
                            .await
                            .map_err(Error::agent(id))?;
                    let kept = (client, hello.env);
                    self.clients().insert(id.to_owned(), kept.clone());
                    kept
                }
            };
            Ok(Agent {
                id: id.to_owned(),
                client,
                env,
            })
        })
    }

    fn agent_stream<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<AgentStream>> {
        Box::pin(async move {
            let (hello, conn) = self
                .request::<AgentHello>(Op::Agent { id: id.to_owned() })
                .await?;
            Ok(AgentStream {
                io: Box::new(conn),
                token: hello.token,
                env: hello.env,
            })
        })
    }

    fn pause<'a>(&'a self, id: &'a str, mode: PauseMode) -> BoxFuture<'a, Result<SandboxInfo>> {
        Box::pin(async move {
            if mode == PauseMode::Disk {
                self.forget(id);
            }
            self.call(Op::Pause {
                id: id.to_owned(),
                mode,
            })
            .await
        })
    }

    fn resume<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Carried>> {
        Box::pin(self.call(Op::Resume { id: id.to_owned() }))
    }

    fn fork<'a>(&'a self, id: &'a str, count: usize) -> BoxFuture<'a, Result<Vec<Carried>>> {
        Box::pin(async move {
            // The node closes the sandbox's agent tunnels first.
            self.forget(id);
            self.call(Op::Fork {
                id: id.to_owned(),
                count,
            })
            .await
        })
    }

    fn snapshot<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Carried>> {
        Box::pin(async move {
            self.forget(id);
            self.call(Op::Snapshot { id: id.to_owned() }).await
        })
    }

    fn destroy<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.forget(id);
            self.call(Op::Destroy { id: id.to_owned() }).await
        })
    }

    fn stats<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Stats>> {
        Box::pin(self.call(Op::Stats { id: id.to_owned() }))
    }

    fn export<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Carrier<'static>>> {
        Box::pin(async move {
            let ((), conn) = self.request(Op::Export { id: id.to_owned() }).await?;
            Ok(Box::pin(conn) as Carrier<'static>)
        })
    }

    fn import<'a>(
        &'a self,
        id: &'a str,
        spec: Spec,
        stream: Carrier<'a>,
    ) -> BoxFuture<'a, Result<SandboxInfo>> {
        // The node lands it on its own image, with the spec's sizes.
        Box::pin(self.send_import(id, spec, stream))
    }

    fn collect_garbage(&self) -> BoxFuture<'_, Result<Vec<String>>> {
        Box::pin(self.call(Op::CollectGarbage))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `error` after a trip through the wire, as a caller of node "n" sees it.
    fn across(error: &Error) -> Error {
        let line = serde_json::to_string(&WireError::from(error)).expect("encode");
        serde_json::from_str::<WireError>(&line)
            .expect("decode")
            .into_error("n")
    }

    #[test]
    fn one_ipv6_host_counts_as_one_source_whatever_address_it_takes() {
        let source = |text: &str| source_of(text.parse().expect("an address"));
        assert_eq!(
            source("2001:db8:1:2:aaaa::1"),
            source("2001:db8:1:2:bbbb:cccc:dddd:eeee")
        );
        assert_ne!(source("2001:db8:1:2::1"), source("2001:db8:1:3::1"));
        assert_eq!(source("::ffff:192.0.2.7"), source("192.0.2.7"));
        assert_ne!(source("192.0.2.7"), source("192.0.2.8"));
    }

    #[test]
    fn a_nodes_words_are_cut_before_they_reach_the_caller() {
        let long = "é".repeat(MAX_ERROR_TEXT);
        for error in [
            Error::Invalid(long.clone()),
            Error::NotFound(long.clone()),
            Error::Node {
                node: "n".into(),
                message: long.clone(),
            },
        ] {
            let text = across(&error).to_string();
            assert!(text.len() < MAX_ERROR_TEXT + 200, "{} bytes", text.len());
            assert!(text.contains("… (cut)"), "{text}");
        }
        let short = across(&Error::Invalid("short".into())).to_string();
        assert!(!short.contains("(cut)"), "{short}");
    }

    #[test]
    fn the_errors_a_caller_acts_on_keep_their_kind_and_words() {
        let errors = [
            Error::NotFound("sb1".into()),
            Error::WrongState {
                id: "sb1".into(),
                state: State::Paused,
                needed: "running",
            },
            Error::WrongState {
                id: "sb1".into(),
                state: State::Running,
                needed: "running or paused",
            },
            Error::PathEscapes {
                path: "../x".into(),
            },
            Error::Unsupported {
                backend: BackendKind::Microvm,
                what: "fork".into(),
            },
            Error::Invalid("no copies".into()),
            Error::TooLarge {
                id: "sb1".into(),
                what: "a file".into(),
                limit: 9,
            },
            Error::Unresponsive {
                id: "sb1".into(),
                what: "an exec".into(),
                secs: 60,
            },
        ];
        for error in &errors {
            let back = across(error);
            assert_eq!(back.to_string(), error.to_string());
            assert_eq!(
                std::mem::discriminant(&back),
                std::mem::discriminant(error),
                "{error}"
            );
        }
    }

    #[test]
    fn other_errors_arrive_as_the_nodes_message() {
        let error = Error::Vmm {
            id: "sb1".into(),
            message: "gone".into(),
        };
        let back = across(&error);
        assert!(
            matches!(&back, Error::Node { node, message } if node == "n" && message == &error.to_string()),
            "{back}"
        );
        // A state word no backend uses stays readable, not invented.
        assert_eq!(needed_state("sideways"), "in another state");
    }

    #[test]
    fn keys_compare_whole() {
        assert!(same_key(b"abc", b"abc"));
        assert!(!same_key(b"abc", b"abd"));
        assert!(!same_key(b"abc", b"ab"));
        assert!(!same_key(b"", b"a"));
    }
}
