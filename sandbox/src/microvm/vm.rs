//! One microVM sandbox on the host: its directory, its record, the
//! `forge-vmm` command lines that start it, and what `/proc` says about its
//! process.
//!
//! Layout of `<data_dir>/vms/<id>/`, the backend's: `vm.json` (the VMM's
//! config), `sandbox.json` (the [`VmRecord`]), `jail.json` (the VMM's
//! jail), `vmm.log` (the VMM's stderr), `root/` (empty on the host: the
//! jail's root is mounted there in the jail's own mount namespace) and
//! `vm/` ([`files_dir`]), the VMM's, owned by the jail's uid: `ctl.sock`,
//! `vsock.sock`, `serial.log`, `top.layer` (the writable disk layer over
//! the image's ext4) and `snapshot-<n>/` after a pause to disk. Whatever is
//! in `vm/` is the VMM's writing and hostile to the host: sockets there
//! are reached and logs read without following links
//! ([`NoFollow`], [`tail`]), and paths a VMM reports must lie in it. A
//! fork's children live in their parent's `vm/` (the VMM names their files
//! after the parent's) and their own directory holds only their record; a
//! directory is removed once neither its sandbox nor a descendant lives
//! (descendants' disk chains run through their ancestors' sealed layers).

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vmm_proto::config::{DiskConfig, VmConfig, VsockConfig, default_serial_log_max_bytes};

use super::MicrovmConfig;

use crate::error::{Error, Result};
use crate::spec::{Spec, State};

/// The record file inside a sandbox's directory.
pub const RECORD_FILE: &str = "sandbox.json";

/// Guest context id of every VM (each has its own vsock device and socket).
const GUEST_CID: u32 = 3;

/// What the backend remembers of one microVM sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    pub id: String,
    pub state: State,
    /// The VMM process, while there is one.
    pub pid: Option<i32>,
    pub control_socket: PathBuf,
    pub vsock_uds: PathBuf,
    pub serial_log: PathBuf,
    /// Added to every command's environment.
    pub env: Vec<(String, String)>,
    pub forked_from: Option<String>,
    /// Every ancestor, parent first: their directories hold this VM's
    /// sealed disk layers.
    pub lineage: Vec<String>,
    /// Snapshot directory of the last pause to disk.
    pub snapshot: Option<PathBuf>,
    /// The cgroup (named after the id of the VM whose jail it is) of a
    /// jailed VMM; `None`: unconfined (records from before the jail, or
    /// a backend configured without one).
    #[serde(default)]
    pub jail_group: Option<String>,
    /// What the jail binds read-only: the kernel, the image's ext4 and the
    /// `vm/` directories of its ancestors (their sealed layers).
    #[serde(default)]
    pub readable: Vec<PathBuf>,
    #[serde(default)]
    pub mem_mib: u64,
    #[serde(default)]
    pub vcpus: u8,
}

impl VmRecord {
    /// The directory the VMM writes in: where its control socket is.
    pub fn files(&self) -> PathBuf {
        self.control_socket
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }
}

/// The directory a VM's VMM owns inside its sandbox directory `dir`.
pub fn files_dir(dir: &Path) -> PathBuf {
    dir.join("vm")
}

/// The jail's root mount point inside `dir`.
pub fn jail_root(dir: &Path) -> PathBuf {
    dir.join("root")
}

/// A path in VMM-owned space, opened without following a link in its
/// last component (the directories above it are the backend's) and
/// reachable as `/proc/self/fd/<n>` while this value lives.
#[derive(Debug)]
pub struct NoFollow {
    _fd: std::os::fd::OwnedFd,
    path: PathBuf,
}

impl NoFollow {
    /// Opens `path` (`O_PATH | O_NOFOLLOW`): a link there is opened as
    /// the link itself, never what it leads to.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
            .open(path)?;
        let fd: std::os::fd::OwnedFd = file.into();
        let path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        Ok(Self { _fd: fd, path })
    }

    /// A Unix socket at `path`: anything else (a link, a file) is refused.
    pub fn socket(path: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::FileTypeExt;
        let opened = Self::open(path)?;
        if !fs::metadata(&opened.path)?.file_type().is_socket() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{} is not a socket", path.display()),
            ));
        }
        Ok(opened)
    }

    /// The path that reaches the opened file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl VmRecord {
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(RECORD_FILE);
        let text = fs::read(&path).map_err(Error::io(&path))?;
        serde_json::from_slice(&text).map_err(|e| Error::Io {
            path,
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })
    }

    /// Write atomically: a crash leaves the old record or the new one.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(RECORD_FILE);
        let tmp = dir.join(format!("{RECORD_FILE}.tmp"));
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| Error::Io {
            path: path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?;
        fs::write(&tmp, bytes).map_err(Error::io(&tmp))?;
        fs::rename(&tmp, &path).map_err(Error::io(&path))
    }
}

/// A fresh microVM sandbox id.
pub fn new_id() -> String {
    sandbox_container::backend::new_id("vm")
}

/// The VMM config of a new sandbox whose VMM writes in `dir`.
pub fn vm_config(spec: &Spec, ext4: &Path, backend: &MicrovmConfig, dir: &Path) -> VmConfig {
    VmConfig {
        vcpus: spec.vcpus,
        mem_mib: spec.mem_mib,
        kernel: backend.kernel.clone(),
        cmdline: backend.cmdline.clone(),
        initrd: None,
        disks: vec![DiskConfig {
            base: ext4.to_owned(),
            layers: vec![dir.join("top.layer")],
            read_only: false,
        }],
        vsock: Some(VsockConfig {
            guest_cid: GUEST_CID,
            uds_path: dir.join("vsock.sock"),
        }),
        rng: true,
        serial_log: dir.join("serial.log"),
        serial_log_max_bytes: default_serial_log_max_bytes(),
        control_socket: dir.join("ctl.sock"),
        ap_entry: backend.ap_entry,
    }
}

/// Arguments of `forge-vmm` to boot the VM configured in `config_path`.
pub fn run_args(config_path: &Path) -> Vec<std::ffi::OsString> {
    vec!["run".into(), "--config".into(), config_path.into()]
}

/// Arguments of `forge-vmm` to restore `record` from `snapshot`, on the
/// record's own sockets and log.
pub fn restore_args(snapshot: &Path, record: &VmRecord) -> Vec<std::ffi::OsString> {
    vec![
        "restore".into(),
        "--from".into(),
        snapshot.into(),
        "--control-socket".into(),
        record.control_socket.clone().into(),
        "--vsock".into(),
        record.vsock_uds.clone().into(),
        "--serial-log".into(),
        record.serial_log.clone().into(),
    ]
}

/// Whether `pid` is a live (not zombie) process.
pub fn alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesised command.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Blocks the files under `dir` occupy (memory files are sparse), in
/// bytes; what cannot be read counts as nothing.
pub fn allocated_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => allocated_bytes(&entry.path()),
            Ok(meta) => meta.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// Resident memory and CPU time of `pid` from `/proc`.
pub fn usage(pid: i32) -> (u64, u64) {
    let rss_kib = fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    (rss_kib * 1024, cpu_ns(pid))
}

/// CPU time of every thread of `pid`, in nanoseconds: the scheduler's own
/// count (`/proc/PID/task/*/schedstat`), else `utime + stime` in clock
/// ticks, which reads 0 for a VMM that used less than one tick (10 ms).
fn cpu_ns(pid: i32) -> u64 {
    let scheduled = fs::read_dir(format!("/proc/{pid}/task")).ok().map(|tasks| {
        tasks
            .flatten()
            .filter_map(|task| fs::read_to_string(task.path().join("schedstat")).ok())
            .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
            .sum::<u64>()
    });
    if let Some(ns) = scheduled.filter(|ns| *ns > 0) {
        return ns;
    }
    let ticks = fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let rest = stat.rsplit_once(')')?.1.to_owned();
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime are fields 14 and 15; `rest` starts at field 3.
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            Some(utime + stime)
        })
        .unwrap_or(0);
    // USER_HZ is 100 on every Linux ABI this runs on.
    ticks * 10_000_000
}

/// The last `max` bytes of a log, for error messages; a link is not
/// followed (the log may be in VMM-owned space).
pub fn tail(path: &Path, max: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(mut file) = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    else {
        return String::new();
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(max as u64)));
    let mut text = Vec::new();
    let _ = file.take(max as u64).read_to_end(&mut text);
    String::from_utf8_lossy(&text).trim().to_owned()
}

/// Whether `path` (reported by a VMM) names an entry directly in `dir`,
/// without `.` or `..`.
pub fn directly_in(path: &Path, dir: &Path) -> bool {
    path.parent() == Some(dir) && path.file_name().is_some_and(|n| n != "." && n != "..")
}

/// Directories under `vms` that no live sandbox needs: holding no record,
/// not the home of a live one, not an ancestor of one, not named by an id
/// `in_flight` (a VM being set up has its directory before its record).
pub fn unneeded_dirs(
    vms: &Path,
    live: &[VmRecord],
    in_flight: impl Fn(&str) -> bool,
) -> Vec<PathBuf> {
    let needed: std::collections::HashSet<&str> = live
        .iter()
        .flat_map(|r| std::iter::once(r.id.as_str()).chain(r.lineage.iter().map(String::as_str)))
        .collect();
    fs::read_dir(vms)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| !needed.contains(e.file_name().to_string_lossy().as_ref()))
                // Before the record check: a VM no longer in flight has
                // written its record (or removed its directory) by now.
                .filter(|e| !in_flight(e.file_name().to_string_lossy().as_ref()))
                // A record that failed to load still marks a sandbox.
                .filter(|e| !e.path().join(RECORD_FILE).exists())
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Image;

    fn record(id: &str, lineage: &[&str]) -> VmRecord {
        VmRecord {
            id: id.into(),
            state: State::Running,
            pid: None,
            control_socket: PathBuf::from("/v/ctl.sock"),
            vsock_uds: PathBuf::from("/v/vsock.sock"),
            serial_log: PathBuf::from("/v/serial.log"),
            env: Vec::new(),
            forked_from: lineage.first().map(|s| (*s).to_owned()),
            lineage: lineage.iter().map(|s| (*s).to_owned()).collect(),
            snapshot: None,
            jail_group: None,
            readable: Vec::new(),
            mem_mib: 64,
            vcpus: 1,
        }
    }

    #[test]
    fn a_reported_path_counts_only_directly_in_its_directory() {
        let dir = Path::new("/d/vm");
        assert!(directly_in(Path::new("/d/vm/ctl.sock.f1c0"), dir));
        for outside in [
            "/d/other/ctl.sock",
            "/d/vm/sub/x",
            "/d/vm/..",
            "/d/vm",
            "ctl.sock",
        ] {
            assert!(!directly_in(Path::new(outside), dir), "{outside}");
        }
    }

    #[test]
    fn sockets_and_logs_behind_a_link_are_not_followed() {
        let dir = std::env::temp_dir().join(format!("vm-nofollow-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let secret = dir.join("secret");
        std::fs::write(&secret, "host secret").expect("secret");
        let link = dir.join("serial.log");
        std::os::unix::fs::symlink(&secret, &link).expect("link");
        assert_eq!(tail(&link, 100), "", "a link planted as the log was read");
        assert_eq!(tail(&secret, 100), "host secret");
        let listener = std::os::unix::net::UnixListener::bind(dir.join("real.sock")).expect("bind");
        let sock_link = dir.join("ctl.sock");
        std::os::unix::fs::symlink(dir.join("real.sock"), &sock_link).expect("link");
        NoFollow::socket(&sock_link).expect_err("a link planted as the socket");
        NoFollow::socket(&secret).expect_err("a file is not a socket");
        let real = NoFollow::socket(&dir.join("real.sock")).expect("the socket itself");
        std::os::unix::net::UnixStream::connect(real.path()).expect("connects through the fd");
        drop(listener);
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn config_puts_every_file_in_the_sandbox_dir() {
        let mut spec = Spec::new(Image::root("/img/rootfs"));
        spec.vcpus = 2;
        spec.mem_mib = 256;
        let dir = Path::new("/data/vms/vm1");
        let mut backend = MicrovmConfig::new("/data", "/k");
        backend.cmdline = "console=ttyS0".into();
        let config = vm_config(&spec, Path::new("/img/rootfs.ext4"), &backend, dir);
        let in_dir = |name: &str| PathBuf::from("/data/vms/vm1").join(name);
        assert_eq!(
            config,
            VmConfig {
                vcpus: 2,
                mem_mib: 256,
                kernel: "/k".into(),
                cmdline: "console=ttyS0".into(),
                initrd: None,
                disks: vec![DiskConfig {
                    base: "/img/rootfs.ext4".into(),
                    layers: vec![in_dir("top.layer")],
                    read_only: false,
                }],
                vsock: Some(VsockConfig {
                    guest_cid: GUEST_CID,
                    uds_path: in_dir("vsock.sock"),
                }),
                rng: true,
                serial_log: in_dir("serial.log"),
                serial_log_max_bytes: default_serial_log_max_bytes(),
                control_socket: in_dir("ctl.sock"),
                ap_entry: vmm_proto::config::ApEntry::Sipi,
            }
        );
        // The VMM parses the file as written, with the same types.
        let text = serde_json::to_vec_pretty(&config).expect("serialise");
        let back: VmConfig = serde_json::from_slice(&text).expect("forge-vmm's own parser");
        assert_eq!(back, config);
    }

    #[test]
    fn restore_names_the_records_sockets() {
        let args = restore_args(Path::new("/s"), &record("vm1", &[]));
        let args: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "restore",
                "--from",
                "/s",
                "--control-socket",
                "/v/ctl.sock",
                "--vsock",
                "/v/vsock.sock",
                "--serial-log",
                "/v/serial.log"
            ]
        );
    }

    #[test]
    fn ancestors_of_live_forks_are_kept() {
        let vms = std::env::temp_dir().join(format!("sandbox-gc-{}", std::process::id()));
        for id in ["a", "b", "c", "d", "e"] {
            fs::create_dir_all(vms.join(id)).expect("dir");
        }
        for id in ["c", "e"] {
            fs::write(vms.join(id).join(RECORD_FILE), "{}").expect("record");
        }
        // c is a fork of b, a fork of a; d is unrelated and gone; e has a
        // record that does not load: it stays.
        let live = [record("c", &["b", "a"])];
        let mut gone = unneeded_dirs(&vms, &live, |_| false);
        gone.sort();
        assert_eq!(gone, vec![vms.join("d")]);
        // d without a record yet, but being set up: kept.
        assert!(unneeded_dirs(&vms, &live, |id| id == "d").is_empty());
        fs::remove_dir_all(&vms).expect("clean up");
    }

    #[test]
    fn own_process_is_alive_and_uses_memory() {
        let me = i32::try_from(std::process::id()).expect("pid fits");
        assert!(alive(me));
        assert!(!alive(i32::MAX));
        let (rss, _cpu) = usage(me);
        assert!(rss > 1 << 20, "RSS of a test process: {rss}");
    }
}
