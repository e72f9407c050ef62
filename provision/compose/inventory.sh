#!/usr/bin/env bash
# Print the inventory file for the running compose lab, reading each container's host key through
# Docker (the trusted channel, like `vagrant ssh` for VMs):
#   provision/compose/inventory.sh KEY > compose-inventory.yml
#   labctl --backend ssh --inventory compose-inventory.yml run tcp
# KEY is the private key whose public half was given as LABCTL_AUTHORIZED_KEY.
set -euo pipefail

if [ "$#" -ne 1 ] || [ ! -f "$1" ]; then
    echo "usage: $0 PRIVATE_KEY   (the key whose .pub is LABCTL_AUTHORIZED_KEY)" >&2
    exit 2
fi
key=$(realpath "$1")
cd "$(dirname "$0")/../.."

echo "# labctl inventory for the compose lab (docker-compose.yml); host keys read with docker compose exec"
echo "backend: compose"
echo "hosts:"
for service in $(docker compose config --services); do
    role=client
    if [ "$service" = server ]; then
        role=server
    fi
    address=$(docker compose exec -T "$service" sh -c "ip -o -4 addr show dev eth0 | awk '{print \$4}' | cut -d/ -f1")
    host_key=$(docker compose exec -T "$service" cat /etc/ssh/ssh_host_ed25519_key.pub | cut -d' ' -f1,2)
    printf '  - name: %s\n    role: %s\n    address: %s\n    port: 22\n    user: root\n' \
        "$service" "$role" "$address"
    printf '    key: %s\n    host_key: %s\n    interface: labctl-dk0\n    lab_interface: eth0\n' \
        "$key" "$host_key"
done
