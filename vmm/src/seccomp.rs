//! The seccomp allow-lists of a jailed VMM ([`crate::jail`]), one per kind
//! of thread. A call off its thread's list kills the whole process
//! (`SECCOMP_RET_KILL_PROCESS`: it dies of SIGSYS, and the jail's init says
//! so on stderr): a VMM that makes such a call is not doing its job.
//!
//! - [`ThreadKind::Main`]: the event loop (control socket, virtio devices,
//!   snapshots, fork) and everything a fork child does to build its own VM
//!   (fork children inherit this filter), so it is the widest. Installed by
//!   [`crate::jail::enter`] before anything of the VM is built.
//! - [`ThreadKind::Vcpu`]: `KVM_RUN` and the exits handled on the vCPU's
//!   thread (serial, i8042, MMIO register accesses), state capture for
//!   pause, snapshot and fork. Stacked on the main filter at the thread's
//!   start, before its first `KVM_RUN`.
//! - [`ThreadKind::Worker`]: the helper that unmaps retired guest RAM
//!   after a fork.
//! - [`ThreadKind::Init`]: the jail's init and the process before it: they
//!   wait and exit.
//!
//! Argument rules: `socket` only `AF_UNIX`; `clone` no namespace flags;
//! `clone3` answers `ENOSYS` (its flags live in memory a filter cannot
//! read; libc falls back to `clone`); `ioctl` only KVM's requests (type
//! 0xAE) and `FIONBIO`/`FIOCLEX`; `mmap` and `mprotect` never executable;
//! `prctl` only `PR_SET_NAME` and `PR_SET_NO_NEW_PRIVS`, `seccomp` only
//! adding a filter (a thread's own, which can only narrow). Left out, among
//! others: `execve`, `mount`, `ptrace`, `setns`, `unshare`, `bpf`,
//! `perf_event_open`, `userfaultfd`, `io_uring_*`, `keyctl`, the new mount
//! API, `kill` of other processes (`tgkill` is for the vCPU kick).
//!
//! The lists were taken from `strace -f` of jailed VMMs booting the test
//! guests and Linux, serving vsock and block I/O, pausing to disk,
//! restoring and forking; `tests/jail.rs` runs those paths under them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Which list a thread runs under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// The VMM's main thread (event loop), and fork children.
    Main,
    /// A vCPU thread.
    Vcpu,
    /// A helper thread (unmapping retired RAM).
    Worker,
    /// The jail's init and keeper: wait and exit.
    Init,
}

impl ThreadKind {
    /// The name `FORGE_VMM_TEST_ESCAPE=syscall:<name>` uses.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Main => "main",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Worker => "worker",
            ThreadKind::Init => "init",
        }
    }
}

/// Failure to build or install a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The rules did not build.
    #[error("Building the seccomp filter failed: {0}")]
    Build(#[source] seccompiler::BackendError),
    /// The kernel refused it.
    #[error("Installing the seccomp filter failed: {0}")]
    Install(#[source] seccompiler::Error),
}

/// Set once the main thread's filter is installed: threads started later
/// install theirs ([`install_for_thread`]).
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Calls every thread may make: memory, futexes, signals, time, exit.
const COMMON: &[i64] = &[
    libc::SYS_brk,
    libc::SYS_munmap,
    libc::SYS_madvise,
    libc::SYS_futex,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_sched_yield,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_rseq,
    libc::SYS_set_robust_list,
    libc::SYS_getrandom,
];

/// A vCPU thread adds: exits it handles write to files and eventfds,
/// read MMIO-backed state, kick itself.
const VCPU: &[i64] = &[
    libc::SYS_read,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_lseek,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_tgkill,
    libc::SYS_rt_sigaction,
    libc::SYS_epoll_ctl,
    libc::SYS_eventfd2,
    libc::SYS_dup,
    libc::SYS_fcntl,
];

/// The main thread adds to the vCPU list (a vCPU thread's filter stacks
/// on the main thread's, so the main list must hold the vCPU's): files,
/// Unix sockets, epoll, threads and fork, waiting for children.
const MAIN_ONLY: &[i64] = &[
    libc::SYS_readv,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_openat,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
    libc::SYS_getdents64,
    libc::SYS_mkdirat,
    libc::SYS_mkdir,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_linkat,
    libc::SYS_link,
    libc::SYS_readlink,
    libc::SYS_readlinkat,
    libc::SYS_mremap,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_pipe2,
    libc::SYS_dup2,
    libc::SYS_dup3,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_wait4,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_setaffinity,
    libc::SYS_getrlimit,
    libc::SYS_prlimit64,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_umask,
    libc::SYS_fchmod,
    libc::SYS_close_range,
];

/// Namespace flags `clone` may not carry.
const NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u64;

/// KVM's ioctl type, bits 8..16 of a request.
const KVM_IOCTL_TYPE: u64 = 0xAE;

fn condition(arg: u8, len: SeccompCmpArgLen, op: SeccompCmpOp, value: u64) -> SeccompCondition {
    SeccompCondition::new(arg, len, op, value).expect("argument index below 6")
}

fn rule(conditions: Vec<SeccompCondition>) -> SeccompRule {
    SeccompRule::new(conditions).expect("at least one condition")
}

/// `arg` has none of the bits of `mask`.
fn none_of(arg: u8, mask: u64) -> Vec<SeccompRule> {
    vec![rule(vec![condition(
        arg,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(mask),
        0,
    )])]
}

/// `ioctl` requests: KVM's, and for the main thread the fd flag ones.
fn ioctl_rules(kind: ThreadKind) -> Vec<SeccompRule> {
    let mut rules = vec![rule(vec![condition(
        1,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(0xff00),
        KVM_IOCTL_TYPE << 8,
    )])];
    if kind == ThreadKind::Main {
        for request in [libc::FIONBIO, libc::FIOCLEX, libc::FIONCLEX] {
            rules.push(rule(vec![condition(
                1,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                request,
            )]));
        }
    }
    rules
}

/// The rules of `kind`'s allow-list.
pub fn rules(kind: ThreadKind) -> BTreeMap<i64, Vec<SeccompRule>> {
    let extra: &[&[i64]] = match kind {
        ThreadKind::Main => &[VCPU, MAIN_ONLY],
        ThreadKind::Vcpu => &[VCPU],
        ThreadKind::Worker => &[],
        ThreadKind::Init => &[&[libc::SYS_wait4]],
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = COMMON
        .iter()
        .chain(extra.iter().copied().flatten())
        .map(|nr| (*nr, Vec::new()))
        .collect();
    let no_exec = none_of(2, libc::PROT_EXEC as u64);
    rules.insert(libc::SYS_mmap, no_exec.clone());
    rules.insert(libc::SYS_mprotect, no_exec);
    if kind == ThreadKind::Init {
        return rules;
    }
    // Threads name themselves; installing a thread's own filter sets
    // no_new_privs (already set) and adds a filter, which only narrows.
    let prctl = [libc::PR_SET_NAME, libc::PR_SET_NO_NEW_PRIVS]
        .iter()
        .map(|option| {
            rule(vec![condition(
                0,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                *option as u64,
            )])
        })
        .collect();
    rules.insert(libc::SYS_prctl, prctl);
    rules.insert(
        libc::SYS_seccomp,
        vec![rule(vec![condition(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            libc::SECCOMP_SET_MODE_FILTER as u64,
        )])],
    );
    if matches!(kind, ThreadKind::Main | ThreadKind::Vcpu) {
        rules.insert(libc::SYS_ioctl, ioctl_rules(kind));
    }
    if kind == ThreadKind::Main {
        rules.insert(
            libc::SYS_socket,
            vec![rule(vec![condition(
                0,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                libc::AF_UNIX as u64,
            )])],
        );
        // x86_64 clone(flags, stack, parent_tid, child_tid, tls).
        rules.insert(libc::SYS_clone, none_of(0, NAMESPACE_FLAGS));
        // Answered ENOSYS by the second filter.
        rules.insert(libc::SYS_clone3, Vec::new());
    }
    rules
}

/// `kind`'s filters, in installation order: the allow-list (anything else
/// kills the process, as does another architecture's call), then `clone3`
/// answered `ENOSYS`.
pub fn build(kind: ThreadKind) -> Result<Vec<BpfProgram>, SeccompError> {
    let allow = SeccompFilter::new(
        rules(kind),
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(SeccompError::Build)?;
    let mut programs = vec![BpfProgram::try_from(allow).map_err(SeccompError::Build)?];
    if kind == ThreadKind::Main {
        let clone3 = SeccompFilter::new(
            BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
            TargetArch::x86_64,
        )
        .map_err(SeccompError::Build)?;
        programs.push(BpfProgram::try_from(clone3).map_err(SeccompError::Build)?);
    }
    Ok(programs)
}

/// Installs `kind`'s filters on the calling thread (and sets
/// `no_new_privs`). After the main thread's, threads started from then on
/// install theirs with [`install_for_thread`].
pub fn install(kind: ThreadKind) -> Result<(), SeccompError> {
    for program in build(kind)? {
        seccompiler::apply_filter(&program).map_err(SeccompError::Install)?;
    }
    if kind == ThreadKind::Main {
        ACTIVE.store(true, Ordering::SeqCst);
    }
    crate::jail::test_escape(kind);
    Ok(())
}

/// At the start of a vCPU or worker thread: its own filter when the
/// process is jailed, nothing otherwise. A filter that cannot be installed
/// ends the process: the thread must not run unconfined.
pub fn install_for_thread(kind: ThreadKind) {
    if !ACTIVE.load(Ordering::SeqCst) {
        return;
    }
    if let Err(e) = install(kind) {
        eprintln!("forge-vmm: {e}");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_builds() {
        for kind in [
            ThreadKind::Main,
            ThreadKind::Vcpu,
            ThreadKind::Worker,
            ThreadKind::Init,
        ] {
            let programs = build(kind).expect("filters build");
            assert!(programs.iter().all(|p| !p.is_empty()), "{kind:?}");
        }
    }

    #[test]
    fn the_dangerous_calls_are_on_no_list() {
        for kind in [
            ThreadKind::Main,
            ThreadKind::Vcpu,
            ThreadKind::Worker,
            ThreadKind::Init,
        ] {
            let rules = rules(kind);
            for denied in [
                libc::SYS_execve,
                libc::SYS_execveat,
                libc::SYS_mount,
                libc::SYS_umount2,
                libc::SYS_pivot_root,
                libc::SYS_chroot,
                libc::SYS_setns,
                libc::SYS_unshare,
                libc::SYS_ptrace,
                libc::SYS_process_vm_readv,
                libc::SYS_process_vm_writev,
                libc::SYS_keyctl,
                libc::SYS_bpf,
                libc::SYS_perf_event_open,
                libc::SYS_userfaultfd,
                libc::SYS_io_uring_setup,
                libc::SYS_open_by_handle_at,
                libc::SYS_init_module,
                libc::SYS_finit_module,
                libc::SYS_kexec_load,
                libc::SYS_reboot,
                libc::SYS_fsopen,
                libc::SYS_fsmount,
                libc::SYS_open_tree,
                libc::SYS_move_mount,
                libc::SYS_kill,
                libc::SYS_setuid,
                libc::SYS_setresuid,
                libc::SYS_capset,
                libc::SYS_socketpair,
                libc::SYS_memfd_create,
            ] {
                assert!(!rules.contains_key(&denied), "{kind:?} allows {denied}");
            }
            let socket = kind == ThreadKind::Main;
            assert_eq!(rules.contains_key(&libc::SYS_socket), socket, "{kind:?}");
            assert_eq!(rules.contains_key(&libc::SYS_clone), socket, "{kind:?}");
            assert_eq!(
                rules.contains_key(&libc::SYS_openat),
                socket,
                "{kind:?}: only the main thread opens files"
            );
        }
    }
}
