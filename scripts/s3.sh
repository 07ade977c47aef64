#!/usr/bin/env bash
# A throwaway S3-compatible object store for the tests of the snapshot store
# (`forge serve --snapshot-store s3://…`):
#
#   scripts/s3.sh start DIR [BUCKET]   starts moto's S3 server (from PyPI, in
#                                      a venv cached under /var/cache/forge
#                                      or $FORGE_SDK_TOOLS, keyed by its pin)
#                                      on 127.0.0.1 on a free port, makes
#                                      BUCKET (default: snapshots), and
#                                      prints its endpoint (also in
#                                      DIR/endpoint)
#   scripts/s3.sh stop DIR             stops it and removes DIR
#
# It speaks the S3 protocol over HTTP and keeps objects in memory; the forge
# reaches it through the same client it uses for AWS S3 or any other
# S3-compatible service.
set -euo pipefail
log() { echo "s3: $*" >&2; }

MOTO_VERSION=5.2.6

command=${1:-}
dir=${2:-}
bucket=${3:-snapshots}
if [ -z "$command" ] || [ -z "$dir" ]; then
    echo "usage: $0 start|stop DIR [BUCKET]" >&2
    exit 2
fi

case "$command" in
start)
    tools="${FORGE_SDK_TOOLS:-/var/cache/forge/sdk-tools}"
    venv="$tools/moto-$MOTO_VERSION"
    # One installer at a time; tests may start several servers at once.
    mkdir -p "$tools"
    exec 9>"$tools/.moto.lock"
    flock 9
    if [ ! -e "$venv/.done" ]; then
        rm -rf "$venv"
        if ! python3 -m venv "$venv" 2>/dev/null; then
            # shellcheck source=scripts/packages.sh
            . "$(dirname "$0")/packages.sh"
            ensure_packages python3-venv
            rm -rf "$venv"
            python3 -m venv "$venv"
        fi
        "$venv/bin/pip" install --quiet --disable-pip-version-check "moto[s3,server]==$MOTO_VERSION"
        touch "$venv/.done"
    fi
    exec 9>&-
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    setsid "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$dir/server.log" 2>&1 &
    echo $! > "$dir/pid"
    endpoint="http://127.0.0.1:$port"
    for _ in $(seq 100); do
        if curl -fsS -o /dev/null -X PUT "$endpoint/$bucket" 2>/dev/null; then
            printf '%s\n' "$endpoint" > "$dir/endpoint"
            log "an S3 server on $endpoint, bucket $bucket"
            echo "$endpoint"
            exit 0
        fi
        sleep 0.1
    done
    log "moto's S3 server did not answer on $endpoint"
    cat "$dir/server.log" >&2
    kill "$(cat "$dir/pid")" 2>/dev/null || true
    exit 1
    ;;
stop)
    if [ -e "$dir/pid" ]; then
        kill "$(cat "$dir/pid")" 2>/dev/null || true
    fi
    rm -rf "$dir"
    ;;
*)
    echo "usage: $0 start|stop DIR [BUCKET]" >&2
    exit 2
    ;;
esac
