#!/usr/bin/env bash
# Run the whole test suite, fastest tier first:
#
#   lint         cargo fmt --check, cargo clippy -D warnings
#   build        every test and binary, and the guest image
#   unit         every crate's inline tests, the forge's in-process API tier
#                among them (no root, no sandboxes; seconds)
#   integration  every crate's tests/ (the VMM on the real /dev/kvm, the
#                agent, the guest image, the container backend, webhooks,
#                the forge end to end with real git, sandboxes and a browser)
#   postgres     the forge's own tests (the store and the in-process API
#                tier) and the forge end to end (tests/) again, on a
#                throwaway PostgreSQL cluster instead of SQLite, and two
#                control planes sharing it with three sandbox nodes
#   microvm      the microVM backend with a real Linux guest
#                (scripts/nested-kvm.sh), last: two nested test hosts side
#                by side, one per core, share its steps. They emulate their
#                CPU in software; run beside the integration tier, their
#                guests' boots would be starved for minutes.
#
# The closing lines give each tier's counts and time. A test whose
# requirement is missing fails under CI (CI=true, the default here; see
# tests/support); where it may skip, it is listed and counted as
# skipped, never as passed.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS

./scripts/setup-host.sh
# Bun, TypeScript and a Python venv for the SDKs' tests (cached).
./scripts/sdk-tools.sh

# Heavy artifacts (the guest image, CRIU) are cached outside the clone, keyed
# by their inputs, and rebuilt when absent.
export FORGE_DATA_DIR="${FORGE_DATA_DIR:-/var/lib/forge}"
mkdir -p "$FORGE_DATA_DIR"
# This is the suite CI runs: a missing requirement is a failure.
export CI="${CI:-true}"
logs=$(mktemp -d)
export FORGE_TEST_SKIPS="$logs/skipped"
: > "$FORGE_TEST_SKIPS"
# The PostgreSQL tier's cluster (scripts/postgres.sh), under /tmp where its
# postgres user can reach it.
postgres_dir=$(mktemp -d /tmp/forge-postgres.XXXXXX)
trap 'rm -rf "$logs"; ./scripts/postgres.sh stop "$postgres_dir"' EXIT

status=0
summary=()
# tier <name> <command...>: runs a tier, keeps its output for the counts
# and its time for the summary; a failing tier does not stop the ones after.
tier() {
    local name=$1 begun=$SECONDS tier_status=0
    shift
    echo "=== tier $name: $*"
    "$@" 2>&1 | tee "$logs/$name.log" || tier_status=$?
    local counts
    counts=$(awk '/^test result:/ { p += $4; f += $6; i += $8; n++ }
        END { if (n) printf "%d passed, %d failed, %d ignored", p, f, i }' "$logs/$name.log")
    summary+=("$(printf '%-12s %-8s %5d s  %s' "$name" \
        "$([ "$tier_status" = 0 ] && echo ok || echo FAILED)" $((SECONDS - begun)) "$counts")")
    [ "$tier_status" = 0 ] || status=$tier_status
}

tier fmt cargo fmt --all --check
tier clippy cargo clippy --workspace --all-targets --quiet -- -D warnings
# Build every test once, so the tiers below only run, and the nested run's
# own builds find everything built.
tier build cargo test --workspace --no-run --quiet
tier build-bins cargo build --workspace --bins --quiet
# The guest image every sandbox test runs on (cached by its inputs, the
# agent binary among them), before any test looks for it.
tier image target/debug/forge image build

tier unit cargo test --workspace --no-fail-fast --lib --bins
tier doc cargo test --workspace --no-fail-fast --doc
tier integration cargo test --workspace --no-fail-fast --test '*'

# The same store, API and end-to-end tests on PostgreSQL: every test makes a
# database of its own in one throwaway cluster (FORGE_TEST_DATABASE_URL).
postgres_tiers() {
    local url status=0
    url=$(./scripts/postgres.sh start "$postgres_dir") || return
    # --include-ignored: the tests that need PostgreSQL itself (TLS).
    FORGE_TEST_DATABASE_URL="$url" cargo test -p forge --no-fail-fast --lib -- --include-ignored || status=$?
    FORGE_TEST_DATABASE_URL="$url" cargo test -p e2e --no-fail-fast --test '*' || status=$?
    # Two control planes on one database (ignored on SQLite).
    FORGE_TEST_DATABASE_URL="$url" cargo test -p e2e --test control_planes -- --include-ignored || status=$?
    return "$status"
}
tier postgres postgres_tiers

# The microVM backend with a real Linux guest: the tests cargo runs as
# ignored (they need a /dev/kvm that boots Linux) run there, in the nested
# test host where this host's /dev/kvm cannot boot Linux, else directly. It
# installs what it needs (QEMU among it) and fails rather than skips.
# Where the machine has two cores or more, two nested hosts (one CPU each)
# run at once: one boots Linux and runs three quarters of the backend's suite,
# the other the forge slice and the last quarter (each about 6 min here).
microvm_hosts() {
    ./scripts/nested-kvm.sh --prepare || return
    if [ "$(nproc)" -lt 2 ]; then
        ./scripts/nested-kvm.sh
        return
    fi
    local first status=0
    ./scripts/nested-kvm.sh --steps "linux-boot microvm-suite-1of4 microvm-suite-2of4 microvm-suite-3of4" 2>&1 \
        | sed -u 's/^/[host 1] /' &
    first=$!
    ./scripts/nested-kvm.sh --steps "forge-slice microvm-suite-4of4" 2>&1 \
        | sed -u 's/^/[host 2] /' || status=$?
    wait "$first" || status=$?
    return "$status"
}
tier microvm microvm_hosts
summary[-1]+="$(grep -cE '^(\[host [12]\] )?nested: +[a-z0-9-]+: passed in' "$logs/microvm.log" || true) steps passed (of linux-boot, microvm-suite in quarters, forge-slice)"

echo
echo "=== summary ($((SECONDS - started)) s in all)"
printf '%s\n' "${summary[@]}"
skipped=$(wc -l < "$FORGE_TEST_SKIPS")
if [ "$skipped" -gt 0 ]; then
    echo "skipped (a requirement missing on this host):"
    sort "$FORGE_TEST_SKIPS" | awk -F'\t' '{ printf "  %s: %s (%s)\n", $1, $2, $3 }'
fi
cargo run --quiet -p test-support
# cargo counts a test that returned early for a missing requirement as
# passed; it did not run, so it counts as skipped here.
cat "$logs"/{unit,doc,integration,postgres}.log | awk -v skipped="$skipped" '
    /^test result:/ { p += $4; f += $6; i += $8 }
    END { printf "total: %d passed, %d failed, %d skipped, %d ignored (run by the microvm and postgres tiers)\n",
                 p - skipped, f, skipped, i }'
exit "$status"
