#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the test suite:
#
#   scripts/postgres.sh start DIR   installs Debian's postgresql when absent,
#                                   creates a cluster in DIR (owned by the
#                                   postgres user) listening on 127.0.0.1 on a
#                                   free port with a random password and TLS
#                                   (a self-signed certificate), starts it,
#                                   and prints its URL (also in DIR/url)
#   scripts/postgres.sh stop DIR    stops it and removes DIR
#
# The cluster is the tests' alone: Debian's own cluster (if the package
# started one) is not touched. Tests given its URL (FORGE_TEST_DATABASE_URL)
# create a database of their own in it.
set -euo pipefail
log() { echo "postgres: $*" >&2; }

command=${1:-}
dir=${2:-}
if [ -z "$command" ] || [ -z "$dir" ]; then
    echo "usage: $0 start|stop DIR" >&2
    exit 2
fi

bin_dir() {
    local found
    found=$(find /usr/lib/postgresql -maxdepth 3 -path '*/bin/pg_ctl' 2>/dev/null | sort -V | tail -n 1)
    [ -n "$found" ] && dirname "$found"
}

as_postgres() { runuser -u postgres -- "$@"; }

case "$command" in
start)
    if ! bin_dir >/dev/null; then
        # shellcheck source=scripts/packages.sh
        . "$(dirname "$0")/packages.sh"
        ensure_packages postgresql
    fi
    bin=$(bin_dir) || { log "no pg_ctl under /usr/lib/postgresql after installing postgresql"; exit 1; }
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    chown postgres: "$dir"
    chmod 700 "$dir"
    password=$(openssl rand -hex 16)
    printf '%s\n' "$password" > "$dir/password"
    chown postgres: "$dir/password"
    as_postgres "$bin/initdb" -D "$dir/data" -U forge --pwfile="$dir/password" \
        --auth=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; exit 1; }
    rm -f "$dir/password"
    # TLS as a managed service offers it; clients ask for it with sslmode.
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1 \
        -keyout "$dir/data/server.key" -out "$dir/data/server.crt" >/dev/null 2>&1
    chown postgres: "$dir/data/server.key" "$dir/data/server.crt"
    chmod 600 "$dir/data/server.key"
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    # Many short-lived test databases at once; fsync is not needed for a
    # cluster thrown away at the end.
    as_postgres "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start -o \
        "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir -c ssl=on \
         -c max_connections=400 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
        >/dev/null || { cat "$dir/server.log" >&2; exit 1; }
    url="postgres://forge:$password@127.0.0.1:$port/postgres"
    printf '%s\n' "$url" > "$dir/url"
    chmod 600 "$dir/url"
    log "a cluster on 127.0.0.1:$port (data in $dir/data)"
    echo "$url"
    ;;
stop)
    if [ -d "$dir/data" ]; then
        bin=$(bin_dir)
        as_postgres "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
    ;;
*)
    echo "usage: $0 start|stop DIR" >&2
    exit 2
    ;;
esac
