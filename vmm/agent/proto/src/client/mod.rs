//! The host-side client: one [`Client`] per connection to an agent, any
//! number of concurrent operations on it.
//!
//! A reader task routes incoming frames to the stream they name; a writer
//! task owns the write half and batches frames. Each operation holds a
//! [`Stream`]: its receiver of bodies and its send window. Data bodies the
//! caller consumes are credited back to the agent at once, so an operation
//! whose caller stops reading stalls only itself (the agent's window runs
//! out), never the connection. Dropping an unfinished operation sends
//! `Cancel`.
//!
//! The agent runs inside a sandbox and is treated as hostile: the reader
//! holds it to the protocol's bounds, so what a client buffers stays
//! bounded whatever the agent sends. Per stream, data received but not yet
//! consumed may not exceed the window the client granted, other bodies
//! waiting may not take more than [`MAX_FRAME_BYTES`] encoded, and at most
//! [`MAX_QUEUED_BODIES`] bodies may wait; the whole connection may hold at
//! most [`MAX_CONNECTION_QUEUED_BYTES`]; credit may never grow a send
//! window past its size. An agent that breaks a bound loses the
//! connection, and every operation on it fails with
//! [`ClientError::Misbehaved`]. At most [`MAX_PENDING_ACCEPTS`] accepted
//! connections wait for `accept`; one more is refused on its own (the
//! agent is told to close it), since the sandbox's processes, not the
//! agent, decide how fast they connect.

mod exec;
mod files;
mod port;
mod process;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_bytes::ByteBuf;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{Notify, Semaphore, mpsc};

pub use exec::{Exec, ExecEvent, ExecInput, Output};
pub use files::FileReader;

/// Bytes coming back on a stream as `Data` frames until `Done`: a file
/// being read, a background process's output.
pub struct Chunks {
    stream: Stream,
    done: bool,
}

impl std::fmt::Debug for Chunks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunks").field("done", &self.done).finish()
    }
}

impl Chunks {
    fn new(stream: Stream) -> Chunks {
        Chunks {
            stream,
            done: false,
        }
    }

    /// The next chunk; `None` at the end.
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>> {
        if self.done {
            return Ok(None);
        }
        match self.stream.recv().await? {
            Body::Data(b) => Ok(Some(b.into_vec())),
            Body::Done => {
                self.done = true;
                Ok(None)
            }
            other => Err(unexpected(&other)),
        }
    }
}
pub use port::{PortListener, PortStream};
pub use process::ProcessOutput;

use crate::frame::{FrameError, encode_into, read_frame};
use crate::message::{
    Body, CHUNK_BYTES, CONTROL_STREAM, Forked, Frame, Health, INITIAL_WINDOW_BYTES,
    LifecycleReport, MAX_FRAME_BYTES, PROTOCOL_VERSION, RemoteError, Resumed,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("Cannot connect to the agent at {path}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Handshake failed: {0}")]
    Handshake(String),
    #[error("Connection to the agent failed")]
    Frame(#[from] FrameError),
    #[error("Connection to the agent is closed")]
    Closed,
    #[error("Agent refused the operation")]
    Remote(#[from] RemoteError),
    #[error("Agent sent an unexpected {0} frame")]
    Unexpected(String),
    #[error("Agent broke the protocol's bounds ({0}); the connection was closed")]
    Misbehaved(String),
    #[error("Local I/O failed")]
    Io(#[from] std::io::Error),
}

type Result<T> = std::result::Result<T, ClientError>;

/// How long the agent may take to answer `Hello`.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Client {
    /// Whether the connection ended (operations now fail with `Closed`).
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Ends the connection for every holder: nothing more is sent, the
    /// write side is shut down, and this waits (at most `within`) until
    /// the agent closed its side too, so that no socket of the connection
    /// is left in the sandbox (a checkpoint cannot hold one). Operations
    /// on it then fail with `Closed`. Whether it closed in time.
    pub async fn close(&self, within: std::time::Duration) -> bool {
        self.shared.shutdown.notify_one();
        let deadline = tokio::time::Instant::now() + within;
        while !self.is_closed() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        true
    }
}

/// Bodies of one stream that may wait for its reader.
pub const MAX_QUEUED_BODIES: u32 = 4096;
/// Agent-opened streams that may wait for `accept` on one connection.
pub const MAX_PENDING_ACCEPTS: usize = 256;
/// Bytes all streams of one connection may hold for their readers.
pub const MAX_CONNECTION_QUEUED_BYTES: u64 = 64 << 20;

/// What a queued body costs: its data bytes (which count against the
/// window) or, for any other body, its encoded size.
fn queued_cost(body: &Body) -> (u32, u64) {
    match body.window_cost() {
        0 => (0, bincode::serialized_size(body).unwrap_or(u64::MAX)),
        data => (data, u64::from(data)),
    }
}

/// What waits on one stream for its reader: the bounds the reader checks.
#[derive(Default)]
struct Queued {
    /// Data bytes received and not yet consumed (at most the window).
    data: AtomicU32,
    /// Encoded bytes of the other bodies waiting.
    other: AtomicU64,
    bodies: AtomicU32,
}

impl Queued {
    /// Counts `body` in (here and in the connection's `total`), or says
    /// which bound it breaks.
    fn admit(&self, body: &Body, total: &AtomicU64) -> std::result::Result<(), String> {
        let (data, bytes) = queued_cost(body);
        let in_flight = self
            .data
            .fetch_add(data, Ordering::AcqRel)
            .saturating_add(data);
        if in_flight > INITIAL_WINDOW_BYTES {
            return Err(format!(
                "{in_flight} data bytes in flight on one stream, the window is {INITIAL_WINDOW_BYTES}"
            ));
        }
        if data == 0 {
            let other = self
                .other
                .fetch_add(bytes, Ordering::AcqRel)
                .saturating_add(bytes);
            if other > MAX_FRAME_BYTES as u64 {
                return Err(format!("{other} bytes of replies queued on one stream"));
            }
        }
        if self.bodies.fetch_add(1, Ordering::AcqRel) >= MAX_QUEUED_BODIES {
            return Err(format!(
                "more than {MAX_QUEUED_BODIES} frames queued on one stream"
            ));
        }
        let all = total
            .fetch_add(bytes, Ordering::AcqRel)
            .saturating_add(bytes);
        if all > MAX_CONNECTION_QUEUED_BYTES {
            return Err(format!("{all} bytes queued on one connection"));
        }
        Ok(())
    }

    /// Counts `body` out once the reader took it.
    fn consumed(&self, body: &Body, total: &AtomicU64) {
        let (data, bytes) = queued_cost(body);
        self.data.fetch_sub(data, Ordering::AcqRel);
        if data == 0 {
            self.other.fetch_sub(bytes, Ordering::AcqRel);
        }
        self.bodies.fetch_sub(1, Ordering::AcqRel);
        total.fetch_sub(bytes, Ordering::AcqRel);
    }
}

struct Route {
    events: mpsc::UnboundedSender<Body>,
    window: Arc<Semaphore>,
    queued: Arc<Queued>,
}

/// An agent-opened stream announced by `Accepted`, waiting for `accept`.
struct Pending {
    events: mpsc::UnboundedReceiver<Body>,
    window: Arc<Semaphore>,
    queued: Arc<Queued>,
}

struct Shared {
    tx: mpsc::Sender<Frame>,
    routes: Mutex<HashMap<u32, Route>>,
    pending: Mutex<HashMap<u32, Pending>>,
    next_stream: AtomicU32,
    /// Set by the reader when the connection ended.
    closed: std::sync::atomic::AtomicBool,
    /// Why the reader closed the connection, if the agent broke a bound.
    broken: Mutex<Option<String>>,
    /// Bytes all streams hold for their readers.
    queued_total: AtomicU64,
    /// Tells the writer to stop and shut the write side down.
    shutdown: Arc<Notify>,
}

impl Shared {
    fn routes(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Route>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A connection to one agent.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    welcome: Health,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("welcome", &self.welcome)
            .finish()
    }
}

impl Client {
    /// Connects to an agent listening on a Unix socket and shakes hands.
    pub async fn connect_unix(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let sock = tokio::net::UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::Connect {
                path: path.display().to_string(),
                source,
            })?;
        Self::handshake(sock).await
    }

    /// Connects to the agent inside a microVM through the VMM's host-side
    /// vsock socket (Firecracker's convention: send `CONNECT <port>\n`,
    /// receive `OK <host port>\n`, then the stream is the guest's).
    pub async fn connect_vsock_proxy(uds: impl AsRef<Path>, port: u32) -> Result<Self> {
        Self::handshake(Self::vsock_proxy_stream(uds, port).await?).await
    }

    /// The stream to guest port `port` through the VMM's vsock socket,
    /// after `CONNECT` and before any handshake.
    pub async fn vsock_proxy_stream(
        uds: impl AsRef<Path>,
        port: u32,
    ) -> Result<tokio::net::UnixStream> {
        use tokio::io::AsyncReadExt;
        let uds = uds.as_ref();
        let connect_err = |source| ClientError::Connect {
            path: format!("{}:{port}", uds.display()),
            source,
        };
        let mut sock = tokio::net::UnixStream::connect(uds)
            .await
            .map_err(connect_err)?;
        sock.write_all(format!("CONNECT {port}\n").as_bytes())
            .await
            .map_err(connect_err)?;
        // Read the reply byte by byte: nothing after the newline is ours.
        let mut line = Vec::new();
        loop {
            let mut b = [0u8; 1];
            if sock.read(&mut b).await.map_err(connect_err)? == 0 || line.len() > 64 {
                return Err(ClientError::Handshake(format!(
                    "vsock proxy closed or garbled the CONNECT reply: {:?}",
                    String::from_utf8_lossy(&line)
                )));
            }
            if b[0] == b'\n' {
                break;
            }
            line.push(b[0]);
        }
        if !line.starts_with(b"OK ") {
            return Err(ClientError::Handshake(format!(
                "vsock proxy refused port {port}: {:?}",
                String::from_utf8_lossy(&line)
            )));
        }
        Ok(sock)
    }

    /// Shakes hands over any byte stream (Unix socket, vsock, the VMM's
    /// vsock proxy after `CONNECT`), then serves operations on it.
    /// Must be called inside a tokio runtime.
    pub async fn handshake<S>(io: S) -> Result<Self>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        Self::handshake_with_token(io, None).await
    }

    /// [`Client::handshake`] presenting `token`, the secret the agent was
    /// started with.
    pub async fn handshake_with_token<S>(io: S, token: Option<&str>) -> Result<Self>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (r, mut w) = tokio::io::split(io);
        let mut r = BufReader::with_capacity(256 * 1024, r);
        let hello = Frame::new(
            CONTROL_STREAM,
            Body::Hello {
                protocol: PROTOCOL_VERSION,
                client: format!("agent-proto/{}", env!("CARGO_PKG_VERSION")),
                token: token.map(str::to_owned),
            },
        );
        let mut buf = Vec::new();
        encode_into(&hello, &mut buf)?;
        w.write_all(&buf).await?;
        w.flush().await?;
        let reply = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_frame(&mut r, &mut buf))
            .await
            .map_err(|_| {
                ClientError::Handshake(format!("no answer to Hello within {HANDSHAKE_TIMEOUT:?}"))
            })?;
        let welcome = match reply? {
            Some(Frame {
                body: Body::Welcome(h),
                ..
            }) => h,
            Some(Frame {
                body: Body::Error(e),
                ..
            }) => return Err(ClientError::Handshake(e.message)),
            Some(f) => return Err(ClientError::Handshake(format!("unexpected {:?}", f.body))),
            None => return Err(ClientError::Handshake("agent closed the connection".into())),
        };
        let (tx, rx) = mpsc::channel(256);
        let shared = Arc::new(Shared {
            tx,
            routes: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            closed: std::sync::atomic::AtomicBool::new(false),
            broken: Mutex::new(None),
            queued_total: AtomicU64::new(0),
            next_stream: AtomicU32::new(1),
            shutdown: Arc::new(Notify::new()),
        });
        tokio::spawn(write_loop(w, rx, shared.shutdown.clone()));
        tokio::spawn(read_loop(r, Arc::downgrade(&shared)));
        Ok(Self { shared, welcome })
    }

    /// The agent's `Welcome`: protocol, agent and image version.
    pub fn welcome(&self) -> &Health {
        &self.welcome
    }

    /// Opens a new stream whose first frame is `body`.
    async fn open(&self, body: Body) -> Result<Stream> {
        let id = self.shared.next_stream.fetch_add(2, Ordering::Relaxed);
        let (events_tx, events) = mpsc::unbounded_channel();
        let window = Arc::new(Semaphore::new(INITIAL_WINDOW_BYTES as usize));
        let queued = Arc::new(Queued::default());
        {
            // Checked under the routes lock, which the reader holds while it
            // marks the connection closed and drains the routes.
            let mut routes = self.shared.routes();
            if self.shared.closed.load(Ordering::Acquire) {
                return Err(ClientError::Closed);
            }
            routes.insert(
                id,
                Route {
                    events: events_tx,
                    window: window.clone(),
                    queued: queued.clone(),
                },
            );
        }
        let stream = Stream {
            sender: StreamSender {
                id,
                shared: self.shared.clone(),
                window,
            },
            events,
            queued,
            finished: false,
        };
        stream.sender.send(body).await?;
        Ok(stream)
    }

    /// Sends `body` on a new stream and returns the single reply.
    async fn call(&self, body: Body) -> Result<Body> {
        let mut s = self.open(body).await?;
        s.recv().await
    }

    /// Tells the agent the sandbox was forked (reseed RNG, clock, hostname).
    pub async fn forked(&self, forked: Forked) -> Result<LifecycleReport> {
        match self.call(Body::Forked(forked)).await? {
            Body::Lifecycle(r) => Ok(r),
            other => Err(unexpected(&other)),
        }
    }

    /// Tells the agent the sandbox was resumed (set the clock).
    pub async fn resumed(&self, resumed: Resumed) -> Result<LifecycleReport> {
        match self.call(Body::Resumed(resumed)).await? {
            Body::Lifecycle(r) => Ok(r),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn health(&self) -> Result<Health> {
        match self.call(Body::Health).await? {
            Body::HealthReport(h) => Ok(h),
            other => Err(unexpected(&other)),
        }
    }

    /// Asks the agent to power the sandbox off (as PID 1: kill everything,
    /// sync, unmount, power off; as a plain process: exit).
    pub async fn poweroff(&self) -> Result<()> {
        match self.call(Body::Poweroff).await? {
            Body::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }
}

fn unexpected(body: &Body) -> ClientError {
    let name = format!("{body:?}");
    let name = name.split(['(', ' ', '{']).next().unwrap_or("?").to_owned();
    ClientError::Unexpected(name)
}

impl Client {
    /// Takes over an agent-opened stream announced by `Accepted`.
    fn adopt(&self, id: u32) -> Result<Stream> {
        let pending = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id)
            .ok_or_else(|| ClientError::Unexpected(format!("Accepted for unknown stream {id}")))?;
        Ok(Stream {
            sender: StreamSender {
                id,
                shared: self.shared.clone(),
                window: pending.window,
            },
            events: pending.events,
            queued: pending.queued,
            finished: false,
        })
    }
}

/// Whether `body` ends a stream from the agent's side.
fn is_terminal(body: &Body) -> bool {
    matches!(
        body,
        Body::Exited(_)
            | Body::Done
            | Body::Metadata(_)
            | Body::Entries(_)
            | Body::Lifecycle(_)
            | Body::HealthReport(_)
            | Body::Error(_)
    )
}

async fn write_loop<W: AsyncWrite>(w: W, mut rx: mpsc::Receiver<Frame>, shutdown: Arc<Notify>) {
    let mut w = std::pin::pin!(w);
    let mut buf = Vec::with_capacity(256 * 1024);
    loop {
        let frame = tokio::select! {
            frame = rx.recv() => frame,
            () = shutdown.notified() => None,
        };
        let Some(frame) = frame else {
            break;
        };
        buf.clear();
        let mut ok = encode_into(&frame, &mut buf).is_ok();
        while ok && buf.len() < 256 * 1024 {
            match rx.try_recv() {
                Ok(f) => ok = encode_into(&f, &mut buf).is_ok(),
                Err(_) => break,
            }
        }
        if !ok || w.write_all(&buf).await.is_err() || w.flush().await.is_err() {
            break;
        }
    }
    let _ = w.shutdown().await;
}

async fn read_loop<R: AsyncRead + Unpin>(mut r: R, shared: std::sync::Weak<Shared>) {
    let mut buf = Vec::new();
    let mut broken = None;
    while let Ok(Some(frame)) = read_frame(&mut r, &mut buf).await {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if let Err(reason) = route_frame(&shared, frame) {
            broken = Some(reason);
            break;
        }
    }
    // Connection gone: wake every operation (their receivers see the end).
    if let Some(shared) = shared.upgrade() {
        if let Some(reason) = broken {
            *shared.broken.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
        }
        let mut routes = shared.routes();
        shared.closed.store(true, Ordering::Release);
        for (_, route) in routes.drain() {
            route.window.close();
        }
        shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

/// Hands `frame` to its stream, or says which bound the agent broke.
fn route_frame(shared: &Shared, frame: Frame) -> std::result::Result<(), String> {
    let mut routes = shared.routes();
    if frame.stream == CONTROL_STREAM {
        // A connection-level error: the agent closes the connection next.
        return Ok(());
    }
    if let Body::Credit(n) = frame.body {
        if let Some(route) = routes.get(&frame.stream) {
            let granted = route.window.available_permits().saturating_add(n as usize);
            if granted > INITIAL_WINDOW_BYTES as usize {
                return Err(format!("a credit of {n} grows a send window past its size"));
            }
            route.window.add_permits(n as usize);
        }
        return Ok(());
    }
    if let Body::Accepted { stream } = frame.body
        && stream % 2 == 0
        && routes.contains_key(&frame.stream)
        && !routes.contains_key(&stream)
    {
        let mut pending = shared.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.len() >= MAX_PENDING_ACCEPTS {
            // The sandbox's processes connect faster than the host takes
            // their connections up: this one is refused (the agent closes
            // it) and the rest of the connection goes on. With the writer
            // full the refusal is skipped; the agent keeps that relay
            // until the sandbox's side closes it.
            let _ = shared.tx.try_send(Frame::new(stream, Body::Cancel));
            return Ok(());
        }
        // Route the new stream before any of its frames can arrive.
        let (events_tx, events) = mpsc::unbounded_channel();
        let window = Arc::new(Semaphore::new(INITIAL_WINDOW_BYTES as usize));
        let queued = Arc::new(Queued::default());
        routes.insert(
            stream,
            Route {
                events: events_tx,
                window: window.clone(),
                queued: queued.clone(),
            },
        );
        pending.insert(
            stream,
            Pending {
                events,
                window,
                queued,
            },
        );
    }
    let terminal = is_terminal(&frame.body);
    if let Some(route) = routes.get(&frame.stream) {
        route.queued.admit(&frame.body, &shared.queued_total)?;
        let _ = route.events.send(frame.body);
    }
    if terminal && let Some(route) = routes.remove(&frame.stream) {
        route.window.close();
    }
    Ok(())
}

/// The sending half of one operation; cheap to clone.
#[derive(Clone)]
pub(crate) struct StreamSender {
    id: u32,
    shared: Arc<Shared>,
    window: Arc<Semaphore>,
}

impl StreamSender {
    async fn send(&self, body: Body) -> Result<()> {
        self.shared
            .tx
            .send(Frame::new(self.id, body))
            .await
            .map_err(|_| ClientError::Closed)
    }

    /// Sends bytes as `Data` frames, waiting for window credit.
    async fn send_data(&self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let n = data.len().min(CHUNK_BYTES);
            self.window
                .acquire_many(n as u32)
                .await
                .map_err(|_| ClientError::Closed)?
                .forget();
            self.send(Body::Data(ByteBuf::from(data[..n].to_vec())))
                .await?;
            data = &data[n..];
        }
        Ok(())
    }
}

/// One operation: its receiver and sender.
pub(crate) struct Stream {
    sender: StreamSender,
    events: mpsc::UnboundedReceiver<Body>,
    queued: Arc<Queued>,
    finished: bool,
}

impl Stream {
    /// The next body from the agent. Data is credited back on receipt; a
    /// terminal `Error` becomes `Err(Remote)`.
    async fn recv(&mut self) -> Result<Body> {
        let Some(body) = self.events.recv().await else {
            self.finished = true;
            let broken = self
                .sender
                .shared
                .broken
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            return Err(match broken.as_ref() {
                Some(reason) => ClientError::Misbehaved(reason.clone()),
                None => ClientError::Closed,
            });
        };
        self.queued
            .consumed(&body, &self.sender.shared.queued_total);
        let cost = body.window_cost();
        if cost > 0 {
            self.sender.send(Body::Credit(cost)).await?;
        }
        if is_terminal(&body) {
            self.finished = true;
        }
        match body {
            Body::Error(e) => Err(ClientError::Remote(e)),
            other => Ok(other),
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // Whatever still waits here leaves the connection's count with it.
        self.events.close();
        while let Ok(body) = self.events.try_recv() {
            self.queued
                .consumed(&body, &self.sender.shared.queued_total);
        }
        if self.finished {
            return;
        }
        let removed = self.sender.shared.routes().remove(&self.sender.id);
        if removed.is_some() {
            let tx = &self.sender.shared.tx;
            if let Err(mpsc::error::TrySendError::Full(frame)) =
                tx.try_send(Frame::new(self.sender.id, Body::Cancel))
                && let Ok(rt) = tokio::runtime::Handle::try_current()
            {
                let tx = tx.clone();
                rt.spawn(async move {
                    let _ = tx.send(frame).await;
                });
            }
        }
    }
}
