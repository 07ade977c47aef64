#!/usr/bin/env bash
# The SDKs' test tools, cached under /var/cache/forge/sdk-tools (or
# $FORGE_SDK_TOOLS) and keyed by their pins:
#
#   bun                 Bun, from the npm registry's @oven/bun-linux-x64
#   typescript/         the TypeScript compiler, to type-check the TS SDK
#   python-<hash>/      a Python venv with sdk/python's test requirements
#
# Prints nothing but errors; idempotent. Node.js (>= 20) and Python 3 come
# from the host (scripts/setup-host.sh).
set -euo pipefail
log() { echo "sdk-tools: $*" >&2; }
here="$(cd "$(dirname "$0")/.." && pwd)"
tools="${FORGE_SDK_TOOLS:-/var/cache/forge/sdk-tools}"
mkdir -p "$tools"

BUN_VERSION=1.4.5
TYPESCRIPT_VERSION=5.9.3

node_major="$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)"
if [ "$node_major" -lt 20 ]; then
    echo "sdk-tools: the TS SDK needs Node.js >= 20 (found: $(node --version 2>/dev/null || echo none))" >&2
    exit 1
fi

# npm checks each package against the registry's integrity hash.
npm_install() {
    local dir=$1
    shift
    if [ ! -e "$dir/.done" ]; then
        rm -rf "$dir"
        npm install --prefix "$dir" --no-save --no-audit --no-fund --loglevel=error "$@" >/dev/null
        touch "$dir/.done"
    fi
}

npm_install "$tools/bun-$BUN_VERSION" "@oven/bun-linux-x64@$BUN_VERSION"
ln -sfn "$tools/bun-$BUN_VERSION/node_modules/@oven/bun-linux-x64/bin/bun" "$tools/bun"

npm_install "$tools/typescript-$TYPESCRIPT_VERSION" "typescript@$TYPESCRIPT_VERSION" "@types/node@20"
ln -sfn "$tools/typescript-$TYPESCRIPT_VERSION" "$tools/typescript"

requirements="$here/sdk/python/requirements-test.txt"
key="$(sha256sum "$requirements" | cut -c1-16)"
venv="$tools/python-$key"
if [ ! -e "$venv/.done" ]; then
    rm -rf "$venv"
    if ! python3 -m venv "$venv" 2>/dev/null; then
        # Debian's python3 makes venvs with its python3-venv package.
        # shellcheck source=scripts/packages.sh
        . "$here/scripts/packages.sh"
        ensure_packages python3-venv
        rm -rf "$venv"
        python3 -m venv "$venv"
    fi
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
    touch "$venv/.done"
fi
ln -sfn "$venv" "$tools/python"
