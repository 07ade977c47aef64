#!/usr/bin/env bash
# Proves the microVM backend with a real Linux guest.
#
# Where this host's /dev/kvm cannot boot Linux (PVM: guest ring 0 is
# emulated and a standard kernel does not run), it boots a nested test
# host: Debian's own kernel under QEMU with pure software emulation and an
# emulated AMD-V (`-accel tcg -cpu EPYC,+svm,+npt`), where kvm_amd loads and
# gives a /dev/kvm that runs real Linux guests. The nested host sees this
# host's root read-only over virtio-9p (writes land in an overlay and on a
# scratch disk), so it runs the very binaries built here. Inside, as a
# normal test run:
#
#   linux-boot     the VMM's Linux boot tests: the project's guest kernel as
#                  an ELF vmlinux and as a bzImage (vmm/tests/linux_boot.rs)
#   microvm-suite  the microVM backend's conformance suite, the cases the
#                  container backend passes (sandbox/tests/microvm.rs)
#   forge-slice    the forge end to end on --sandbox-backend microvm
#                  (tests/tests/microvm.rs)
#
# On a host whose /dev/kvm is hardware virtualisation (VMX/SVM), the same
# steps run directly on it, without QEMU.
#
# Usage: scripts/nested-kvm.sh [--steps "<step> ..."] [--nested | --direct]
#                              [--keep] [--prepare]
#
#   --steps     only these steps (default: all three); microvm-suite-<K>of<N>
#               is the K-th of every N cases of microvm-suite, so that
#               several nested hosts can share the suite
#   --nested    boot the nested host even where /dev/kvm is hardware
#   --direct    run on this host's /dev/kvm (fails where it cannot boot Linux)
#   --keep      keep the run's scratch disk
#   --prepare   only install, build and cache what a run needs (packages,
#               kernels, binaries, the guest image, the initramfs), then
#               exit: runs started side by side after it share all of it
#
# Environment: FORGE_NESTED_CACHE (default /var/cache/forge/nested: the
# nested host's kernel, initramfs and run directories), FORGE_NESTED_MEM_MIB
# (6144), FORGE_NESTED_CPUS (1, see below), FORGE_NESTED_CPU (the emulated
# CPU model, EPYC,+svm,+npt), FORGE_NESTED_TCG_THREAD (multi),
# FORGE_NESTED_TIMEOUT (seconds one boot of the nested host may last, 2400),
# FORGE_NESTED_STALL (seconds of a silent console after which the nested
# host counts as stopped, 180), FORGE_NESTED_ATTEMPTS (boots of the nested
# host when one stops, 3), FORGE_DATA_DIR (where the guest image is cached,
# /var/lib/forge). Needs root. Exits 0 only when every step passed.
#
# The nested host prints a heartbeat on its console every 15 s and kills a
# step that outlives its budget. A host whose console falls silent has
# stopped running (its kernel frozen under the emulated SVM, rare): its
# CPUs' registers are saved from QEMU's monitor, and a fresh host runs the
# steps it had not finished. A step that fails is never run again.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

log() { echo "nested: $*" >&2; }
die() {
    log "$*"
    exit 1
}

steps="linux-boot microvm-suite forge-slice"
mode=auto
keep=0
prepare_only=0
while [ $# -gt 0 ]; do
    case "$1" in
    --steps) steps=${2:?--steps needs a list}; shift ;;
    --nested) mode=nested ;;
    --direct) mode=direct ;;
    --keep) keep=1 ;;
    --prepare) prepare_only=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
    shift
done
[ "$(id -u)" = 0 ] || die "needs root (/dev/kvm, mounts, apt-get)"

cache=${FORGE_NESTED_CACHE:-/var/cache/forge/nested}
mem_mib=${FORGE_NESTED_MEM_MIB:-6144}
# One CPU by default: with two, QEMU's emulated SVM corrupts the nested
# host's state when its CPUs run different nested guests at once (its
# kernel dies with "stack guard page was hit", an L2 guest's addresses in
# its registers), within minutes of forking. One CPU still runs guests
# with several vCPUs.
cpus=${FORGE_NESTED_CPUS:-1}
# The most one boot of the nested host may take, and how long its console
# may stay silent (it prints a heartbeat every 15 s) before the host counts
# as stopped.
timeout_secs=${FORGE_NESTED_TIMEOUT:-2400}
stall_secs=${FORGE_NESTED_STALL:-180}
attempts=${FORGE_NESTED_ATTEMPTS:-3}
export FORGE_DATA_DIR=${FORGE_DATA_DIR:-/var/lib/forge}
mkdir -p "$cache" "$FORGE_DATA_DIR"

if [ "$mode" = auto ]; then
    if [ -c /dev/kvm ] && grep -qw -e vmx -e svm /proc/cpuinfo && [ ! -e /sys/module/kvm_pvm ]; then
        mode=direct
    else
        mode=nested
    fi
fi
log "mode: $mode; steps: $steps"

# What this script needs of the host.
packages=(python3)
if [ "$mode" = nested ]; then
    packages+=(qemu-system-x86 busybox-static kmod e2fsprogs cpio)
fi
# shellcheck source=scripts/packages.sh
. "$repo/scripts/packages.sh"
ensure_packages "${packages[@]}"
# QEMU 9 or later: the emulated SVM of earlier versions ignores the XSETBV
# intercept, so the nested host's KVM never sees a guest's XCR0 and keeps
# reporting the x87/SSE-only XSAVE size (the guest kernel then warns
# "XSAVE consistency problem" and turns AVX off). Debian 12 ships 7.2;
# bookworm-backports has 10.0 (only that package and what it needs come
# from there: backports are pinned below the release).
qemu_major() { qemu-system-x86_64 --version 2>/dev/null | awk 'NR == 1 { split($4, v, "."); print v[1] + 0 }'; }
if [ "$mode" = nested ] && [ "$(qemu_major)" -lt 9 ]; then
    . /etc/os-release
    backports=/etc/apt/sources.list.d/forge-$VERSION_CODENAME-backports.sources
    if [ ! -f "$backports" ]; then
        log "adding $VERSION_CODENAME-backports for QEMU >= 9 ($backports)"
        printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: %s-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
            "$VERSION_CODENAME" > "$backports"
    fi
    log "installing qemu-system-x86 from $VERSION_CODENAME-backports"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t "$VERSION_CODENAME-backports" qemu-system-x86 >/dev/null
    [ "$(qemu_major)" -ge 9 ] || die "QEMU >= 9 is needed (found: $(qemu-system-x86_64 --version | head -n1))"
fi

# The guest kernel, ELF and bzImage, cached by its recipe's inputs.
kernel_args=()
dpkg-query -W -f='${Status}' linux-source-6.12 2>/dev/null | grep -q "install ok installed" \
    || kernel_args=(--install-deps)
guest_kernel=$(vmm/guest/kernel/build.sh "${kernel_args[@]}" | tail -n1)
guest_bzimage=$(dirname "$guest_kernel")/bzImage
[ -f "$guest_kernel" ] && [ -f "$guest_bzimage" ] || die "the guest kernel build left no vmlinux and bzImage"
log "guest kernel: $guest_kernel (+ bzImage)"

# The binaries under test, built here (the nested host runs them as they
# are: it cannot build anything in reasonable time).
log "building the binaries under test"
cargo build -q -p forge --bin forge -p sandbox-container --bin sandbox-init -p sandbox-agent --bin sandbox-agent
test_binaries="$repo/target/agent-for-tests"
for pair in vmm:forge-vmm sandbox-agent:sandbox-agent sandbox-container:sandbox-init; do
    cargo build -q -p "${pair%%:*}" --bin "${pair#*:}" --target-dir "$test_binaries"
done
executables=$(mktemp)
trap 'rm -f "$executables"' EXIT
cargo test --workspace --no-run --message-format=json-render-diagnostics > "$executables"
# The executable of test target <package>/<target> of kind <kind>.
executable() {
    python3 - "$executables" "$1" "$2" "$3" <<'EOF'
import json, sys
path, package, target, kind = sys.argv[1:]
for line in open(path):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    if m["target"]["name"] == target and kind in m["target"]["kind"] \
            and m["package_id"].split("#")[0].rstrip("/").endswith("/" + package):
        print(m["executable"])
        break
EOF
}
exe_linux_boot=$(executable vmm linux_boot test)
exe_microvm_suite=$(executable sandbox microvm test)
exe_forge_slice=$(executable tests microvm test)
[ -n "$exe_linux_boot" ] && [ -n "$exe_microvm_suite" ] && [ -n "$exe_forge_slice" ] \
    || die "cargo built no executable for a test target (linux_boot, microvm)"

# The guest image (cached by its inputs, the agent binary among them).
image_out=$(target/debug/forge image build)
guest_image=$(dirname "$(printf '%s\n' "$image_out" | sed -n 's/^ *ext4: *//p')")
[ -f "$guest_image/image.json" ] || die "forge image build named no image: $image_out"
log "guest image: $guest_image"

kmod_root=""
if [ "$mode" = nested ]; then
    # The nested host's kernel: Debian's, unpacked (not installed), with
    # its modules indexed, cached by package version.
    host_pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/ { print $2; exit }')
    [ -n "$host_pkg" ] || die "apt knows no linux-image-amd64 (run apt-get update)"
    kver=${host_pkg#linux-image-}
    host_ver=$(apt-cache show "$host_pkg" | awk '/^Version:/ { print $2; exit }')
    kmod_root="$cache/host-kernel/$host_pkg-$host_ver"
    if [ ! -f "$kmod_root/.complete" ]; then
        log "fetching the nested host's kernel: $host_pkg $host_ver"
        rm -rf "$kmod_root" "$kmod_root.tmp"
        mkdir -p "$kmod_root.tmp"
        (cd "$kmod_root.tmp" && apt-get download -q "$host_pkg=$host_ver" 2>/dev/null >&2) \
            || { apt-get update -qq && (cd "$kmod_root.tmp" && apt-get download -q "$host_pkg=$host_ver" >&2); }
        dpkg-deb -x "$kmod_root.tmp"/*.deb "$kmod_root.tmp/root"
        depmod -b "$kmod_root.tmp/root" "$kver"
        mv "$kmod_root.tmp/root" "$kmod_root"
        rm -rf "$kmod_root.tmp"
        touch "$kmod_root/.complete"
    fi
    vmlinuz="$kmod_root/boot/vmlinuz-$kver"

    # The initramfs: busybox, the modules that reach the host's root (virtio
    # PCI, 9p, overlay), scripts/nested/init; cached by those inputs.
    early_modules="virtio_pci 9pnet_virtio 9p overlay"
    key=$( (cat scripts/nested/init; echo "$kver $early_modules"; dpkg-query -W -f='${Version}' busybox-static) \
        | sha256sum | cut -c1-16)
    initrd="$cache/initramfs-$key.gz"
    if [ ! -f "$initrd" ]; then
        log "building the nested host's initramfs"
        tree=$(mktemp -d)
        mkdir -p "$tree"/{bin,modules,proc,sys,dev}
        cp /bin/busybox "$tree/bin/busybox"
        cp scripts/nested/init "$tree/init"
        chmod 0755 "$tree/init"
        for m in $early_modules; do
            modprobe -d "$kmod_root" -S "$kver" --show-depends "$m" | awk '$1 == "insmod" { print $2 }'
        done | awk '!seen[$0]++' | while read -r ko; do
            cp "$ko" "$tree/modules/"
            basename "$ko" >> "$tree/modules/order"
        done
        (cd "$tree" && find . | cpio -o -H newc --quiet | gzip -1) > "$initrd.tmp"
        mv "$initrd.tmp" "$initrd"
        rm -rf "$tree"
    fi
fi

if [ "$prepare_only" = 1 ]; then
    log "prepared: packages, kernels, binaries, guest image and initramfs are in place"
    exit 0
fi

run="$cache/runs/$(date +%Y%m%d-%H%M%S)-$$"
results="$run/results"
mkdir -p "$results"
# Keep the ten newest runs' results (two hosts may run side by side).
ls -1dt "$cache"/runs/*/ 2>/dev/null | tail -n +11 | xargs -r rm -rf

# write_plan <results directory> <steps>: what the run inside is to do.
write_plan() {
    cat > "$1/plan.env" <<EOF
REPO='$repo'
RESULTS='$( [ "$mode" = nested ] && echo /results || echo "$1")'
STEPS='$2'
KMOD_ROOT='$kmod_root'
MODULES='kvm_amd virtio_blk ext4'
GUEST_KERNEL='$guest_kernel'
GUEST_BZIMAGE='$guest_bzimage'
GUEST_IMAGE='$guest_image'
FORGE_BIN='$repo/target/debug/forge'
TEST_BINARIES='$test_binaries'
EXE_LINUX_BOOT='$exe_linux_boot'
EXE_MICROVM_SUITE='$exe_microvm_suite'
EXE_FORGE_SLICE='$exe_forge_slice'
EOF
}

# registers <monitor socket> <kallsyms>: the registers of every CPU of a
# nested host, from its QEMU monitor, each RIP named by the kernel symbol it
# falls in (the nested host saves its /proc/kallsyms in its results).
registers() {
    python3 - "$1" "$2" "$3" <<'PY'
import bisect, re, socket, subprocess, sys, time
s = socket.socket(socket.AF_UNIX)
s.settimeout(2)
s.connect(sys.argv[1])
s.sendall(b"info registers -a\n")
out, end = b"", time.time() + 10
while time.time() < end:
    try:
        chunk = s.recv(65536)
    except socket.timeout:
        break
    if not chunk:
        break
    out += chunk
text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", out.decode(errors="replace"))
text = "\n".join(l for l in text.splitlines() if not l.startswith(("QEMU ", "(qemu)")))
def table(lines):
    symbols = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 3 and fields[1] in "tTwW":
            symbols.append((int(fields[0], 16), " ".join(fields[2:])))
    return sorted(symbols)
try:
    nested_host = table(open(sys.argv[2]))
except OSError:
    nested_host = []
# A CPU running a guest of the nested host (the test's L2 VM) is at an
# address of the guest kernel, which is linked without KASLR.
try:
    guest = table(subprocess.run(["nm", "-n", sys.argv[3]], capture_output=True,
                                 text=True, check=True).stdout.splitlines())
except (OSError, subprocess.CalledProcessError):
    guest = []
def lookup(symbols, rip):
    i = bisect.bisect_right(symbols, (rip, "\uffff")) - 1
    return f"{symbols[i][1]}+{rip - symbols[i][0]:#x}" if i >= 0 else None
def name(rip):
    if rip < 1 << 63:
        return "user space"
    found = [f"{where}: {sym}" for where, sym in
             (("nested host", lookup(nested_host, rip)), ("guest kernel", lookup(guest, rip))) if sym]
    return "; or ".join(found) or "?"
for rip in re.findall(r"RIP=([0-9a-f]{16})", text):
    print(f"RIP {rip}: {name(int(rip, 16))}")
print(text)
PY
}

# boot_nested_host <results directory> <prefix>: boots the nested host on
# the plan in that directory and waits for it to power off; its serial log
# and QEMU's go to <prefix>.serial.log and <prefix>.qemu.log. Returns 0
# when it powered off, 2 when it stopped running (nothing on its console,
# which has a heartbeat, for $stall_secs s), 1 when it outlived
# $timeout_secs or QEMU failed. A host that is killed leaves its CPUs'
# registers in <prefix>.registers.txt.
boot_nested_host() {
    local results=$1 prefix=$2
    local scratch="$run/scratch.img" serial="$prefix.serial.log" monitor="$run/monitor.sock"
    rm -f "$scratch" "$monitor"
    truncate -s 64G "$scratch"
    : > "$serial"
    log "booting the nested host: QEMU TCG, -cpu EPYC,+svm,+npt, $cpus CPUs, $mem_mib MiB (progress below; serial log $serial)"
    qemu-system-x86_64 \
        -accel "tcg,thread=${FORGE_NESTED_TCG_THREAD:-multi}" -cpu "${FORGE_NESTED_CPU:-EPYC,+svm,+npt}" -smp "$cpus" -m "$mem_mib" \
        -nodefaults -no-reboot -display none \
        -monitor "unix:$monitor,server=on,wait=off" -serial "file:$serial" \
        -kernel "$vmlinuz" -initrd "$initrd" \
        -append "console=ttyS0 panic=-1 quiet loglevel=4" \
        -virtfs "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap" \
        -virtfs "local,path=$results,mount_tag=results,security_model=none,multidevs=remap" \
        -drive "file=$scratch,if=virtio,format=raw,cache=unsafe,discard=unmap" \
        -device virtio-rng-pci \
        < /dev/null 2> "$prefix.qemu.log" &
    local qemu_pid=$!
    tail -n +1 -F "$serial" 2>/dev/null \
        | grep --line-buffered -E '^\[nested\]|nested-init:|    |Kernel panic|BUG:|WARNING:' >&2 &
    local tail_pid=$!
    local began now size last_size=-1 last_change outcome=""
    began=$(date +%s)
    last_change=$began
    while kill -0 "$qemu_pid" 2>/dev/null; do
        sleep 5
        now=$(date +%s)
        size=$(stat -c %s "$serial")
        if [ "$size" != "$last_size" ]; then
            last_size=$size
            last_change=$now
        elif [ $((now - last_change)) -ge "$stall_secs" ]; then
            outcome=stalled
            break
        fi
        if [ $((now - began)) -ge "$timeout_secs" ]; then
            outcome=timeout
            break
        fi
    done
    if [ -n "$outcome" ]; then
        { echo "# info registers -a, $(date -u +%FT%TZ)"; registers "$monitor" "$results/kallsyms" "$guest_kernel"; } \
            > "$prefix.registers.txt" 2>&1
        kill "$qemu_pid" 2>/dev/null
        sleep 2
        kill -9 "$qemu_pid" 2>/dev/null
    fi
    local status=0
    wait "$qemu_pid" || status=$?
    sleep 1
    kill "$tail_pid" 2>/dev/null
    wait "$tail_pid" 2>/dev/null
    [ "$keep" = 1 ] || rm -f "$scratch"
    local where=""
    [ -z "$outcome" ] || where="its CPUs were at $(grep '^RIP ' "$prefix.registers.txt" | paste -sd';' -) (all registers: $prefix.registers.txt)"
    case "$outcome" in
    stalled)
        log "the nested host stopped running: nothing on its console for $stall_secs s; $where"
        return 2 ;;
    timeout)
        log "the nested host did not finish within $timeout_secs s; $where"
        return 1 ;;
    esac
    if [ "$status" != 0 ]; then
        log "QEMU ended with status $status: $(tail -n 5 "$prefix.qemu.log")"
        return 1
    fi
    return 0
}

# steps_ended <results directory> <passed|failed>: the steps that ended so
# there.
steps_ended() {
    awk -F'\t' -v how="$2" '$2 == how { print $1 }' "$1/steps.tsv" 2>/dev/null | paste -sd' ' -
}

start=$(date +%s)
passed=""
if [ "$mode" = direct ]; then
    write_plan "$results" "$steps"
    log "running on this host's /dev/kvm"
    scripts/nested/inside.sh --direct "$results/plan.env" || true
    passed=$(steps_ended "$results" passed)
else
    # A nested host that stops running altogether (its kernel frozen under
    # QEMU's emulated SVM, seen about once in twenty boots) is booted
    # again, once, for the steps it had not passed. A step that fails in
    # a running host is not run again.
    attempt=1
    todo=$steps
    failed=""
    while :; do
        dir=$results
        [ "$attempt" = 1 ] || dir="$results/attempt-$attempt"
        mkdir -p "$dir"
        write_plan "$dir" "$todo"
        outcome=0
        boot_nested_host "$dir" "$run/attempt-$attempt" || outcome=$?
        passed="$passed $(steps_ended "$dir" passed)"
        failed="$failed $(steps_ended "$dir" failed)"
        todo=""
        for step in $steps; do
            case " $passed $failed " in *" $step "*) ;; *) todo="$todo $step" ;; esac
        done
        todo=${todo# }
        if [ "$outcome" != 2 ] || [ -z "$todo" ] || [ "$attempt" -ge "$attempts" ]; then
            break
        fi
        attempt=$((attempt + 1))
        log "booting a fresh nested host (attempt $attempt of $attempts) for: $todo"
    done
fi
elapsed=$(( $(date +%s) - start ))

log "results ($mode, $elapsed s in all; logs in $results):"
for tsv in "$results/steps.tsv" "$results"/attempt-*/steps.tsv; do
    [ -s "$tsv" ] || continue
    where=${tsv#"$results"/}
    where=${where%steps.tsv}
    while IFS=$'\t' read -r name status secs; do
        log "  $name: $status in $secs s${where:+ (${where%/})}"
    done < "$tsv"
done
status=0
for step in $steps; do
    case " $passed " in
    *" $step "*) ;;
    *) log "  $step: did not pass"; status=1 ;;
    esac
done
if [ "$status" != 0 ]; then
    log "FAILED (see $results/ and $run/*.serial.log)"
    exit 1
fi
log "all steps passed"
