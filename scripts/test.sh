#!/usr/bin/env bash
# Run the whole test suite: host set-up, formatting, then every crate's tests
# (VMM on the real /dev/kvm, agent, guest image, container backend, webhooks),
# then the microVM backend with a real Linux guest (scripts/nested-kvm.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup-host.sh

# Heavy artifacts (the guest image, CRIU) are cached outside the clone, keyed
# by their inputs, and rebuilt when absent.
export FORGE_DATA_DIR="${FORGE_DATA_DIR:-/var/lib/forge}"
mkdir -p "$FORGE_DATA_DIR"

cargo fmt --all --check

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
# --no-fail-fast: a failing test binary must not hide the ones after it.
cargo test --workspace --no-fail-fast 2>&1 | tee "$log" || status=$?
# One closing line over every test binary (cargo prints one per binary).
awk '/^test result:/ { p += $4; f += $6; i += $8 }
     END { printf "total: %d passed, %d failed, %d skipped\n", p, f, i }' "$log"

# The microVM backend with a real Linux guest: the tests cargo ran as
# ignored (they need a /dev/kvm that boots Linux) run here, in the nested
# test host where this host's /dev/kvm cannot boot Linux, else directly.
# It installs what it needs (QEMU among it) and fails rather than skips.
nested=0
./scripts/nested-kvm.sh || nested=$?
echo "microVM backend with Linux (scripts/nested-kvm.sh): $([ "$nested" = 0 ] && echo passed || echo FAILED)"
[ "$status" != 0 ] || status=$nested
exit "$status"
