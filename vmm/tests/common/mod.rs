//! Test harness: builds a VM config around a test guest, runs the real
//! `forge-vmm` binary on /dev/kvm and reads what the guest printed.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
#[allow(unused_imports)] // each test crate uses its own subset
pub use test_support::poll::{eventually, stays};

/// Path of a test guest ELF built by build.rs.
pub fn guest(name: &str) -> PathBuf {
    let p = Path::new(env!("FORGE_TESTGUEST_DIR")).join(format!("{name}.elf"));
    assert!(
        p.exists(),
        "test guest {} was not built (is gcc installed?)",
        p.display()
    );
    p
}

/// Fails clearly when /dev/kvm cannot be used.
pub fn require_kvm() {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!("these tests need a usable /dev/kvm: {e}");
    }
}

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Self {
        let base = std::env::var_os("FORGE_TEST_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/tmp"));
        let p = base.join(format!("vmm-{tag}-{}-{}", std::process::id(), rand_u64()));
        std::fs::create_dir_all(&p).expect("scratch dir");
        Self(p)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    u64::from_le_bytes(b) & 0xffff_ffff
}

/// The uid and gid jailed test VMMs run as (the sandbox backend's).
pub const JAIL_ID: u32 = vmm_proto::config::DEFAULT_JAIL_ID;

/// Builder of a test VM.
pub struct TestVm {
    pub dir: Scratch,
    pub config: Value,
    /// `--jail` file contents and the jail's root, when jailed.
    pub jail: Option<(Value, Scratch)>,
}

impl TestVm {
    pub fn new(guest_name: &str) -> Self {
        require_kvm();
        let dir = Scratch::new(guest_name);
        let config = json!({
            "vcpus": 1,
            "mem_mib": 64,
            "kernel": guest(guest_name),
            "cmdline": "",
            "serial_log": dir.path("serial.log"),
            "control_socket": dir.path("ctl.sock"),
            "ap_entry": "kernel_entry",
        });
        Self {
            dir,
            config,
            jail: None,
        }
    }

    /// Runs the VMM in a jail (`--jail`, see `vmm::jail`): the scratch
    /// directory (owned by [`JAIL_ID`]) is its only writable one, the
    /// guest is bound read-only, the cgroups' `cgroup.procs` in `cgroups`
    /// joined.
    pub fn jailed(mut self, cgroups: &[PathBuf]) -> Self {
        std::os::unix::fs::chown(&self.dir.0, Some(JAIL_ID), Some(JAIL_ID)).expect("chown scratch");
        let root = Scratch::new("jail-root");
        let jail = json!({
            "root": root.0,
            "uid": JAIL_ID,
            "gid": JAIL_ID,
            "cgroups": cgroups,
            "writable": [self.dir.0],
            "readable": [self.config["kernel"]],
        });
        self.jail = Some((jail, root));
        self
    }

    pub fn set(mut self, key: &str, value: Value) -> Self {
        self.config[key] = value;
        self
    }

    pub fn config_path(&self) -> PathBuf {
        let p = self.dir.path("vm.json");
        std::fs::write(&p, self.config.to_string()).expect("write config");
        p
    }

    pub fn spawn(&self) -> Child {
        self.spawn_with(&[])
    }

    /// [`Self::spawn`] with extra environment variables.
    pub fn spawn_with(&self, env: &[(&str, &str)]) -> Child {
        let mut cmd = vmm_command();
        cmd.arg("run").arg("--config").arg(self.config_path());
        if let Some((jail, _)) = &self.jail {
            let path = self.dir.path("jail.json");
            std::fs::write(&path, jail.to_string()).expect("write jail");
            cmd.arg("--jail").arg(path);
        }
        cmd.envs(env.iter().copied())
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn forge-vmm")
    }

    /// Runs to the end; returns exit status, serial log and stderr.
    pub fn run(&self, timeout: Duration) -> (ExitStatus, String, String) {
        let mut child = self.spawn();
        let status = wait_timeout(&mut child, timeout);
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        (status, self.serial(), err)
    }

    pub fn serial(&self) -> String {
        std::fs::read_to_string(self.dir.path("serial.log")).unwrap_or_default()
    }

    pub fn control(&self) -> Control {
        Control::connect(&self.dir.path("ctl.sock"))
    }

    /// The host pid of the process serving the control socket: the VMM
    /// itself, also when it runs in a jail's PID namespace.
    pub fn vmm_pid(&self) -> i32 {
        let control = self.control();
        vmm::socket::peer_pid(control.stream.get_ref()).expect("SO_PEERCRED")
    }

    /// Waits until the serial log contains `text`.
    pub fn wait_serial(&self, text: &str, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            let s = self.serial();
            if s.contains(text) {
                return s;
            }
            assert!(
                start.elapsed() < timeout,
                "serial log never showed {text:?}; it has: {s}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A `forge-vmm` command whose process is killed when the test's thread
/// ends: a test that fails half-way never leaves a VM running (one would
/// hold the suite's output pipe open, and the suite would never end).
pub fn vmm_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_forge-vmm"));
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    cmd
}

/// Starts `forge-vmm restore --from <dir>` with extra arguments.
pub fn spawn_restore(dir: &Path, extra: &[&Path]) -> Child {
    let mut cmd = vmm_command();
    cmd.arg("restore").arg("--from").arg(dir);
    for pair in extra.chunks(2) {
        cmd.arg(pair[0]).arg(pair[1]);
    }
    cmd.stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn forge-vmm restore")
}

/// Reads a child's stderr after it ended.
pub fn stderr_of(child: &mut Child) -> String {
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    err
}

/// Waits until the counter guest's log at `path` shows a count past `at`.
/// A forked child goes on from its parent's count, so its log may be empty
/// when `at` is read and its first line is not `COUNT 1`: any later count
/// proves it counts.
pub fn wait_count_past(path: &Path, at: u64, within: Duration) -> u64 {
    eventually(
        within,
        &format!("{} counting past {at}", path.display()),
        || {
            let now = last_count(&std::fs::read_to_string(path).unwrap_or_default());
            if now > at { Ok(now) } else { Err(now) }
        },
    )
}

/// Waits until `path` contains `text`.
pub fn wait_file(path: &Path, text: &str, timeout: Duration) -> String {
    let start = Instant::now();
    loop {
        let s = std::fs::read_to_string(path).unwrap_or_default();
        if s.contains(text) {
            return s;
        }
        assert!(
            start.elapsed() < timeout,
            "{} never showed {text:?}; it has: {s}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether process `pid` (not necessarily a child of this one) has ended:
/// it is gone, or a zombie nobody reaped yet.
pub fn ended(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        // The state follows the parenthesised command name.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state == "Z" || state == "X")
    })
}

/// Waits for `child`, killing it and failing after `timeout`.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return s;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("forge-vmm did not end within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A control socket client.
pub struct Control {
    stream: BufReader<UnixStream>,
}

impl Control {
    pub fn connect(path: &Path) -> Self {
        let start = Instant::now();
        loop {
            match UnixStream::connect(path) {
                Ok(s) => {
                    s.set_read_timeout(Some(Duration::from_secs(10)))
                        .expect("timeout");
                    return Self {
                        stream: BufReader::new(s),
                    };
                }
                Err(e) => {
                    assert!(
                        start.elapsed() < Duration::from_secs(5),
                        "control socket {} never came up: {e}",
                        path.display()
                    );
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }

    pub fn raw(&mut self, line: &str) -> Value {
        let s = self.stream.get_mut();
        s.write_all(line.as_bytes()).expect("send");
        s.write_all(b"\n").expect("send");
        let mut reply = String::new();
        self.stream.read_line(&mut reply).expect("reply");
        serde_json::from_str(&reply).expect("reply is JSON")
    }

    pub fn cmd(&mut self, cmd: &str) -> Value {
        self.raw(&json!({ "cmd": cmd }).to_string())
    }
}

/// Highest "COUNT n" in a serial log.
pub fn last_count(serial: &str) -> u64 {
    serial
        .lines()
        .filter_map(|l| l.strip_prefix("COUNT ")?.trim().parse().ok())
        .max()
        .unwrap_or(0)
}
