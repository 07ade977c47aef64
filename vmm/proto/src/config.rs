//! The VM description `forge-vmm run --config vm.json` reads (and a
//! snapshot's state file carries): one JSON object, unknown fields refused.
//! Checking the values against the host is the VMM's business
//! (`vmm::config::validate`); this module only defines the shape.
//!
//! ```json
//! { "vcpus": 2, "mem_mib": 128, "kernel": "vmlinux", "cmdline": "console=ttyS0",
//!   "initrd": null,
//!   "disks": [{ "base": "base.img", "layers": ["top.layer"], "read_only": false }],
//!   "vsock": { "guest_cid": 3, "uds_path": "/run/vm/vsock.sock" },
//!   "rng": true, "serial_log": "serial.log", "serial_log_max_bytes": 16777216,
//!   "control_socket": "ctl.sock", "ap_entry": "sipi" }
//! ```
//!
//! Required: `vcpus`, `mem_mib`, `kernel`, `serial_log`, `control_socket`;
//! every other field has the default the types below name.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Control socket (JSON lines, see [`crate::control`]).
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// Context id of the guest (3 or more).
    pub guest_cid: u32,
    /// Unix socket the host connects to; guest connections go to `<uds_path>_<port>`.
    pub uds_path: PathBuf,
}

/// The host uid and gid jailed VMMs run as unless configured: the first id
/// past the container backend's pool of user-namespace ranges (2^30 +
/// 8,192 × 65,536), which no host account uses.
pub const DEFAULT_JAIL_ID: u32 = 1_610_612_736;

/// Where and as whom `forge-vmm run|restore --jail jail.json` confines
/// itself before it builds the VM (see the `vmm::jail` module): new mount,
/// PID, network, IPC, UTS and user namespaces, a root of its own, an
/// unprivileged uid and gid, its cgroup, no capabilities, no new
/// privileges, and a seccomp allow-list per thread kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailConfig {
    /// An empty directory: the jail's root file system (a small tmpfs) is
    /// mounted on it in the jail's own mount namespace, so the host sees
    /// it empty.
    pub root: PathBuf,
    /// Host uid and gid the VMM runs as (mapped to themselves in its user
    /// namespace). They own the writable directories.
    pub uid: u32,
    pub gid: u32,
    /// `cgroup.procs` files (one per hierarchy) the VMM joins before it
    /// does anything else; the caller creates the groups and sets limits.
    #[serde(default)]
    pub cgroups: Vec<PathBuf>,
    /// Directories bound read-write at their own paths: where the control
    /// socket, vsock socket, serial log, writable disk layer, snapshots
    /// and fork children's files live.
    pub writable: Vec<PathBuf>,
    /// Files and directories bound read-only at their own paths: the
    /// kernel, initrd, disk bases and the directories of sealed layers.
    /// The jail holds nothing else, whatever a snapshot's state file
    /// (written by a VMM, so not trusted) names.
    #[serde(default)]
    pub readable: Vec<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> VmConfig {
        VmConfig {
            vcpus: 2,
            mem_mib: 128,
            kernel: "vmlinux".into(),
            cmdline: "console=ttyS0".into(),
            initrd: None,
            disks: vec![DiskConfig {
                base: "base.img".into(),
                layers: vec!["top.layer".into()],
                read_only: false,
            }],
            vsock: Some(VsockConfig {
                guest_cid: 3,
                uds_path: "/run/vm/vsock.sock".into(),
            }),
            rng: true,
            serial_log: "serial.log".into(),
            serial_log_max_bytes: 16 << 20,
            control_socket: "ctl.sock".into(),
            ap_entry: ApEntry::Sipi,
        }
    }

    #[test]
    fn a_config_is_written_with_these_field_names_in_this_order() {
        let json = serde_json::to_string(&full()).expect("serialise");
        assert_eq!(
            json,
            concat!(
                r#"{"vcpus":2,"mem_mib":128,"kernel":"vmlinux","cmdline":"console=ttyS0","#,
                r#""initrd":null,"disks":[{"base":"base.img","layers":["top.layer"],"read_only":false}],"#,
                r#""vsock":{"guest_cid":3,"uds_path":"/run/vm/vsock.sock"},"rng":true,"#,
                r#""serial_log":"serial.log","serial_log_max_bytes":16777216,"#,
                r#""control_socket":"ctl.sock","ap_entry":"sipi"}"#
            )
        );
        let back: VmConfig = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, full());
    }

    #[test]
    fn the_module_example_parses() {
        let example = r#"{ "vcpus": 2, "mem_mib": 128, "kernel": "vmlinux", "cmdline": "console=ttyS0",
          "initrd": null,
          "disks": [{ "base": "base.img", "layers": ["top.layer"], "read_only": false }],
          "vsock": { "guest_cid": 3, "uds_path": "/run/vm/vsock.sock" },
          "rng": true, "serial_log": "serial.log", "serial_log_max_bytes": 16777216,
          "control_socket": "ctl.sock", "ap_entry": "sipi" }"#;
        let config: VmConfig = serde_json::from_str(example).expect("parse");
        assert_eq!(config, full());
    }

    #[test]
    fn optional_fields_take_their_defaults() {
        let config: VmConfig = serde_json::from_str(
            r#"{"vcpus":1,"mem_mib":64,"kernel":"k","serial_log":"s","control_socket":"c"}"#,
        )
        .expect("parse");
        assert_eq!(config.cmdline, "");
        assert_eq!(config.initrd, None);
        assert!(config.disks.is_empty());
        assert_eq!(config.vsock, None);
        assert!(!config.rng);
        assert_eq!(config.serial_log_max_bytes, default_serial_log_max_bytes());
        assert_eq!(config.ap_entry, ApEntry::Sipi);
    }

    #[test]
    fn unknown_fields_and_ap_entries_are_refused() {
        let base = r#""vcpus":1,"mem_mib":64,"kernel":"k","serial_log":"s","control_socket":"c""#;
        let with = |extra: &str| serde_json::from_str::<VmConfig>(&format!("{{{base},{extra}}}"));
        assert!(with(r#""vcpu_count":2"#).is_err());
        assert!(with(r#""ap_entry":"broadcast""#).is_err());
        assert!(with(r#""disks":[{"base":"b","layers":[],"readonly":true}]"#).is_err());
        let entry = with(r#""ap_entry":"kernel_entry""#).expect("kernel_entry");
        assert_eq!(entry.ap_entry, ApEntry::KernelEntry);
    }
}
