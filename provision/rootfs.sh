#!/usr/bin/env bash
# A minimal Debian 12 root file system, the one step the Vagrant box (provision/box/build.sh) and the
# container node image (labctl/backends/docker/image.py) share: debootstrap --variant=minbase from the
# Debian mirror apt already uses, with the packages asked for, then no apt lists, no logs, no SSH host
# keys and an empty machine-id (each VM or container makes its own).
#
#   sudo provision/rootfs.sh DIR PACKAGE[,PACKAGE...]     # DIR must not exist or be empty
#
# Sourced (`. provision/rootfs.sh`), it defines rootfs_build, rootfs_unmount and rootfs_mirror only.
# Environment: LABCTL_BOX_MIRROR (default: from /etc/apt/sources.list or sources.list.d/*.sources),
# LABCTL_DEBOOTSTRAP_CACHE (a directory that keeps the downloaded .debs between builds; optional).
set -euo pipefail

ROOTFS_SUITE=bookworm

# Unmount whatever debootstrap (or an interrupted chroot) left mounted under DIR, deepest first.
rootfs_unmount() {
    local dir=$1 mounts
    mounts=$(findmnt -rn -o TARGET | grep -F "$dir/" | sort -r || true)
    if [ -n "$mounts" ]; then
        while IFS= read -r target; do
            umount -l "$target" || true
        done <<< "$mounts"
    fi
}

# The Debian mirror apt uses on this machine (LABCTL_BOX_MIRROR overrides it).
rootfs_mirror() {
    local url=""
    if [ -n "${LABCTL_BOX_MIRROR:-}" ]; then
        printf '%s\n' "$LABCTL_BOX_MIRROR"
        return
    fi
    if [ -f /etc/apt/sources.list ]; then  # one-line format: deb [options] URL SUITE COMPONENTS
        url=$(grep -E '^[[:space:]]*deb[[:space:]]' /etc/apt/sources.list | grep -v -- '-security' \
              | grep -oE 'https?://[^[:space:]]+' | head -n 1 || true)
    fi
    if [ -z "$url" ]; then  # deb822 format: URIs: URL
        url=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -E '^URIs:' | grep -v -- '-security' \
              | grep -oE 'https?://[^[:space:]]+' | head -n 1 || true)
    fi
    if [ -z "$url" ]; then
        echo "rootfs: no Debian mirror in /etc/apt/sources.list{,.d}: set LABCTL_BOX_MIRROR=URL" >&2
        return 1
    fi
    printf '%s\n' "$url"
}

# rootfs_build DIR PACKAGES LOG: debootstrap into DIR, then strip what must differ per machine.
rootfs_build() {
    local dir=$1 packages=$2 log=$3 mirror cache_opt=()
    [ "$(id -u)" = 0 ] || { echo "rootfs: run as root (debootstrap and chroot need it)" >&2; return 1; }
    command -v debootstrap > /dev/null \
        || { echo "rootfs: debootstrap is missing: apt-get install -y debootstrap" >&2; return 1; }
    mirror=$(rootfs_mirror)
    if [ -n "${LABCTL_DEBOOTSTRAP_CACHE:-}" ]; then
        mkdir -p "$LABCTL_DEBOOTSTRAP_CACHE"
        cache_opt=(--cache-dir="$(realpath "$LABCTL_DEBOOTSTRAP_CACHE")")
    fi
    if ! debootstrap --variant=minbase "${cache_opt[@]}" --include="$packages" "$ROOTFS_SUITE" "$dir" \
            "$mirror" > "$log" 2>&1; then
        rootfs_unmount "$dir"
        echo "rootfs: debootstrap from $mirror failed; see $log: $(tail -n 3 "$log")" >&2
        return 1
    fi
    rootfs_unmount "$dir"
    chroot "$dir" apt-get clean
    rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/log/*.log "$dir"/var/cache/debconf/*-old
    rm -f "$dir"/etc/ssh/ssh_host_*
    : > "$dir/etc/machine-id"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    if [ "$#" -ne 2 ]; then
        echo "usage: $0 DIR PACKAGE[,PACKAGE...]" >&2
        exit 2
    fi
    if [ -e "$1" ] && [ -n "$(ls -A "$1" 2>/dev/null)" ]; then
        echo "rootfs: $1 exists and is not empty" >&2
        exit 2
    fi
    mkdir -p "$1"
    trap 'rootfs_unmount "$(realpath "$1")"' EXIT
    rootfs_build "$(realpath "$1")" "$2" "$(realpath "$1").debootstrap.log"
fi
