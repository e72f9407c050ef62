#!/usr/bin/env bash
# A lab node container's start (the docker backend and docker-compose.yml): this node's own SSH host
# key (once), labctl's public key for root, the lab interface set up as the namespace lab's, then sshd.
#   LABCTL_AUTHORIZED_KEY   labctl's public key line (required)
#   LABCTL_HOST_ADDRESS     this machine's address on the lab network (optional: ACK it at once)
# Needs CAP_NET_ADMIN: the node keeps no default route, so nothing it sends can leave the lab.
set -euo pipefail

if [ ! -s /etc/ssh/ssh_host_ed25519_key ]; then
    ssh-keygen -q -t ed25519 -N '' -C "labctl-$(hostname)" -f /etc/ssh/ssh_host_ed25519_key
fi
key=${LABCTL_AUTHORIZED_KEY:-}
if [ -z "$key" ]; then
    echo "labctl node: set LABCTL_AUTHORIZED_KEY to labctl's public key (docker compose reads it from" \
         "the environment or .env), e.g. LABCTL_AUTHORIZED_KEY=\"\$(cat KEY.pub)\" docker compose up -d" >&2
    exit 2
fi
install -d -m 700 /root/.ssh
if ! grep -qxF -- "$key" /root/.ssh/authorized_keys 2>/dev/null; then
    printf '%s\n' "$key" >> /root/.ssh/authorized_keys
fi
chmod 600 /root/.ssh/authorized_keys

# Docker gives every container of a network, internal ones too, a default route via the bridge.
if [ -n "$(ip -4 route show default)" ]; then
    ip -4 route del default || { echo "labctl node: cannot remove the default route (CAP_NET_ADMIN?)" >&2; exit 3; }
fi
if ip link show eth0 > /dev/null 2>&1; then
    # checksums filled in before tcpdump sees a packet, and MTU-sized segments (no TSO), as in the netns lab
    ethtool -K eth0 tx off > /dev/null 2>&1 || echo "labctl node: ethtool -K eth0 tx off failed" >&2
    if [ -n "${LABCTL_HOST_ADDRESS:-}" ]; then
        # ACK labctl's SSH at once: no 40 ms delayed ACK behind every small SSH request
        ip route replace "$LABCTL_HOST_ADDRESS/32" dev eth0 scope link quickack 1
    fi
fi
mkdir -p /run/sshd
exec "$@"
