#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets/, bodies in fuzz-targets/) for
# SECONDS each (default 60) under cargo-fuzz with nightly Rust, growing its
# corpus in fuzz/corpus/<target>/ and minimising it afterwards. An input
# that crashes a target is copied to fuzz/regressions/<target>/, which
# `cargo test -p fuzz-targets` replays from then on, and fails the run.
# Prints, per target, executions per second, coverage and corpus size.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
seconds=${1:-60}
shift || true

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
cargo fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
cargo +nightly fuzz build

failed=()
printf '%-16s %12s %10s %8s %10s %s\n' target executions exec/s cov corpus result
for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$target" "fuzz/regressions/$target" "fuzz/artifacts/$target"
    log=$(mktemp)
    status=ok
    if ! cargo +nightly fuzz run "$target" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
        status=CRASH
        failed+=("$target")
        for crash in "fuzz/artifacts/$target"/*; do
            [ -f "$crash" ] && cp "$crash" "fuzz/regressions/$target/"
        done
        grep -m1 -A12 -E 'panicked|ERROR: AddressSanitizer|ERROR: libFuzzer' "$log" | sed 's/^/    /' || true
    fi
    done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1 || true)
    runs=$(grep -oP 'stat::number_of_executed_units: *\K[0-9]+' "$log" || echo "?")
    rate=$(grep -oP 'stat::average_exec_per_sec: *\K[0-9]+' "$log" || echo "?")
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$done_line")
    rm -f "$log"
    if [ "$status" = ok ]; then
        # Keep the corpus small in the repository: inputs that add coverage.
        cargo +nightly fuzz cmin "$target" "fuzz/corpus/$target" >/dev/null 2>&1 || true
    fi
    size=$(find "fuzz/corpus/$target" -type f | wc -l)
    printf '%-16s %12s %10s %8s %10s %s\n' "$target" "$runs" "$rate" "${cov:-?}" "$size" "$status"
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "crashes in: ${failed[*]} (inputs kept in fuzz/regressions/)" >&2
    exit 1
fi
