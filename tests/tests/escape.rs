//! The escape suite: a hostile tenant with a plain `repo:write` token and a
//! root shell in its sandbox tries to get out. Every case plays one attack
//! through the forge's API, asserts that it fails, and that the host and a
//! neighbouring sandbox are untouched: host files keep their contents and
//! modes, the neighbour's files and agent are as they were, and the forge
//! still answers.
//!
//! The attacks: links in the run directory that lead the host to a host
//! file or to another tenant's agent; the host's device nodes, kernel
//! files and `/proc/sys`; a link planted where the launcher prepares the
//! root; system calls outside the allow-list (namespaces, mounts, the
//! keyring, BPF, io_uring, userfaultfd, perf, ptrace, foreign ABIs, exotic
//! socket families, a btrfs subvolume past the disk quota); and floods: processes, memory, disk, output, a huge
//! file read out, and a thousand connections through the egress proxy.
//!
//! Needs what the container backend needs (root, cgroups, the guest
//! image); without it every case fails, saying why: an escape suite that
//! skips proves nothing.

#![allow(clippy::unwrap_used)] // A test that cannot unwrap has failed: say so loudly.

use std::net::ToSocketAddrs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use api_types::VmState;
use api_types::vms::{CarriedVm, Kept, VmView};
use e2e::TestForge;
use serde_json::{Value, json};

/// A forge with sandboxes; panics (does not skip) where the host cannot
/// run them.
fn forge() -> TestForge {
    if let Some(reason) = e2e::sandboxes_unavailable() {
        panic!("the escape suite needs sandboxes on this host: {reason}");
    }
    TestForge::builder().with_sandboxes(20).start()
}

/// The static probe of `escape/probe.c`, built once per run with the host's
/// gcc.
fn probe_binary() -> &'static Path {
    static PROBE: OnceLock<PathBuf> = OnceLock::new();
    PROBE.get_or_init(|| {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/escape/probe.c");
        let binary = std::env::temp_dir().join(format!("escape-probe-{}", std::process::id()));
        let status = Command::new("gcc")
            .args(["-static", "-O1", "-o"])
            .arg(&binary)
            .arg(&source)
            .status()
            .expect("gcc runs (the test host installs it)");
        assert!(status.success(), "building the probe failed");
        binary
    })
}

/// One tenant: a `repo:write` token on `forge`.
struct Tenant<'a> {
    forge: &'a TestForge,
    token: String,
}

impl<'a> Tenant<'a> {
    fn new(forge: &'a TestForge, name: &str) -> Self {
        let token = forge.create_token(name, &["repo:write"], None);
        Self { forge, token }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.forge.call(Some(&self.token), method, path, body)
    }

    fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, value) = self.call(method, path, body);
        assert!(
            (200..300).contains(&status),
            "{method} {path}: HTTP {status}: {value}"
        );
        value
    }

    fn create(&self, body: Value) -> String {
        self.ok("POST", "/v1/vms", Some(body))["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Runs `script` as root inside `vm`; the API's answer.
    fn exec(&self, vm: &str, script: &str) -> (u16, Value) {
        self.call(
            "POST",
            &format!("/v1/vms/{vm}/exec"),
            Some(json!({ "command": script, "timeout_secs": 120 })),
        )
    }

    /// Runs `script`, which must succeed; its stdout.
    fn sh(&self, vm: &str, script: &str) -> String {
        let (status, out) = self.exec(vm, script);
        assert_eq!(status, 200, "{script}: {out}");
        assert_eq!(out["exit_code"], 0, "{script}: {out}");
        out["stdout"].as_str().unwrap().to_owned()
    }

    fn upload(&self, vm: &str, path: &str, bytes: Vec<u8>) {
        let response = reqwest::blocking::Client::new()
            .put(format!("{}/v1/vms/{vm}/files/{path}", self.forge.url))
            .bearer_auth(&self.token)
            .body(bytes)
            .send()
            .unwrap();
        assert_eq!(response.status().as_u16(), 204, "upload {path}");
    }

    /// The probe at `/tmp/probe` in `vm`.
    fn arm(&self, vm: &str) {
        self.upload(vm, "tmp/probe", std::fs::read(probe_binary()).unwrap());
        self.sh(vm, "chmod 755 /tmp/probe");
    }
}

/// What the host and a neighbour look like before the attacks; checked
/// after each.
struct Witness<'a> {
    neighbour: Tenant<'a>,
    vm: String,
    marker: String,
    admin_token: String,
    modes: Vec<(PathBuf, u32)>,
}

impl<'a> Witness<'a> {
    fn new(forge: &'a TestForge) -> Self {
        let neighbour = Tenant::new(forge, "neighbour");
        let vm = neighbour.create(json!({}));
        let marker = format!("neighbour secret {}", std::process::id());
        neighbour.sh(&vm, &format!("echo '{marker}' > /workspace/marker"));
        let modes = ["/dev/null", "/dev/zero", "/etc", "/etc/passwd", "/tmp"]
            .iter()
            .map(|p| (PathBuf::from(p), mode(Path::new(p))))
            .collect();
        Self {
            neighbour,
            vm,
            marker,
            admin_token: std::fs::read_to_string(forge.data_dir.join("admin-token")).unwrap(),
            modes,
        }
    }

    /// Host files, the neighbour and the forge as they were.
    fn untouched(&self, after: &str) {
        let forge = self.neighbour.forge;
        for (path, before) in &self.modes {
            assert_eq!(
                mode(path),
                *before,
                "{after}: the mode of {}",
                path.display()
            );
        }
        assert_eq!(
            std::fs::read_to_string(forge.data_dir.join("admin-token")).unwrap(),
            self.admin_token,
            "{after}: the admin token file"
        );
        let started = Instant::now();
        let (status, _) = forge.call(Some(&forge.admin_token), "GET", "/v1/system", None);
        assert_eq!(status, 200, "{after}: the forge answers");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{after}: the forge answered in {:?}",
            started.elapsed()
        );
        let marker = self
            .neighbour
            .sh(&self.vm, "cat /workspace/marker; ls /tmp");
        assert_eq!(
            marker.lines().next(),
            Some(self.marker.as_str()),
            "{after}: neighbour's file"
        );
        assert!(
            !marker.contains("pwned"),
            "{after}: nothing ran in the neighbour: {marker}"
        );
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn links_in_the_run_directory_lead_the_host_nowhere() {
    let forge = forge();
    let witness = Witness::new(&forge);
    let attacker = Tenant::new(&forge, "attacker");
    let vm = attacker.create(json!({}));
    let token_path = forge.data_dir.join("admin-token");

    // 1. The console log becomes a link to the admin token; a fork copies
    //    the run directory and the host opens the log for the child.
    attacker.sh(
        &vm,
        &format!(
            "cd /run/sandbox && mv console.log old.log && ln -s {} console.log && ln -s ../../../../../../../{} up.log",
            token_path.display(),
            token_path.display()
        ),
    );
    let forks = attacker.ok(
        "POST",
        &format!("/v1/vms/{vm}/fork"),
        Some(json!({ "count": 1 })),
    );
    let child = forks["forks"][0]["id"].as_str().unwrap().to_owned();
    let seen = attacker.sh(&child, "cat /run/sandbox/console.log; ls -la /run/sandbox");
    assert!(
        !seen.contains(witness.admin_token.trim()),
        "the admin token reached the child: {seen}"
    );
    assert!(
        !attacker
            .sh(&child, "cat /run/sandbox/up.log 2>&1 || true")
            .contains(witness.admin_token.trim()),
        "a relative link does not resolve on the host either"
    );
    witness.untouched("a console log linked to the admin token");

    // 2. The agent socket becomes a link to the neighbour's; the cached
    //    connection is dropped by a fork, and the next exec must not run in
    //    the neighbour.
    let layers = forge.sandbox_dir().unwrap().join("layers");
    assert!(layers.join(&witness.vm).join("run/agent.sock").exists());
    attacker.sh(
        &vm,
        &format!(
            "cd /run/sandbox && mv agent.sock moved.sock && ln -s ../../{}/run/agent.sock agent.sock",
            witness.vm
        ),
    );
    attacker.ok(
        "POST",
        &format!("/v1/vms/{vm}/fork"),
        Some(json!({ "count": 1 })),
    );
    let (status, out) = attacker.exec(&vm, "touch /tmp/pwned; hostname");
    assert_ne!(
        status, 200,
        "an exec through a planted link must fail: {out}"
    );
    witness.untouched("an agent socket linked to the neighbour's");
}

#[test]
fn root_inside_is_nobody_on_the_host() {
    let forge = forge();
    let witness = Witness::new(&forge);
    let attacker = Tenant::new(&forge, "attacker");
    let vm = attacker.create(json!({}));

    assert_eq!(attacker.sh(&vm, "id -u").trim(), "0", "root inside");
    let pid1 = forge.sandbox_pid(&vm).expect("the sandbox's PID 1");
    let status = std::fs::read_to_string(format!("/proc/{pid1}/status")).unwrap();
    let uid: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .unwrap();
    assert!(uid >= 1 << 30, "root inside runs as host uid {uid}");

    // 3. The host's device nodes.
    let out = attacker.sh(
        &vm,
        "chmod 600 /dev/null && echo chmod-worked; chown 1000 /dev/zero && echo chown-worked; \
         touch /dev/null && echo touch-worked; true",
    );
    assert!(!out.contains("worked"), "{out}");
    assert_eq!(
        attacker
            .sh(&vm, "echo works > /dev/null && head -c 4 /dev/zero | wc -c")
            .trim(),
        "4"
    );
    witness.untouched("chmod and chown of the host's devices");

    // 5. Kernel internals and knobs.
    let kernel = attacker.sh(
        &vm,
        "for f in /proc/kpageflags /proc/kpagecount /proc/kcore /proc/timer_list /proc/sched_debug; do \
           printf '%s %s\\n' $f $(head -c 64 $f 2>/dev/null | wc -c); done; \
         find /sys/devices/virtual/powercap /sys/firmware -mindepth 1 2>/dev/null | wc -l",
    );
    for line in kernel.lines().filter(|l| l.starts_with('/')) {
        assert!(line.ends_with(" 0"), "kernel data readable: {line}");
    }
    assert_eq!(kernel.lines().last(), Some("0"), "{kernel}");
    let (_, out) = attacker.exec(
        &vm,
        "echo 1 > /proc/sys/kernel/panic_on_oops || echo 4242 > /proc/sys/kernel/pid_max || mkdir /sys/fs/cgroup/escape",
    );
    assert_ne!(out["exit_code"], 0, "a kernel knob was writable: {out}");
    witness.untouched("kernel files and knobs");

    // 4. A link where the launcher prepares the root, picked up when the
    //    sandbox starts afresh: an established TCP connection inside makes
    //    the checkpoint fail, so pause to disk keeps only the disk and the
    //    resume launches anew.
    attacker.sh(&vm, "rm -rf /tmp && ln -s /etc /tmp");
    attacker.sh(
        &vm,
        "nohup bash -c 'exec 3<>/dev/tcp/127.0.0.1/3128; sleep 600' >/dev/null 2>&1 & sleep 0.5",
    );
    let paused: VmView = serde_json::from_value(attacker.ok(
        "POST",
        &format!("/v1/vms/{vm}/pause"),
        Some(json!({ "to_disk": true })),
    ))
    .unwrap();
    assert_eq!(paused.state, VmState::PausedToDisk, "{paused:?}");
    let resumed: CarriedVm =
        serde_json::from_value(attacker.ok("POST", &format!("/v1/vms/{vm}/resume"), None)).unwrap();
    assert_eq!(resumed.kept, [Kept::Disk], "a fresh start: {resumed:?}");
    assert_eq!(attacker.sh(&vm, "readlink /tmp").trim(), "/etc");
    witness.untouched("a /tmp link at a fresh start");
}

#[test]
fn system_calls_outside_the_allow_list_fail() {
    let forge = forge();
    let witness = Witness::new(&forge);
    let attacker = Tenant::new(&forge, "attacker");
    let vm = attacker.create(json!({}));
    attacker.arm(&vm);
    let forge_pid = forge.pid().unwrap();
    let denied = [
        ("unshare_user", ""),
        ("unshare_mount", ""),
        ("clone_user", ""),
        ("mount_tmpfs", ""),
        ("mount_proc", ""),
        ("keyctl", ""),
        ("add_key", ""),
        ("bpf", ""),
        ("io_uring_setup", ""),
        ("userfaultfd", ""),
        ("perf_event_open", ""),
        ("ptrace_attach", "1"),
        ("socket_vsock", ""),
        ("socket_alg", ""),
        ("socket_packet", ""),
        ("socket_netlink_audit", ""),
        ("subvol_create", "/run/sandbox"),
    ];
    for (call, arg) in denied {
        let out = attacker.sh(&vm, &format!("/tmp/probe sys {call} {arg}"));
        assert_eq!(out.trim(), "-1 1", "{call} must fail with EPERM");
    }
    // A host process's pid means nothing inside, and ptrace is refused
    // whatever the pid.
    let out = attacker.sh(&vm, &format!("/tmp/probe sys ptrace_attach {forge_pid}"));
    assert!(out.starts_with("-1 "), "{out}");
    // Linux AIO contexts come from one host-wide pool: not implemented here.
    let out = attacker.sh(&vm, "/tmp/probe sys io_setup");
    assert_eq!(out.trim(), "-1 38", "io_setup answers ENOSYS");
    for call in ["socket_inet", "socket_unix", "getpid"] {
        let out = attacker.sh(&vm, &format!("/tmp/probe sys {call}"));
        assert!(!out.starts_with('-'), "{call} is allowed: {out}");
    }
    // Foreign ABIs kill the process (SIGSYS: 128 + 31).
    for abi in ["i386", "x32"] {
        let (_, out) = attacker.exec(&vm, &format!("/tmp/probe {abi}"));
        assert_eq!(out["exit_code"], 159, "{abi}: {out}");
        assert!(
            !out["stdout"].as_str().unwrap().contains("survived"),
            "{abi}: {out}"
        );
    }
    witness.untouched("system calls");
}

#[test]
fn runaway_processes_memory_disk_and_output_stay_inside() {
    let forge = forge();
    let witness = Witness::new(&forge);
    let attacker = Tenant::new(&forge, "attacker");
    let vm = attacker.create(json!({ "mem_mib": 256, "disk_mib": 256 }));
    let idle = sandbox_pids(&forge, &vm, "pids.current").unwrap();

    // A fork bomb hits the sandbox's process limit (even the agent cannot
    // start a thread meanwhile); it stops itself after 6 s (bash's SECONDS
    // counts from the first shell, in every copy).
    attacker.sh(
        &vm,
        "nohup bash -c 'f() { [ $SECONDS -ge 6 ] && exit; f | f & }; f' >/dev/null 2>&1 &",
    );
    e2e::eventually(
        Duration::from_secs(30),
        "the fork bomb reaching the process limit",
        || match sandbox_pids(&forge, &vm, "pids.events") {
            Ok(0) => Err("no fork refused yet".to_owned()),
            Ok(refused) => Ok(refused),
            Err(why) => Err(why),
        },
    );
    witness.untouched("a fork bomb");
    // While the process table is full an exec may wait rather than fail:
    // each probe gets 20 s, and a probe that times out is "not yet". An
    // exec can also slip into a slot the bomb freed for a moment: the
    // sandbox has recovered once the bomb's processes are gone too (the
    // count is back near where it was, far below the limit; the
    // agent's own threads come and go).
    let probe = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let recovered = || {
        let ran = probe
            .post(format!("{}/v1/vms/{vm}/exec", forge.url))
            .bearer_auth(&attacker.token)
            .json(&json!({ "command": "true", "timeout_secs": 10 }))
            .send()
            .and_then(|r| r.json::<Value>())
            .is_ok_and(|out| out["exit_code"] == 0);
        ran && sandbox_pids(&forge, &vm, "pids.current").is_ok_and(|now| now <= idle + 32)
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    while !recovered() {
        assert!(
            Instant::now() < deadline,
            "the sandbox recovers from its fork bomb"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // What the agent runs is the OOM killer's first choice, the agent
    // (PID 1) last: a balloon's memory gone, the next to ask for memory
    // does not find the agent the largest left.
    assert_eq!(attacker.sh(&vm, "cat /proc/1/oom_score_adj").trim(), "0");
    assert_eq!(
        attacker.sh(&vm, "cat /proc/self/oom_score_adj").trim(),
        "500"
    );
    // A memory balloon is killed inside; the sandbox survives.
    let (_, out) = attacker.exec(
        &vm,
        "node -e 'const a = []; for (;;) a.push(Buffer.alloc(1 << 20, 1))'",
    );
    assert_ne!(out["exit_code"], 0, "{out}");
    assert_eq!(attacker.sh(&vm, "echo alive").trim(), "alive");
    witness.untouched("a memory balloon");

    // The disk fills up to the quota, the run directory included.
    let free_before = free_bytes(&forge.sandbox_dir().unwrap());
    // The fill may end its shell any way it likes; what it left is
    // measured by an exec of its own.
    attacker.exec(
        &vm,
        "dd if=/dev/urandom of=/workspace/fill bs=1M count=600 2>/dev/null; \
         dd if=/dev/urandom of=/run/sandbox/flood bs=1M count=600 2>/dev/null",
    );
    let (_, out) = attacker.exec(
        &vm,
        "du -smc /workspace/fill /run/sandbox/flood 2>/dev/null | tail -1 | cut -f1",
    );
    let used: u64 = out["stdout"]
        .as_str()
        .unwrap()
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{out}"));
    assert!(
        used < 400,
        "the 256 MiB quota held: {used} MiB written: {out}"
    );
    let consumed = free_before.saturating_sub(free_bytes(&forge.sandbox_dir().unwrap()));
    assert!(consumed < 512 << 20, "the host lost {} MiB", consumed >> 20);
    attacker.sh(&vm, "rm -f /workspace/fill /run/sandbox/flood");
    witness.untouched("a disk fill");

    // Kernel objects counted per user on the host's side: one sandbox gets
    // its share, and the neighbour still gets its own.
    attacker.arm(&vm);
    let out = attacker.sh(&vm, "/tmp/probe inotify 100000 0");
    let got: u64 = out.split_whitespace().next().unwrap().parse().unwrap();
    assert!(got <= 128, "{got} inotify instances in one sandbox");
    attacker.sh(
        &vm,
        "nohup /tmp/probe inotify 100000 30 >/dev/null 2>&1 & sleep 1",
    );
    witness.neighbour.arm(&witness.vm);
    let theirs = witness.neighbour.sh(&witness.vm, "/tmp/probe inotify 64 0");
    assert!(
        theirs.starts_with("64 "),
        "the neighbour's inotify: {theirs}"
    );
    witness.untouched("inotify instances");

    // Output past the exec limit is cut, on the host's side as well.
    let (_, out) = attacker.exec(&vm, "head -c 100000000 /dev/zero | tr '\\0' x");
    assert_eq!(out["truncated"], true, "{}", out["exit_code"]);
    assert!(out["stdout"].as_str().unwrap().len() <= 4 << 20);

    // A file larger than the files API reads out is refused at once.
    attacker.sh(&vm, "truncate -s 100G /workspace/huge");
    let started = Instant::now();
    let response = reqwest::blocking::Client::new()
        .get(format!("{}/v1/vms/{vm}/files/workspace/huge", forge.url))
        .bearer_auth(&attacker.token)
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);
    assert!(response.text().unwrap().contains("larger than the limit"));
    assert!(started.elapsed() < Duration::from_secs(10));
    witness.untouched("output and file floods");
}

fn free_bytes(path: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap()
}

/// A count from the `pids` cgroup of sandbox `vm`: its processes
/// (`pids.current`), or how many forks its limit refused (the `max` line
/// of `pids.events`).
fn sandbox_pids(forge: &TestForge, vm: &str, file: &str) -> Result<u64, String> {
    let pid = forge.sandbox_pid(vm).ok_or("no PID 1 on record")?;
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(|e| format!("PID 1 ({pid}): {e}"))?;
    // The v1 `pids` hierarchy where the host has one, else cgroup2's.
    let group = cgroups
        .lines()
        .find_map(|line| {
            let (_, path) = line.split_once(":pids:")?;
            Some(Path::new("/sys/fs/cgroup/pids").join(path.trim_start_matches('/')))
        })
        .or_else(|| {
            let path = cgroups.lines().find_map(|line| line.strip_prefix("0::"))?;
            Some(Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/')))
        })
        .ok_or_else(|| format!("no pids cgroup in {cgroups}"))?;
    let text = std::fs::read_to_string(group.join(file))
        .map_err(|e| format!("{}: {e}", group.display()))?;
    text.lines()
        .find_map(|line| {
            line.strip_prefix("max ")
                .unwrap_or(line)
                .trim()
                .parse()
                .ok()
        })
        .ok_or_else(|| format!("no count in {file}: {text}"))
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn a_thousand_proxy_connections_cannot_exhaust_the_forge() {
    if let Some(reason) = e2e::sandboxes_unavailable() {
        panic!("the escape suite needs sandboxes on this host: {reason}");
    }
    // Where the registry resolves to a non-public address (a mirror), the
    // operator vouches for exactly it, as the egress test does.
    let registry_nets: Vec<String> = ("registry.npmjs.org", 443)
        .to_socket_addrs()
        .map(|addrs| addrs.map(|a| a.ip().to_string()).collect())
        .unwrap_or_default();
    let forge = TestForge::builder()
        .with_sandboxes(20)
        .env("FORGE_EGRESS_ALLOW_NETS", &registry_nets.join(","))
        .start();
    let witness = Witness::new(&forge);
    let attacker = Tenant::new(&forge, "attacker");
    let vm = attacker.create(json!({}));
    attacker.sh(&vm, "true");
    let forge_pid = forge.pid().unwrap();
    let before = open_descriptors(forge_pid);
    // A thousand tunnels to an allowed host, each held open for 8 s.
    let script = r#"
        const net = require("net");
        let established = 0, closed = 0;
        for (let i = 0; i < 1000; i++) {
            const s = net.connect(3128, "127.0.0.1", () =>
                s.write("CONNECT registry.npmjs.org:443 HTTP/1.1\r\nHost: registry.npmjs.org:443\r\n\r\n"));
            s.on("data", d => { if (d.toString().includes(" 200 ")) established++; });
            s.on("close", () => closed++);
            s.on("error", () => {});
        }
        setTimeout(() => { console.log(established, closed); process.exit(0); }, 8000);
    "#;
    let flood = {
        let (url, token, vm) = (forge.url.clone(), attacker.token.clone(), vm.clone());
        let script = script.to_owned();
        std::thread::spawn(move || {
            reqwest::blocking::Client::new()
                .post(format!("{url}/v1/vms/{vm}/exec"))
                .bearer_auth(token)
                .json(&json!({ "argv": ["node", "-e", script], "timeout_secs": 60 }))
                .timeout(Duration::from_secs(90))
                .send()
                .and_then(|r| r.json::<Value>())
                .unwrap()
        })
    };
    let mut most = before;
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        most = most.max(open_descriptors(forge_pid));
        let (status, _) = forge.call(Some(&forge.admin_token), "GET", "/v1/system", None);
        assert_eq!(status, 200, "the forge answers during the flood");
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = flood.join().unwrap();
    let counts: Vec<u64> = out["stdout"]
        .as_str()
        .unwrap_or_else(|| panic!("the flood's exec answered no output: {out}"))
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    let (established, closed) = (counts[0], counts[1]);
    println!(
        "{established} tunnels established, {closed} connections closed, forge descriptors {before} -> at most {most}"
    );
    assert!(established > 0, "the proxy opened tunnels at all: {out}");
    assert!(
        established <= 64,
        "{established} tunnels open at once: {out}"
    );
    assert!(
        closed >= 900,
        "connections over the cap are closed at once: {out}"
    );
    assert!(
        most <= before + 64 + 32,
        "the forge went from {before} to {most} descriptors"
    );
    witness.untouched("a proxy connection flood");
}
