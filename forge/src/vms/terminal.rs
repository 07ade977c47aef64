//! Interactive terminals: a login shell on a pseudo-terminal inside a VM.
//!
//! A [`Terminal`] is an exec with `pty` set: its stdin, stdout and stderr are
//! the terminal, so everything the shell prints arrives as one byte stream,
//! and the size can change while it runs. Like any exec it resumes a paused
//! VM first and holds the VM running (no pause, fork or destroy) until it
//! ends or is dropped; typing counts as traffic, so an open terminal in use
//! does not let the VM go idle.

use std::time::{Duration, Instant};

use agent_proto::{ExecEvent, ExecInput, ExecRequest, PtySize};

use super::{Sandboxes, VmError};

/// The shell a terminal runs: bash where the image has it, else sh, started
/// in the checkout when there is one.
const SHELL: &str = "cd /workspace 2>/dev/null; \
    if command -v bash >/dev/null 2>&1; then exec bash -l; else exec sh -l; fi";

/// How often typing refreshes the VM's last-activity time.
const TOUCH_EVERY: Duration = Duration::from_secs(10);

/// A shell on a pseudo-terminal inside a VM.
pub struct Terminal {
    exec: agent_proto::Exec,
    input: ExecInput,
    vm: String,
    touched: Instant,
    _running: super::Held,
}

impl Sandboxes {
    /// Starts a login shell on a `cols` x `rows` terminal in VM `id`.
    pub async fn terminal(&self, id: &str, cols: u16, rows: u16) -> Result<Terminal, VmError> {
        let (backend, _) = self.ready()?;
        let running = self.hold_running(id).await?;
        let agent = backend.agent(id).await?;
        let mut request = ExecRequest::argv(["/bin/sh", "-c", SHELL]);
        request.env = agent.env.clone();
        request.env.push(("TERM".into(), "xterm-256color".into()));
        request.stdin = true;
        request.pty = Some(PtySize {
            rows: rows.max(1),
            cols: cols.max(1),
        });
        let exec = agent.client.exec(request).await.map_err(|source| {
            VmError::Sandbox(::sandbox::Error::Agent {
                id: id.to_owned(),
                source,
            })
        })?;
        Ok(Terminal {
            input: exec.input(),
            exec,
            vm: id.to_owned(),
            touched: Instant::now(),
            _running: running,
        })
    }

    /// Records terminal traffic, at most once per `TOUCH_EVERY`.
    pub async fn touch_terminal(&self, terminal: &mut Terminal) -> Result<(), VmError> {
        if terminal.touched.elapsed() >= TOUCH_EVERY {
            terminal.touched = Instant::now();
            self.store.touch_vm(&terminal.vm).await?;
        }
        Ok(())
    }
}

/// What a terminal produced next.
pub enum Output {
    Bytes(Vec<u8>),
    /// The shell ended with this exit code.
    Exited(i32),
}

impl Terminal {
    /// The next bytes the terminal shows, or the shell's exit.
    pub async fn next(&mut self) -> Result<Output, VmError> {
        let event = self
            .exec
            .next()
            .await
            .map_err(|source| self.error(source))?;
        Ok(match event {
            Some(ExecEvent::Stdout(bytes) | ExecEvent::Stderr(bytes)) => Output::Bytes(bytes),
            Some(ExecEvent::Exited(exited)) => Output::Exited(match exited.status {
                ::sandbox::ExitStatus::Code(code) => code,
                ::sandbox::ExitStatus::Signal(signal) => 128 + signal,
            }),
            None => Output::Exited(-1),
        })
    }

    /// Types `bytes` into the terminal.
    pub async fn write(&self, bytes: &[u8]) -> Result<(), VmError> {
        self.input
            .write(bytes)
            .await
            .map_err(|source| self.error(source))
    }

    pub async fn resize(&self, cols: u16, rows: u16) -> Result<(), VmError> {
        let size = PtySize {
            rows: rows.max(1),
            cols: cols.max(1),
        };
        self.input
            .resize(size)
            .await
            .map_err(|source| self.error(source))
    }

    fn error(&self, source: agent_proto::ClientError) -> VmError {
        VmError::Sandbox(::sandbox::Error::Agent {
            id: self.vm.clone(),
            source,
        })
    }
}
