//! The one place that calls `waitpid`: it reaps every child of the agent,
//! its own execs and orphans reparented to it (as PID 1, or as a child
//! subreaper when it runs as a plain process), and hands exec statuses to
//! whoever registered for them.
//!
//! Spawning happens while the waiter table is locked ([`Reaper::spawn`]),
//! so a child that exits at once cannot be reaped before its waiter exists.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, OnceLock};

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;

/// Raw wait status from `waitpid`.
pub type WaitStatus = libc::c_int;

#[derive(Default)]
pub struct Reaper {
    waiters: Mutex<HashMap<libc::pid_t, oneshot::Sender<WaitStatus>>>,
}

static REAPER: OnceLock<Reaper> = OnceLock::new();

pub fn reaper() -> &'static Reaper {
    REAPER.get_or_init(Reaper::default)
}

impl Reaper {
    fn lock(&self) -> MutexGuard<'_, HashMap<libc::pid_t, oneshot::Sender<WaitStatus>>> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Spawns `cmd` and registers for its exit status.
    pub fn spawn(
        &self,
        cmd: &mut std::process::Command,
    ) -> std::io::Result<(std::process::Child, oneshot::Receiver<WaitStatus>)> {
        let mut waiters = self.lock();
        let child = cmd.spawn()?;
        let (tx, rx) = oneshot::channel();
        waiters.insert(child.id() as libc::pid_t, tx);
        Ok((child, rx))
    }

    /// Reaps every exited child without blocking.
    fn reap_all(&self) {
        let mut waiters = self.lock();
        loop {
            let mut status: libc::c_int = 0;
            // SAFETY: waitpid with WNOHANG only writes to `status`, which
            // lives for the call.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            if let Some(tx) = waiters.remove(&pid) {
                let _ = tx.send(status);
            }
        }
    }

    /// Runs forever: reaps on every SIGCHLD, and once a second in case a
    /// signal was coalesced with one already being handled.
    pub async fn run(&'static self) {
        let mut sigchld = match signal(SignalKind::child()) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("sandbox-agent: cannot watch SIGCHLD ({e}); reaping by polling");
                None
            }
        };
        loop {
            match sigchld.as_mut() {
                Some(s) => {
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), s.recv()).await;
                }
                None => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
            self.reap_all();
        }
    }
}

/// Makes the agent the reaper of its orphaned descendants when it is not
/// PID 1, so killed grandchildren never linger as zombies elsewhere.
pub fn become_subreaper() {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes an integer argument only.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc != 0 {
        eprintln!(
            "sandbox-agent: cannot become child subreaper: {}",
            std::io::Error::last_os_error()
        );
    }
}
