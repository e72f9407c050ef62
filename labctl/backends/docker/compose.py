"""The compose variant: ``docker-compose.yml`` made from the lab file, and its inventory.

The committed ``docker-compose.yml`` is ``render(load_lab())`` (a test keeps it so), so every address
lives in the lab file only. Its containers run the same image and entrypoint as the docker backend's,
on their own internal network ``labctl-LAB-compose`` (bridge ``LAB-dkc``); labctl then reaches them as
plain SSH hosts, with host keys read through ``docker exec``:

    python -m labctl.backends.docker.compose [--lab FILE] file > docker-compose.yml
    python -m labctl.backends.docker.compose [--lab FILE] inventory --key KEY > inventory.yml
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from labctl.backends.base import BackendError
from labctl.backends.docker.plan import NODE_INTERFACE, NodeSpec, bridge_name
from labctl.inventory import Host, Inventory
from labctl.lab import Lab

IMAGE = "labctl-node:latest"


def network_name(lab: Lab) -> str:
    return f"labctl-{lab.name}-compose"


def compose_bridge(lab: Lab) -> str:
    """``LAB-dkc``: the compose network's bridge, beside the docker backend's ``LAB-dk``."""
    return bridge_name(lab.name) + "c"


def render(lab: Lab) -> str:
    """The compose file for ``lab``: one service per node on its address, an internal network."""
    source = lab.source.name if lab.source else "lab.yml"
    lines = [
        f"# The compose variant of lab {lab.name!r}, generated from {source}; do not edit, regenerate:",
        "#   python -m labctl.backends.docker.compose file > docker-compose.yml",
        "# (tests/test_compose.py keeps this file equal to what lab.yml makes: no address is written twice.)",
        "# The nodes run the image labctl builds without a registry (python -m labctl.backends.docker.image",
        "# tags labctl-node:latest), or `docker compose build` from the Dockerfile where a registry answers.",
        "#   ssh-keygen -t ed25519 -N '' -f labctl-compose-key",
        '#   LABCTL_AUTHORIZED_KEY="$(cat labctl-compose-key.pub)" docker compose up -d',
        "#   python -m labctl.backends.docker.compose inventory --key labctl-compose-key > inventory.yml",
        "#   python labctl.py --backend ssh --inventory inventory.yml run tcp",
        "x-node: &node",
        f"  image: {IMAGE}",
        "  build: .",
        "  environment:",
        "    LABCTL_AUTHORIZED_KEY: ${LABCTL_AUTHORIZED_KEY:-}",
        f"    LABCTL_HOST_ADDRESS: {lab.host_address}",
        "  cap_add: [NET_RAW, NET_ADMIN]   # tcpdump; the entrypoint removes the default route",
        '  restart: "no"',
        "  init: true",
        "",
        "services:",
    ]
    for node in lab.nodes:
        lines += [f"  {node.name}:", "    <<: *node", f"    hostname: {node.name}", "    networks:",
                  "      lab:", f"        ipv4_address: {node.address}"]
    lines += [
        "",
        "networks:",
        "  lab:",
        f"    name: {network_name(lab)}",
        "    driver: bridge",
        "    internal: true                  # no NAT, no route out: the lab stays isolated",
        "    driver_opts:",
        f"      com.docker.network.bridge.name: {compose_bridge(lab)}",
        '      com.docker.network.bridge.enable_ip_masquerade: "false"',
        "    ipam:",
        "      config:",
        f"        - subnet: {lab.subnet}",
        f"          gateway: {lab.host_address}     # this machine's side, host_address in the lab file",
    ]
    return "\n".join(lines) + "\n"


def inventory(lab: Lab, key_file: Path, client: Any = None) -> Inventory:
    """The running compose lab's hosts, each host key read through ``docker exec`` on its container."""
    from labctl.backends.docker.containers import read_host_key
    from labctl.backends.docker.daemon import connect

    client = client or connect()
    found = client.api.containers(filters={"network": network_name(lab)})
    by_service = {c["Labels"].get("com.docker.compose.service"): c["Id"] for c in found}
    missing = [n.name for n in lab.nodes if n.name not in by_service]
    if missing:
        raise BackendError(f"no running compose container for {', '.join(missing)} on network "
                           f"{network_name(lab)}: docker compose up -d first")
    hosts = []
    for node in lab.nodes:
        host_key = read_host_key(client, NodeSpec(node.name, node.role, node.address, by_service[node.name]))
        hosts.append(Host(name=node.name, role=node.role, address=node.address, port=22, user="root",
                          key_file=key_file.resolve(), host_key=host_key, interface=compose_bridge(lab),
                          lab_interface=NODE_INTERFACE))
    return Inventory(backend="compose", hosts=tuple(hosts), lab=lab)


def main(argv: list[str] | None = None) -> int:
    from labctl.errors import LabctlError
    from labctl.inventory import dump_inventory
    from labctl.lab import load_lab

    parser = argparse.ArgumentParser(prog="python -m labctl.backends.docker.compose",
                                     description="The compose variant of the lab, from the lab file.")
    parser.add_argument("--lab", type=Path, metavar="FILE", help="lab file (default: lab.yml)")
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("file", help="print docker-compose.yml for the lab file")
    inv = sub.add_parser("inventory", help="print the running compose lab's inventory (for --backend ssh)")
    inv.add_argument("--key", type=Path, required=True, metavar="KEY",
                     help="the private key whose public half is LABCTL_AUTHORIZED_KEY")
    args = parser.parse_args(argv)
    try:
        lab = load_lab(args.lab)
        if args.what == "file":
            sys.stdout.write(render(lab))
        else:
            if not args.key.is_file():
                raise BackendError(f"--key {args.key}: no such file")
            sys.stdout.write(dump_inventory(inventory(lab, args.key), "yaml"))
    except LabctlError as exc:
        print(f"labctl: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
