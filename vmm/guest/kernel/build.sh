#!/bin/sh
# Builds the forge guest kernel from Debian's linux-source-6.12 package,
# tinyconfig plus forge.config: an uncompressed ELF vmlinux and, from the
# same build, a standard bzImage beside it (forge-vmm boots either).
#
#   vmm/guest/kernel/build.sh [--install-deps] [--config-only]
#
# --config-only stops after writing and checking .config (printed path).
#
# The result is cached under $FORGE_KERNEL_CACHE (default
# ~/.cache/forge/kernel) in a directory named by the SHA-256 of the inputs
# (this script, the fragment, the source package version); a second run
# with the same inputs prints the cached path at once. The last line of
# output is always the vmlinux path (`bzImage` is in the same directory).
# Progress goes to stderr.
#
# Host packages: linux-source-6.12 build-essential bc bison flex libelf-dev
# libssl-dev xz-utils (--install-deps installs them with apt-get).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
pkg=linux-source-6.12
cache=${FORGE_KERNEL_CACHE:-$HOME/.cache/forge/kernel}
jobs=${FORGE_KERNEL_JOBS:-$(nproc)}

say() { printf '[kernel] %s\n' "$*" >&2; }

config_only=0
for arg in "$@"; do
    case "$arg" in
    --install-deps)
        say "installing build dependencies"
        apt-get install -y --no-install-recommends "$pkg" build-essential bc bison \
            flex libelf-dev libssl-dev xz-utils >&2 ;;
    --config-only) config_only=1 ;;
    *) say "unknown argument $arg"; exit 2 ;;
    esac
done

version=$(dpkg-query -W -f '${Version}' "$pkg" 2>/dev/null || true)
if [ -z "$version" ]; then
    say "$pkg is not installed; run: $0 --install-deps"
    exit 1
fi
tarball=$(ls /usr/src/linux-source-6.12.tar.* 2>/dev/null | head -n1)
[ -n "$tarball" ] || { say "no /usr/src/linux-source-6.12.tar.* found"; exit 1; }

key=$( (cat "$here/build.sh" "$here/forge.config"; echo "$pkg $version") | sha256sum | cut -c1-16)
out="$cache/$key"
if [ -f "$out/vmlinux" ] && [ -f "$out/bzImage" ]; then
    say "cached: inputs $key unchanged"
    echo "$out/vmlinux"
    exit 0
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/forge-kernel.XXXXXX")
trap 'rm -rf "$work"' EXIT
say "unpacking $tarball ($pkg $version)"
tar -xf "$tarball" -C "$work"
src=$(find "$work" -mindepth 1 -maxdepth 1 -type d | head -n1)

say "configuring: tinyconfig + forge.config"
make -C "$src" -s tinyconfig >&2
"$src/scripts/kconfig/merge_config.sh" -m -O "$src" "$src/.config" "$here/forge.config" >/dev/null
make -C "$src" -s olddefconfig >&2
missing=0
while IFS= read -r line; do
    case "$line" in
    CONFIG_*=n) opt=${line%%=*}
        if grep -q "^$opt=" "$src/.config"; then say "warning: $opt still set"; fi ;;
    CONFIG_*) if ! grep -qx "$line" "$src/.config"; then
            say "warning: $line did not stick"; missing=$((missing + 1)); fi ;;
    esac
done < "$here/forge.config"
say "$missing fragment options did not stick"
if [ "$config_only" = 1 ]; then
    mkdir -p "$cache"
    cp "$src/.config" "$cache/config-$key"
    echo "$cache/config-$key"
    exit 0
fi

say "building vmlinux and bzImage with $jobs jobs"
make -C "$src" -j"$jobs" vmlinux bzImage 2>&1 | awk '
    /^  (CC|AS|LD|AR)/ { n++; if (n % 50 == 0) printf "[kernel] %d objects built\n", n > "/dev/stderr" }
    /error|Error/ { print > "/dev/stderr" }
    END { printf "[kernel] %d objects built\n", n > "/dev/stderr" }'
[ -f "$src/vmlinux" ] && [ -f "$src/arch/x86/boot/bzImage" ] || { say "build failed"; exit 1; }

mkdir -p "$out"
cp "$src/vmlinux" "$out/vmlinux.tmp"
cp "$src/.config" "$out/config"
cp "$src/arch/x86/boot/bzImage" "$out/bzImage"
mv "$out/vmlinux.tmp" "$out/vmlinux"
say "done: $(du -h "$out/vmlinux" | cut -f1) vmlinux"
echo "$out/vmlinux"
