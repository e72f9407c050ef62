#!/usr/bin/env bash
# Container start: this node's own SSH host keys (once), labctl's public key for root, then sshd.
set -euo pipefail

if [ ! -s /etc/ssh/ssh_host_ed25519_key ]; then
    ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key
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
exec "$@"
