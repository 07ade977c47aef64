//! What the agent does to the system it runs in: PID 1 start-up (mounts,
//! hostname, environment), lifecycle notices (forked, resumed) and power-off.
//!
//! Start-up as PID 1, in order:
//! 0. close every descriptor above stderr: whatever the launcher's own parent
//!    leaked without close-on-exec must not reach the sandbox;
//! 1. mount `/proc`, `/sys`, `/dev` (devtmpfs), `/dev/pts` (new instance),
//!    `/dev/shm`, `/tmp`, `/run` unless it, or a path below it, is already
//!    mounted (a container launcher may have prepared some of them, e.g. the
//!    socket directory `/run/sandbox`; a failure is logged and the agent
//!    carries on);
//! 2. remount `/` read-write (a microVM kernel mounts it read-only), bring
//!    up the loopback interface (forwarded ports and the egress listener
//!    live on it; a fresh network namespace or VM has it down);
//! 3. set the hostname from `/etc/hostname`;
//! 4. set `PATH`, `HOME`, `LANG` for everything the agent starts.
//!
//! The root filesystem itself is prepared outside: layered block devices
//! from the VMM, or an overlayfs from the container launcher.

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::time::Duration;

use agent_proto::{Forked, LifecycleReport, Resumed, StepOutcome};

use crate::Agent;

fn close_inherited_fds() {
    // SAFETY: close_range(2) only closes descriptors. This runs first thing in
    // PID 1, before the agent has opened anything, so no Rust object owns a
    // descriptor above 2 that would be left dangling.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if rc != 0 {
        eprintln!(
            "sandbox-agent: close inherited descriptors: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn c(s: &str) -> CString {
    CString::new(s).expect("static strings have no NUL")
}

fn mount(
    src: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> std::io::Result<()> {
    let _ = std::fs::create_dir_all(target);
    let (src, target, fstype, data) = (c(src), c(target), c(fstype), c(data));
    // SAFETY: all pointers are valid C strings for the duration of the call.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn mounted() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(1).map(str::to_owned))
        .collect()
}

/// Runs the PID 1 start-up steps (see the module documentation).
pub fn init_pid1() {
    close_inherited_fds();
    if !std::path::Path::new("/proc/self").exists()
        && let Err(e) = mount(
            "proc",
            "/proc",
            "proc",
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            "",
        )
    {
        eprintln!("sandbox-agent: mount /proc: {e}");
    }
    let already = mounted();
    let nosuid = libc::MS_NOSUID;
    let steps: [(&str, &str, &str, libc::c_ulong, &str); 6] = [
        (
            "sysfs",
            "/sys",
            "sysfs",
            nosuid | libc::MS_NODEV | libc::MS_NOEXEC,
            "",
        ),
        ("devtmpfs", "/dev", "devtmpfs", nosuid, "mode=0755"),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            nosuid | libc::MS_NOEXEC,
            "newinstance,ptmxmode=0666,mode=0620",
        ),
        (
            "tmpfs",
            "/dev/shm",
            "tmpfs",
            nosuid | libc::MS_NODEV,
            "mode=1777",
        ),
        (
            "tmpfs",
            "/tmp",
            "tmpfs",
            nosuid | libc::MS_NODEV,
            "mode=1777",
        ),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            nosuid | libc::MS_NODEV,
            "mode=0755",
        ),
    ];
    for (src, target, fstype, flags, data) in steps {
        // A launcher may have mounted the target or something below it
        // (e.g. the agent's socket directory at /run/sandbox): never hide it.
        let below = format!("{target}/");
        if already.iter().any(|m| m == target || m.starts_with(&below)) {
            continue;
        }
        if let Err(e) = mount(src, target, fstype, flags, data) {
            eprintln!("sandbox-agent: mount {target}: {e}");
        }
    }
    if !std::path::Path::new("/dev/ptmx").exists() {
        let _ = std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx");
    }
    let _ = mount("", "/", "", libc::MS_REMOUNT, "");
    if let Err(e) = loopback_up() {
        eprintln!("sandbox-agent: bring up lo: {e}");
    }
    if let Ok(name) = std::fs::read_to_string("/etc/hostname")
        && let Err(e) = set_hostname(name.trim())
    {
        eprintln!("sandbox-agent: set hostname: {e}");
    }
    // SAFETY: called during start-up, before the runtime starts any thread.
    unsafe {
        std::env::set_var(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
        std::env::set_var("HOME", "/root");
        std::env::set_var("LANG", "C.UTF-8");
    }
}

/// `struct ifreq` with the `ifr_flags` member of its union.
#[repr(C)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _rest: [u8; 22],
}

fn loopback_up() -> std::io::Result<()> {
    // SAFETY: socket() takes integer arguments only.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: socket() succeeded; the descriptor is ours.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut req = IfReqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _rest: [0; 22],
    };
    req.name[..2].copy_from_slice(b"lo");
    // SAFETY: SIOCGIFFLAGS reads the name and writes the flags of `req`,
    // which is laid out as the kernel's struct ifreq (40 bytes).
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    req.flags |= libc::IFF_UP as libc::c_short;
    // SAFETY: as above; SIOCSIFFLAGS reads `req`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn set_hostname(name: &str) -> std::io::Result<()> {
    if name.is_empty() || name.len() > 64 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "hostname must have 1 to 64 bytes",
        ));
    }
    // SAFETY: sethostname reads `name.len()` bytes from the pointer.
    if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `_IOW('R', 0x03, int[2])`
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `_IO('R', 0x07)`
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

fn reseed(entropy: &[u8]) -> std::io::Result<()> {
    if entropy.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "no entropy given",
        ));
    }
    let random = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/random")?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = Vec::with_capacity(8 + entropy.len());
    let bits = i32::try_from(entropy.len() * 8).unwrap_or(i32::MAX);
    let bytes = i32::try_from(entropy.len()).unwrap_or(i32::MAX);
    info.extend_from_slice(&bits.to_ne_bytes());
    info.extend_from_slice(&bytes.to_ne_bytes());
    info.extend_from_slice(entropy);
    info.resize(8 + entropy.len().div_ceil(4) * 4, 0);
    // SAFETY: RNDADDENTROPY reads a rand_pool_info whose buffer holds
    // `buf_size` bytes; `info` is laid out that way and outlives the call.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Steps the clock if it is more than 50 ms off: smaller drift is left
/// alone, so a sandbox on the host's own clock is not touched.
fn set_clock(unix_time_ns: u64) -> StepOutcome {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0);
    if (now - unix_time_ns as i128).abs() <= 50_000_000 {
        return StepOutcome::Skipped("clock already within 50 ms".into());
    }
    let ts = libc::timespec {
        tv_sec: (unix_time_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (unix_time_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: clock_settime reads the timespec, valid for the call.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } < 0 {
        return StepOutcome::Failed(std::io::Error::last_os_error().to_string());
    }
    StepOutcome::Done
}

fn outcome(r: std::io::Result<()>) -> StepOutcome {
    match r {
        Ok(()) => StepOutcome::Done,
        Err(e) => StepOutcome::Failed(e.to_string()),
    }
}

const NOT_MANAGED: &str = "the agent does not manage this system (not PID 1, no --manage-system)";

pub fn forked(agent: &Agent, f: Forked) -> LifecycleReport {
    if !agent.config.manage_system {
        let s = StepOutcome::Skipped(NOT_MANAGED.into());
        return LifecycleReport {
            reseed: s.clone(),
            clock: s.clone(),
            hostname: s,
        };
    }
    LifecycleReport {
        reseed: outcome(reseed(&f.entropy)),
        clock: set_clock(f.unix_time_ns),
        hostname: outcome(set_hostname(&f.hostname)),
    }
}

pub fn resumed(agent: &Agent, r: Resumed) -> LifecycleReport {
    let skipped = |why: &str| StepOutcome::Skipped(why.into());
    LifecycleReport {
        reseed: skipped("not needed on resume"),
        clock: if agent.config.manage_system {
            set_clock(r.unix_time_ns)
        } else {
            skipped(NOT_MANAGED)
        },
        hostname: skipped("not needed on resume"),
    }
}

/// Ends the sandbox. As PID 1: every other process gets SIGTERM, then
/// SIGKILL after a second; filesystems are synced and the machine powers
/// off (in a PID namespace, that ends the namespace). Otherwise the agent
/// exits.
pub fn poweroff(pid1: bool) -> ! {
    if pid1 {
        // SAFETY: kill(-1) signals every process we may signal; sync and
        // reboot take no pointers.
        unsafe {
            libc::kill(-1, libc::SIGTERM);
        }
        std::thread::sleep(Duration::from_secs(1));
        // SAFETY: as above.
        unsafe {
            libc::kill(-1, libc::SIGKILL);
            libc::sync();
            libc::reboot(libc::RB_POWER_OFF);
        }
    }
    std::process::exit(0)
}
