"""docker-compose.yml for real: Debian's ``docker-compose`` against a private dockerd, labctl over SSH.

The compose file is generated from a test lab file (as the committed one is from lab.yml), brought up
with ``docker-compose up -d --no-build`` on the image labctl builds, its inventory made with host keys
read through ``docker exec``, and the exercise run with ``--backend ssh``; ``docker-compose down``
then leaves no container and no network.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from labctl.backends.docker.compose import network_name, render
from labctl.backends.docker.image import ensure_image
from labctl.lab import load_lab
from tests.e2e.conftest import REPO
from tests.requires import require_tool

pytestmark = pytest.mark.lab


def test_compose_runs_the_exercise_with_debians_docker_compose(make_container_lab, tmp_path, monkeypatch):
    compose_tool = require_tool("docker-compose", "apt-get install -y --no-install-recommends docker-compose")
    require_tool("mmdebstrap", "apt-get install -y mmdebstrap (builds the node image once, in ~1.5 min)")
    from labctl.backends import keys
    from labctl.backends.docker.daemon import connect

    monkeypatch.setenv("LABCTL_LEAD_SAFETY", "3")
    lab = make_container_lab(clients=3)
    spec = load_lab(lab.lab_file)
    client = connect()
    ensure_image(client)  # tags labctl-node:latest, the image the compose file names
    compose_file = tmp_path / "docker-compose.yml"
    compose_file.write_text(render(spec))
    private, public = keys.generate_keypair("labctl-compose-test")
    key = tmp_path / "compose-key"
    keys.write_private(key, private)
    compose = [compose_tool, "-p", f"{lab.name}c", "-f", str(compose_file)]
    env = {"LABCTL_AUTHORIZED_KEY": public}
    try:
        up = subprocess.run([*compose, "up", "-d", "--no-build"], capture_output=True, text=True, timeout=180,
                            env={**os.environ, **env}, cwd=tmp_path)
        assert up.returncode == 0, up.stdout + up.stderr
        network = client.api.inspect_network(network_name(spec))
        assert network["Internal"] is True and len(network["Containers"]) == 4
        for container in network["Containers"].values():
            routes = client.api.exec_start(client.api.exec_create(container["Name"], ["ip", "-4", "route"]))
            assert b"default" not in routes

        inv = subprocess.run([sys.executable, "-m", "labctl.backends.docker.compose", "--lab",
                              str(lab.lab_file), "inventory", "--key", str(key)],
                             capture_output=True, text=True, cwd=REPO)
        assert inv.returncode == 0, inv.stderr
        inventory_file = tmp_path / "inventory.yml"
        inventory_file.write_text(inv.stdout)
        ssh = ("--backend", "ssh", "--inventory", str(inventory_file))
        run = lab.cli(*ssh, "run", "tcp", "--json", timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr
        results = json.loads(run.stdout.strip().splitlines()[-1])["results"]
        assert [r["ok"] for r in results] == [True, True, True]
        assert {r["address"] for r in results} == {n.address for n in spec.client_nodes}
    finally:
        down = subprocess.run([*compose, "down", "-v", "--remove-orphans"], capture_output=True, text=True,
                              timeout=180, env={**os.environ, **env}, cwd=tmp_path)
    assert down.returncode == 0, down.stderr
    assert client.api.containers(all=True) == []
    assert {n["Name"] for n in client.api.networks()} <= {"none", "host"}
    client.close()
