#!/usr/bin/env bash
# Install what the forge and its test suite need on a Debian 12 host.
# Idempotent: packages already present are left alone, CRIU is built once
# and cached under /var/cache/forge/criu.
set -euo pipefail

log() { echo "setup: $*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    echo "setup: needs root (namespaces, cgroups, loop devices, /dev/kvm, apt-get)" >&2
    exit 1
fi

# git: the forge's transport; gcc: test guests of the VMM; btrfs-progs: the
# container backend's layer store; busybox-static: the container tests' tiny
# root; iptables: CRIU runs it while learning the kernel's features;
# mmdebstrap, e2fsprogs, curl: the guest image builder; python3: the start-up
# GC test edits the forge database with it; openssl: the GitHub tests make the
# app's RSA key with it; chromium, chromium-driver: the web UI's browser tests
# (headless, WebDriver); sqlite3: the web benchmark seeds runs into the database;
# iproute2, util-linux: the node tests put nodes in network namespaces (ip
# netns, veth) and run them there (nsenter).
packages=(git gcc libc6-dev btrfs-progs busybox-static iptables mmdebstrap e2fsprogs curl ca-certificates openssl tar xz-utils python3 chromium chromium-driver sqlite3 iproute2 util-linux)
# shellcheck source=scripts/packages.sh
. "$(dirname "$0")/packages.sh"
ensure_packages "${packages[@]}"

# CRIU >= 4.2 keeps processes and memory across container pause and fork.
# Without it those operations keep the disk only (and say so), so a failed
# build is a warning, not an error.
here="$(cd "$(dirname "$0")/.." && pwd)"
if ! "$here/container/scripts/build-criu.sh" >/dev/null; then
    log "warning: no working CRIU; container pause/fork will keep the disk only"
fi

# Kernel limits every sandbox's user namespace is charged against on the
# host's side (the kernel counts them per user up to the host's root, where
# all sandboxes share one budget): each sandbox is held to its own share in
# its namespace (container/src/launcher/userns.rs), the host's total must
# hold them all. And process ids: 512 per sandbox, 200 sandboxes.
raise() {
    local key="$1" want="$2" now
    now="$(sysctl -n "$key" 2>/dev/null || echo 0)"
    if [ "$now" -lt "$want" ]; then
        sysctl -qw "$key=$want" || log "warning: could not raise $key to $want"
    fi
}
raise fs.inotify.max_user_instances 65536
raise fs.inotify.max_user_watches 16777216
raise kernel.pid_max 4194304
