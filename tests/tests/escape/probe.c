/* The hostile tenant's tool, run inside a sandbox: makes system calls
 * directly (no library or tool decides for it) and prints what the kernel
 * answered, "<return value> <errno>".
 *
 *   probe sys <name> [arg]   one call from the table below
 *   (subvol_create <dir>: a btrfs subvolume in <dir>, past the disk quota)
 *   probe i386               getpid through int 0x80 (the i386 ABI)
 *   probe x32                getpid with the x32 bit set
 *   probe inotify <n> <secs> opens up to n inotify instances, prints how
 *                            many it got, holds them for secs seconds
 *
 * The last two print "survived" only if the call came back. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/btrfs.h>
#include <linux/if_alg.h>
#include <linux/io_uring.h>
#include <linux/keyctl.h>
#include <linux/perf_event.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/aio_abi.h>
#include <sys/inotify.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef AF_VSOCK
#define AF_VSOCK 40
#endif

static long call(const char *name, const char *arg) {
    if (!strcmp(name, "unshare_user")) return syscall(SYS_unshare, CLONE_NEWUSER);
    if (!strcmp(name, "unshare_mount")) return syscall(SYS_unshare, CLONE_NEWNS);
    if (!strcmp(name, "clone_user")) return syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
    if (!strcmp(name, "mount_tmpfs")) return syscall(SYS_mount, "none", "/mnt", "tmpfs", 0, 0);
    if (!strcmp(name, "mount_proc")) return syscall(SYS_mount, "proc", "/mnt", "proc", 0, 0);
    if (!strcmp(name, "keyctl")) return syscall(SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, 0, 0, 0, 0);
    if (!strcmp(name, "add_key")) return syscall(SYS_add_key, "user", "x", "y", 1, KEY_SPEC_SESSION_KEYRING);
    if (!strcmp(name, "bpf")) {
        union bpf_attr attr;
        memset(&attr, 0, sizeof attr);
        attr.map_type = BPF_MAP_TYPE_ARRAY;
        attr.key_size = 4;
        attr.value_size = 4;
        attr.max_entries = 1;
        return syscall(SYS_bpf, BPF_MAP_CREATE, &attr, sizeof attr);
    }
    if (!strcmp(name, "io_uring_setup")) {
        struct io_uring_params params;
        memset(&params, 0, sizeof params);
        return syscall(SYS_io_uring_setup, 8, &params);
    }
    if (!strcmp(name, "userfaultfd")) return syscall(SYS_userfaultfd, 0);
    if (!strcmp(name, "perf_event_open")) {
        struct perf_event_attr attr;
        memset(&attr, 0, sizeof attr);
        attr.type = PERF_TYPE_SOFTWARE;
        attr.size = sizeof attr;
        attr.config = PERF_COUNT_SW_CPU_CLOCK;
        return syscall(SYS_perf_event_open, &attr, 0, -1, -1, 0);
    }
    if (!strcmp(name, "ptrace_attach")) return syscall(SYS_ptrace, PTRACE_ATTACH, arg ? atoi(arg) : 1, 0, 0);
    if (!strcmp(name, "socket_vsock")) return syscall(SYS_socket, AF_VSOCK, SOCK_STREAM, 0);
    if (!strcmp(name, "socket_alg")) return syscall(SYS_socket, AF_ALG, SOCK_SEQPACKET, 0);
    if (!strcmp(name, "socket_packet")) return syscall(SYS_socket, AF_PACKET, SOCK_RAW, 0);
    if (!strcmp(name, "socket_netlink_audit")) return syscall(SYS_socket, AF_NETLINK, SOCK_RAW, 9);
    if (!strcmp(name, "socket_inet")) return syscall(SYS_socket, AF_INET, SOCK_STREAM, 0);
    if (!strcmp(name, "socket_unix")) return syscall(SYS_socket, AF_UNIX, SOCK_STREAM, 0);
    if (!strcmp(name, "subvol_create")) {
        struct btrfs_ioctl_vol_args args;
        memset(&args, 0, sizeof args);
        strcpy(args.name, "escape");
        int dir = open(arg ? arg : "/run/sandbox", O_RDONLY | O_DIRECTORY);
        if (dir < 0) return -1;
        return syscall(SYS_ioctl, dir, BTRFS_IOC_SUBVOL_CREATE, &args);
    }
    if (!strcmp(name, "io_setup")) {
        aio_context_t ctx = 0;
        return syscall(SYS_io_setup, 65536, &ctx);
    }
    if (!strcmp(name, "getpid")) return syscall(SYS_getpid);
    return -1000;
}

int main(int argc, char **argv) {
    if (argc >= 3 && !strcmp(argv[1], "sys")) {
        errno = 0;
        long r = call(argv[2], argc >= 4 ? argv[3] : NULL);
        if (r == -1000) return 2;
        printf("%ld %d\n", r, r < 0 ? errno : 0);
        return 0;
    }
    if (argc >= 2 && !strcmp(argv[1], "i386")) {
        long r;
        __asm__ volatile("int $0x80" : "=a"(r) : "a"(20) : "memory");
        printf("survived %ld\n", r);
        return 0;
    }
    if (argc >= 4 && !strcmp(argv[1], "inotify")) {
        long want = atol(argv[2]), got = 0;
        while (got < want && inotify_init1(0) >= 0) got++;
        printf("%ld %d\n", got, errno);
        fflush(stdout);
        sleep(atoi(argv[3]));
        return 0;
    }
    if (argc >= 2 && !strcmp(argv[1], "x32")) {
        long r = syscall(0x40000000 | SYS_getpid);
        printf("survived %ld\n", r);
        return 0;
    }
    return 2;
}
