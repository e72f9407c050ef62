#!/usr/bin/env bash
# Every node: python3 and tcpdump (installed only when missing), labctl's public key for root,
# and an ed25519 host key (labctl reads it once over Vagrant's channel and pins it).
set -euo pipefail
# shellcheck source=provision/lib.sh
source "$(dirname "$0")/lib.sh"

ensure_packages python3 tcpdump openssh-server

if [ ! -s /etc/ssh/ssh_host_ed25519_key ]; then
    ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key
    changed "generated /etc/ssh/ssh_host_ed25519_key"
fi

key=${LABCTL_AUTHORIZED_KEY:-}
if [ -z "$key" ]; then
    say "no labctl key given (LABCTL_PUBKEY); labctl --backend vagrant up passes one"
else
    case $key in
        ssh-ed25519\ *|ecdsa-sha2-*\ *|ssh-rsa\ *) ;;
        *) say "error: LABCTL_AUTHORIZED_KEY is not a public key line" >&2; exit 2 ;;
    esac
    if [ ! -d /root/.ssh ]; then
        install -d -m 700 /root/.ssh
        changed "/root/.ssh"
    fi
    if ! grep -qxF -- "$key" /root/.ssh/authorized_keys 2>/dev/null; then
        printf '%s\n' "$key" >> /root/.ssh/authorized_keys
        changed "labctl's key in /root/.ssh/authorized_keys"
    fi
    if [ "$(stat -c %a /root/.ssh/authorized_keys)" != 600 ]; then
        chmod 600 /root/.ssh/authorized_keys
        changed "mode of /root/.ssh/authorized_keys"
    fi
fi

if [ ! -d /opt/labctl ]; then
    install -d -m 755 /opt/labctl
    changed "/opt/labctl"
fi

finish
