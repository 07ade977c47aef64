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
#                              [--keep]
#
#   --steps     only these steps (default: all three)
#   --nested    boot the nested host even where /dev/kvm is hardware
#   --direct    run on this host's /dev/kvm (fails where it cannot boot Linux)
#   --keep      keep the run's scratch disk
#
# Environment: FORGE_NESTED_CACHE (default /var/cache/forge/nested: the
# nested host's kernel, initramfs and run directories), FORGE_NESTED_MEM_MIB
# (6144), FORGE_NESTED_CPUS (1, see below), FORGE_NESTED_CPU (the emulated
# CPU model, EPYC,+svm,+npt), FORGE_NESTED_TCG_THREAD (multi), FORGE_NESTED_TIMEOUT
# (seconds, 3600), FORGE_DATA_DIR (where the guest image is cached,
# /var/lib/forge). Needs root. Exits 0 only when every step passed.
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
while [ $# -gt 0 ]; do
    case "$1" in
    --steps) steps=${2:?--steps needs a list}; shift ;;
    --nested) mode=nested ;;
    --direct) mode=direct ;;
    --keep) keep=1 ;;
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
timeout_secs=${FORGE_NESTED_TIMEOUT:-3600}
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

run="$cache/runs/$(date +%Y%m%d-%H%M%S)-$$"
results="$run/results"
mkdir -p "$results"
# Keep the five newest runs' results.
ls -1dt "$cache"/runs/*/ 2>/dev/null | tail -n +6 | xargs -r rm -rf

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

cat > "$results/plan.env" <<EOF
REPO='$repo'
RESULTS='$( [ "$mode" = nested ] && echo /results || echo "$results")'
STEPS='$steps'
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

start=$(date +%s)
if [ "$mode" = direct ]; then
    log "running on this host's /dev/kvm"
    scripts/nested/inside.sh --direct "$results/plan.env" || true
else
    scratch="$run/scratch.img"
    truncate -s 64G "$scratch"
    log "booting the nested host: QEMU TCG, -cpu EPYC,+svm,+npt, $cpus CPUs, $mem_mib MiB (progress below; serial log $run/serial.log)"
    set +e
    timeout --kill-after=10 "$timeout_secs" qemu-system-x86_64 \
        -accel "tcg,thread=${FORGE_NESTED_TCG_THREAD:-multi}" -cpu "${FORGE_NESTED_CPU:-EPYC,+svm,+npt}" -smp "$cpus" -m "$mem_mib" \
        -nodefaults -no-reboot -display none -monitor none -serial stdio \
        -kernel "$vmlinuz" -initrd "$initrd" \
        -append "console=ttyS0 panic=-1 quiet loglevel=4" \
        -virtfs "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap" \
        -virtfs "local,path=$results,mount_tag=results,security_model=none,multidevs=remap" \
        -drive "file=$scratch,if=virtio,format=raw,cache=unsafe,discard=unmap" \
        -device virtio-rng-pci \
        < /dev/null 2> "$run/qemu.log" \
        | tee "$run/serial.log" \
        | grep --line-buffered -E '^\[nested\]|nested-init:|    |Kernel panic|BUG:|WARNING:'
    qemu_status=${PIPESTATUS[0]}
    set -e
    [ "$keep" = 1 ] || rm -f "$scratch"
    if [ "$qemu_status" = 124 ]; then
        log "the nested host did not finish within $timeout_secs s"
    elif [ "$qemu_status" != 0 ]; then
        log "QEMU ended with status $qemu_status: $(tail -n 5 "$run/qemu.log")"
    fi
fi
elapsed=$(( $(date +%s) - start ))

log "results ($mode, $elapsed s in all; logs in $results):"
if [ -s "$results/steps.tsv" ]; then
    while IFS=$'\t' read -r name status secs; do
        log "  $name: $status in $secs s"
    done < "$results/steps.tsv"
fi
status=$(cat "$results/status" 2>/dev/null || echo missing)
for step in $steps; do
    grep -q "^$step	passed" "$results/steps.tsv" 2>/dev/null || status=1
done
if [ "$status" != 0 ]; then
    log "FAILED (see $results/*.log and $run/serial.log)"
    exit 1
fi
log "all steps passed"
