//! `forge-vmm bench`: measures this VMM on this host with the test guests
//! and prints, in one run:
//!
//! 1. process start → guest "READY" on serial (median of 20), with the
//!    VMM's own breakdown (KVM setup, memory, load, devices, vCPUs, first
//!    guest exit); then the guest's reset → the process's exit, split into
//!    stopping the vCPUs, freeing the VM and the rest;
//! 2. resident memory of the VMM beyond guest RAM (128 MiB guest);
//! 3. port-I/O exit round trips per second;
//! 4. virtio-blk sequential read MB/s against reading the same host file;
//! 5. vsock throughput and round-trip time.
//!
//! The serial log is a FIFO the bench holds open read-write, so a line is
//! seen the moment the guest's last byte leaves the UART.
//!
//! With `FORGE_BENCH_JAIL=1` (both benches) every VMM runs in the jail the
//! sandbox backend gives it (`crate::jail`: namespaces, its own root, the
//! jail's uid, seccomp), without a cgroup; compare a run with and without.

use std::ffi::CString;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Firecracker 1.17 on this host, same kind of guest (from the issue).
const FC_START_MS: f64 = 8.1;
/// Firecracker 1.17 resident overhead for a 128 MiB guest, MB.
const FC_RSS_MB: f64 = 4.1;

type BenchResult<T> = Result<T, String>;

struct Bench {
    exe: PathBuf,
    guests: PathBuf,
    dir: PathBuf,
}

struct RunningVm {
    child: Child,
    serial: BufReader<File>,
    dir: PathBuf,
}

/// `--jail <file>` when `FORGE_BENCH_JAIL` is set: the VMM writes in `dir`
/// (handed to the jail's uid, with what is in it) and reads `readable`.
pub(crate) fn jail_args(dir: &Path, readable: &[&Path]) -> BenchResult<Vec<std::ffi::OsString>> {
    if std::env::var_os("FORGE_BENCH_JAIL").is_none() {
        return Ok(Vec::new());
    }
    let id = vmm_proto::config::DEFAULT_JAIL_ID;
    let entries = std::fs::read_dir(dir).map_err(|e| e.to_string())?;
    for path in std::iter::once(dir.to_owned()).chain(entries.flatten().map(|e| e.path())) {
        std::os::unix::fs::chown(&path, Some(id), Some(id))
            .map_err(|e| format!("chown {}: {e}", path.display()))?;
    }
    let root = dir.with_extension("jail-root");
    std::fs::create_dir_all(&root).map_err(|e| e.to_string())?;
    let jail = json!({
        "root": root, "uid": id, "gid": id, "writable": [dir], "readable": readable,
    });
    let path = dir.with_extension("jail.json");
    std::fs::write(&path, jail.to_string()).map_err(|e| e.to_string())?;
    Ok(vec!["--jail".into(), path.into()])
}

/// The host pid of the process serving the control socket at `sock` (the
/// VMM, also in a jail's PID namespace), from `SO_PEERCRED`.
pub(crate) fn vmm_pid(sock: &Path) -> BenchResult<i32> {
    let s = UnixStream::connect(sock).map_err(|e| format!("{}: {e}", sock.display()))?;
    vmm::socket::peer_pid(&s).map_err(|e| format!("SO_PEERCRED: {e}"))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn mkfifo(path: &Path) -> BenchResult<()> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    if rc != 0 {
        return Err(format!(
            "mkfifo {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

impl Bench {
    fn start(&self, name: &str, guest: &str, mut config: Value) -> BenchResult<RunningVm> {
        let dir = self.dir.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let serial = dir.join("serial");
        mkfifo(&serial)?;
        // Read-write: the FIFO always has a writer, reads block for data.
        let fifo = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&serial)
            .map_err(|e| e.to_string())?;
        config["kernel"] = json!(self.guests.join(format!("{guest}.elf")));
        config["serial_log"] = json!(serial);
        config["control_socket"] = json!(dir.join("ctl.sock"));
        config["ap_entry"] = json!("kernel_entry");
        if config.get("vcpus").is_none() {
            config["vcpus"] = json!(1);
        }
        if config.get("mem_mib").is_none() {
            config["mem_mib"] = json!(128);
        }
        let cfg = dir.join("vm.json");
        std::fs::write(&cfg, config.to_string()).map_err(|e| e.to_string())?;
        let kernel = self.guests.join(format!("{guest}.elf"));
        let mut readable = vec![kernel];
        for disk in config["disks"].as_array().into_iter().flatten() {
            readable.extend(disk["base"].as_str().map(PathBuf::from));
        }
        let readable: Vec<&Path> = readable.iter().map(PathBuf::as_path).collect();
        let child = Command::new(&self.exe)
            .args(["run", "--config"])
            .arg(&cfg)
            .args(jail_args(&dir, &readable)?)
            .env("FORGE_VMM_TIMINGS", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn forge-vmm: {e}"))?;
        Ok(RunningVm {
            child,
            serial: BufReader::new(fifo),
            dir,
        })
    }
}

impl RunningVm {
    /// Reads serial lines until one contains `text`; returns that line.
    fn wait_line(&mut self, text: &str) -> BenchResult<String> {
        let mut line = String::new();
        loop {
            line.clear();
            // The VMM exiting closes its end; ours keeps the FIFO open,
            // so a dead VM is caught by the child check below.
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("VM ended ({status}) before {text:?}"));
            }
            self.serial
                .read_line(&mut line)
                .map_err(|e| e.to_string())?;
            if line.contains("FAIL") {
                return Err(format!("guest failed: {line}"));
            }
            if line.contains(text) {
                return Ok(line.clone());
            }
        }
    }

    /// Waits for the end; returns the timings JSON from stderr.
    fn finish(mut self) -> BenchResult<Value> {
        let status = self.child.wait().map_err(|e| e.to_string())?;
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        if !status.success() {
            return Err(format!("VM exited {status}: {err}"));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        err.lines()
            .rev()
            .find_map(|l| serde_json::from_str::<Value>(l).ok())
            .ok_or_else(|| "no timings from the VMM".to_string())
    }

    fn shutdown(self) -> BenchResult<Value> {
        let mut s = UnixStream::connect(self.dir.join("ctl.sock")).map_err(|e| e.to_string())?;
        s.write_all(b"{\"cmd\":\"shutdown\"}\n")
            .map_err(|e| e.to_string())?;
        let mut reply = String::new();
        BufReader::new(s)
            .read_line(&mut reply)
            .map_err(|e| e.to_string())?;
        self.finish()
    }
}

fn start_to_ready(b: &Bench) -> BenchResult<()> {
    const RUNS: usize = 20;
    let mut totals = Vec::new();
    let keys = [
        "kvm_setup_us",
        "memory_us",
        "load_us",
        "devices_us",
        "vcpus_us",
        "first_exit_us",
    ];
    let mut parts: Vec<Vec<f64>> = vec![Vec::new(); keys.len()];
    let (mut exits, mut stops, mut frees) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..=RUNS {
        let t = Instant::now();
        let mut vm = b.start("start", "hello", json!({}))?;
        vm.wait_line("READY")?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        // The guest resets right after READY: from here to the process's
        // exit is the VM's teardown.
        let ready = Instant::now();
        let timings = vm.finish()?;
        let exit_ms = ready.elapsed().as_secs_f64() * 1e3;
        if i == 0 {
            continue; // warm-up: page cache, first KVM open
        }
        totals.push(ms);
        exits.push(exit_ms);
        stops.push(timings["timings"]["stop_us"].as_f64().unwrap_or(0.0) / 1e3);
        frees.push(timings["timings"]["freed_us"].as_f64().unwrap_or(0.0) / 1e3);
        for (k, v) in keys.iter().zip(parts.iter_mut()) {
            v.push(timings["timings"][k].as_f64().unwrap_or(0.0) / 1e3);
        }
    }
    // Baseline in the same run: spawning and reaping a process that does
    // nothing, the floor under any process start -> READY on this host.
    let mut spawn = Vec::new();
    for _ in 0..RUNS {
        let t = Instant::now();
        let _ = Command::new("/bin/true").status();
        spawn.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let med = median(&mut totals);
    println!(
        "process start -> READY (median of {RUNS}): {med:.2} ms  [Firecracker 1.17: {FC_START_MS} ms, ratio {:.2}x]",
        FC_START_MS / med
    );
    let m: Vec<f64> = parts.iter_mut().map(|v| median(v)).collect();
    let notes = [
        "open /dev/kvm, VM, irqchip, PIT",
        "map guest RAM, register the KVM memory slot",
        "kernel ELF, boot tables, MP table, zero page",
        "serial, i8042, virtio, control socket",
        "create + configure + start vCPU threads",
        "vCPU start to its first exit (guest ran)",
    ];
    for ((k, v), note) in keys.iter().zip(&m).zip(notes) {
        println!("  {:<14} {v:7.3} ms  {note}", k.trim_end_matches("_us"));
    }
    let critical: f64 = m.iter().sum();
    println!(
        "  {:<14} {:7.3} ms  exec, runtime start-up, config, guest printing READY",
        "rest",
        (med - critical).max(0.0)
    );
    println!(
        "  p90 {:.2} ms, min {:.2} ms; baseline: spawn+exit of /bin/true median {:.2} ms, min {:.2} ms",
        percentile(&mut totals, 0.9),
        totals.iter().copied().fold(f64::MAX, f64::min),
        median(&mut spawn),
        spawn.iter().copied().fold(f64::MAX, f64::min)
    );
    let (exit, stop, freed) = (median(&mut exits), median(&mut stops), median(&mut frees));
    println!(
        "READY -> process exit after the guest's reset (median of {RUNS}): {exit:.2} ms (p90 {:.2})",
        percentile(&mut exits, 0.9)
    );
    println!("  vcpus_stop     {stop:7.3} ms  every vCPU thread told to exit and joined");
    println!(
        "  free           {:7.3} ms  devices, KVM file descriptors, guest RAM (mostly the kernel's VM teardown waiting out SRCU grace periods: PIT, I/O bus, notifiers)",
        (freed - stop).max(0.0)
    );
    println!(
        "  {:<14} {:7.3} ms  the guest's reset reaching the VMM, process exit, reaping",
        "rest",
        (exit - freed).max(0.0)
    );
    Ok(())
}

fn rss_overhead(b: &Bench) -> BenchResult<()> {
    let mem_mib = 128u64;
    let mut vm = b.start("rss", "counter", json!({ "mem_mib": mem_mib }))?;
    vm.wait_line("COUNT 2")?;
    let pid = vmm_pid(&vm.dir.join("ctl.sock"))?;
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).map_err(|e| e.to_string())?;
    let (mut total_kb, mut guest_kb) = (0u64, 0u64);
    let mut in_guest = false;
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        match f.next() {
            Some("Size:") => {
                let kb: u64 = f.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                in_guest = kb == mem_mib * 1024;
            }
            Some("Rss:") => {
                let kb: u64 = f.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                total_kb += kb;
                if in_guest {
                    guest_kb += kb;
                }
            }
            _ => {}
        }
    }
    vm.shutdown()?;
    let overhead_mib = (total_kb - guest_kb) as f64 / 1024.0;
    println!(
        "resident memory, 128 MiB guest: total {:.2} MiB, guest RAM touched {:.2} MiB, VMM overhead {overhead_mib:.2} MiB ({:.2} MB)  [Firecracker 1.17: {FC_RSS_MB} MB]",
        total_kb as f64 / 1024.0,
        guest_kb as f64 / 1024.0,
        overhead_mib * 1.048_576
    );
    Ok(())
}

fn pio_exits(b: &Bench) -> BenchResult<()> {
    let n = 200_000u64;
    let mut vm = b.start("pio", "pio", json!({ "cmdline": format!("pio_count={n}") }))?;
    vm.wait_line("PIO START")?;
    let t = Instant::now();
    vm.wait_line("PIO DONE")?;
    let secs = t.elapsed().as_secs_f64();
    vm.finish()?;
    println!(
        "port-I/O exits: {:.0} round trips/s ({:.2} us each, {n} exits)",
        n as f64 / secs,
        secs * 1e6 / n as f64
    );
    Ok(())
}

fn blk_read(b: &Bench) -> BenchResult<()> {
    let size = 128usize << 20;
    std::fs::create_dir_all(&b.dir).map_err(|e| e.to_string())?;
    let img = b.dir.join("blk.img");
    let data: Vec<u8> = (0..size)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761) as u8)
        .collect();
    std::fs::write(&img, &data).map_err(|e| e.to_string())?;
    drop(data);
    // Host baseline with the same request size, page cache warm.
    let chunk = 512 << 10;
    let mut buf = vec![0u8; chunk];
    let mut host_best = f64::MAX;
    for _ in 0..3 {
        let mut f = File::open(&img).map_err(|e| e.to_string())?;
        let t = Instant::now();
        while f.read(&mut buf).map_err(|e| e.to_string())? > 0 {}
        host_best = host_best.min(t.elapsed().as_secs_f64());
    }
    let mut vm_best = f64::MAX;
    for _ in 0..3 {
        let mut vm = b.start(
            "blk",
            "blkread",
            json!({ "cmdline": "chunk_kib=512", "disks": [{ "base": img, "read_only": true }] }),
        )?;
        vm.wait_line("BLKREAD START")?;
        let t = Instant::now();
        vm.wait_line("BLKREAD DONE")?;
        vm_best = vm_best.min(t.elapsed().as_secs_f64());
        vm.finish()?;
    }
    let _ = std::fs::remove_file(&img);
    let mb = size as f64 / 1e6;
    println!(
        "virtio-blk sequential read (128 MiB, 512 KiB requests): {:.0} MB/s; host file read {:.0} MB/s; ratio {:.2}",
        mb / vm_best,
        mb / host_best,
        host_best / vm_best
    );
    Ok(())
}

fn vsock(b: &Bench) -> BenchResult<()> {
    let uds = b.dir.join("vsock").join("v.sock");
    let mut vm = b.start(
        "vsock",
        "vsock",
        json!({ "cmdline": "echo_rounds=2", "vsock": { "guest_cid": 3, "uds_path": uds } }),
    )?;
    let connect = || -> BenchResult<(UnixStream, BufReader<UnixStream>)> {
        let s = UnixStream::connect(&uds).map_err(|e| e.to_string())?;
        let mut w = s.try_clone().map_err(|e| e.to_string())?;
        w.write_all(b"CONNECT 1234\n").map_err(|e| e.to_string())?;
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).map_err(|e| e.to_string())?;
        if !line.starts_with("OK ") {
            return Err(format!("vsock handshake: {line:?}"));
        }
        Ok((w, r))
    };
    vm.wait_line("VSOCK LISTENING")?;
    let (mut w, mut r) = connect()?;
    let total = 64usize << 20;
    let t = Instant::now();
    let writer = std::thread::spawn(move || {
        let chunk = vec![0x5au8; 64 << 10];
        let mut sent = 0;
        while sent < total {
            if w.write_all(&chunk).is_err() {
                break;
            }
            sent += chunk.len();
        }
        w
    });
    let mut buf = vec![0u8; 64 << 10];
    let mut got = 0;
    while got < total {
        let n = r.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("vsock echo ended early".into());
        }
        got += n;
    }
    let secs = t.elapsed().as_secs_f64();
    let w = writer.join().map_err(|_| "writer panicked".to_string())?;
    w.shutdown(std::net::Shutdown::Both)
        .map_err(|e| e.to_string())?;
    drop(r);

    vm.wait_line("VSOCK LISTENING")?;
    let (mut w, mut r) = connect()?;
    let mut rtts = Vec::new();
    let mut one = [0u8; 1];
    for i in 0..2000u32 {
        let t = Instant::now();
        w.write_all(&[i as u8]).map_err(|e| e.to_string())?;
        r.read_exact(&mut one).map_err(|e| e.to_string())?;
        rtts.push(t.elapsed().as_secs_f64() * 1e6);
    }
    w.shutdown(std::net::Shutdown::Both)
        .map_err(|e| e.to_string())?;
    drop(r);
    vm.finish()?;
    println!(
        "vsock: echo throughput {:.0} MB/s each way (64 MiB); round trip 1 byte p50 {:.1} us, p99 {:.1} us",
        total as f64 / 1e6 / secs,
        median(&mut rtts),
        percentile(&mut rtts, 0.99)
    );
    Ok(())
}

/// Runs every measurement; `guests` is the test guest directory.
pub fn run(guests: &Path) -> BenchResult<()> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = std::env::temp_dir().join(format!("forge-vmm-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let b = Bench {
        exe,
        guests: guests.to_owned(),
        dir: dir.clone(),
    };
    if !guests.join("hello.elf").exists() {
        return Err(format!("no test guests in {}", guests.display()));
    }
    println!(
        "forge-vmm bench ({} build; host load average {})",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let result = start_to_ready(&b)
        .and_then(|()| rss_overhead(&b))
        .and_then(|()| pio_exits(&b))
        .and_then(|()| blk_read(&b))
        .and_then(|()| vsock(&b));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Stops a bench that hangs (a guest that never prints its line).
pub fn watchdog(limit: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("forge-vmm bench: gave up after {limit:?}");
        std::process::exit(2);
    });
}
