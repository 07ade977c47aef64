#!/usr/bin/env bash
# Provide a CRIU (>= 4.2) that passes `criu check` on this kernel.
#
# Why 4.2: bookworm's 3.17 fails `criu check` on this kernel; 4.1.1 passes it
# and restores simple trees, but fails to restore a sandbox whose agent holds
# a listening Unix socket while a helper task stands in for an exited session
# leader (setns of the mount namespace fails); 4.2.1 restores it.
#
# Usage: build-criu.sh [CACHE_DIR]   (default: /var/cache/forge/criu)
# Prints the path of a working criu binary on its last line.
#
# 1. An installed criu that passes `criu check` and is >= 4.2 is used as is.
# 2. Otherwise the criu source package of a newer Debian release (sid, else
#    trixie: the first whose mirror serves it) is fetched
#    with apt (deb-src entry derived from the host's configured Debian
#    mirror, in a private apt state under CACHE_DIR: the host's apt sources
#    are not modified), its build dependencies are installed from the host's
#    own release, and criu is built and installed into CACHE_DIR/install.
# Needs root (apt-get install of build dependencies).
set -euo pipefail

cache="${1:-/var/cache/forge/criu}"
suites="${CRIU_SOURCE_SUITES:-sid trixie}"
mkdir -p "$cache"
log() { echo "build-criu: $*" >&2; }

works() {
    local bin="$1"
    [ -x "$bin" ] || return 1
    local version
    version="$("$bin" --version 2>/dev/null | sed -n 's/^Version: *//p')"
    case "$version" in
        4.[2-9]*|[5-9].*|[1-9][0-9].*) ;;
        *) return 1 ;;
    esac
    "$bin" check >/dev/null 2>&1
}

for candidate in "$cache/install/sbin/criu" "$(command -v criu || true)"; do
    if [ -n "$candidate" ] && works "$candidate"; then
        log "using $candidate"
        echo "$candidate"
        exit 0
    fi
done

mirror="$(sed -n 's/^URIs: *\([^ ]*\/debian\)$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1)"
if [ -z "$mirror" ]; then
    mirror="$(sed -n 's/^deb \(\[[^]]*\] \)\?\([^ ]*\/debian\) .*/\2/p' /etc/apt/sources.list 2>/dev/null | head -n1)"
fi
[ -n "$mirror" ] || { log "no Debian mirror found in the apt sources"; exit 1; }

apt_dir="$cache/apt"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial"
apt_opts=(
    -o "Dir::Etc::SourceList=$apt_dir/sources.list"
    -o "Dir::Etc::SourceParts=/nonexistent"
    -o "Dir::State::Lists=$apt_dir/lists"
    -o "Dir::Cache::Archives=$apt_dir/archives"
    -o "APT::Sandbox::User=root"
)
src="$cache/src"
fetched=""
for suite in $suites; do
    log "fetching the criu source package from $suite"
    echo "deb-src [trusted=yes] $mirror $suite main" >"$apt_dir/sources.list"
    apt-get "${apt_opts[@]}" update -qq || continue
    # Only the upstream tarball is needed (criu is built with its own
    # Makefile). It is fetched with apt's downloader and checked against the
    # hash from the suite's Sources index. A mirror may index a version whose
    # files are already gone: then the next suite is tried.
    line="$(apt-get "${apt_opts[@]}" source --print-uris -qq criu | grep "\.orig\.tar\." | head -n1 || true)"
    [ -n "$line" ] || continue
    uri="$(echo "$line" | awk '{print $1}' | tr -d "'")"
    file="$(echo "$line" | awk '{print $2}')"
    hash="$(echo "$line" | awk '{print $4}')"
    rm -rf "$src" && mkdir -p "$src"
    if /usr/lib/apt/apt-helper download-file "$uri" "$src/$file" "$hash" >&2; then
        fetched="$suite"
        break
    fi
done
[ -n "$fetched" ] || { log "no suite of $suites served the criu source package"; exit 1; }
mkdir -p "$src/tree"
tar -xf "$src/$file" -C "$src/tree" --strip-components=1

log "installing build dependencies"
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    build-essential pkg-config dpkg-dev protobuf-c-compiler protobuf-compiler \
    libprotobuf-c-dev libprotobuf-dev python3-protobuf libnl-3-dev libnet1-dev \
    libcap-dev libbsd-dev libaio-dev libgnutls28-dev uuid-dev iproute2 >&2

log "building (this takes a few minutes)"
make -C "$src/tree" -j"$(nproc)" criu >&2
make -C "$src/tree" install-criu PREFIX="$cache/install" SBINDIR="$cache/install/sbin" >&2

bin="$cache/install/sbin/criu"
if works "$bin"; then
    log "built $("$bin" --version | head -n1) at $bin; criu check passes"
    echo "$bin"
    exit 0
fi
log "built $bin but it fails criu check:"
"$bin" check >&2 || true
exit 1
