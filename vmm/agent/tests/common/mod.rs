//! Test helper: the real `sandbox-agent` binary as a plain process on a Unix
// Helpers outside #[test] functions unwrap too: this is test code.
#![allow(clippy::unwrap_used)]
//! socket in a temporary directory, with its own file root.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use agent_proto::Client;
#[allow(unused_imports)] // each test crate uses its own subset
pub use test_support::poll::eventually_async as eventually;

/// A test that runs longer than this has hung: its agent is killed, so the
/// test's socket operations fail instead of waiting forever.
const WATCHDOG: Duration = Duration::from_secs(120);

pub struct TestAgent {
    done: Arc<AtomicBool>,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub root: PathBuf,
    pub child: Child,
}

impl TestAgent {
    pub fn start() -> Self {
        Self::start_with(&[], &[])
    }

    /// Starts the agent behind a wrapper command (e.g. `unshare --uts`)
    /// with extra agent arguments.
    pub fn start_with(wrapper: &[&str], extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("agent.sock");
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).expect("create the file root");
        let agent = env!("CARGO_BIN_EXE_sandbox-agent");
        let mut cmd = match wrapper.split_first() {
            Some((w, rest)) => {
                let mut c = Command::new(w);
                c.args(rest).arg(agent);
                c
            }
            None => Command::new(agent),
        };
        let child = cmd
            .args(extra)
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .arg("--files-root")
            .arg(&root)
            .arg("--cwd")
            .arg(dir.path())
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn sandbox-agent");
        let deadline = Instant::now() + Duration::from_secs(10);
        // The socket file appears at bind(), before listen(): only a
        // connection that succeeds says the agent is ready.
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "agent did not listen on its socket"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let done = Arc::new(AtomicBool::new(false));
        let (watch, pid) = (done.clone(), child.id());
        std::thread::spawn(move || {
            std::thread::sleep(WATCHDOG);
            if !watch.load(Ordering::SeqCst) {
                eprintln!("watchdog: test still running after {WATCHDOG:?}, killing its agent");
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            }
        });
        Self {
            done,
            dir,
            socket,
            root,
            child,
        }
    }

    pub async fn connect(&self) -> Client {
        Client::connect_unix(&self.socket).await.expect("connect")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Resident set size of the agent process in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        status_field(self.pid(), "VmRSS:")
    }
}

pub fn status_field(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("agent status");
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("status field present")
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pids of live processes whose command line contains `marker`.
pub fn processes_with(marker: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline"))
            && String::from_utf8_lossy(&cmd).contains(marker)
        {
            out.push(pid);
        }
    }
    out
}

/// Bytes written so far by the live process whose arguments are exactly
/// `argv` (`wchar` in its `/proc/<pid>/io`), if there is one.
pub fn written_by(argv: &[&str]) -> Option<u64> {
    let wanted: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .find(|e| std::fs::read(e.path().join("cmdline")).is_ok_and(|cmd| cmd == wanted))
        .and_then(|e| std::fs::read_to_string(e.path().join("io")).ok())
        .and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("wchar:")?.trim().parse().ok())
        })
}

/// Deterministic bytes covering every value.
pub fn pattern(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}
