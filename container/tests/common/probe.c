/* Test helper run inside sandboxes: reports euid, allocates memory, and
 * calls syscalls directly (so results do not depend on a tool's own checks).
 * Prints "<return value> <errno>" for `sys`. */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static long call(const char *n) {
  if (!strcmp(n, "init_module")) return syscall(SYS_init_module, 0, 0, "");
  if (!strcmp(n, "finit_module")) return syscall(SYS_finit_module, 0, "", 0);
  if (!strcmp(n, "delete_module")) return syscall(SYS_delete_module, "x", 0);
  if (!strcmp(n, "kexec_load")) return syscall(SYS_kexec_load, 0, 0, 0, 0);
  if (!strcmp(n, "bpf")) return syscall(SYS_bpf, 0, 0, 0);
  if (!strcmp(n, "ptrace")) return syscall(SYS_ptrace, 16, 1, 0, 0);
  if (!strcmp(n, "keyctl")) return syscall(SYS_keyctl, 0, 0, 0, 0, 0);
  if (!strcmp(n, "add_key")) return syscall(SYS_add_key, "user", "x", "y", 1, -2);
  if (!strcmp(n, "unshare_user")) return syscall(SYS_unshare, CLONE_NEWUSER);
  if (!strcmp(n, "unshare_net")) return syscall(SYS_unshare, CLONE_NEWNET);
  if (!strcmp(n, "mount_proc")) return syscall(SYS_mount, "proc", "/mnt", "proc", 0, 0);
  if (!strcmp(n, "mount_disk")) return syscall(SYS_mount, "/dev/vda", "/mnt", "ext4", 0, 0);
  if (!strcmp(n, "userfaultfd")) return syscall(SYS_userfaultfd, 0);
  if (!strcmp(n, "perf_event_open")) return syscall(SYS_perf_event_open, 0, 0, -1, -1, 0);
  if (!strcmp(n, "open_by_handle_at")) return syscall(SYS_open_by_handle_at, 0, 0, 0);
  if (!strcmp(n, "swapoff")) return syscall(SYS_swapoff, "/x");
  if (!strcmp(n, "reboot")) return syscall(SYS_reboot, 0xfee1dead, 672274793, 0x4321fedc, 0);
  if (!strcmp(n, "mknod_disk")) return syscall(SYS_mknod, "/vda", 060600, (254 << 8) | 0);
  if (!strcmp(n, "sethostname")) return syscall(SYS_sethostname, "evil", 4);
  if (!strcmp(n, "getpid")) return syscall(SYS_getpid);
  return -1000;
}

/* Opens `n` files of 1 MiB and deletes them, keeping them open: a
 * checkpoint must copy each into its images. Then sleeps. */
static int ghosts(long n) {
  static char chunk[1 << 20];
  memset(chunk, 'g', sizeof chunk);
  for (long i = 0; i < n; i++) {
    char name[64];
    snprintf(name, sizeof name, "/tmp/ghost-%ld", i);
    FILE *f = fopen(name, "w+");
    if (!f || fwrite(chunk, 1, sizeof chunk, f) != sizeof chunk) return 3;
    fflush(f);
    unlink(name);
  }
  puts("ghosts ready");
  fflush(stdout);
  for (;;) pause();
}

int main(int argc, char **argv) {
  if (argc >= 2 && !strcmp(argv[1], "euid")) {
    printf("%d\n", (int)geteuid());
    return 0;
  }
  if (argc >= 3 && !strcmp(argv[1], "ghosts")) return ghosts(atol(argv[2]));
  if (argc >= 2 && !strcmp(argv[1], "forkbomb")) {
    for (;;) fork();
  }
  if (argc >= 3 && !strcmp(argv[1], "hog")) {
    long mib = atol(argv[2]);
    for (long i = 0; i < mib; i++) {
      char *p = malloc(1 << 20);
      if (!p) { puts("malloc failed"); return 3; }
      memset(p, 1, 1 << 20);
    }
    puts("survived");
    return 0;
  }
  if (argc >= 3 && !strcmp(argv[1], "sys")) {
    errno = 0;
    long r = call(argv[2]);
    if (r == -1000) return 2;
    printf("%ld %d\n", r, r < 0 ? errno : 0);
    return 0;
  }
  return 2;
}
