#!/usr/bin/env bash
# runtime-image/standard/build-rootfs.sh: build the kiln-standard root filesystem
# as a tarball, ready for `docker import` (or bollard's create_image fromSrc=-).
#
#   usage: build-rootfs.sh OUT.tar
#
# Runs on the host as root (debootstrap needs chroot and mknod). Inputs are this
# script and packages.txt next to it; the controller's image builder hashes both
# and caches OUT.tar as /var/cache/kiln/rootfs-<hash>.tar, so a rerun or CI with a
# warm cache never debootstraps twice.
#
# Environment:
#   KILN_DEBIAN_MIRROR  default http://deb.debian.org/debian (reachable through
#                       the package proxy on the build hosts). Only where the
#                       packages come from: it is not part of the cache key.
# The suite is fixed here (bookworm, Debian 12), so that it is part of the hash.
set -euo pipefail

log() { printf '[build-rootfs] %s\n' "$*" >&2; }

if [ $# -ne 1 ]; then
  echo "usage: $0 OUT.tar" >&2
  exit 64
fi
out=$1
here=$(cd "$(dirname "$0")" && pwd)
mirror=${KILN_DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm

if [ "$(id -u)" -ne 0 ]; then
  log "must run as root (debootstrap needs chroot and mknod)"
  exit 1
fi
command -v debootstrap >/dev/null || { log "debootstrap is not installed (run deploy/host-setup.sh)"; exit 1; }

packages=$(grep -v -e '^#' -e '^[[:space:]]*$' "$here/packages.txt" | paste -sd, -)

work=$(mktemp -d /var/tmp/kiln-rootfs.XXXXXX)
cleanup() { rm -rf "$work"; rm -f "${partial:-}"; }
trap cleanup EXIT
rootfs=$work/rootfs

log "debootstrap --variant=minbase $suite from $mirror with: $packages"
debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror" >&2

# Trim what a sandboxed step never needs, to keep the image small: package
# indexes and caches (the sandbox has no network, so apt cannot use them),
# documentation, man pages, translations and logs. C.UTF-8 is built into glibc
# 2.36 (/usr/lib/locale/C.utf8), so /usr/share/locale can go.
log "trimming docs, man pages, locales, apt lists and caches"
rm -rf "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
       "$rootfs"/usr/share/locale/* "$rootfs"/usr/share/lintian "$rootfs"/usr/share/linda \
       "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/cache/debconf/*-old \
       "$rootfs"/var/log/* "$rootfs"/tmp/* "$rootfs"/var/tmp/*
# Docker provides /dev (a minimal tmpfs), /proc and /sys; ship them empty.
rm -rf "$rootfs"/dev/* "$rootfs"/proc/* "$rootfs"/sys/*
# Mount points Kiln's container profile uses (the rootfs itself is read-only).
mkdir -p "$rootfs"/kiln "$rootfs"/run/kiln "$rootfs"/work
chmod 0755 "$rootfs"/kiln "$rootfs"/run/kiln
chmod 0700 "$rootfs"/work
# debootstrap copies the host's resolver and hostname; the sandbox has neither.
: > "$rootfs"/etc/resolv.conf
echo sandbox > "$rootfs"/etc/hostname

log "writing $out"
mkdir -p "$(dirname "$out")"
# Write beside the target, then rename: a concurrent build of the same hash
# (CI and a developer, two test binaries) never sees a half-written tarball.
partial=$(mktemp "$out.partial.XXXXXX")
tar --numeric-owner --sort=name --xattrs -C "$rootfs" -cf "$partial" .
chmod 0644 "$partial"
mv -f "$partial" "$out"
log "done: $(du -h "$out" | cut -f1) $out"
