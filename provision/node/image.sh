#!/usr/bin/env bash
# The lab node's container image as a root file system tarball, for `docker import`: a minimal Debian 12
# (provision/rootfs.sh, shared with the Vagrant box: mmdebstrap, or debootstrap) with sshd, python3,
# tcpdump, iproute2, nftables and ethtool, labctl's sshd settings and the node's entrypoint. labctl's docker backend runs this (and caches
# the result, see labctl/backends/docker/image.py); by hand:
#
#   sudo provision/node/image.sh node.tar
#   docker import --change 'ENTRYPOINT ["/usr/local/sbin/labctl-entrypoint"]' \
#       --change 'CMD ["/usr/sbin/sshd", "-D", "-e"]' node.tar labctl-node:latest
#
# Environment: LABCTL_IMAGE_WORK (scratch directory, default /var/tmp/labctl-image), and rootfs.sh's.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
# The node's packages. The Dockerfile installs the same list (tests/test_compose.py checks that).
PACKAGES=python3,openssh-server,openssh-sftp-server,tcpdump,iproute2,nftables,ethtool,procps

if [ "$#" -ne 1 ]; then
    echo "usage: $0 OUT.tar" >&2
    exit 2
fi
out=$(realpath -m "$1")
work=${LABCTL_IMAGE_WORK:-/var/tmp/labctl-image}
rootfs=$work/rootfs.$$
START=$SECONDS
say() { printf 'node image [%3ds]: %s\n' "$((SECONDS - START))" "$*"; }

# shellcheck source=provision/rootfs.sh
. "$HERE/../rootfs.sh"

cleanup() {
    rootfs_unmount "$rootfs"
    rm -rf "$rootfs" "$out.part.$$"
}
trap cleanup EXIT
mkdir -p "$work" "$(dirname "$out")"
rm -rf "$rootfs"

tool=$(rootfs_tool)
say "$tool $ROOTFS_SUITE with $PACKAGES"
rootfs_build "$rootfs" "$PACKAGES" "$work/bootstrap.log" "$tool"

say "labctl's sshd settings and entrypoint"
install -m 644 "$HERE/sshd.conf" "$rootfs/etc/ssh/sshd_config.d/labctl.conf"
install -m 755 "$HERE/entrypoint.sh" "$rootfs/usr/local/sbin/labctl-entrypoint"
install -d -m 755 "$rootfs/run/sshd"
printf 'labctl\n' > "$rootfs/etc/hostname"

say "tar"
tar -C "$rootfs" --numeric-owner --xattrs -cf "$out.part.$$" .
mv "$out.part.$$" "$out"  # atomic: two builds at once each write their own, the last one wins
rm -f "$work/bootstrap.log"  # kept only when the bootstrap failed (rootfs.sh names it then)
rmdir "$work" 2> /dev/null || true
say "done: $out ($(du -h "$out" | cut -f1))"
