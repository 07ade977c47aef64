//! What a sandbox cannot do: see host processes, files or network; raise its
//! limits; load modules; mount host disks; escape through /proc/1/root or a
//! setuid binary; outgrow its memory, pids or disk quota.

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::TestBackend;
use sandbox_container::{ExecRequest, Limits};

#[test]
fn host_processes_are_invisible() {
    let t = TestBackend::start("procs");
    let sandbox = t.create();
    let out = t.sh_ok(
        &sandbox.id,
        "ls /proc | grep -c '^[0-9]'; cat /proc/1/cmdline | tr '\\0' ' '",
    );
    let mut lines = out.lines();
    let visible: usize = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("count");
    let host = std::fs::read_dir("/proc")
        .expect("proc")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .count();
    assert!(
        visible <= 5,
        "sandbox sees {visible} processes (host has {host})"
    );
    assert!(host > visible + 10);
    let pid1 = lines.next().unwrap_or_default();
    assert!(
        pid1.contains("sandbox-init") || pid1.contains("stage2"),
        "PID 1 is the sandbox's own init: {pid1}"
    );
}

#[test]
fn host_files_are_invisible_also_through_proc_1_root() {
    let t = TestBackend::start("files");
    let marker = format!("/tmp/host-marker-{}", std::process::id());
    std::fs::write(&marker, "secret").expect("marker");
    let sandbox = t.create();
    let script = format!(
        "cat {marker}; cat /proc/1/root{marker}; ls /proc/1/root/; test -e /work && echo host-work; wc -c < /proc/timer_list"
    );
    let out = t.sh(&sandbox.id, &script);
    let stdout = String::from_utf8_lossy(&out.stdout);
    std::fs::remove_file(&marker).expect("remove marker");
    assert!(!stdout.contains("secret"), "host file leaked: {stdout}");
    assert!(!stdout.contains("host-work"));
    assert!(
        stdout.contains("busybox") || stdout.contains("bin"),
        "/proc/1/root is the sandbox root: {stdout}"
    );
    // Kernel-internal /proc files are masked with an empty device.
    assert!(
        stdout.lines().last().is_some_and(|l| l.trim() == "0"),
        "{stdout}"
    );
}

#[test]
fn only_loopback_network() {
    let t = TestBackend::start("net");
    let listener = TcpListener::bind("127.0.0.1:0").expect("host listener");
    let port = listener.local_addr().expect("addr").port();
    let sandbox = t.create();
    let out = t.sh(
        &sandbox.id,
        &format!(
            "ls /sys/class/net; ip -o link | wc -l; nc -w 2 127.0.0.1 {port} </dev/null && echo reached-host; \
             nc -w 2 10.0.2.2 80 </dev/null && echo reached-outside; \
             nc -l -p 7000 -e echo pong & sleep 0.2; nc -w 2 127.0.0.1 7000 </dev/null"
        ),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("lo"), "only loopback: {stdout}");
    assert!(
        !stdout.contains("reached-host"),
        "host loopback reachable: {stdout}"
    );
    assert!(
        !stdout.contains("reached-outside"),
        "outside reachable: {stdout}"
    );
    assert!(stdout.contains("pong"), "loopback inside works: {stdout}");
    drop(listener);
}

fn probe(t: &TestBackend, id: &str, syscall: &str) -> String {
    t.sh_ok(id, &format!("/bin/probe sys {syscall}"))
        .trim()
        .to_owned()
}

#[test]
fn dangerous_syscalls_are_denied() {
    let t = TestBackend::start("seccomp");
    let sandbox = t.create();
    let eperm = "-1 1";
    for syscall in [
        "init_module",
        "finit_module",
        "delete_module",
        "kexec_load",
        "bpf",
        "ptrace",
        "keyctl",
        "add_key",
        "unshare_user",
        "unshare_net",
        "mount_proc",
        "mount_disk",
        "userfaultfd",
        "perf_event_open",
        "open_by_handle_at",
        "swapoff",
        "reboot",
        "mknod_disk",
    ] {
        assert_eq!(
            probe(&t, &sandbox.id, syscall),
            eperm,
            "{syscall} must fail with EPERM"
        );
    }
    // The probe itself works: an allowed syscall succeeds.
    assert!(!probe(&t, &sandbox.id, "getpid").starts_with('-'));
    // The host still has its name: sethostname inside is denied too.
    assert_eq!(probe(&t, &sandbox.id, "sethostname"), eperm);
}

#[test]
fn limits_cannot_be_raised_and_kernel_knobs_are_read_only() {
    let t = TestBackend::start("knobs");
    let sandbox = t.create();
    let out = t.sh(
        &sandbox.id,
        "ulimit -n 1000000 && echo raised-nofile; \
         echo 1 > /proc/sys/vm/drop_caches && echo wrote-sysctl; \
         echo b > /proc/sysrq-trigger && echo wrote-sysrq; \
         ls /sys/fs/cgroup/memory 2>/dev/null | grep -q limit && echo cgroup-visible; \
         mount -t cgroup -o memory none /mnt && echo mounted-cgroup; \
         grep Cap /proc/self/status",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    for forbidden in [
        "raised-nofile",
        "wrote-sysctl",
        "wrote-sysrq",
        "cgroup-visible",
        "mounted-cgroup",
    ] {
        assert!(!stdout.contains(forbidden), "{forbidden}: {stdout}");
    }
    let bounding = stdout
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).expect("hex"))
        .expect("CapBnd line");
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_SYS_MODULE: u32 = 16;
    const CAP_CHOWN: u32 = 0;
    assert_eq!(bounding & (1 << CAP_SYS_ADMIN), 0, "CAP_SYS_ADMIN dropped");
    assert_eq!(
        bounding & (1 << CAP_SYS_MODULE),
        0,
        "CAP_SYS_MODULE dropped"
    );
    assert_ne!(bounding & (1 << CAP_CHOWN), 0, "CAP_CHOWN kept");
}

#[test]
fn setuid_binary_does_not_gain_root() {
    let t = TestBackend::start("setuid");
    let sandbox = t.create();
    t.sh_ok(
        &sandbox.id,
        "cp /bin/probe /tmp/suid && chmod 4755 /tmp/suid && ls -l /tmp/suid",
    );
    let mut request = ExecRequest::new(["/tmp/suid", "euid"]);
    request.uid = 1000;
    request.gid = 1000;
    let out = t.backend().exec(&sandbox.id, &request).expect("exec");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1000");
}

#[test]
fn fork_bomb_is_contained_and_host_stays_responsive() {
    let t = TestBackend::start("forkbomb");
    let limits = Limits {
        pids_max: 64,
        ..Limits::default()
    };
    let sandbox = t.create_with(limits);
    let mut bomb = t
        .backend()
        .exec_command(&sandbox.id, &ExecRequest::new(["/bin/probe", "forkbomb"]))
        .expect("command")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn bomb");
    common::eventually(
        Duration::from_secs(30),
        "the bomb filling its table",
        || {
            let pids = t.backend().stats(&sandbox.id).expect("stats").cgroup.pids;
            assert!(pids <= 64, "pids {pids} over the limit");
            if pids >= 48 { Ok(pids) } else { Err(pids) }
        },
    );
    let started = Instant::now();
    let host = Command::new("true").status().expect("host can spawn");
    assert!(host.success());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "host unresponsive"
    );
    t.backend()
        .destroy(&sandbox.id)
        .expect("destroy stops the bomb");
    let _ = bomb.kill();
    let _ = bomb.wait();
}

#[test]
fn memory_hog_is_killed_inside_and_sandbox_survives() {
    let t = TestBackend::start("memhog");
    let limits = Limits {
        mem_mib: 64,
        ..Limits::default()
    };
    let sandbox = t.create_with(limits);
    let out = t
        .backend()
        .exec(&sandbox.id, &ExecRequest::new(["/bin/probe", "hog", "512"]))
        .expect("exec");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("survived"));
    assert_eq!(out.status.code(), Some(137), "hog is OOM-killed: {out:?}");
    // A small allocation still works and the sandbox is alive.
    let mut small = t.sh_ok(&sandbox.id, "/bin/probe hog 16");
    small.truncate(8);
    assert_eq!(small, "survived");
}

#[test]
fn disk_quota_limits_the_writable_layer() {
    let t = TestBackend::start("quota");
    let limits = Limits {
        disk_mib: 64,
        ..Limits::default()
    };
    let sandbox = t.create_with(limits);
    let out = t.sh(
        &sandbox.id,
        "dd if=/dev/zero of=/data/big bs=1M count=256 2>&1; sync; echo rc=$?",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("quota") || text.contains("No space"),
        "write past quota fails: {text}"
    );
    let written = t.sh_ok(&sandbox.id, "du -m /data/big | cut -f1");
    let mib: u64 = written.trim().parse().expect("du");
    assert!(mib <= 80, "wrote {mib} MiB past a 64 MiB quota");
    // Reading the output stream completely: nothing hangs.
    let mut sink = String::new();
    let _ = std::io::Cursor::new(out.stderr).read_to_string(&mut sink);
}
