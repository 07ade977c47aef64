//! Capabilities and rlimits of sandbox processes.
//!
//! Processes in a sandbox run as root of the sandbox's user namespace (an
//! unprivileged id on the host; capabilities count only inside) with the
//! capability bounding set cut down to [`KEPT`]: what
//! package managers, `chown`, `su`-style uid switches and servers on low
//! ports need, and nothing that reaches beyond the sandbox's namespaces.
//! Dropped on purpose, among others: `CAP_SYS_ADMIN` (mount, namespaces,
//! many ioctls), `CAP_SYS_MODULE`, `CAP_SYS_PTRACE`, `CAP_SYS_BOOT`,
//! `CAP_SYS_TIME` (the clock is the host's), `CAP_SYS_RAWIO`, `CAP_MKNOD`
//! (no new device nodes), `CAP_NET_ADMIN`, `CAP_NET_RAW`, `CAP_SYS_RESOURCE`
//! (cannot raise rlimits above the hard limit), `CAP_DAC_READ_SEARCH`
//! (open_by_handle_at), `CAP_BPF`, `CAP_PERFMON`, `CAP_SYSLOG`,
//! `CAP_AUDIT_CONTROL`, `CAP_MAC_*`, `CAP_LINUX_IMMUTABLE`, `CAP_IPC_LOCK`,
//! `CAP_SYS_NICE`, `CAP_SYS_PACCT`, `CAP_LEASE`, `CAP_WAKE_ALARM`,
//! `CAP_BLOCK_SUSPEND`, `CAP_CHECKPOINT_RESTORE`.

use caps::{CapSet, Capability, CapsHashSet};
use nix::sys::resource::{Resource, setrlimit};

use crate::spec::Limits;

/// The capabilities a sandbox keeps (Docker's default set minus `NET_RAW`
/// and `MKNOD`).
pub const KEPT: &[Capability] = &[
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FOWNER,
    Capability::CAP_FSETID,
    Capability::CAP_KILL,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_AUDIT_WRITE,
    Capability::CAP_SETFCAP,
];

/// Failure to drop privileges.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("Dropping capability {cap} from the {set:?} set failed")]
    Drop {
        cap: Capability,
        set: CapSet,
        #[source]
        source: caps::errors::CapsError,
    },
    #[error("Setting the {set:?} capability set failed")]
    Set {
        set: CapSet,
        #[source]
        source: caps::errors::CapsError,
    },
    #[error("Setting rlimit {resource:?} failed")]
    Rlimit {
        resource: Resource,
        #[source]
        source: nix::Error,
    },
}

/// Cut the bounding set, then the other sets, down to [`KEPT`]. Must run
/// while `CAP_SETPCAP` is still held (i.e. before anything else drops it).
pub fn drop_capabilities() -> Result<(), PrivilegeError> {
    let kept: CapsHashSet = KEPT.iter().copied().collect();
    for cap in caps::all() {
        if kept.contains(&cap) {
            continue;
        }
        caps::drop(None, CapSet::Bounding, cap).map_err(|source| PrivilegeError::Drop {
            cap,
            set: CapSet::Bounding,
            source,
        })?;
    }
    caps::clear(None, CapSet::Ambient).map_err(|source| PrivilegeError::Set {
        set: CapSet::Ambient,
        source,
    })?;
    for set in [CapSet::Inheritable, CapSet::Effective, CapSet::Permitted] {
        let current =
            caps::read(None, set).map_err(|source| PrivilegeError::Set { set, source })?;
        let target: CapsHashSet = current.intersection(&kept).copied().collect();
        caps::set(None, set, &target).map_err(|source| PrivilegeError::Set { set, source })?;
    }
    Ok(())
}

/// Apply per-process rlimits (hard = soft: without `CAP_SYS_RESOURCE` the
/// sandbox cannot raise them). Real-time and raised priorities are off
/// whatever the forge itself was started with: a `SCHED_FIFO` loop would
/// escape the cgroup's CPU quota.
pub fn apply_rlimits(limits: &Limits) -> Result<(), PrivilegeError> {
    let set = |resource: Resource, value: u64| {
        setrlimit(resource, value, value)
            .map_err(|source| PrivilegeError::Rlimit { resource, source })
    };
    set(Resource::RLIMIT_NOFILE, limits.nofile)?;
    set(Resource::RLIMIT_CORE, 0)?;
    set(Resource::RLIMIT_RTPRIO, 0)?;
    set(Resource::RLIMIT_NICE, 0)?;
    Ok(())
}
