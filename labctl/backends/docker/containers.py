"""The daemon side of a container lab: its network, one container per node, their host keys, removal.

Everything goes through the Docker SDK's low-level API (``client.api``): the containers need a fixed
address on the lab network at creation, which only the low-level call takes. Every object is labelled
``labctl.lab=LAB`` and nothing without that label is ever removed.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from labctl.backends.base import BackendError
from labctl.backends.docker.daemon import short_error
from labctl.backends.docker.plan import LABEL, NODE_LABEL, DockerPlan, NodeSpec

HOST_KEY = "/etc/ssh/ssh_host_ed25519_key.pub"
KEY_WAIT_STEPS = 1000      # x 10 ms: host key written and sshd listening, within 10 s
CAPABILITIES = ["NET_RAW", "NET_ADMIN"]  # tcpdump; removing the default route, tc, nft, ethtool
LOG_LIMIT = {"max-size": "1m", "max-file": "1"}  # each node's sshd log (docker logs), bounded


class NodeFailed(BackendError):
    """A node's container did not come up; the message names it and quotes its log."""


def lab_filter(lab_name: str) -> dict[str, str]:
    return {"label": f"{LABEL}={lab_name}"}


def create_network(client: Any, lab_plan: DockerPlan) -> str:
    """The lab's network: internal (no NAT, no route out), on the lab's subnet, bridge ``LAB-dk``."""
    from docker.types import IPAMConfig, IPAMPool

    ipam = IPAMConfig(pool_configs=[IPAMPool(subnet=lab_plan.subnet, gateway=lab_plan.host_address)])
    options = {"com.docker.network.bridge.name": lab_plan.bridge,
               "com.docker.network.bridge.enable_ip_masquerade": "false",
               "com.docker.network.bridge.enable_icc": "true"}
    try:
        made = client.api.create_network(lab_plan.network, driver="bridge", internal=True, ipam=ipam,
                                         options=options, labels={LABEL: lab_plan.lab}, check_duplicate=True)
    except Exception as exc:
        why = short_error(exc)
        hint = ": choose another private subnet in the lab file" if "overlap" in why.lower() else ""
        raise BackendError(f"cannot create the lab network {lab_plan.network} on {lab_plan.subnet}: "
                           f"{why}{hint}") from None
    return made["Id"]


def start_node(client: Any, lab_plan: DockerPlan, node: NodeSpec, authorized_key: str) -> str:
    """Create and start the node's container; return its host key, read through ``docker exec``."""
    api = client.api
    from docker.types import LogConfig

    host_config = api.create_host_config(cap_add=CAPABILITIES, init=True, restart_policy={"Name": "no"},
                                         log_config=LogConfig(type="json-file", config=LOG_LIMIT))
    endpoint = api.create_endpoint_config(ipv4_address=node.address)
    try:
        made = api.create_container(
            lab_plan.image, name=node.container, hostname=node.name, detach=True, host_config=host_config,
            networking_config=api.create_networking_config({lab_plan.network: endpoint}),
            environment={"LABCTL_AUTHORIZED_KEY": authorized_key,
                         "LABCTL_HOST_ADDRESS": lab_plan.host_address},
            labels={LABEL: lab_plan.lab, NODE_LABEL: node.name, "labctl.role": node.role})
        api.start(made["Id"])
    except Exception as exc:
        raise NodeFailed(f"node {node.name}: container {node.container} did not start: "
                         f"{short_error(exc)}") from None
    return read_host_key(client, node)


def read_host_key(client: Any, node: NodeSpec) -> str:
    """The node's ``TYPE BASE64`` host key, over the daemon's channel (never from the network)."""
    from labctl.inventory import InventoryError, check_host_key

    # sshd writes nothing when it listens: its socket in /proc/net/tcp (port 22 = 0016, LISTEN = 0A) says so
    ready = f"[ -s {HOST_KEY} ] && grep -q '^ *[0-9]*: [0-9A-F]*:0016 00000000:0000 0A' /proc/net/tcp"
    wait = (f"i=0; until {ready}; do i=$((i+1)); [ $i -le {KEY_WAIT_STEPS} ] || exit 9; "
            f"sleep 0.01; done; cat {HOST_KEY}")
    try:
        run = client.api.exec_create(node.container, ["sh", "-c", wait], stdout=True, stderr=True)
        out = client.api.exec_start(run["Id"]).decode(errors="replace")
        code = client.api.exec_inspect(run["Id"]).get("ExitCode")
    except Exception as exc:
        raise NodeFailed(f"node {node.name} did not come up: {short_error(exc)} "
                         f"(its log: {log_tail(client, node.container)})") from None
    if code != 0:
        raise NodeFailed(f"node {node.name}: no host key or no sshd listening after 10 s (exit {code}; "
                         f"its log: {log_tail(client, node.container)})")
    try:
        return check_host_key(out.strip().splitlines()[-1], f"node {node.name}")
    except (InventoryError, IndexError):
        raise NodeFailed(f"node {node.name}: {HOST_KEY} is not a public key: {out.strip()[:80]!r}") from None


def log_tail(client: Any, container: str, lines: int = 3) -> str:
    try:
        text = client.api.logs(container, tail=lines).decode(errors="replace")
    except Exception as exc:
        return f"(no log: {short_error(exc)})"
    return " / ".join(line.strip() for line in text.strip().splitlines()) or "(empty)"


def node_states(client: Any, lab_name: str) -> dict[str, str]:
    """{node name: container state (running, exited, ...)} for the lab's containers."""
    found = client.api.containers(all=True, filters=lab_filter(lab_name))
    return {c["Labels"].get(NODE_LABEL, c["Names"][0].lstrip("/")): c["State"] for c in found}


def foreign_names(client: Any, lab_plan: DockerPlan) -> list[str]:
    """Containers and networks with this lab's names but without its label: never ours to touch."""
    taken = []
    for container in client.api.containers(all=True, filters={"name": f"^/{lab_plan.lab}-"}):
        name = container["Names"][0].lstrip("/")
        if name in {n.container for n in lab_plan.nodes} and container["Labels"].get(LABEL) != lab_plan.lab:
            taken.append(f"container {name}")
    for network in client.api.networks(names=[lab_plan.network]):
        if network["Name"] == lab_plan.network and (network.get("Labels") or {}).get(LABEL) != lab_plan.lab:
            taken.append(f"network {lab_plan.network}")
    return taken


def remove_lab(client: Any, lab_name: str) -> list[str]:
    """Remove the lab's containers (with their anonymous volumes) and networks, found by label."""
    api = client.api
    containers = [c["Names"][0].lstrip("/") for c in api.containers(all=True, filters=lab_filter(lab_name))]
    errors: list[str] = []

    def remove(name: str) -> None:
        try:
            api.remove_container(name, v=True, force=True)
        except Exception as exc:
            if getattr(exc, "status_code", None) != 404:
                errors.append(f"container {name}: {short_error(exc)}")

    if containers:
        with ThreadPoolExecutor(max_workers=min(8, len(containers))) as pool:
            list(pool.map(remove, containers))
    networks = [n["Name"] for n in api.networks(filters=lab_filter(lab_name))]
    for name in networks:
        try:
            api.remove_network(name)
        except Exception as exc:
            if getattr(exc, "status_code", None) != 404:
                errors.append(f"network {name}: {short_error(exc)}")
    if errors:
        raise BackendError(f"could not remove all of lab {lab_name}: {'; '.join(errors)}")
    removed = []
    if containers:
        removed.append(f"{len(containers)} container{'s' if len(containers) > 1 else ''} "
                       f"({', '.join(containers[:4])}{' ..' if len(containers) > 4 else ''})")
    removed += [f"network {name}" for name in networks]
    return removed
