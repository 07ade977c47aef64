//! Loading and checking the VM description `forge-vmm run --config vm.json`
//! reads. The types and their JSON are `vmm_proto::config`'s (re-exported
//! here); this module checks every value against the host before any KVM
//! call, so a bad file ends with one clear message and no half-built VM.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

pub use vmm_proto::config::{
    ApEntry, DiskConfig, VmConfig, VsockConfig, default_serial_log_max_bytes,
};

/// Most vCPUs a VM may have.
pub const MAX_VCPUS: u8 = 32;
/// Least memory a VM may have: the kernel is loaded at 16 MiB.
pub const MIN_MEM_MIB: u64 = 32;

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

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<VmConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text)
}

/// Parses and validates a config from JSON text.
pub fn parse(text: &str) -> Result<VmConfig, ConfigError> {
    let config: VmConfig = serde_json::from_str(text).map_err(ConfigError::Parse)?;
    validate(&config)?;
    Ok(config)
}

/// Checks every field against the host; touches no KVM state.
pub fn validate(config: &VmConfig) -> Result<(), ConfigError> {
    if config.vcpus == 0 || config.vcpus > MAX_VCPUS {
        return Err(field("vcpus", format!("must be 1..={MAX_VCPUS}")));
    }
    if config.mem_mib < MIN_MEM_MIB {
        return Err(field(
            "mem_mib",
            format!("must be at least {MIN_MEM_MIB}, got {}", config.mem_mib),
        ));
    }
    let host_mib = host_memory_mib();
    if config.mem_mib > host_mib {
        return Err(field(
            "mem_mib",
            format!(
                "{} MiB is more than the host's {host_mib} MiB of RAM",
                config.mem_mib
            ),
        ));
    }
    if config.cmdline.len() > crate::arch::CMDLINE_MAX_SIZE / 2 {
        return Err(field("cmdline", "too long"));
    }
    check_kernel(&config.kernel)?;
    if let Some(initrd) = &config.initrd {
        let meta = std::fs::metadata(initrd)
            .map_err(|e| field("initrd", format!("{}: {e}", initrd.display())))?;
        if meta.len() > config.mem_mib << 19 {
            return Err(field("initrd", "larger than half of guest memory"));
        }
    }
    for disk in &config.disks {
        check_disk(disk)?;
    }
    if let Some(vsock) = &config.vsock {
        if vsock.guest_cid < 3 {
            return Err(field("vsock.guest_cid", "must be 3 or more"));
        }
        check_socket_parent(&vsock.uds_path, "vsock.uds_path")?;
    }
    check_socket_parent(&config.control_socket, "control_socket")?;
    if let Some(parent) = config.serial_log.parent()
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
