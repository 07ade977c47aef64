//! The seccomp filter every sandbox process runs under: an allow-list.
//!
//! Only the system calls ordinary Linux workloads make (Node, Bun, git,
//! npm, compilers, shells, databases) are allowed; everything else,
//! including every system call newer than this list, fails with `EPERM`.
//! Four filters are stacked (seccomp keeps the strictest verdict, and of
//! two equal ones the later filter's):
//!
//! 1. The allow-list ([`ALLOWED`] plus the argument rules below). Any
//!    other architecture's call (an i386 `int 0x80`) kills the process.
//! 2. `EPERM` for the `ioctl` requests below: a filter matches argument
//!    values, so refusing a few requests of an allowed call takes a filter
//!    of its own.
//! 3. `ENOSYS` for [`UNIMPLEMENTED`]: `clone3`, whose flags live in memory
//!    a filter cannot read, so libc falls back to `clone`, whose flags the
//!    allow-list checks; and Linux AIO (`io_setup` and friends), whose
//!    contexts come from one host-wide pool (`fs.aio-max-nr`) a sandbox
//!    could take whole: libaio users fall back to threads.
//! 4. Kill the process on an x32 system call (numbers with bit 30 set): the
//!    x32 ABI shares the x86_64 architecture tag, so (1) alone would only
//!    refuse them.
//!
//! Argument rules:
//! - `socket`: `AF_UNIX`, `AF_INET`, `AF_INET6`, and `AF_NETLINK` only with
//!   `NETLINK_ROUTE` (what `ip addr` and glibc's `getifaddrs` use);
//!   `socketpair`: `AF_UNIX` only. No `AF_VSOCK`, `AF_ALG`, `AF_PACKET`,
//!   `AF_KEY`, ...: each a kernel attack surface no workload here needs.
//! - `clone` and `unshare`: no namespace flags (a new user namespace is the
//!   usual first step of a kernel exploit; the others need capabilities the
//!   sandbox does not have anyway).
//! - `ioctl`: anything but `TIOCSTI` (pushing input into a terminal),
//!   `TIOCSETD` (line disciplines) and
//!   btrfs's subvolume and snapshot requests ([`BTRFS_REFUSED`]): the run
//!   directory is on the layer store's btrfs, and a subvolume made there
//!   would escape the sandbox's disk quota and block deleting its layer.
//!   Reflinks (`FICLONE`, same ioctl type) stay allowed.
//! - `personality`: only the values runtimes query or set (Docker's set).
//!
//! Left out on purpose, among others: `mount` and the new mount API,
//! `pivot_root`, `setns`, `ptrace`, `process_vm_*`, `pidfd_getfd`, `kcmp`,
//! the keyring (`keyctl`, `add_key`, `request_key`), `bpf`,
//! `perf_event_open`, `userfaultfd`, `io_uring_*` (a steady source of
//! kernel bugs; libuv and Bun fall back to threads), `fanotify_*`,
//! `open_by_handle_at`, module and kexec calls, `reboot`, `swapon`,
//! `syslog`, setting clocks, `iopl`/`ioperm`, `modify_ldt`, NUMA policy
//! calls, `memfd_secret`, `quotactl`, `lsm_*` and `statmount`/`listmount`.
//!
//! CRIU needs no entry here: it suspends the filter while it dumps, and a
//! restored process gets its filter back at the very end of the restore.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch, sock_filter,
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

/// x86_64 numbers of calls `libc` does not name yet.
mod nr {
    pub const IO_PGETEVENTS: i64 = 333;
    pub const URETPROBE: i64 = 335;
    pub const CACHESTAT: i64 = 451;
    pub const MAP_SHADOW_STACK: i64 = 453;
    pub const FUTEX_WAKE: i64 = 454;
    pub const FUTEX_WAIT: i64 = 455;
    pub const FUTEX_REQUEUE: i64 = 456;
}

/// Allowed whatever their arguments.
pub const ALLOWED: &[i64] = &[
    // Files and directories.
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_open,
    libc::SYS_openat,
    libc::SYS_openat2,
    libc::SYS_close,
    libc::SYS_close_range,
    libc::SYS_creat,
    libc::SYS_stat,
    libc::SYS_fstat,
    libc::SYS_lstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_statfs,
    libc::SYS_fstatfs,
    libc::SYS_ustat,
    libc::SYS_lseek,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_sendfile,
    libc::SYS_splice,
    libc::SYS_tee,
    libc::SYS_vmsplice,
    libc::SYS_copy_file_range,
    libc::SYS_access,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_dup,
    libc::SYS_dup2,
    libc::SYS_dup3,
    libc::SYS_pipe,
    libc::SYS_pipe2,
    libc::SYS_fcntl,
    libc::SYS_flock,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_sync,
    libc::SYS_syncfs,
    libc::SYS_sync_file_range,
    libc::SYS_truncate,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
    libc::SYS_fadvise64,
    libc::SYS_readahead,
    nr::CACHESTAT,
    libc::SYS_getdents,
    libc::SYS_getdents64,
    libc::SYS_getcwd,
    libc::SYS_chdir,
    libc::SYS_fchdir,
    libc::SYS_chroot,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_rmdir,
    libc::SYS_link,
    libc::SYS_linkat,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_symlink,
    libc::SYS_symlinkat,
    libc::SYS_readlink,
    libc::SYS_readlinkat,
    libc::SYS_mknod,
    libc::SYS_mknodat,
    libc::SYS_chmod,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_fchmodat2,
    libc::SYS_chown,
    libc::SYS_fchown,
    libc::SYS_lchown,
    libc::SYS_fchownat,
    libc::SYS_umask,
    libc::SYS_utime,
    libc::SYS_utimes,
    libc::SYS_futimesat,
    libc::SYS_utimensat,
    libc::SYS_setxattr,
    libc::SYS_lsetxattr,
    libc::SYS_fsetxattr,
    libc::SYS_getxattr,
    libc::SYS_lgetxattr,
    libc::SYS_fgetxattr,
    libc::SYS_listxattr,
    libc::SYS_llistxattr,
    libc::SYS_flistxattr,
    libc::SYS_removexattr,
    libc::SYS_lremovexattr,
    libc::SYS_fremovexattr,
    libc::SYS_inotify_init,
    libc::SYS_inotify_init1,
    libc::SYS_inotify_add_watch,
    libc::SYS_inotify_rm_watch,
    libc::SYS_memfd_create,
    // Polling and events.
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_select,
    libc::SYS_pselect6,
    libc::SYS_epoll_create,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_eventfd,
    libc::SYS_eventfd2,
    libc::SYS_signalfd,
    libc::SYS_signalfd4,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
    // Memory.
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_msync,
    libc::SYS_mincore,
    libc::SYS_madvise,
    libc::SYS_remap_file_pages,
    libc::SYS_mlock,
    libc::SYS_mlock2,
    libc::SYS_munlock,
    libc::SYS_mlockall,
    libc::SYS_munlockall,
    libc::SYS_membarrier,
    libc::SYS_pkey_mprotect,
    libc::SYS_pkey_alloc,
    libc::SYS_pkey_free,
    libc::SYS_mseal,
    nr::MAP_SHADOW_STACK,
    // Processes, threads, signals.
    libc::SYS_fork,
    libc::SYS_vfork,
    libc::SYS_execve,
    libc::SYS_execveat,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_wait4,
    libc::SYS_waitid,
    libc::SYS_kill,
    libc::SYS_tkill,
    libc::SYS_tgkill,
    libc::SYS_pidfd_open,
    libc::SYS_pidfd_send_signal,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigpending,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_rt_sigqueueinfo,
    libc::SYS_rt_tgsigqueueinfo,
    libc::SYS_rt_sigsuspend,
    libc::SYS_sigaltstack,
    libc::SYS_pause,
    libc::SYS_restart_syscall,
    libc::SYS_getpid,
    libc::SYS_getppid,
    libc::SYS_gettid,
    libc::SYS_getpgid,
    libc::SYS_setpgid,
    libc::SYS_getpgrp,
    libc::SYS_getsid,
    libc::SYS_setsid,
    libc::SYS_set_tid_address,
    libc::SYS_set_robust_list,
    libc::SYS_get_robust_list,
    libc::SYS_rseq,
    libc::SYS_futex,
    libc::SYS_futex_waitv,
    nr::FUTEX_WAKE,
    nr::FUTEX_WAIT,
    nr::FUTEX_REQUEUE,
    libc::SYS_arch_prctl,
    libc::SYS_set_thread_area,
    libc::SYS_get_thread_area,
    libc::SYS_prctl,
    libc::SYS_seccomp,
    libc::SYS_landlock_create_ruleset,
    libc::SYS_landlock_add_rule,
    libc::SYS_landlock_restrict_self,
    libc::SYS_capget,
    libc::SYS_capset,
    libc::SYS_getrlimit,
    libc::SYS_setrlimit,
    libc::SYS_prlimit64,
    libc::SYS_getrusage,
    libc::SYS_times,
    libc::SYS_getpriority,
    libc::SYS_setpriority,
    libc::SYS_ioprio_get,
    libc::SYS_ioprio_set,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_setaffinity,
    libc::SYS_sched_getparam,
    libc::SYS_sched_setparam,
    libc::SYS_sched_getscheduler,
    libc::SYS_sched_setscheduler,
    libc::SYS_sched_getattr,
    libc::SYS_sched_setattr,
    libc::SYS_sched_get_priority_max,
    libc::SYS_sched_get_priority_min,
    libc::SYS_sched_rr_get_interval,
    libc::SYS_getcpu,
    nr::URETPROBE,
    // Identity (within the sandbox's own user namespace).
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_getresuid,
    libc::SYS_getresgid,
    libc::SYS_getgroups,
    libc::SYS_setuid,
    libc::SYS_setgid,
    libc::SYS_setreuid,
    libc::SYS_setregid,
    libc::SYS_setresuid,
    libc::SYS_setresgid,
    libc::SYS_setfsuid,
    libc::SYS_setfsgid,
    libc::SYS_setgroups,
    // Time (reading it; setting the clock is not here).
    libc::SYS_time,
    libc::SYS_gettimeofday,
    libc::SYS_clock_gettime,
    libc::SYS_clock_getres,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_adjtimex,
    libc::SYS_alarm,
    libc::SYS_getitimer,
    libc::SYS_setitimer,
    libc::SYS_timer_create,
    libc::SYS_timer_settime,
    libc::SYS_timer_gettime,
    libc::SYS_timer_getoverrun,
    libc::SYS_timer_delete,
    // System information.
    libc::SYS_uname,
    libc::SYS_sysinfo,
    libc::SYS_getrandom,
    // Sockets (the family is checked at `socket`).
    libc::SYS_connect,
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_shutdown,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_sendmmsg,
    libc::SYS_recvmmsg,
    // System V and POSIX IPC (per sandbox: its own IPC namespace).
    libc::SYS_shmget,
    libc::SYS_shmat,
    libc::SYS_shmdt,
    libc::SYS_shmctl,
    libc::SYS_semget,
    libc::SYS_semop,
    libc::SYS_semtimedop,
    libc::SYS_semctl,
    libc::SYS_msgget,
    libc::SYS_msgsnd,
    libc::SYS_msgrcv,
    libc::SYS_msgctl,
    libc::SYS_mq_open,
    libc::SYS_mq_unlink,
    libc::SYS_mq_timedsend,
    libc::SYS_mq_timedreceive,
    libc::SYS_mq_notify,
    libc::SYS_mq_getsetattr,
];

/// Calls that answer `ENOSYS`, so callers fall back (filter 3).
pub const UNIMPLEMENTED: &[i64] = &[
    libc::SYS_clone3,
    libc::SYS_io_setup,
    libc::SYS_io_destroy,
    libc::SYS_io_getevents,
    nr::IO_PGETEVENTS,
    libc::SYS_io_submit,
    libc::SYS_io_cancel,
];

/// Namespace flags of `clone` and `unshare`.
const NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;
/// `CLONE_NEWTIME` (only valid for `unshare`: in `clone` the bit is part
/// of the exit signal).
const CLONE_NEWTIME: u64 = 0x80;
/// `TIOCSTI`: push a byte into a terminal's input queue.
const TIOCSTI: u64 = 0x5412;
/// `TIOCSETD`: switch a terminal's line discipline (rarely used ones such
/// as `N_HDLC` have a history of kernel bugs).
const TIOCSETD: u64 = 0x5423;
/// btrfs ioctl numbers (type `0x94`) the sandbox may not use, as
/// `type << 8 | nr` (the size and direction bits above are masked off):
/// SNAP_CREATE, SUBVOL_CREATE, SNAP_DESTROY, DEFAULT_SUBVOL, SNAP_CREATE_V2,
/// SUBVOL_CREATE_V2, SUBVOL_SETFLAGS, SNAP_DESTROY_V2.
pub const BTRFS_REFUSED: &[u64] = &[
    0x9401, 0x940e, 0x940f, 0x9413, 0x9417, 0x9418, 0x941a, 0x943f,
];
/// `personality` values runtimes use: query, `PER_LINUX`,
/// `PER_LINUX32`, `UNAME26` and `PER_LINUX32 | UNAME26`.
const PERSONALITIES: &[u64] = &[0xffff_ffff, 0, 0x8, 0x2_0000, 0x2_0008];
/// x32 system calls have this bit set in their number.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

fn condition(
    arg: u8,
    len: SeccompCmpArgLen,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, SeccompError> {
    SeccompCondition::new(arg, len, op, value).map_err(SeccompError::Build)
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, SeccompError> {
    SeccompRule::new(conditions).map_err(SeccompError::Build)
}

/// `arg` equal to one of `values` (32-bit compare: the kernel reads these
/// arguments as `int`).
fn one_of(arg: u8, values: &[u64]) -> Result<Vec<SeccompRule>, SeccompError> {
    values
        .iter()
        .map(|v| {
            rule(vec![condition(
                arg,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                *v,
            )?])
        })
        .collect()
}

/// `arg` has none of the bits of `mask`.
fn none_of(arg: u8, mask: u64) -> Result<Vec<SeccompRule>, SeccompError> {
    Ok(vec![rule(vec![condition(
        arg,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(mask),
        0,
    )?])?])
}

/// The allow-list's rules: every call in [`ALLOWED`], and the argument
/// rules of the module docs.
fn allow_rules() -> Result<BTreeMap<i64, Vec<SeccompRule>>, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        ALLOWED.iter().map(|nr| (*nr, Vec::new())).collect();
    let unix = libc::AF_UNIX as u64;
    let mut socket = one_of(0, &[unix, libc::AF_INET as u64, libc::AF_INET6 as u64])?;
    socket.push(rule(vec![
        condition(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            libc::AF_NETLINK as u64,
        )?,
        condition(
            2,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            libc::NETLINK_ROUTE as u64,
        )?,
    ])?);
    rules.insert(libc::SYS_socket, socket);
    rules.insert(libc::SYS_socketpair, one_of(0, &[unix])?);
    // x86_64 clone(flags, stack, parent_tid, child_tid, tls): flags are arg 0.
    rules.insert(libc::SYS_clone, none_of(0, NAMESPACE_FLAGS)?);
    rules.insert(
        libc::SYS_unshare,
        none_of(0, NAMESPACE_FLAGS | CLONE_NEWTIME)?,
    );
    rules.insert(libc::SYS_ioctl, Vec::new());
    rules.insert(libc::SYS_personality, one_of(0, PERSONALITIES)?);
    Ok(rules)
}

/// Filter 2: the `ioctl` requests refused (whatever their size bits).
fn refused_ioctls() -> Result<BTreeMap<i64, Vec<SeccompRule>>, SeccompError> {
    let mut refused = one_of(1, &[TIOCSTI, TIOCSETD])?;
    for request in BTRFS_REFUSED {
        refused.push(rule(vec![condition(
            1,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(0xffff),
            *request,
        )?])?);
    }
    Ok(BTreeMap::from([(libc::SYS_ioctl, refused)]))
}

fn compile(filter: SeccompFilter) -> Result<BpfProgram, SeccompError> {
    BpfProgram::try_from(filter).map_err(SeccompError::Compile)
}

/// Filter 3 (see the module docs), by hand: seccompiler matches numbers,
/// not ranges.
fn kill_x32() -> BpfProgram {
    // seccomp_data: nr at offset 0, arch at offset 4.
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const JSET_K: u16 = 0x45;
    const RET_K: u16 = 0x06;
    let arch_x86_64 = 62 | 0x8000_0000 | 0x4000_0000;
    let insn = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    vec![
        insn(LD_W_ABS, 0, 0, 4),
        insn(JEQ_K, 1, 0, arch_x86_64),
        insn(RET_K, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
        insn(LD_W_ABS, 0, 0, 0),
        insn(JSET_K, 0, 1, X32_SYSCALL_BIT),
        insn(RET_K, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
        insn(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ]
}

/// Build the four filters, in installation order.
pub fn build() -> Result<Vec<BpfProgram>, SeccompError> {
    let allow = SeccompFilter::new(
        allow_rules()?,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(SeccompError::Build)?;
    let ioctls = SeccompFilter::new(
        refused_ioctls()?,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        TargetArch::x86_64,
    )
    .map_err(SeccompError::Build)?;
    let clone3 = SeccompFilter::new(
        UNIMPLEMENTED.iter().map(|nr| (*nr, Vec::new())).collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        TargetArch::x86_64,
    )
    .map_err(SeccompError::Build)?;
    Ok(vec![
        compile(allow)?,
        compile(ioctls)?,
        compile(clone3)?,
        kill_x32(),
    ])
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
        assert_eq!(programs.len(), 4);
        assert!(programs.iter().all(|p| !p.is_empty()));
    }

    #[test]
    fn the_allow_list_has_no_duplicates_and_leaves_out_the_dangerous_calls() {
        let mut sorted = ALLOWED.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ALLOWED.len(), "a call is listed twice");
        for denied in [
            libc::SYS_mount,
            libc::SYS_umount2,
            libc::SYS_pivot_root,
            libc::SYS_setns,
            libc::SYS_ptrace,
            libc::SYS_process_vm_readv,
            libc::SYS_keyctl,
            libc::SYS_add_key,
            libc::SYS_bpf,
            libc::SYS_perf_event_open,
            libc::SYS_userfaultfd,
            libc::SYS_io_uring_setup,
            libc::SYS_open_by_handle_at,
            libc::SYS_init_module,
            libc::SYS_finit_module,
            libc::SYS_kexec_load,
            libc::SYS_reboot,
            libc::SYS_clock_settime,
            libc::SYS_fsopen,
            libc::SYS_open_tree,
            libc::SYS_move_mount,
            libc::SYS_mount_setattr,
            libc::SYS_pidfd_getfd,
            libc::SYS_kcmp,
            libc::SYS_iopl,
            libc::SYS_modify_ldt,
            libc::SYS_clone3,
            libc::SYS_io_setup,
            libc::SYS_io_submit,
            libc::SYS_unshare,
            libc::SYS_clone,
            libc::SYS_socket,
        ] {
            assert!(
                !ALLOWED.contains(&denied),
                "{denied} is allowed unconditionally"
            );
        }
    }

    #[test]
    fn the_x32_filter_checks_arch_then_the_x32_bit() {
        let program = kill_x32();
        assert_eq!(program.len(), 7);
        assert_eq!(program[4].k, X32_SYSCALL_BIT);
        assert_eq!(program[5].k, libc::SECCOMP_RET_KILL_PROCESS);
        assert_eq!(program[6].k, libc::SECCOMP_RET_ALLOW);
    }
}
