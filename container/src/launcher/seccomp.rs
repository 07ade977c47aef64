//! The seccomp filter every sandbox process runs under.
//!
//! Default allow, with a deny list of what a sandbox never needs. Two filters
//! are stacked (seccomp keeps the strictest verdict of all installed filters):
//!
//! 1. `EPERM` for: kernel modules (`init_module`, `finit_module`,
//!    `delete_module`), `kexec_load`/`kexec_file_load`,
//!    `reboot`, mounting and namespace switching (`mount`, `umount2`,
//!    `pivot_root`, the new mount API `fsopen`/`fsconfig`/`fsmount`/`fspick`/
//!    `move_mount`/`open_tree`/`mount_setattr`, `setns`), `ptrace`,
//!    `process_vm_readv`/`process_vm_writev`, the kernel keyring (`keyctl`,
//!    `add_key`, `request_key`), `bpf`, `perf_event_open`,
//!    `open_by_handle_at`/`name_to_handle_at`, `userfaultfd`,
//!    `swapon`/`swapoff`, `acct`, `quotactl`, `syslog`, `settimeofday`,
//!    `clock_settime`, `clock_adjtime`, `iopl`/`ioperm`, `lookup_dcookie`,
//!    `vhangup`, `uselib`, `io_uring_*` (a steady source of kernel bugs;
//!    libuv and Bun fall back to threads), and `unshare`/`clone` with
//!    `CLONE_NEWUSER` (unprivileged user namespaces are the usual first step
//!    of a kernel exploit; other namespace flags need `CAP_SYS_ADMIN`, which
//!    is dropped).
//! 2. `ENOSYS` for `clone3`: its flags live in memory a filter cannot read, so
//!    libc is told it does not exist and falls back to `clone`.
//!
//! Capabilities (see `privileges`) already forbid most of these; the filter
//! is the second wall, and it also applies to syscalls no capability guards
//! (`userfaultfd`, `io_uring`, `bpf` for unprivileged users, user namespaces).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Failure to build or install the filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("Building the seccomp filter failed")]
    Build(#[source] seccompiler::BackendError),
    #[error("Compiling the seccomp filter failed")]
    Compile(#[source] seccompiler::BackendError),
    #[error("Installing the seccomp filter failed")]
    Install(#[source] seccompiler::Error),
}

/// Syscalls denied with `EPERM` whatever their arguments.
const DENIED: &[i64] = &[
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_reboot,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_mount_setattr,
    libc::SYS_setns,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_userfaultfd,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_syslog,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_iopl,
    libc::SYS_ioperm,
    libc::SYS_lookup_dcookie,
    libc::SYS_vhangup,
    libc::SYS_uselib,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
];

fn new_user_ns_rule(arg_index: u8) -> Result<SeccompRule, SeccompError> {
    let flag = libc::CLONE_NEWUSER as u64;
    let cond = SeccompCondition::new(
        arg_index,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(flag),
        flag,
    )
    .map_err(SeccompError::Build)?;
    SeccompRule::new(vec![cond]).map_err(SeccompError::Build)
}

fn compile(filter: SeccompFilter) -> Result<BpfProgram, SeccompError> {
    BpfProgram::try_from(filter).map_err(SeccompError::Compile)
}

/// Build the two filters (deny list, then `clone3` → `ENOSYS`).
pub fn build() -> Result<Vec<BpfProgram>, SeccompError> {
    let mut deny: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|nr| (*nr, Vec::new())).collect();
    deny.insert(libc::SYS_unshare, vec![new_user_ns_rule(0)?]);
    // x86_64 clone(flags, stack, parent_tid, child_tid, tls): flags are arg 0.
    deny.insert(libc::SYS_clone, vec![new_user_ns_rule(0)?]);
    let deny = SeccompFilter::new(
        deny,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        TargetArch::x86_64,
    )
    .map_err(SeccompError::Build)?;

    let clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        TargetArch::x86_64,
    )
    .map_err(SeccompError::Build)?;
    Ok(vec![compile(deny)?, compile(clone3)?])
}

/// Install the filters on the calling thread (also sets `no_new_privs`, so
/// setuid binaries cannot gain privileges).
pub fn install(programs: &[BpfProgram]) -> Result<(), SeccompError> {
    for program in programs {
        seccompiler::apply_filter(program).map_err(SeccompError::Install)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile() {
        let programs = build().expect("filters build");
        assert_eq!(programs.len(), 2);
        assert!(programs.iter().all(|p| !p.is_empty()));
    }
}
