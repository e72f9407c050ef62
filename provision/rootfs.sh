#!/usr/bin/env bash
# A minimal Debian 12 root file system, the one step the Vagrant box (provision/box/build.sh) and the
# container node image (provision/node/image.sh) share: a --variant=minbase bootstrap from the Debian
# mirror apt already uses, with the packages asked for, then no apt lists, no logs, no SSH host keys
# and an empty machine-id (each VM or container makes its own).
#
#   sudo provision/rootfs.sh DIR PACKAGE[,PACKAGE...]     # DIR must not exist or be empty
#
# The bootstrapper: mmdebstrap where it is installed (one dpkg pass, merged /usr by its hook: about
# twice as fast here, the same packages), else debootstrap; LABCTL_ROOTFS_TOOL=debootstrap|mmdebstrap
# chooses, and so does rootfs_build's fourth argument (the box build asks for debootstrap).
# Sourced (`. provision/rootfs.sh`), it defines rootfs_build, rootfs_unmount and rootfs_mirror only.
# Environment: LABCTL_BOX_MIRROR (default: from /etc/apt/sources.list or sources.list.d/*.sources),
# LABCTL_DEBOOTSTRAP_CACHE (debootstrap only: a directory that keeps the .debs between builds).
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

# The bootstrapper to use: $1 (or LABCTL_ROOTFS_TOOL), else mmdebstrap if installed, else debootstrap.
rootfs_tool() {
    local tool=${1:-${LABCTL_ROOTFS_TOOL:-}}
    if [ -z "$tool" ]; then
        tool=debootstrap
        if command -v mmdebstrap > /dev/null; then
            tool=mmdebstrap
        fi
    fi
    case $tool in
        debootstrap | mmdebstrap) ;;
        *) echo "rootfs: LABCTL_ROOTFS_TOOL=$tool: use debootstrap or mmdebstrap" >&2; return 1 ;;
    esac
    if ! command -v "$tool" > /dev/null; then
        echo "rootfs: $tool is missing: apt-get install -y --no-install-recommends mmdebstrap" \
             "(or debootstrap)" >&2
        return 1
    fi
    printf '%s\n' "$tool"
}

# rootfs_build DIR PACKAGES LOG [TOOL]: bootstrap DIR, then strip what must differ per machine.
rootfs_build() {
    local dir=$1 packages=$2 log=$3 tool mirror cache_opt=() ok=1
    [ "$(id -u)" = 0 ] || { echo "rootfs: run as root (the bootstrap and chroot need it)" >&2; return 1; }
    tool=$(rootfs_tool "${4:-}") || return 1
    mirror=$(rootfs_mirror)
    if [ "$tool" = mmdebstrap ]; then
        mmdebstrap --variant=minbase --include="$packages" --dpkgopt=force-unsafe-io \
            --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr "$ROOTFS_SUITE" "$dir" "$mirror" \
            > "$log" 2>&1 || ok=0
    else
        if [ -n "${LABCTL_DEBOOTSTRAP_CACHE:-}" ]; then
            mkdir -p "$LABCTL_DEBOOTSTRAP_CACHE"
            cache_opt=(--cache-dir="$(realpath "$LABCTL_DEBOOTSTRAP_CACHE")")
        fi
        debootstrap --variant=minbase "${cache_opt[@]}" --include="$packages" "$ROOTFS_SUITE" "$dir" \
            "$mirror" > "$log" 2>&1 || ok=0
    fi
    if [ "$ok" = 0 ]; then
        rootfs_unmount "$dir"
        echo "rootfs: $tool from $mirror failed; see $log: $(tail -n 3 "$log")" >&2
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
