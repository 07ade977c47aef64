//! One client connection: handshake, frame routing, the writer task, and
//! the per-operation context ([`Op`]) the operation modules work with.
//!
//! Every operation runs in its own task; the connection's reader never
//! blocks on an operation (inputs go through unbounded queues whose size is
//! bounded by the client's flow-control window). When the connection ends,
//! for any reason, its operation tasks are aborted; an exec's process group
//! is killed by its guard.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use agent_proto::frame::{FrameError, encode_into, read_frame};
use agent_proto::{
    Body, CHUNK_BYTES, CONTROL_STREAM, ErrorKind, Frame, INITIAL_WINDOW_BYTES, PROTOCOL_VERSION,
    RemoteError,
};
use serde_bytes::ByteBuf;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use crate::Agent;

/// Input side of an operation, as the reader routes to it.
struct Route {
    input: mpsc::UnboundedSender<Body>,
    window: Arc<Semaphore>,
}

type Routes = Arc<Mutex<HashMap<u32, Route>>>;

fn lock(routes: &Routes) -> std::sync::MutexGuard<'_, HashMap<u32, Route>> {
    routes.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether `presented` is the agent's token (compared in constant time), or
/// the agent has none.
fn token_matches(agent: &Agent, presented: Option<&str>) -> bool {
    let Some(expected) = agent.config.token.as_deref() else {
        return true;
    };
    let presented = presented.unwrap_or_default().as_bytes();
    let expected = expected.as_bytes();
    let mut diff = presented.len() ^ expected.len();
    for (i, byte) in expected.iter().enumerate() {
        diff |= usize::from(byte ^ presented.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

/// Serves one connection until it closes or breaks the protocol.
pub async fn serve<S>(io: S, agent: Arc<Agent>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (r, w) = tokio::io::split(io);
    let mut r = BufReader::with_capacity(256 * 1024, r);
    let (tx, rx) = mpsc::channel::<Frame>(256);
    let writer = tokio::spawn(write_loop(w, rx));
    let mut buf = Vec::new();

    match read_frame(&mut r, &mut buf).await {
        Ok(Some(Frame {
            body: Body::Hello {
                protocol, token, ..
            },
            ..
        })) if protocol == PROTOCOL_VERSION && !token_matches(&agent, token.as_deref()) => {
            return close_with_error(tx, writer, "the agent's token is required".into()).await;
        }
        Ok(Some(Frame {
            body: Body::Hello { protocol, .. },
            ..
        })) if protocol == PROTOCOL_VERSION => {
            let _ = tx
                .send(Frame::new(CONTROL_STREAM, Body::Welcome(agent.health())))
                .await;
        }
        Ok(Some(Frame {
            body: Body::Hello { protocol, .. },
            ..
        })) => {
            let msg = format!(
                "protocol {protocol} is not supported; this agent speaks {PROTOCOL_VERSION}"
            );
            return close_with_error(tx, writer, msg).await;
        }
        Ok(Some(_)) => {
            return close_with_error(tx, writer, "first frame must be Hello".into()).await;
        }
        Ok(None) => return,
        Err(e) => return close_with_error(tx, writer, describe(&e)).await,
    }

    let ctx = Arc::new(ConnCtx {
        tx: tx.clone(),
        routes: Arc::default(),
        next_even: AtomicU32::new(2),
    });
    let routes = ctx.routes.clone();
    let mut ops = JoinSet::new();
    loop {
        // Reap finished operation tasks so the set does not grow.
        while ops.try_join_next().is_some() {}
        let frame = match read_frame(&mut r, &mut buf).await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                // Operations hold senders to the writer: end them first so
                // the writer can finish once the error is out.
                ops.shutdown().await;
                lock(&routes).clear();
                drop(ctx);
                return close_with_error(tx, writer, describe(&e)).await;
            }
        };
        let id = frame.stream;
        if let Body::Credit(n) = frame.body {
            if let Some(route) = lock(&routes).get(&id) {
                route.window.add_permits(n as usize);
            }
            continue;
        }
        if let Some(route) = lock(&routes).get(&id) {
            let _ = route.input.send(frame.body);
            continue;
        }
        if id % 2 == 0 || !opens_stream(&frame.body) {
            // A late frame for a finished stream, or garbage: drop it.
            continue;
        }
        let op = ctx.register(id);
        let agent = agent.clone();
        ops.spawn(finish(op, move |op| crate::dispatch(op, frame.body, agent)));
    }
    // Abort what still runs (kills exec process groups), then let the writer
    // drain what was queued.
    ops.shutdown().await;
    // Detached streams (relays of accepted connections) see their input end
    // and stop.
    lock(&routes).clear();
    drop(ctx);
    drop(tx);
    join_writer(writer).await;
}

fn opens_stream(body: &Body) -> bool {
    matches!(
        body,
        Body::Exec(_)
            | Body::ReadFile { .. }
            | Body::WriteFile(_)
            | Body::ListDir { .. }
            | Body::Stat { .. }
            | Body::Mkdir { .. }
            | Body::Remove { .. }
            | Body::OpenPort { .. }
            | Body::Listen { .. }
            | Body::Forked(_)
            | Body::Resumed(_)
            | Body::Health
            | Body::Poweroff
            | Body::Spawn(_)
            | Body::Processes
            | Body::ProcessOutput { .. }
            | Body::Signal { .. }
    )
}

fn describe(e: &FrameError) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

async fn close_with_error(
    tx: mpsc::Sender<Frame>,
    writer: tokio::task::JoinHandle<()>,
    message: String,
) {
    let err = RemoteError::new(ErrorKind::Protocol, message);
    let _ = tx.send(Frame::new(CONTROL_STREAM, Body::Error(err))).await;
    drop(tx);
    join_writer(writer).await;
}

/// Waits for the writer to flush, but not forever: a peer that stopped
/// reading must not pin the connection.
async fn join_writer(mut writer: tokio::task::JoinHandle<()>) {
    if tokio::time::timeout(std::time::Duration::from_secs(5), &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
}

async fn write_loop<W: AsyncWrite>(w: W, mut rx: mpsc::Receiver<Frame>) {
    let mut w = std::pin::pin!(w);
    let mut buf = Vec::with_capacity(256 * 1024);
    while let Some(frame) = rx.recv().await {
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

/// What operations share of their connection.
pub struct ConnCtx {
    tx: mpsc::Sender<Frame>,
    routes: Routes,
    next_even: AtomicU32,
}

impl ConnCtx {
    /// Routes stream `id` to a new operation context.
    fn register(self: &Arc<Self>, id: u32) -> Op {
        let (input_tx, input) = mpsc::unbounded_channel();
        let window = Arc::new(Semaphore::new(INITIAL_WINDOW_BYTES as usize));
        lock(&self.routes).insert(
            id,
            Route {
                input: input_tx,
                window: window.clone(),
            },
        );
        Op {
            id,
            tx: self.tx.clone(),
            ctx: self.clone(),
            input,
            window,
        }
    }
}

/// Runs an operation to its end: sends its terminal body (or error) and
/// removes its route.
pub async fn finish<F, Fut>(op: Op, run: F)
where
    F: FnOnce(Op) -> Fut,
    Fut: std::future::Future<Output = Result<Body, RemoteError>>,
{
    let (id, tx, ctx) = (op.id, op.tx.clone(), op.ctx.clone());
    let end = match run(op).await {
        Ok(body) => body,
        Err(e) => Body::Error(e),
    };
    let _ = tx.send(Frame::new(id, end)).await;
    lock(&ctx.routes).remove(&id);
}

/// What an operation task holds: its stream id, the connection's frame
/// sender, its input queue and its send window.
pub struct Op {
    pub id: u32,
    tx: mpsc::Sender<Frame>,
    ctx: Arc<ConnCtx>,
    pub input: mpsc::UnboundedReceiver<Body>,
    window: Arc<Semaphore>,
}

/// A cloneable sender for one operation's outgoing frames.
#[derive(Clone)]
pub struct OpSender {
    id: u32,
    tx: mpsc::Sender<Frame>,
    window: Arc<Semaphore>,
}

/// The connection is gone; the operation should stop.
#[derive(Debug)]
pub struct Gone;

impl From<Gone> for RemoteError {
    fn from(_: Gone) -> Self {
        RemoteError::new(ErrorKind::Io, "connection closed")
    }
}

impl Op {
    /// Opens an agent-side (even) stream on this connection. The caller
    /// announces it to the client before sending anything on it.
    pub fn open_stream(&self) -> Op {
        let id = self.ctx.next_even.fetch_add(2, Ordering::Relaxed);
        self.ctx.register(id)
    }

    pub fn sender(&self) -> OpSender {
        OpSender {
            id: self.id,
            tx: self.tx.clone(),
            window: self.window.clone(),
        }
    }

    /// Acknowledges `n` bytes of client data consumed.
    pub async fn credit(&self, n: usize) -> Result<(), Gone> {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        self.tx
            .send(Frame::new(self.id, Body::Credit(n)))
            .await
            .map_err(|_| Gone)
    }
}

impl OpSender {
    /// Acknowledges `n` bytes of client data consumed.
    pub async fn credit(&self, n: usize) -> Result<(), Gone> {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        self.send(Body::Credit(n)).await
    }

    pub async fn send(&self, body: Body) -> Result<(), Gone> {
        self.tx
            .send(Frame::new(self.id, body))
            .await
            .map_err(|_| Gone)
    }

    /// Sends one chunk (at most `CHUNK_BYTES`) without copying it, waiting
    /// for window credit.
    pub async fn send_chunk(&self, chunk: Vec<u8>, wrap: fn(ByteBuf) -> Body) -> Result<(), Gone> {
        let n = u32::try_from(chunk.len()).map_err(|_| Gone)?;
        self.window
            .acquire_many(n)
            .await
            .map_err(|_| Gone)?
            .forget();
        self.send(wrap(ByteBuf::from(chunk))).await
    }

    /// Sends bytes in chunks as `wrap(chunk)`, waiting for window credit.
    pub async fn send_data(&self, mut data: &[u8], wrap: fn(ByteBuf) -> Body) -> Result<(), Gone> {
        while !data.is_empty() {
            let n = data.len().min(CHUNK_BYTES);
            self.window
                .acquire_many(n as u32)
                .await
                .map_err(|_| Gone)?
                .forget();
            self.send(wrap(ByteBuf::from(data[..n].to_vec()))).await?;
            data = &data[n..];
        }
        Ok(())
    }
}
