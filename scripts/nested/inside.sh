#!/usr/bin/env bash
# Runs the microVM suite against a /dev/kvm that boots Linux, and writes
# what happened to the results directory:
#
#   inside.sh <plan.env>            in the nested test host (PID 1 after the
#                                   initramfs): prepares the machine, runs the
#                                   suite, powers off
#   inside.sh --direct <plan.env>   on a host with VMX/SVM: runs the suite only
#
# The plan (written by scripts/nested-kvm.sh) names the repository, the
# kernels, the guest image, the test executables and which steps to run.
# Results: `<step>.log` per step, `steps.tsv` (name, passed|failed,
# seconds), and `status` (0 when every step passed), all under the plan's
# RESULTS directory.
set -uo pipefail

direct=0
if [ "${1:-}" = --direct ]; then
    direct=1
    shift
fi
plan=${1:?usage: inside.sh [--direct] <plan.env>}
# shellcheck source=/dev/null
. "$plan"

say() { echo "[nested] $*"; }

# Ends the nested host (PID 1 must not exit: the kernel would panic) or,
# in direct mode, the script.
finish() {
    echo "$1" > "$RESULTS/status"
    sync
    if [ "$direct" = 1 ]; then
        exit "$1"
    fi
    say "powering off"
    echo o > /proc/sysrq-trigger 2>/dev/null
    poweroff -f
}

# Prepares the nested host: kernel modules, a scratch disk for everything
# the suite writes, the usual pseudo file systems.
prepare() {
    mount -t tmpfs -o mode=0755 run /run
    mkdir -p /dev/pts /dev/shm
    mount -t devpts -o gid=5,mode=0620,ptmxmode=0666 devpts /dev/pts
    mount -t tmpfs -o mode=1777 shm /dev/shm
    mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null || true
    local module
    for module in $MODULES; do
        modprobe -d "$KMOD_ROOT" "$module" || { say "cannot load kernel module $module"; return 1; }
    done
    [ -c /dev/kvm ] || { say "no /dev/kvm after loading kvm_amd"; return 1; }
    say "kvm_amd: $(dmesg | grep -o -E 'Nested (Virtualization|Paging) enabled' | paste -sd, -)"
    # Everything the suite writes (VM disks, memory snapshots, data dirs)
    # goes to the scratch disk, not to memory.
    mkfs.ext4 -q -F -E lazy_itable_init=1,lazy_journal_init=1 /dev/vda || return 1
    mkdir -p /scratch
    mount -o noatime /dev/vda /scratch || return 1
    local dir
    for dir in /tmp /var/tmp; do
        mkdir -p "/scratch$dir" "$dir"
        mount --bind "/scratch$dir" "$dir" || return 1
    done
    chmod 1777 /tmp /var/tmp
    # Its kernel's symbols, kernel and modules, for the host to name where
    # the CPU was should this machine stop running.
    grep -E '^[0-9a-f]+ [tTwW] ' /proc/kallsyms > "$RESULTS/kallsyms" 2>/dev/null
    hostname nested
    ip link set lo up 2>/dev/null || true
}

# run_step <name> <seconds> <directory> <command...>: runs one step, its
# output to <name>.log, and records how it ended. A step still running
# after <seconds> is killed; what every process was blocked in goes to its
# log and the console first.
failed=0
run_step() {
    local name=$1 budget=$2 dir=$3
    shift 3
    local log="$RESULTS/$name.log" start end status
    say "step $name: started"
    start=$(date +%s)
    (cd "$dir" && exec timeout --kill-after=30 "$budget" "$@") > "$log" 2>&1 &
    local pid=$!
    # The step's own deadline: report before timeout(1) kills, so that
    # the stuck processes are still there to be seen.
    (
        sleep "$((budget - 5))"
        if kill -0 "$pid" 2>/dev/null; then
            say "step $name: still running after $((budget - 5)) s; the processes and their wait channels:"
            ps -eo pid,ppid,stat,wchan:32,etime,args | tee -a "$log" | sed 's/^/    /'
            echo w > /proc/sysrq-trigger 2>/dev/null
            { echo "--- blocked tasks (sysrq w) ---"; dmesg | tail -n 300; } >> "$log"
        fi
    ) &
    local reporter=$!
    wait "$pid"
    status=$?
    kill "$reporter" 2>/dev/null
    wait "$reporter" 2>/dev/null
    end=$(date +%s)
    [ "$status" != 124 ] && [ "$status" != 137 ] \
        || echo "step $name: killed after its $budget s" >> "$log"
    if [ "$status" = 0 ]; then
        say "step $name: passed in $((end - start)) s"
        printf '%s\tpassed\t%s\n' "$name" "$((end - start))" >> "$RESULTS/steps.tsv"
    else
        failed=1
        say "step $name: FAILED (exit $status) in $((end - start)) s; the last lines of $name.log:"
        tail -n 40 "$log" | sed 's/^/    /'
        printf '%s\tfailed\t%s\n' "$name" "$((end - start))" >> "$RESULTS/steps.tsv"
    fi
}

: > "$RESULTS/steps.tsv"
if [ "$direct" = 0 ]; then
    say "nested test host up: $(uname -r), $(nproc) CPUs, $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MiB"
    if ! prepare; then
        say "preparing the nested host failed"
        finish 1
    fi
fi

export FORGE_GUEST_KERNEL="$GUEST_KERNEL"
export FORGE_GUEST_BZIMAGE="$GUEST_BZIMAGE"
export FORGE_GUEST_IMAGE="$GUEST_IMAGE"
export FORGE_BIN="$FORGE_BIN"
export FORGE_TEST_BINARIES="$TEST_BINARIES"
export RUST_BACKTRACE=1
# Guests boot here in 30 to 60 s (emulated SVM under TCG), now and then
# slower: the forge's 60 s default would fail a healthy but slow boot.
export FORGE_SANDBOX_BOOT_SECS=${FORGE_SANDBOX_BOOT_SECS:-240}
export HOME=/root

# A heartbeat on the console: the host takes its absence for a nested host
# that stopped running (scripts/nested-kvm.sh), not for a slow step.
if [ "$direct" = 0 ]; then
    while sleep 15; do
        echo "[nested-alive] $(cut -d' ' -f1 /proc/uptime)"
    done &
fi

# shard_cases <test executable> <K> <N>: the names of the K-th of every N
# test cases (ignored ones included) the executable lists; nothing when K
# is not between 1 and N.
shard_cases() {
    case "$2$3" in *[!0-9]*) return ;; esac
    [ "$2" -ge 1 ] && [ "$2" -le "$3" ] || return
    "$1" --list --include-ignored --format terse 2>/dev/null \
        | sed -n 's/: test$//p' | awk -v k="$2" -v n="$3" '(NR - k) % n == 0'
}

# Each step's budget in seconds, well above its longest run so far
# (linux-boot 62 s, microvm-suite 453 s, forge-slice 330 s).
for step in $STEPS; do
    case "$step" in
    linux-boot)
        run_step linux-boot 600 "$REPO/vmm" "$EXE_LINUX_BOOT" --ignored --test-threads 1 ;;
    microvm-suite)
        run_step microvm-suite 1500 "$REPO/sandbox" "$EXE_MICROVM_SUITE" --include-ignored --test-threads 1 ;;
    microvm-suite-*of*)
        # One shard of the suite: its K-th of every N cases, in the order
        # libtest lists them (two nested hosts share the suite this way).
        shard=${step#microvm-suite-}
        cases=$(shard_cases "$EXE_MICROVM_SUITE" "${shard%of*}" "${shard#*of}")
        if [ -z "$cases" ]; then
            say "step $step: no such shard of the suite"
            printf '%s\tfailed\t0\n' "$step" >> "$RESULTS/steps.tsv"
            failed=1
            continue
        fi
        # shellcheck disable=SC2086 # one argument per case
        run_step "$step" 1500 "$REPO/sandbox" "$EXE_MICROVM_SUITE" --include-ignored --test-threads 1 --exact $cases ;;
    forge-slice)
        run_step forge-slice 1500 "$REPO/tests" "$EXE_FORGE_SLICE" --ignored --test-threads 1 --nocapture ;;
    *)
        say "unknown step $step"
        failed=1 ;;
    esac
done
finish "$failed"
