#!/usr/bin/env bash
# Set up this host and prepare the forge: host packages, release binaries,
# and the guest image every sandbox starts from (cached in the data dir).
# Then runs `forge serve`, or, with FORGE_CONTROL_URL set, `forge node run`
# (a sandbox node for that control plane; see the README).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup-host.sh
echo "up: building release binaries (forge, forge-vmm, sandbox-agent, sandbox-init)" >&2
cargo build --release -q -p forge -p vmm -p sandbox-agent -p sandbox-container
export FORGE_DATA_DIR="${FORGE_DATA_DIR:-/var/lib/forge}"
./target/release/forge image build
./target/release/forge image list
if [ -n "${FORGE_CONTROL_URL:-}" ]; then
    # A sandbox node: FORGE_NODE_TOKEN from `forge node add` on the control
    # plane, FORGE_NODE_LISTEN where the control plane reaches this host.
    echo "up: starting a sandbox node for $FORGE_CONTROL_URL on ${FORGE_NODE_LISTEN:-127.0.0.1:7100} (Ctrl-C stops it)" >&2
    exec ./target/release/forge node run
fi
echo "up: starting the forge on ${FORGE_LISTEN:-127.0.0.1:7070} (Ctrl-C stops it; the admin token is printed on first start and saved in $FORGE_DATA_DIR/admin-token)" >&2
exec ./target/release/forge serve
