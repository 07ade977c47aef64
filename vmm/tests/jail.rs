//! The jail (`forge-vmm run --jail`, `vmm::jail`) against the real binary
//! and ring-3 test guests: what a VMM an attacker has taken over can still
//! do (`FORGE_VMM_TEST_ESCAPE` plays that VMM), and what a guest that
//! floods its devices costs the host.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{JAIL_ID, TestVm, require_kvm, stderr_of, wait_timeout};
use serde_json::json;

/// `/proc/<pid>/status` as key → value.
fn status(pid: i32, task: Option<i32>) -> BTreeMap<String, String> {
    let path = match task {
        Some(tid) => format!("/proc/{pid}/task/{tid}/status"),
        None => format!("/proc/{pid}/status"),
    };
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

fn namespace(pid: &str, kind: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).expect("namespace link")
}

#[test]
fn a_jailed_vmm_runs_unprivileged_in_namespaces_of_its_own_and_sees_no_host_file() {
    require_kvm();
    let vm = TestVm::new("counter").jailed(&[]);
    let host_file = std::env::temp_dir().join(format!("jail-secret-{}", std::process::id()));
    std::fs::write(&host_file, "host secret").expect("host file");
    let escape = format!("open:{}", host_file.display());
    let mut child = vm.spawn_with(&[("FORGE_VMM_TEST_ESCAPE", &escape)]);
    vm.wait_serial("COUNT 2\n", Duration::from_secs(20));
    let pid = vm.vmm_pid();
    assert_ne!(pid as u32, child.id(), "the VMM is not the process started");

    let st = status(pid, None);
    let ids = format!("{JAIL_ID}\t{JAIL_ID}\t{JAIL_ID}\t{JAIL_ID}");
    assert_eq!(st["Uid"], ids, "{st:?}");
    assert_eq!(st["Gid"], ids, "{st:?}");
    assert_eq!(st["Groups"], "", "no supplementary groups: {st:?}");
    for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(st[caps], "0000000000000000", "{caps}: {st:?}");
    }
    assert_eq!(st["NoNewPrivs"], "1", "{st:?}");
    assert_eq!(st["Seccomp"], "2", "filter mode: {st:?}");
    // Its PID namespace: two processes (the jail's init) before it.
    let ns_pids: Vec<&str> = st["NSpid"].split_whitespace().collect();
    assert_eq!(ns_pids, [pid.to_string().as_str(), "2"], "{st:?}");
    for kind in ["mnt", "pid", "net", "ipc", "uts", "user"] {
        assert_ne!(
            namespace(&pid.to_string(), kind),
            namespace("self", kind),
            "{kind} namespace shared with the host"
        );
    }
    // Every vCPU thread stacks its own filter on the main thread's.
    let main_filters: u32 = st["Seccomp_filters"].parse().expect("count");
    let mut vcpus = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let tid: i32 = task
            .expect("task")
            .file_name()
            .to_str()
            .expect("utf-8")
            .parse()
            .expect("tid");
        let t = status(pid, Some(tid));
        if t["Name"].starts_with("vcpu") {
            vcpus += 1;
            let filters: u32 = t["Seccomp_filters"].parse().expect("count");
            assert!(filters > main_filters, "{t:?}");
        }
    }
    assert_eq!(vcpus, 1);
    // The jail's root is mounted in the jail's namespace only.
    let (_, root) = vm.jail.as_ref().expect("jailed");
    assert_eq!(std::fs::read_dir(&root.0).expect("root").count(), 0);

    let _ = child.kill();
    let _ = child.wait();
    let _ = nix_kill(pid);
    let err = stderr_of(&mut child);
    assert!(
        err.contains(&format!("escape: read {}: Err(", host_file.display()))
            && err.contains("No such file or directory"),
        "the host file was readable from the jail: {err}"
    );
    assert!(
        err.contains("create") && err.contains("Read-only file system"),
        "a file could be made beside it: {err}"
    );
    assert!(!host_file.with_extension("planted").exists());
    std::fs::remove_file(&host_file).expect("clean up");
}

fn nix_kill(pid: i32) -> i32 {
    // SAFETY: kill(2) of a pid this test found; a gone process is fine.
    unsafe { libc::kill(pid, libc::SIGKILL) }
}

/// A jailed VMM that makes a call off its thread's list dies of SIGSYS,
/// whichever kind of thread: the main loop at once, a vCPU before its
/// first guest instruction, the worker a fork starts.
#[test]
fn a_call_off_the_list_kills_the_jailed_vmm_with_sigsys() {
    require_kvm();
    for kind in ["main", "vcpu"] {
        let vm = TestVm::new("counter").jailed(&[]);
        let mut child = vm.spawn_with(&[("FORGE_VMM_TEST_ESCAPE", &format!("syscall:{kind}"))]);
        let exit = wait_timeout(&mut child, Duration::from_secs(20));
        let err = stderr_of(&mut child);
        assert_eq!(
            exit.code(),
            Some(128 + libc::SIGSYS),
            "{kind}: {exit:?} {err}"
        );
        assert!(
            err.contains(&format!("escape: ptrace on a {kind} thread"))
                && err.contains("killed by SIGSYS"),
            "{kind}: {err}"
        );
        assert!(!vm.serial().contains("COUNT 1\n"), "{kind}: guest code ran");
    }

    // The worker thread unmaps the memory a booted VM's first fork
    // retires. The fork child lives on in the jail, so the jail's first
    // process does not end: its stderr is read as it comes, and the jail
    // is ended (its first process killed, the init with it, and with the
    // init every process of the jail) once the init has reported.
    let vm = TestVm::new("counter").jailed(&[]);
    let mut child = vm.spawn_with(&[("FORGE_VMM_TEST_ESCAPE", "syscall:worker")]);
    let stderr = child.stderr.take().expect("stderr");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            for line in
                std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok)
            {
                let mut seen = seen.lock().expect("lock");
                seen.push_str(&line);
                seen.push('\n');
            }
        })
    };
    vm.wait_serial("COUNT 2\n", Duration::from_secs(20));
    // The VMM dies answering: no reply is read.
    let mut control =
        std::os::unix::net::UnixStream::connect(vm.dir.path("ctl.sock")).expect("connect");
    std::io::Write::write_all(&mut control, b"{\"cmd\":\"fork\",\"count\":1}\n")
        .expect("send fork");
    let err = common::eventually(Duration::from_secs(20), "the init's report", || {
        let seen = seen.lock().expect("lock").clone();
        if seen.contains("killed by SIGSYS") {
            Ok(seen)
        } else {
            Err(seen)
        }
    });
    assert!(err.contains("ptrace on a worker thread"), "{err}");
    let _ = child.kill();
    wait_timeout(&mut child, Duration::from_secs(20));
    reader.join().expect("reader");
}

/// The host's memory cgroup for one test: v1's `memory` hierarchy, else
/// cgroup2 (with the memory controller enabled for its children).
struct MemoryGroup(PathBuf);

impl MemoryGroup {
    fn new(tag: &str, limit: u64) -> Self {
        let v1 = PathBuf::from("/sys/fs/cgroup/memory");
        let name = format!("forge-vmm-jail-test-{tag}-{}", std::process::id());
        let (dir, files) = if v1.join("memory.limit_in_bytes").exists() {
            (
                v1.join(name),
                vec!["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"],
            )
        } else {
            let root = PathBuf::from("/sys/fs/cgroup");
            let _ = std::fs::write(root.join("cgroup.subtree_control"), "+memory");
            (root.join(name), vec!["memory.max", "memory.swap.max"])
        };
        std::fs::create_dir_all(&dir).expect("memory cgroup");
        for file in files {
            let path = dir.join(file);
            if path.exists() {
                let value = if file == "memory.swap.max" {
                    "0".to_owned()
                } else {
                    limit.to_string()
                };
                std::fs::write(&path, value).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
        }
        Self(dir)
    }
}

impl Drop for MemoryGroup {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(&self.0).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A guest that touches more RAM than its VMM's cgroup allows gets the
/// VMM killed, not the host's memory: the jail joins the cgroup before a
/// page of guest RAM exists.
#[test]
fn a_jailed_vmm_is_held_to_its_cgroup_memory_limit() {
    require_kvm();
    let group = MemoryGroup::new("small", 48 << 20);
    let vm = TestVm::new("touch")
        .set("mem_mib", json!(256))
        .jailed(&[group.0.join("cgroup.procs")]);
    let mut child = vm.spawn();
    let exit = wait_timeout(&mut child, Duration::from_secs(60));
    let err = stderr_of(&mut child);
    assert_eq!(exit.code(), Some(128 + libc::SIGKILL), "{exit:?} {err}");
    assert!(err.contains("SIGKILL"), "{err}");
    assert!(!vm.serial().contains("TOUCHED"), "all of RAM was touched");

    // The same guest with room for its RAM touches it all.
    let group = MemoryGroup::new("large", 512 << 20);
    let vm = TestVm::new("touch")
        .set("mem_mib", json!(256))
        .jailed(&[group.0.join("cgroup.procs")]);
    let mut child = vm.spawn();
    vm.wait_serial("TOUCHED", Duration::from_secs(60));
    let _ = nix_kill(vm.vmm_pid());
    wait_timeout(&mut child, Duration::from_secs(20));
}

/// The VMM's own memory (not guest RAM: `RssAnon` without the shared
/// guest RAM file) under a guest that never posts a vsock RX buffer and
/// floods TX and the serial console: fixed, whatever the guest sends.
const FLOOD_RSS_BOUND_KIB: u64 = 16 * 1024;
/// How much of it the flood may add once it runs (the guest sends tens
/// of thousands of packets here, each owed a reply it never takes).
const FLOOD_GROWTH_BOUND_KIB: u64 = 128;

#[test]
fn a_flooding_guest_keeps_the_jailed_vmm_under_a_fixed_bound() {
    require_kvm();
    let vm = TestVm::new("flood");
    let uds = vm.dir.path("v.sock");
    let vm = vm
        .set("vsock", json!({ "guest_cid": 3, "uds_path": uds }))
        .set("serial_log_max_bytes", json!(1 << 20))
        .jailed(&[]);
    let mut child = vm.spawn();
    vm.wait_serial("FLOOD START", Duration::from_secs(20));
    let pid = vm.vmm_pid();
    let started = Instant::now();
    let mut peak = 0;
    let mut samples = Vec::new();
    while started.elapsed() < Duration::from_secs(8) {
        let st = status(pid, None);
        let anon: u64 = st["RssAnon"]
            .trim_end_matches(" kB")
            .parse()
            .expect("RssAnon");
        peak = peak.max(anon);
        samples.push(anon);
        std::thread::sleep(Duration::from_millis(100));
    }
    // Still serving: the control socket answers, the guest still floods.
    let before = vm.serial().len();
    let mut control = vm.control();
    assert_eq!(control.cmd("status")["ok"], json!(true));
    let log = std::fs::metadata(vm.dir.path("serial.log"))
        .expect("log")
        .len();
    let _ = nix_kill(pid);
    wait_timeout(&mut child, Duration::from_secs(20));
    eprintln!(
        "flood: VMM RssAnon peak {peak} KiB over {} samples (first {} KiB, last {} KiB); serial log {log} bytes",
        samples.len(),
        samples.first().copied().unwrap_or(0),
        samples.last().copied().unwrap_or(0)
    );
    assert!(before > 0);
    assert!(
        log <= (1 << 20) + 4096,
        "the serial log grew past its cap: {log} bytes"
    );
    assert!(
        peak <= FLOOD_RSS_BOUND_KIB,
        "the VMM grew to {peak} KiB of its own memory under the flood"
    );
    let growth = peak - samples.first().copied().unwrap_or(peak);
    assert!(
        growth <= FLOOD_GROWTH_BOUND_KIB,
        "the flood grew the VMM by {growth} KiB"
    );
}
