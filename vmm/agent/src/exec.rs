//! Exec: spawn a process in its own session (so its process group can be
//! killed as a whole), stream its output under flow control, feed stdin,
//! enforce the timeout and the output cap.
//!
//! Order of events on the stream: `Started`, output, `Exited`. After the
//! leader exits, output still buffered in the pipes is forwarded; if a
//! background descendant keeps a pipe open, the agent stops waiting for it
//! after [`LINGER`] without output and reports the exit. On timeout, cancel,
//! or loss of the connection the whole process group gets SIGKILL.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agent_proto::{
    Body, Command, ErrorKind, ExecRequest, ExitStatus, Exited, PtySize, RemoteError,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, watch};

use crate::Agent;
use crate::conn::{Op, OpSender};
use crate::reaper::{WaitStatus, reaper};

/// How long output may stay silent after the leader exited before the
/// agent stops reading pipes held open by background descendants.
const LINGER: Duration = Duration::from_millis(250);

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Kills the process group when dropped, unless disarmed.
struct GroupKiller {
    pgid: libc::pid_t,
    armed: bool,
}

impl GroupKiller {
    fn kill(&self) {
        // SAFETY: killpg only sends a signal; a stale pgid at worst fails
        // with ESRCH.
        unsafe { libc::killpg(self.pgid, libc::SIGKILL) };
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        if self.armed {
            self.kill();
        }
    }
}

pub(crate) struct Spawned {
    pub(crate) pid: libc::pid_t,
    pub(crate) exit: tokio::sync::oneshot::Receiver<WaitStatus>,
    stdin: Option<OwnedFd>,
    pub(crate) stdout: OwnedFd,
    pub(crate) stderr: Option<OwnedFd>,
    /// The terminal master, also used for resize.
    pty: Option<OwnedFd>,
}

pub(crate) fn io_err(context: &str, e: &std::io::Error) -> RemoteError {
    RemoteError::new(ErrorKind::from(e), format!("{context}: {e}"))
}

pub(crate) fn set_nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor we own, with integer arguments.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn open_pty(size: PtySize) -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut master: libc::c_int = -1;
    let mut slave: libc::c_int = -1;
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two descriptors into the provided integers and
    // reads the winsize; the name and termios pointers may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &ws,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: openpty succeeded, so both are fresh descriptors owned by us.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    for fd in [&master, &slave] {
        // SAFETY: fcntl on a descriptor we own.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok((master, slave))
}

fn resize(master: &OwnedFd, size: PtySize) {
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from the pointer, which is valid.
    unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
}

pub(crate) fn spawn(req: &ExecRequest, agent: &Agent) -> Result<Spawned, RemoteError> {
    let mut cmd = match &req.command {
        Command::Argv(argv) => {
            let Some((prog, args)) = argv.split_first() else {
                return Err(RemoteError::new(ErrorKind::InvalidInput, "empty argv"));
            };
            let mut c = std::process::Command::new(prog);
            c.args(args);
            c
        }
        Command::Shell(line) => {
            let mut c = std::process::Command::new("/bin/sh");
            c.arg("-c").arg(line);
            c
        }
    };
    if req.clear_env {
        cmd.env_clear();
    }
    if req.clear_env || std::env::var_os("PATH").is_none() {
        cmd.env("PATH", DEFAULT_PATH);
    }
    for (k, v) in &req.env {
        cmd.env(k, v);
    }
    match &req.cwd {
        Some(cwd) => cmd.current_dir(cwd),
        None => cmd.current_dir(&agent.config.default_cwd),
    };
    let with_pty = req.pty.is_some();
    let mut pty_master = None;
    if let Some(size) = req.pty {
        let (master, slave) = open_pty(size).map_err(|e| io_err("openpty", &e))?;
        let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| io_err("dup", &e));
        cmd.stdin(Stdio::from(dup(&slave)?));
        cmd.stdout(Stdio::from(dup(&slave)?));
        cmd.stderr(Stdio::from(slave));
        if !req.env.iter().any(|(k, _)| k == "TERM") {
            cmd.env("TERM", "xterm-256color");
        }
        pty_master = Some(master);
    } else {
        cmd.stdin(if req.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        cmd.stdout(Stdio::piped());
        cmd.stderr(Stdio::piped());
    }
    if !with_pty {
        // Its own process group, so the whole group can be killed.
        cmd.process_group(0);
    }
    let (uid, gid) = (req.uid, req.gid);
    // The hook rules out posix_spawn: every exec forks (measured at about
    // 0.06 ms more an exec).
    // SAFETY: the closure runs in the forked child before exec and only
    // makes async-signal-safe system calls (setsid, ioctl, open, write,
    // close, setgroups, setgid, setuid).
    unsafe {
        cmd.pre_exec(move || {
            if with_pty {
                // A new session whose controlling terminal is the pty.
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // Still as the agent's user: a process that changed its user
            // may no longer write its own score.
            rank_first_for_oom();
            switch_user(uid, gid)
        });
    }
    let (mut child, exit) = reaper().spawn(&mut cmd).map_err(|e| io_err("spawn", &e))?;
    // Close our copies of the terminal's slave side now, or reads on the
    // master would never see the end.
    drop(cmd);
    let pid = child.id() as libc::pid_t;
    let (stdin, stdout, stderr) = match pty_master {
        Some(ref master) => {
            let w = master.try_clone().map_err(|e| io_err("dup", &e))?;
            let r = master.try_clone().map_err(|e| io_err("dup", &e))?;
            (Some(w), r, None)
        }
        None => {
            let stdin = child.stdin.take().map(OwnedFd::from);
            let stdout = child.stdout.take().map(OwnedFd::from);
            let stderr = child.stderr.take().map(OwnedFd::from);
            let Some(stdout) = stdout else {
                return Err(RemoteError::new(ErrorKind::Io, "stdout pipe missing"));
            };
            (stdin, stdout, stderr)
        }
    };
    Ok(Spawned {
        pid,
        exit,
        stdin,
        stdout,
        stderr,
        pty: pty_master,
    })
}

/// Ranks the calling process (a child of the agent, before it runs what it
/// was asked to) ahead of the agent for the kernel's OOM killer, and with
/// it every process it makes. When a sandbox's memory runs out the killer
/// takes the largest task; once a balloon is gone, the next to ask for
/// memory could otherwise find the agent (a few MiB) the largest left,
/// and the sandbox unreachable. Set before exec, so nothing the tenant
/// runs starts unranked. Raising a score needs no privilege; a tenant can
/// lower its processes' back only to the agent's own. Best effort: without
/// `/proc` it stays as it is. Only async-signal-safe calls.
fn rank_first_for_oom() {
    const SCORE: &[u8] = b"500";
    // SAFETY: a static NUL-terminated path, a static buffer, and the
    // descriptor closed here.
    unsafe {
        let fd = libc::open(
            c"/proc/self/oom_score_adj".as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        );
        if fd >= 0 {
            libc::write(fd, SCORE.as_ptr().cast(), SCORE.len());
            libc::close(fd);
        }
    }
}

/// Takes the exec's group and user, as `Command::uid` and `gid` would
/// (which run before any pre-exec hook): supplementary groups dropped when
/// leaving root, then the group, then the user. Only async-signal-safe
/// calls.
fn switch_user(uid: Option<u32>, gid: Option<u32>) -> std::io::Result<()> {
    // SAFETY: plain system calls on integers; a null list with a zero
    // count for setgroups.
    unsafe {
        if let Some(gid) = gid
            && libc::setgid(gid) < 0
        {
            return Err(std::io::Error::last_os_error());
        }
        if let Some(uid) = uid {
            if libc::getuid() == 0 && libc::setgroups(0, std::ptr::null()) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setuid(uid) < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(crate) fn decode(status: WaitStatus) -> ExitStatus {
    if libc::WIFSIGNALED(status) {
        ExitStatus::Signal(libc::WTERMSIG(status))
    } else {
        ExitStatus::Code(libc::WEXITSTATUS(status))
    }
}

/// Shared output budget of one exec.
struct Budget {
    remaining: Option<AtomicU64>,
    truncated: AtomicBool,
}

impl Budget {
    /// How many of `n` bytes may still be forwarded.
    fn take(&self, n: usize) -> usize {
        let Some(rem) = &self.remaining else {
            return n;
        };
        let mut cur = rem.load(Ordering::Relaxed);
        loop {
            let allowed = cur.min(n as u64);
            match rem.compare_exchange(cur, cur - allowed, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => {
                    if (allowed as usize) < n {
                        self.truncated.store(true, Ordering::Relaxed);
                    }
                    return allowed as usize;
                }
                Err(actual) => cur = actual,
            }
        }
    }
}

/// Forwards one output stream until end of file (or linger after exit).
async fn pump<R: AsyncRead + Unpin>(
    mut reader: R,
    out: OpSender,
    wrap: fn(serde_bytes::ByteBuf) -> Body,
    budget: Arc<Budget>,
    mut exited: watch::Receiver<bool>,
) {
    loop {
        // A fresh buffer per chunk: it becomes the frame's payload as is.
        let mut buf = Vec::with_capacity(agent_proto::CHUNK_BYTES);
        let linger = async {
            let _ = exited.wait_for(|e| *e).await;
            tokio::time::sleep(LINGER).await;
        };
        // Output first: on a starved guest the pipe's readiness and the
        // linger's end can come in one turn of the runtime, and output the
        // leader wrote before it exited must never lose to the timer.
        let n = tokio::select! {
            biased;
            r = reader.read_buf(&mut buf) => match r {
                Ok(0) => return,
                Ok(n) => n,
                // EIO: the terminal's last slave descriptor closed.
                Err(_) => return,
            },
            _ = linger => return,
        };
        buf.truncate(budget.take(n));
        if !buf.is_empty() && out.send_chunk(buf, wrap).await.is_err() {
            return;
        }
    }
}

/// Writes client stdin to the process, crediting the client only once the
/// bytes are written, so a process that does not read stdin stalls the
/// client instead of filling the agent's memory.
async fn feed<W: AsyncWrite + Unpin>(
    w: W,
    mut rx: mpsc::UnboundedReceiver<Option<Vec<u8>>>,
    out: OpSender,
    pty: bool,
) {
    let mut w = Some(w);
    while let Some(item) = rx.recv().await {
        match item {
            Some(data) => {
                if let Some(pipe) = w.as_mut()
                    && pipe.write_all(&data).await.is_err()
                {
                    // The process closed stdin: discard the rest.
                    w = None;
                }
                if out.credit(data.len()).await.is_err() {
                    return;
                }
            }
            None if pty => {
                if let Some(pipe) = w.as_mut() {
                    let _ = pipe.write_all(&[4]).await;
                }
            }
            // Dropping the pipe is what the process sees as end of file.
            None => w = None,
        }
    }
}

pub async fn run(mut op: Op, req: ExecRequest, agent: Arc<Agent>) -> Result<Body, RemoteError> {
    let started = Instant::now();
    let spawned = spawn(&req, &agent)?;
    let killer = GroupKiller {
        pgid: spawned.pid,
        armed: true,
    };
    let out = op.sender();
    out.send(Body::Started {
        pid: spawned.pid as u32,
    })
    .await?;

    let budget = Arc::new(Budget {
        remaining: req.output_limit_bytes.map(AtomicU64::new),
        truncated: AtomicBool::new(false),
    });
    let (exited_tx, exited_rx) = watch::channel(false);
    let mut pumps = tokio::task::JoinSet::new();
    let open_reader = |fd: OwnedFd| -> Result<pipe::Receiver, RemoteError> {
        set_nonblocking(&fd).map_err(|e| io_err("pipe", &e))?;
        pipe::Receiver::from_owned_fd_unchecked(fd).map_err(|e| io_err("pipe", &e))
    };
    pumps.spawn(pump(
        open_reader(spawned.stdout)?,
        out.clone(),
        Body::Stdout,
        budget.clone(),
        exited_rx.clone(),
    ));
    if let Some(fd) = spawned.stderr {
        pumps.spawn(pump(
            open_reader(fd)?,
            out.clone(),
            Body::Stderr,
            budget.clone(),
            exited_rx,
        ));
    }
    let mut stdin_tx = None;
    let mut feeder = None;
    if let Some(fd) = spawned.stdin {
        set_nonblocking(&fd).map_err(|e| io_err("pipe", &e))?;
        let w = pipe::Sender::from_owned_fd_unchecked(fd).map_err(|e| io_err("pipe", &e))?;
        let (tx, rx) = mpsc::unbounded_channel();
        stdin_tx = Some(tx);
        feeder = Some(AbortOnDrop(tokio::spawn(feed(
            w,
            rx,
            out.clone(),
            spawned.pty.is_some(),
        ))));
    }

    let deadline = req
        .timeout_ms
        .map(|ms| tokio::time::Instant::now() + Duration::from_millis(ms));
    let mut timed_out = false;
    let mut exit = spawned.exit;
    let status = loop {
        tokio::select! {
            status = &mut exit => {
                break status.map_err(|_| RemoteError::new(ErrorKind::Io, "exit status lost"))?;
            }
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } }, if !timed_out => {
                timed_out = true;
                killer.kill();
            }
            body = op.input.recv() => match body {
                Some(Body::Data(d)) => match &stdin_tx {
                    Some(tx) => {
                        let _ = tx.send(Some(d.into_vec()));
                    }
                    None => op.credit(d.len()).await?,
                },
                Some(Body::Eof) => {
                    if let Some(tx) = &stdin_tx {
                        let _ = tx.send(None);
                    }
                }
                Some(Body::Resize(size)) => {
                    if let Some(master) = &spawned.pty {
                        resize(master, size);
                    }
                }
                Some(Body::Cancel) => killer.kill(),
                Some(_) => {}
                None => {
                    // Connection gone: the guard kills the group.
                    return Err(RemoteError::new(ErrorKind::Io, "connection closed"));
                }
            }
        }
    };
    drop(stdin_tx);
    drop(feeder);
    let _ = exited_tx.send(true);
    if timed_out {
        // Descendants that outlived the leader die with it on timeout.
        killer.kill();
    }
    while pumps.join_next().await.is_some() {}
    let mut killer = killer;
    killer.armed = false;
    Ok(Body::Exited(Exited {
        status: decode(status),
        duration_ms: started.elapsed().as_millis() as u64,
        truncated: budget.truncated.load(Ordering::Relaxed),
        timed_out,
    }))
}
