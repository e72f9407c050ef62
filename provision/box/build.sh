#!/usr/bin/env bash
# Build a minimal Debian 12 box for vagrant-libvirt and add it to Vagrant, for machines that cannot
# download one: debootstrap from the Debian mirror apt already uses, an ext4 image made with
# mke2fs -d (no partition table, no boot loader: the VMs boot the box's kernel and initrd directly),
# qemu-img convert to qcow2, metadata.json, vagrant box add.
#
#   sudo provision/box/build.sh [BOX]          # default BOX: labctl/debian12
#   LABCTL_BOX=labctl/debian12 LABCTL_VAGRANT_PROVIDER=libvirt labctl --backend vagrant up
#
# The box has what the lab needs and no more: systemd, ifupdown + dhclient (Vagrant's Debian network
# setup), openssh-server, sudo, python3, tcpdump, a `vagrant` user with Vagrant's insecure key (Vagrant
# replaces it at first boot). Each VM makes its own SSH host keys at first boot.
# Environment: LABCTL_BOX_MIRROR (default: from /etc/apt/sources.list or sources.list.d/*.sources),
# LABCTL_BOX_WORK (default /var/tmp/labctl-box), LABCTL_BOX_SIZE_GB (default 4).
set -euo pipefail

BOX=${1:-labctl/debian12}
SLUG=${BOX//\//-}
WORK=${LABCTL_BOX_WORK:-/var/tmp/labctl-box}
SIZE_GB=${LABCTL_BOX_SIZE_GB:-4}
ROOTFS=$WORK/rootfs
BOX_DIR=$WORK/box
BOOT_DIR=/var/lib/libvirt/boot   # qemu runs as libvirt-qemu: it cannot read a kernel under /root
PACKAGES=systemd-sysv,udev,kmod,ifupdown,isc-dhcp-client,iproute2,iputils-ping,procps,netbase
PACKAGES+=,openssh-server,sudo,python3,tcpdump,linux-image-amd64,initramfs-tools
START=$SECONDS
# shellcheck source=provision/rootfs.sh
. "$(dirname "$0")/../rootfs.sh"

say() { printf 'build-box [%3ds]: %s\n' "$((SECONDS - START))" "$*"; }
die() {
    say "error: $*" >&2
    exit 1
}

cleanup() {
    rootfs_unmount "$ROOTFS"
    if [ -z "${LABCTL_BOX_KEEP:-}" ]; then
        rm -rf "$ROOTFS" "$WORK/root.raw" "$BOX_DIR" "$WORK/$SLUG.box"
    fi
}

vagrant_pubkey() {
    local gem_dir
    gem_dir=$(dirname "$(gem contents vagrant 2>/dev/null | grep -m1 '/keys/vagrant.pub$' || true)")
    for f in "$gem_dir/vagrant.pub" /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub \
             /opt/vagrant/embedded/gems/gems/vagrant-*/keys/vagrant.pub; do
        if [ -f "$f" ]; then
            cat "$f"
            return
        fi
    done
    die "cannot find Vagrant's insecure public key (keys/vagrant.pub of the vagrant package)"
}

[ "$(id -u)" = 0 ] || die "run as root (debootstrap, chroot and mke2fs -d need it)"
for tool in debootstrap mke2fs qemu-img vagrant findmnt; do
    command -v "$tool" > /dev/null \
        || die "$tool is missing: apt-get install -y --no-install-recommends debootstrap e2fsprogs qemu-utils vagrant"
done

trap cleanup EXIT
mkdir -p "$WORK"
rootfs_unmount "$ROOTFS"
rm -rf "$ROOTFS" "$BOX_DIR" "$WORK/root.raw"

say "debootstrap $ROOTFS_SUITE from $(rootfs_mirror)"
# debootstrap, as every box booted by the VM test so far was made (rootfs.sh would pick mmdebstrap)
rootfs_build "$ROOTFS" "$PACKAGES" "$WORK/debootstrap.log" debootstrap \
    || die "the root file system could not be built"

say "configuring the image"
chroot "$ROOTFS" useradd --create-home --shell /bin/bash vagrant
install -d -m 700 "$ROOTFS/home/vagrant/.ssh"
vagrant_pubkey > "$ROOTFS/home/vagrant/.ssh/authorized_keys"
chroot "$ROOTFS" chown -R vagrant:vagrant /home/vagrant/.ssh
chmod 600 "$ROOTFS/home/vagrant/.ssh/authorized_keys"
printf 'vagrant ALL=(ALL) NOPASSWD: ALL\nDefaults:vagrant !requiretty\n' > "$ROOTFS/etc/sudoers.d/vagrant"
chmod 440 "$ROOTFS/etc/sudoers.d/vagrant"

printf 'labctl\n' > "$ROOTFS/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tlabctl\n::1\tlocalhost ip6-localhost ip6-loopback\n' \
    > "$ROOTFS/etc/hosts"
printf '/dev/vda\t/\text4\terrors=remount-ro\t0\t1\n' > "$ROOTFS/etc/fstab"
# Vagrant's management network (isolated, DHCP from libvirt); Vagrant adds the lab's private network
cat > "$ROOTFS/etc/network/interfaces" <<'EOF'
source /etc/network/interfaces.d/*

auto lo
iface lo inet loopback

auto eth0
iface eth0 inet dhcp
EOF
# never a default route from Vagrant's management network, whatever its DHCP server says
install -d "$ROOTFS/etc/dhcp/dhclient-enter-hooks.d"
printf '# labctl: the lab VMs have no route out\nunset new_routers\n' \
    > "$ROOTFS/etc/dhcp/dhclient-enter-hooks.d/labctl-no-default-route"
# fresh SSH host keys in every VM made from this box (rootfs.sh removed the build's, and emptied machine-id)
cat > "$ROOTFS/etc/systemd/system/labctl-ssh-host-keys.service" <<'EOF'
[Unit]
Description=Generate this VM's own SSH host keys (first boot)
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
EOF
mkdir -p "$ROOTFS/etc/systemd/system/multi-user.target.wants"
ln -sf /etc/systemd/system/labctl-ssh-host-keys.service \
    "$ROOTFS/etc/systemd/system/multi-user.target.wants/labctl-ssh-host-keys.service"
printf 'UseDNS no\n' > "$ROOTFS/etc/ssh/sshd_config.d/labctl.conf"

say "kernel, initrd, ext4 image (${SIZE_GB}G, mke2fs -d)"
mkdir -p "$BOX_DIR"
kernel=$(find "$ROOTFS/boot" -name 'vmlinuz-*' | sort -V | tail -n 1)
initrd=$(find "$ROOTFS/boot" -name 'initrd.img-*' | sort -V | tail -n 1)
if [ -z "$kernel" ] || [ -z "$initrd" ]; then
    die "no kernel or initrd in $ROOTFS/boot"
fi
install -m 644 "$kernel" "$BOX_DIR/vmlinuz"
install -m 644 "$initrd" "$BOX_DIR/initrd.img"
install -d -m 711 "$BOOT_DIR"
install -m 644 "$kernel" "$BOOT_DIR/$SLUG-vmlinuz"
install -m 644 "$initrd" "$BOOT_DIR/$SLUG-initrd.img"
rm -f "$WORK/root.raw"
mke2fs -q -t ext4 -L root -d "$ROOTFS" "$WORK/root.raw" "${SIZE_GB}G"

say "qemu-img convert -c -O qcow2"
qemu-img convert -c -O qcow2 "$WORK/root.raw" "$BOX_DIR/box.img"
printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": %d}\n' "$SIZE_GB" > "$BOX_DIR/metadata.json"
cat > "$BOX_DIR/Vagrantfile" <<EOF
# Box $BOX (built by labctl's provision/box/build.sh): no boot loader, boot the kernel directly.
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |lv|
    boot = "$BOOT_DIR/$SLUG"
    lv.kernel = File.file?("#{boot}-vmlinuz") ? "#{boot}-vmlinuz" : File.join(__dir__, "vmlinuz")
    lv.initrd = File.file?("#{boot}-initrd.img") ? "#{boot}-initrd.img" : File.join(__dir__, "initrd.img")
    lv.cmd_line = "root=/dev/vda rw console=ttyS0 net.ifnames=0 quiet"
  end
end
EOF

say "vagrant box add $BOX"
tar -C "$BOX_DIR" -cf "$WORK/$SLUG.box" metadata.json Vagrantfile box.img vmlinuz initrd.img
vagrant box add --force --name "$BOX" --provider libvirt "$WORK/$SLUG.box" > "$WORK/box-add.log" 2>&1 \
    || die "vagrant box add failed: $(tail -n 3 "$WORK/box-add.log")"
say "done: box $BOX ($(du -h "$BOX_DIR/box.img" | cut -f1) qcow2); kernel in $BOOT_DIR/$SLUG-*"
