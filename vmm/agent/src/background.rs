//! Background processes: started by `Spawn`, they run detached from the
//! stream and the connection that started them (an agent restart is the
//! sandbox's end anyway). Each one's stdout and stderr go, interleaved as
//! they come, to a ring buffer of [`RING_BYTES`]: a reader asks for the
//! output from a byte offset and may follow it until the process exits.
//!
//! Bounds: at most [`MAX_PROCESSES`] are kept; when the table is full the
//! oldest exited one is forgotten, and with none exited a `Spawn` is
//! refused. A ring keeps the newest [`RING_BYTES`]; what it dropped is
//! counted (`output_dropped`) and skipped by readers.

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use agent_proto::{Body, Command, ErrorKind, ExecRequest, ExitStatus, ProcessInfo, RemoteError};
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::watch;

use crate::Agent;
use crate::conn::Op;
use crate::exec::{decode, io_err, set_nonblocking, spawn};

/// Background processes kept at once.
pub const MAX_PROCESSES: usize = 64;
/// Output kept per process.
pub const RING_BYTES: usize = 1 << 20;

/// The agent's background processes, by pid.
#[derive(Default)]
pub struct Background {
    table: Mutex<BTreeMap<u32, Arc<Process>>>,
}

struct Process {
    command: String,
    started_unix_ms: u64,
    output: Mutex<Output>,
    /// Bumped whenever output arrives or the process exits.
    changed: watch::Sender<u64>,
}

#[derive(Default)]
struct Output {
    ring: VecDeque<u8>,
    /// Bytes printed in all; the ring holds the last `ring.len()`.
    total: u64,
    exit: Option<ExitStatus>,
    /// Both pipes reached their end.
    drained: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Process {
    fn append(&self, bytes: &[u8]) {
        let mut output = lock(&self.output);
        output.total += bytes.len() as u64;
        let keep = bytes.len().min(RING_BYTES);
        let overflow = (output.ring.len() + keep).saturating_sub(RING_BYTES);
        output.ring.drain(..overflow);
        output.ring.extend(&bytes[bytes.len() - keep..]);
        drop(output);
        self.changed.send_modify(|n| *n += 1);
    }

    fn info(&self, pid: u32) -> ProcessInfo {
        let output = lock(&self.output);
        ProcessInfo {
            pid,
            command: self.command.clone(),
            started_unix_ms: self.started_unix_ms,
            exit: output.exit,
            output_bytes: output.total,
            output_dropped: output.total - output.ring.len() as u64,
        }
    }

    /// The output from byte `offset` on (from the oldest kept when older),
    /// the offset after it, and whether nothing more will come.
    fn read_from(&self, offset: u64) -> (Vec<u8>, u64, bool) {
        let output = lock(&self.output);
        let first = output.total - output.ring.len() as u64;
        let from = offset.clamp(first, output.total);
        let skip = (from - first) as usize;
        let bytes: Vec<u8> = output.ring.iter().skip(skip).copied().collect();
        let finished = output.exit.is_some() && output.drained;
        (bytes, output.total, finished)
    }
}

fn describe(command: &Command) -> String {
    match command {
        Command::Shell(line) => line.clone(),
        Command::Argv(argv) => argv.join(" "),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Background {
    fn find(&self, pid: u32) -> Result<Arc<Process>, RemoteError> {
        lock(&self.table).get(&pid).cloned().ok_or_else(|| {
            RemoteError::new(ErrorKind::NotFound, format!("no background process {pid}"))
        })
    }

    /// Makes room in `table` for one more: forgets the oldest exited
    /// process when it is full. The caller holds the table's lock until it
    /// inserted the new one.
    fn make_room(table: &mut BTreeMap<u32, Arc<Process>>) -> Result<(), RemoteError> {
        if table.len() < MAX_PROCESSES {
            return Ok(());
        }
        let oldest_exited = table
            .iter()
            .filter(|(_, p)| lock(&p.output).exit.is_some())
            .min_by_key(|(_, p)| p.started_unix_ms)
            .map(|(pid, _)| *pid);
        match oldest_exited {
            Some(pid) => {
                table.remove(&pid);
                Ok(())
            }
            None => Err(RemoteError::new(
                ErrorKind::InvalidInput,
                format!("{MAX_PROCESSES} background processes are running: stop one first"),
            )),
        }
    }

    pub fn list(&self) -> Vec<ProcessInfo> {
        let table = lock(&self.table);
        let mut all: Vec<ProcessInfo> = table.iter().map(|(pid, p)| p.info(*pid)).collect();
        all.sort_by_key(|p| (p.started_unix_ms, p.pid));
        all
    }

    pub fn signal(&self, pid: u32, signal: i32) -> Result<Body, RemoteError> {
        let process = self.find(pid)?;
        if lock(&process.output).exit.is_some() {
            return Err(RemoteError::new(
                ErrorKind::InvalidInput,
                format!("background process {pid} has exited"),
            ));
        }
        // SAFETY: killpg only sends a signal to the group the process leads
        // (it was spawned in a group of its own); a bad signal is EINVAL.
        let rc = unsafe { libc::killpg(pid as libc::pid_t, signal) };
        if rc < 0 {
            let error = std::io::Error::last_os_error();
            return Err(io_err("kill", &error));
        }
        Ok(Body::Done)
    }
}

/// `Spawn`: starts `req` in the background.
pub fn start(req: ExecRequest, agent: &Arc<Agent>) -> Result<Body, RemoteError> {
    let mut table = lock(&agent.background.table);
    Background::make_room(&mut table)?;
    let mut req = req;
    req.stdin = false;
    req.pty = None;
    let spawned = spawn(&req, agent)?;
    let pid = spawned.pid as u32;
    let process = Arc::new(Process {
        command: describe(&req.command),
        started_unix_ms: now_ms(),
        output: Mutex::default(),
        changed: watch::channel(0).0,
    });
    table.insert(pid, process.clone());
    drop(table);
    let readers: Vec<OwnedFd> = std::iter::once(spawned.stdout)
        .chain(spawned.stderr)
        .collect();
    let exit = spawned.exit;
    tokio::spawn(async move {
        let mut pumps = tokio::task::JoinSet::new();
        for fd in readers {
            let process = process.clone();
            pumps.spawn(async move {
                if set_nonblocking(&fd).is_err() {
                    return;
                }
                let Ok(mut pipe) = pipe::Receiver::from_owned_fd_unchecked(fd) else {
                    return;
                };
                let mut buf = vec![0u8; 64 << 10];
                while let Ok(n) = pipe.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    process.append(&buf[..n]);
                }
            });
        }
        let status = exit.await.ok().map(decode);
        // Exited as soon as the leader is reaped: its pid (and group id)
        // may be reused from now on, so no signal goes to it any more.
        lock(&process.output).exit = Some(status.unwrap_or(ExitStatus::Signal(libc::SIGKILL)));
        process.changed.send_modify(|n| *n += 1);
        // Descendants may hold the pipes: the output ends when they do.
        while pumps.join_next().await.is_some() {}
        lock(&process.output).drained = true;
        process.changed.send_modify(|n| *n += 1);
    });
    Ok(Body::Started { pid })
}

/// `ProcessOutput`: sends the output from `offset` as `Data`; with
/// `follow`, keeps sending what comes until the process has exited.
pub async fn output(
    op: Op,
    agent: &Agent,
    pid: u32,
    offset: u64,
    follow: bool,
) -> Result<Body, RemoteError> {
    let process = agent.background.find(pid)?;
    let mut changed = process.changed.subscribe();
    let sender = op.sender();
    let mut offset = offset;
    loop {
        changed.borrow_and_update();
        let (bytes, next, finished) = process.read_from(offset);
        if !bytes.is_empty() {
            sender.send_data(&bytes, Body::Data).await?;
        }
        offset = next;
        if !follow || finished {
            return Ok(Body::Done);
        }
        if changed.changed().await.is_err() {
            return Ok(Body::Done);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process() -> Process {
        Process {
            command: "x".into(),
            started_unix_ms: 0,
            output: Mutex::default(),
            changed: watch::channel(0).0,
        }
    }

    #[test]
    fn the_ring_keeps_the_newest_bytes_and_counts_what_it_dropped() {
        let p = process();
        p.append(b"hello ");
        p.append(&vec![b'x'; RING_BYTES]);
        p.append(b"end");
        let info = p.info(1);
        assert_eq!(info.output_bytes, 6 + RING_BYTES as u64 + 3);
        assert_eq!(info.output_dropped, 9);
        let (bytes, next, finished) = p.read_from(0);
        assert_eq!(
            bytes.len(),
            RING_BYTES,
            "an old offset starts at the oldest kept"
        );
        assert!(bytes.ends_with(b"xend"));
        assert_eq!((next, finished), (info.output_bytes, false));
        let (tail, _, _) = p.read_from(info.output_bytes - 3);
        assert_eq!(tail, b"end");
    }
}
