//! Which backend this host can run, and why (ARCHITECTURE.md "Hosts").
//!
//! A microVM needs `/dev/kvm` and a guest kernel that boots on it. With
//! hardware virtualisation (VMX/SVM) the guest kernel built by
//! `vmm/guest/kernel` boots. Under PVM (`kvm_pvm` loaded, no VMX/SVM) guest
//! ring 0 is emulated and a standard kernel does not boot: only a
//! PVM-capable kernel named by `FORGE_GUEST_KERNEL` does. Otherwise the
//! container backend serves, if the host has what it needs (root, cgroups,
//! overlayfs, btrfs-progs).
//!
//! [`HostFacts::gather`] reads the host; [`decide`] is the pure rule, so it
//! is tested on every combination, not only on the host at hand.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::spec::BackendKind;

/// Environment variable naming a guest kernel known to boot on this host.
pub const GUEST_KERNEL_ENV: &str = "FORGE_GUEST_KERNEL";

/// What the probe looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// `/dev/kvm` opens read-write.
    pub kvm: bool,
    /// The `kvm_pvm` module is loaded.
    pub pvm: bool,
    /// The CPU flags include `vmx` or `svm`.
    pub hardware_virt: bool,
    /// The guest kernel the microVM backend would boot, if one exists.
    pub guest_kernel: Option<PathBuf>,
    /// The kernel was named by [`GUEST_KERNEL_ENV`]: the operator says it
    /// boots here (needed under PVM).
    pub kernel_named_by_env: bool,
    /// Why the container backend cannot run, if it cannot.
    pub container_missing: Option<String>,
}

/// The backend chosen and a sentence saying why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub backend: BackendKind,
    pub reason: String,
}

impl std::fmt::Display for Choice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.backend, self.reason)
    }
}

fn cpu_has_virt_flag(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

fn container_missing() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not running as root".into());
    }
    if !Path::new("/sys/fs/cgroup").is_dir() {
        return Some("no cgroup file system at /sys/fs/cgroup".into());
    }
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !filesystems.lines().any(|l| l.ends_with("overlay")) {
        return Some("the kernel has no overlayfs".into());
    }
    if !on_path("btrfs") || !on_path("mkfs.btrfs") {
        return Some("btrfs-progs is not installed".into());
    }
    None
}

impl HostFacts {
    /// Read the host. `kernel` is the guest kernel the forge is configured
    /// with; [`GUEST_KERNEL_ENV`] overrides it.
    pub fn gather(kernel: Option<&Path>) -> Self {
        let from_env = std::env::var_os(GUEST_KERNEL_ENV).map(PathBuf::from);
        let kernel_named_by_env = from_env.is_some();
        let guest_kernel = from_env
            .or_else(|| kernel.map(Path::to_path_buf))
            .filter(|k| k.is_file());
        Self {
            kvm: std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/kvm")
                .is_ok(),
            pvm: Path::new("/sys/module/kvm_pvm").exists(),
            hardware_virt: std::fs::read_to_string("/proc/cpuinfo")
                .is_ok_and(|c| cpu_has_virt_flag(&c)),
            guest_kernel,
            kernel_named_by_env,
            container_missing: container_missing(),
        }
    }
}

/// Pick the backend for `facts`.
pub fn decide(facts: &HostFacts) -> Result<Choice> {
    let microvm_blocker = if !facts.kvm {
        Some("no usable /dev/kvm".to_owned())
    } else if facts.hardware_virt {
        match &facts.guest_kernel {
            Some(kernel) => {
                return Ok(Choice {
                    backend: BackendKind::Microvm,
                    reason: format!(
                        "kvm has hardware virtualisation; booting {}",
                        kernel.display()
                    ),
                });
            }
            None => Some("kvm has hardware virtualisation but no guest kernel is built".into()),
        }
    } else if facts.pvm {
        match (&facts.guest_kernel, facts.kernel_named_by_env) {
            (Some(kernel), true) => {
                return Ok(Choice {
                    backend: BackendKind::Microvm,
                    reason: format!(
                        "kvm is PVM and {GUEST_KERNEL_ENV} names a kernel that boots on it ({})",
                        kernel.display()
                    ),
                });
            }
            _ => Some("kvm is PVM: the guest kernel cannot boot".into()),
        }
    } else {
        Some("kvm has neither VMX/SVM nor PVM".into())
    };
    let blocker = microvm_blocker.unwrap_or_default();
    match &facts.container_missing {
        None => Ok(Choice {
            backend: BackendKind::Container,
            reason: format!("{blocker}; using container"),
        }),
        Some(missing) => Err(Error::NoBackend(format!(
            "{blocker}, and containers cannot run: {missing}"
        ))),
    }
}

/// Decide which backend this host supports (`kernel`: the configured guest
/// kernel, if any).
pub fn probe(kernel: Option<&Path>) -> Result<Choice> {
    decide(&HostFacts::gather(kernel))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> HostFacts {
        HostFacts {
            kvm: true,
            pvm: false,
            hardware_virt: true,
            guest_kernel: Some(PathBuf::from("/k/vmlinux")),
            kernel_named_by_env: false,
            container_missing: None,
        }
    }

    #[test]
    fn hardware_kvm_with_a_kernel_picks_microvm() {
        let choice = decide(&facts()).expect("choice");
        assert_eq!(choice.backend, BackendKind::Microvm);
        assert!(choice.reason.contains("/k/vmlinux"), "{choice}");
    }

    #[test]
    fn pvm_needs_a_kernel_named_by_the_operator() {
        let pvm = HostFacts {
            pvm: true,
            hardware_virt: false,
            ..facts()
        };
        let choice = decide(&pvm).expect("choice");
        assert_eq!(choice.backend, BackendKind::Container);
        assert_eq!(
            choice.reason,
            "kvm is PVM: the guest kernel cannot boot; using container"
        );
        let named = HostFacts {
            kernel_named_by_env: true,
            ..pvm
        };
        assert_eq!(
            decide(&named).expect("choice").backend,
            BackendKind::Microvm
        );
    }

    #[test]
    fn no_kvm_or_no_kernel_falls_back_to_containers() {
        let no_kvm = HostFacts {
            kvm: false,
            ..facts()
        };
        let choice = decide(&no_kvm).expect("choice");
        assert_eq!(choice.backend, BackendKind::Container);
        assert!(choice.reason.starts_with("no usable /dev/kvm"), "{choice}");
        let no_kernel = HostFacts {
            guest_kernel: None,
            ..facts()
        };
        let choice = decide(&no_kernel).expect("choice");
        assert_eq!(choice.backend, BackendKind::Container);
        assert!(choice.reason.contains("no guest kernel"), "{choice}");
    }

    #[test]
    fn neither_backend_is_an_error_naming_both_reasons() {
        let nothing = HostFacts {
            kvm: false,
            container_missing: Some("not running as root".into()),
            ..facts()
        };
        let err = decide(&nothing).expect_err("no backend");
        let text = err.to_string();
        assert!(
            text.contains("/dev/kvm") && text.contains("not running as root"),
            "{text}"
        );
    }

    #[test]
    fn cpu_flags_are_read_from_the_flags_line() {
        assert!(cpu_has_virt_flag("flags\t\t: fpu vme vmx sse\n"));
        assert!(!cpu_has_virt_flag(
            "flags\t\t: fpu vme sse\nmodel name: svm\n"
        ));
    }
}
