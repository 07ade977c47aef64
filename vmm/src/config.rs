//! The VM description `forge-vmm run --config vm.json` reads, and its
//! validation. Everything here is checked before any KVM call so a bad file
//! ends with one clear message and no half-built VM.
//!
//! ```json
//! { "vcpus": 2, "mem_mib": 128, "kernel": "vmlinux", "cmdline": "console=ttyS0",
//!   "initrd": null,
//!   "disks": [{ "base": "base.img", "layers": ["top.layer"], "read_only": false }],
//!   "vsock": { "guest_cid": 3, "uds_path": "/run/vm/vsock.sock" },
//!   "rng": true, "serial_log": "serial.log", "control_socket": "ctl.sock",
//!   "ap_entry": "sipi" }
//! ```

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Most vCPUs a VM may have.
pub const MAX_VCPUS: u8 = 32;
/// Least memory a VM may have: the kernel is loaded at 16 MiB.
pub const MIN_MEM_MIB: u64 = 32;

/// How application processors start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApEntry {
    /// APs wait for INIT/SIPI from the boot CPU, as Linux expects.
    #[default]
    Sipi,
    /// Every vCPU enters the kernel entry point at once in long mode, with
    /// its index in `rdi` (used by the freestanding test guests). Only
    /// vCPU 0 has a stack; the others start with `rsp = 0` and must set
    /// their own before pushing anything.
    KernelEntry,
}

/// One VM.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Number of vCPUs.
    pub vcpus: u8,
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// ELF vmlinux or bzImage.
    pub kernel: PathBuf,
    /// Kernel command line (virtio-mmio devices are appended).
    #[serde(default)]
    pub cmdline: String,
    /// Optional initrd.
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Block devices, in the order the guest sees them.
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// Optional vsock device.
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// Whether to add a virtio-rng device.
    #[serde(default)]
    pub rng: bool,
    /// File the serial console is written to.
    pub serial_log: PathBuf,
    /// Most bytes the serial log may hold; later guest output is dropped
    /// (a line in the log says so).
    #[serde(default = "default_serial_log_max_bytes")]
    pub serial_log_max_bytes: u64,
    /// Control socket (JSON lines).
    pub control_socket: PathBuf,
    /// How APs start.
    #[serde(default)]
    pub ap_entry: ApEntry,
}

/// The serial log's cap unless a config sets one: 16 MiB.
pub fn default_serial_log_max_bytes() -> u64 {
    16 << 20
}

/// A layered copy-on-write disk: read-only base plus overlay layers.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// Read-only base image (raw).
    pub base: PathBuf,
    /// Overlay layers, bottom first. All must exist except the last, the
    /// writable top, which is created when missing. Empty: the base alone,
    /// which then must be `read_only`.
    #[serde(default)]
    pub layers: Vec<PathBuf>,
    /// The guest may not write.
    #[serde(default)]
    pub read_only: bool,
}

/// The host side of virtio-vsock.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// Context id of the guest (3 or more).
    pub guest_cid: u32,
    /// Unix socket the host connects to; guest connections go to `<uds_path>_<port>`.
    pub uds_path: PathBuf,
}

/// Why a configuration was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("Cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The JSON is malformed or has unknown fields.
    #[error("Invalid config: {0}")]
    Parse(#[source] serde_json::Error),
    /// A field has a value out of range.
    #[error("Invalid config field `{field}`: {reason}")]
    Field {
        /// Field name.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The kernel image is unusable.
    #[error("Kernel {path}: {reason}")]
    Kernel {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A disk file is missing or unreadable.
    #[error("Disk {path}: {reason}")]
    Disk {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

fn field(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        field,
        reason: reason.into(),
    }
}

impl VmConfig {
    /// Reads and validates a config file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json(&text)
    }

    /// Parses and validates a config from JSON text.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let config: VmConfig = serde_json::from_str(text).map_err(ConfigError::Parse)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every field against the host; touches no KVM state.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(field("vcpus", format!("must be 1..={MAX_VCPUS}")));
        }
        if self.mem_mib < MIN_MEM_MIB {
            return Err(field(
                "mem_mib",
                format!("must be at least {MIN_MEM_MIB}, got {}", self.mem_mib),
            ));
        }
        let host_mib = host_memory_mib();
        if self.mem_mib > host_mib {
            return Err(field(
                "mem_mib",
                format!(
                    "{} MiB is more than the host's {host_mib} MiB of RAM",
                    self.mem_mib
                ),
            ));
        }
        if self.cmdline.len() > crate::arch::CMDLINE_MAX_SIZE / 2 {
            return Err(field("cmdline", "too long"));
        }
        check_kernel(&self.kernel)?;
        if let Some(initrd) = &self.initrd {
            let meta = std::fs::metadata(initrd)
                .map_err(|e| field("initrd", format!("{}: {e}", initrd.display())))?;
            if meta.len() > self.mem_mib << 19 {
                return Err(field("initrd", "larger than half of guest memory"));
            }
        }
        for disk in &self.disks {
            check_disk(disk)?;
        }
        if let Some(vsock) = &self.vsock {
            if vsock.guest_cid < 3 {
                return Err(field("vsock.guest_cid", "must be 3 or more"));
            }
            check_socket_parent(&vsock.uds_path, "vsock.uds_path")?;
        }
        check_socket_parent(&self.control_socket, "control_socket")?;
        if let Some(parent) = self.serial_log.parent()
            && !parent.as_os_str().is_empty()
            && !parent.is_dir()
        {
            return Err(field(
                "serial_log",
                format!("directory {} does not exist", parent.display()),
            ));
        }
        Ok(())
    }
}

fn check_socket_parent(path: &Path, name: &'static str) -> Result<(), ConfigError> {
    // sun_path holds 108 bytes with the NUL; vsock adds `_<port>`.
    if path.as_os_str().len() > 90 {
        return Err(field(name, "path longer than 90 bytes"));
    }
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() && !p.is_dir() => Err(field(
            name,
            format!("directory {} does not exist", p.display()),
        )),
        _ => Ok(()),
    }
}

fn check_disk(disk: &DiskConfig) -> Result<(), ConfigError> {
    let meta = std::fs::metadata(&disk.base).map_err(|e| ConfigError::Disk {
        path: disk.base.clone(),
        reason: e.to_string(),
    })?;
    if !meta.is_file() {
        return Err(ConfigError::Disk {
            path: disk.base.clone(),
            reason: "not a regular file".into(),
        });
    }
    if disk.layers.is_empty() && !disk.read_only {
        return Err(ConfigError::Disk {
            path: disk.base.clone(),
            reason: "a writable disk needs at least one layer".into(),
        });
    }
    let below_top = disk.layers.len().saturating_sub(1);
    for layer in &disk.layers[..below_top] {
        if !layer.is_file() {
            return Err(ConfigError::Disk {
                path: layer.clone(),
                reason: "layer does not exist".into(),
            });
        }
    }
    Ok(())
}

/// The host's RAM in MiB, from /proc/meminfo (u64::MAX when unknown).
pub fn host_memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(u64::MAX, |kib| kib / 1024)
}

/// Checks the kernel is a complete ELF64 or a bzImage.
fn check_kernel(path: &Path) -> Result<(), ConfigError> {
    let err = |reason: String| ConfigError::Kernel {
        path: path.to_owned(),
        reason,
    };
    let mut file = File::open(path).map_err(|e| err(e.to_string()))?;
    let len = file.metadata().map_err(|e| err(e.to_string()))?.len();
    let mut head = vec![0u8; 1024.min(len as usize)];
    file.read_exact(&mut head).map_err(|e| err(e.to_string()))?;
    if head.starts_with(b"\x7fELF") {
        return check_elf(&head, len, &mut file).map_err(err);
    }
    if head.len() >= 0x206 && &head[0x202..0x206] == b"HdrS" {
        let setup_sects = u64::from(head[0x1f1].max(4));
        let syssize = u64::from(u32::from_le_bytes([
            head[0x1f4],
            head[0x1f5],
            head[0x1f6],
            head[0x1f7],
        ]));
        if (setup_sects + 1) * 512 + syssize * 16 > len + 16 {
            return Err(err("bzImage is truncated".into()));
        }
        return Ok(());
    }
    Err(err("not an ELF or bzImage kernel".into()))
}

fn check_elf(head: &[u8], len: u64, file: &mut File) -> Result<(), String> {
    use std::io::{Seek, SeekFrom};
    if head.len() < 64 {
        return Err("ELF header is truncated".into());
    }
    if head[4] != 2 || head[5] != 1 {
        return Err("not a little-endian ELF64 file".into());
    }
    let u16_at = |o: usize| u16::from_le_bytes([head[o], head[o + 1]]);
    let u64_at = |b: &[u8], o: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(a)
    };
    if u16_at(18) != 62 {
        return Err("ELF machine is not x86_64".into());
    }
    let phoff = u64_at(head, 32);
    let phentsize = u64::from(u16_at(54));
    let phnum = u64::from(u16_at(56));
    if phnum == 0 || phentsize < 56 {
        return Err("ELF has no program headers".into());
    }
    let table_end = phoff.saturating_add(phentsize * phnum);
    if table_end > len {
        return Err("ELF program headers are truncated".into());
    }
    // Section headers sit at the end of a linked image: a file cut anywhere
    // loses them, even when every loadable segment is still whole.
    let shoff = u64_at(head, 40);
    let sh_end = shoff.saturating_add(u64::from(u16_at(58)) * u64::from(u16_at(60)));
    if shoff != 0 && sh_end > len {
        return Err("ELF is truncated: section headers are past the end".into());
    }
    let mut table = vec![0u8; (phentsize * phnum) as usize];
    file.seek(SeekFrom::Start(phoff))
        .and_then(|_| file.read_exact(&mut table))
        .map_err(|e| e.to_string())?;
    for i in 0..phnum as usize {
        let ph = &table[i * phentsize as usize..];
        let p_type = u32::from_le_bytes([ph[0], ph[1], ph[2], ph[3]]);
        if p_type != 1 {
            continue;
        }
        let end = u64_at(ph, 8).saturating_add(u64_at(ph, 32));
        if end > len {
            return Err(format!(
                "ELF is truncated: a segment ends at byte {end}, the file has {len}"
            ));
        }
    }
    Ok(())
}
