//! The in-memory sandboxes' agent: the host side of `agent-proto` talks to
//! it over an in-process pipe exactly as it talks to `sandbox-agent`.
//!
//! It speaks the protocol strictly enough that a host breaking it fails:
//! `Hello` must carry this protocol's version; data it sends is credited
//! back, data it receives waits for the host's credit; operations other
//! than a `Listen` already open are refused while the sandbox is not
//! running. What it does instead of running processes:
//!
//! - `Exec`: `Started`, then (stdin read to its end, unless on a terminal)
//!   the exec is recorded and waits at its gate (see
//!   [`MemorySandboxes::hold_exec`](super::MemorySandboxes::hold_exec)), where a
//!   `Cancel` or the command's timeout ends it with `SIGKILL`; then the
//!   scripted [`Reply`](super::Reply), cut at the command's output limit.
//! - files: the sandbox's [`Files`].
//! - `Listen`: `Listening`, then nothing until `Cancel`; `OpenPort`: refused.
//! - `Forked`, `Resumed`: every step skipped.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use agent_proto::frame::{read_frame, write_frame};
use agent_proto::{
    Body, CHUNK_BYTES, Client, ErrorKind, ExecRequest, ExitStatus, Exited, Frame, Health,
    INITIAL_WINDOW_BYTES, LifecycleReport, PROTOCOL_VERSION, RemoteError, StepOutcome,
};
use serde_bytes::ByteBuf;
use tokio::io::{AsyncWriteExt, DuplexStream, WriteHalf};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::{JoinHandle, JoinSet};

use super::{Ending, ExecRecord, Files, Inner, Invocation, lock};
use crate::error::{Error, Result};
use crate::spec::State;

/// `SIGKILL`: how a cancelled or timed-out exec ends.
const KILLED: ExitStatus = ExitStatus::Signal(9);

/// Bytes buffered in each direction of the pipe.
const PIPE_BYTES: usize = 256 * 1024;

/// A connected client and the task serving it (aborting the task closes
/// the connection).
pub(super) async fn connect(inner: Arc<Inner>, id: &str) -> Result<(Client, JoinHandle<()>)> {
    let (host, task) = stream(inner, id);
    match Client::handshake(host).await {
        Ok(client) => Ok((client, task)),
        Err(error) => {
            task.abort();
            Err(Error::agent(id)(error))
        }
    }
}

/// The host's end of a new connection to `id`'s agent, before the
/// handshake, and the task serving the other end.
pub(super) fn stream(inner: Arc<Inner>, id: &str) -> (tokio::io::DuplexStream, JoinHandle<()>) {
    let (host, guest) = tokio::io::duplex(PIPE_BYTES);
    (host, tokio::spawn(serve(inner, id.to_owned(), guest)))
}

/// What the agent sends on one stream.
#[derive(Clone)]
struct Sender {
    stream: u32,
    frames: mpsc::UnboundedSender<Frame>,
    /// The host's credit for data on this stream.
    window: Arc<Semaphore>,
}

impl Sender {
    fn send(&self, body: Body) {
        // The connection ending is the host's business: nothing to tell.
        let _ = self.frames.send(Frame::new(self.stream, body));
    }

    fn fail(&self, error: RemoteError) {
        self.send(Body::Error(error));
    }

    /// `bytes` as data bodies made by `wrap`, within the host's credit.
    async fn send_data(&self, bytes: &[u8], wrap: fn(ByteBuf) -> Body) {
        for chunk in bytes.chunks(CHUNK_BYTES) {
            let Ok(permit) = self.window.acquire_many(chunk.len() as u32).await else {
                return;
            };
            permit.forget();
            self.send(wrap(ByteBuf::from(chunk.to_vec())));
        }
    }
}

/// A stream the host may still send to.
struct Open {
    to: mpsc::UnboundedSender<Body>,
    window: Arc<Semaphore>,
}

async fn write_loop(mut w: WriteHalf<DuplexStream>, mut frames: mpsc::UnboundedReceiver<Frame>) {
    while let Some(frame) = frames.recv().await {
        if write_frame(&mut w, &frame).await.is_err() {
            return;
        }
        if frames.is_empty() && w.flush().await.is_err() {
            return;
        }
    }
}

/// The sandbox's files if it runs, else why its agent does not answer.
fn running(inner: &Inner, id: &str) -> std::result::Result<Files, RemoteError> {
    match inner.sandboxes().get(id) {
        Some(entry) if entry.info.state == State::Running => Ok(entry.files.clone()),
        Some(entry) => Err(RemoteError::new(
            ErrorKind::Io,
            format!(
                "sandbox {id} is {:?}: its agent does not answer",
                entry.info.state
            ),
        )),
        None => Err(RemoteError::new(
            ErrorKind::Io,
            format!("sandbox {id} is gone"),
        )),
    }
}

fn skipped() -> LifecycleReport {
    let skip = || StepOutcome::Skipped("in-memory sandbox".into());
    LifecycleReport {
        reseed: skip(),
        clock: skip(),
        hostname: skip(),
    }
}

async fn serve(inner: Arc<Inner>, id: String, io: DuplexStream) {
    let (r, mut w) = tokio::io::split(io);
    let mut r = tokio::io::BufReader::new(r);
    let mut buf = Vec::new();
    let welcome = match read_frame(&mut r, &mut buf).await {
        Ok(Some(Frame {
            body: Body::Hello { protocol, .. },
            ..
        })) if protocol == PROTOCOL_VERSION => Body::Welcome(Health {
            protocol,
            agent_version: "in-memory".into(),
            image_version: None,
            pid1: true,
            hostname: id.clone(),
            uptime_ms: 0,
        }),
        _ => Body::Error(RemoteError::new(
            ErrorKind::Protocol,
            format!("expected Hello with protocol {PROTOCOL_VERSION}"),
        )),
    };
    let refused = matches!(welcome, Body::Error(_));
    if write_frame(&mut w, &Frame::new(0, welcome)).await.is_err()
        || w.flush().await.is_err()
        || refused
    {
        return;
    }
    let (frames, outgoing) = mpsc::unbounded_channel();
    // Dropped with this task: its operations end with the connection.
    let mut tasks = JoinSet::new();
    tasks.spawn(write_loop(w, outgoing));
    let mut open: HashMap<u32, Open> = HashMap::new();
    while let Ok(Some(frame)) = read_frame(&mut r, &mut buf).await {
        while tasks.try_join_next().is_some() {}
        let stream = frame.stream;
        let window = Arc::new(Semaphore::new(INITIAL_WINDOW_BYTES as usize));
        let sender = Sender {
            stream,
            frames: frames.clone(),
            window: window.clone(),
        };
        let opened = || {
            let (to, from_host) = mpsc::unbounded_channel();
            open.insert(stream, Open { to, window });
            from_host
        };
        match frame.body {
            Body::Exec(request) => {
                let from_host = opened();
                tasks.spawn(exec(inner.clone(), id.clone(), request, from_host, sender));
            }
            Body::WriteFile(header) => {
                let from_host = opened();
                tasks.spawn(write_file(
                    inner.clone(),
                    id.clone(),
                    header,
                    from_host,
                    sender,
                ));
            }
            Body::Listen { port } => {
                let mut from_host = opened();
                sender.send(Body::Listening {
                    port: if port == 0 { 40000 } else { port },
                });
                tasks.spawn(async move {
                    while let Some(body) = from_host.recv().await {
                        if body == Body::Cancel {
                            sender.send(Body::Done);
                            return;
                        }
                    }
                });
            }
            Body::ReadFile { path } => {
                let files = running(&inner, &id);
                tasks.spawn(async move {
                    let read = files.and_then(|files| {
                        files.stat(&path)?;
                        files.read(&path).ok_or_else(|| {
                            RemoteError::new(
                                ErrorKind::IsADirectory,
                                format!("{path} is a directory"),
                            )
                        })
                    });
                    match read {
                        Ok(bytes) => {
                            sender.send_data(&bytes, Body::Data).await;
                            sender.send(Body::Done);
                        }
                        Err(error) => sender.fail(error),
                    }
                });
            }
            Body::Stat { path } => sender.send(
                match running(&inner, &id).and_then(|files| files.stat(&path)) {
                    Ok(stat) => Body::Metadata(stat),
                    Err(error) => Body::Error(error),
                },
            ),
            Body::ListDir { path } => sender.send(
                match running(&inner, &id).and_then(|files| files.list(&path)) {
                    Ok(entries) => Body::Entries(entries),
                    Err(error) => Body::Error(error),
                },
            ),
            Body::Mkdir { path, .. } => sender.send(
                match running(&inner, &id).and_then(|files| files.mkdir(&path)) {
                    Ok(()) => Body::Done,
                    Err(error) => Body::Error(error),
                },
            ),
            Body::Remove { path, recursive } => sender.send(
                match running(&inner, &id).and_then(|files| files.remove(&path, recursive)) {
                    Ok(()) => Body::Done,
                    Err(error) => Body::Error(error),
                },
            ),
            Body::OpenPort { port } => sender.fail(RemoteError::new(
                ErrorKind::ConnectionRefused,
                format!("nothing listens on port {port} in an in-memory sandbox"),
            )),
            Body::Forked(_) | Body::Resumed(_) => sender.send(Body::Lifecycle(skipped())),
            Body::Health => sender.send(Body::HealthReport(Health {
                protocol: PROTOCOL_VERSION,
                agent_version: "in-memory".into(),
                image_version: None,
                pid1: true,
                hostname: id.clone(),
                uptime_ms: 0,
            })),
            Body::Poweroff => sender.send(Body::Done),
            Body::Credit(n) => {
                if let Some(stream) = open.get(&stream) {
                    stream.window.add_permits(n as usize);
                }
            }
            body @ (Body::Data(_) | Body::Eof | Body::Cancel | Body::Resize(_)) => {
                if let Some(target) = open.get(&stream) {
                    // Buffered here at once: credit the host straight back.
                    let cost = body.window_cost();
                    if cost > 0 {
                        sender.send(Body::Credit(cost));
                    }
                    let _ = target.to.send(body);
                }
            }
            _ => sender.fail(RemoteError::new(
                ErrorKind::Protocol,
                "unexpected frame from the host",
            )),
        }
    }
}

/// Waits until the host cancels (or the connection ends).
async fn cancelled(from_host: &mut mpsc::UnboundedReceiver<Body>) {
    while let Some(body) = from_host.recv().await {
        if body == Body::Cancel {
            return;
        }
    }
}

/// How an exec held at its gate got past it.
enum Held {
    Through,
    Cancelled,
    TimedOut,
}

fn set_ending(inner: &Inner, index: usize, ending: Ending) {
    if let Some(record) = lock(&inner.execs).get_mut(index) {
        record.ending = Some(ending);
    }
}

async fn exec(
    inner: Arc<Inner>,
    id: String,
    request: ExecRequest,
    mut from_host: mpsc::UnboundedReceiver<Body>,
    sender: Sender,
) {
    let env = inner
        .sandboxes()
        .get(&id)
        .filter(|entry| entry.info.state == State::Running)
        .map(|entry| entry.env.clone());
    let Some(env) = env else {
        sender.fail(
            running(&inner, &id)
                .err()
                .unwrap_or_else(|| RemoteError::new(ErrorKind::Io, "the sandbox stopped")),
        );
        return;
    };
    let started = Instant::now();
    sender.send(Body::Started {
        pid: inner.next_pid.fetch_add(1, Ordering::Relaxed),
    });
    let mut stdin = Vec::new();
    if request.stdin && request.pty.is_none() {
        loop {
            match from_host.recv().await {
                Some(Body::Data(bytes)) => stdin.extend_from_slice(&bytes),
                Some(Body::Eof) => break,
                Some(Body::Cancel) | None => return,
                Some(_) => {}
            }
        }
    }
    let argv = match request.command {
        agent_proto::Command::Argv(argv) => argv,
        agent_proto::Command::Shell(script) => vec!["/bin/sh".into(), "-c".into(), script],
    };
    let invocation = Invocation {
        sandbox: id.clone(),
        argv,
        env: env.into_iter().chain(request.env).collect(),
        cwd: request.cwd,
        stdin,
        pty: request.pty.is_some(),
    };
    let index = {
        let mut execs = lock(&inner.execs);
        execs.push(ExecRecord {
            invocation: invocation.clone(),
            ending: None,
        });
        execs.len() - 1
    };
    let timeout = request.timeout_ms.map(Duration::from_millis);
    let early = inner.reply(&invocation).early;
    if !early.is_empty() {
        sender.send_data(&early, Body::Stdout).await;
    }
    let held = tokio::select! {
        () = inner.exec_gate(&invocation) => Held::Through,
        () = cancelled(&mut from_host) => Held::Cancelled,
        () = expiry(timeout) => Held::TimedOut,
    };
    let exited = |status, truncated, timed_out| {
        Body::Exited(Exited {
            status,
            duration_ms: started.elapsed().as_millis() as u64,
            truncated,
            timed_out,
        })
    };
    match held {
        Held::Cancelled => {
            set_ending(&inner, index, Ending::Cancelled);
            sender.send(exited(KILLED, false, false));
        }
        Held::TimedOut => {
            set_ending(&inner, index, Ending::TimedOut);
            sender.send(exited(KILLED, false, true));
        }
        Held::Through => {
            let reply = inner.reply(&invocation);
            let mut left = request.output_limit_bytes.unwrap_or(u64::MAX);
            let mut truncated = false;
            for (bytes, wrap) in [
                (&reply.stdout, Body::Stdout as fn(ByteBuf) -> Body),
                (&reply.stderr, Body::Stderr),
            ] {
                let fits = usize::try_from(left).unwrap_or(usize::MAX).min(bytes.len());
                truncated |= fits < bytes.len();
                left -= fits as u64;
                sender.send_data(&bytes[..fits], wrap).await;
            }
            set_ending(&inner, index, Ending::Exited(reply.status));
            sender.send(exited(reply.status, truncated, false));
        }
    }
}

/// Resolves when `timeout` passed; never without one.
async fn expiry(timeout: Option<Duration>) {
    match timeout {
        Some(timeout) => tokio::time::sleep(timeout).await,
        None => std::future::pending().await,
    }
}

async fn write_file(
    inner: Arc<Inner>,
    id: String,
    header: agent_proto::WriteFile,
    mut from_host: mpsc::UnboundedReceiver<Body>,
    sender: Sender,
) {
    let mut data = Vec::new();
    loop {
        match from_host.recv().await {
            Some(Body::Data(bytes)) => data.extend_from_slice(&bytes),
            Some(Body::Eof) => break,
            Some(Body::Cancel) | None => return,
            Some(_) => {}
        }
    }
    let written = running(&inner, &id).and_then(|files| {
        if !header.create_parents
            && let Some(at) = header.path.rfind('/').filter(|at| *at > 0)
        {
            files.stat(&header.path[..at])?;
        }
        files.write(&header.path, data)
    });
    match written {
        Ok(()) => sender.send(Body::Done),
        Err(error) => sender.fail(error),
    }
}
