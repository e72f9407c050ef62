"""Interop with the exercise's own Go programs and with rdate, on the real lab.

The seed's Go TCP client dials 192.168.20.2:8080 hard-coded, so this lab uses the default subnet
192.168.20.0/24 (under the lab lock, with its own lab name, always taken down).
"""
from __future__ import annotations

import json
import re
import secrets
from pathlib import Path

import pytest

from labctl.backends.netns import NetnsBackend
from labctl.deploy import ensure, ports_of
from labctl.lab import load_lab
from labctl.remote import Connection, Group
from tests.requires import SHARED_BENCH, require_file, require_tool

pytestmark = pytest.mark.lab

SEED = SHARED_BENCH
GO_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+")  # Go's time.Now().String()
SERVER = "192.168.20.2"


@pytest.fixture
def default_subnet_lab(lab_lock, tmp_path):
    """A 2-client lab on 192.168.20.0/24 with a unique name, deployed; taken down whatever happens."""
    for name in ("seed-tcpclient", "seed-udpclient", "seed-tcpserver", "seed-udpserver"):
        require_file(SEED / name, "the course's shared/bench beside the checkout (see its README)")
    name = "i" + secrets.token_hex(3)
    lab_file = tmp_path / "lab.yml"
    lab_file.write_text(f"name: {name}\nsubnet: 192.168.20.0/24\nhost_address: 192.168.20.1\n"
                        f"server_address: {SERVER}\nclients: 2\n")
    backend = NetnsBackend(load_lab(lab_file), Path("/run/labctl") / name)
    try:
        inventory = backend.up()
        with Group(inventory.hosts) as g:
            report = ensure(g, ports_of(inventory))
            assert report.ok, report.to_json()
        yield inventory
    finally:
        backend.clean()
        assert not Path(f"/sys/class/net/{name}-br").exists()


@pytest.fixture
def rdate() -> str:
    """Checked before the lab is built (the netns nodes run this machine's programs)."""
    return require_tool("rdate")


def _put(conn: Connection, name: str) -> str:
    conn.run(["mkdir", "-p", "seed"])
    return conn.put(SEED / name, f"seed/{name}", mode=0o755)


def test_seed_go_clients_get_the_time_from_our_server(default_subnet_lab):
    client = default_subnet_lab.get("client1")
    with Connection(client) as c:
        tcp = _put(c, "seed-tcpclient")
        out = c.run(["timeout", "5", tcp])  # dials 192.168.20.2:8080 itself
        assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", out.stdout), out.stdout
        udp = _put(c, "seed-udpclient")
        out = c.run(["timeout", "5", udp, f"{SERVER}:8080"])  # sends "anything" (8 bytes)
        assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", out.stdout), out.stdout


def test_our_client_gets_the_time_from_the_seed_go_servers(default_subnet_lab):
    server = default_subnet_lab.server
    client = default_subnet_lab.get("client2")
    with Connection(server) as s, Connection(client) as c:
        pids = []
        try:
            for name, port in (("seed-tcpserver", 9090), ("seed-udpserver", 9091)):
                path = _put(s, name)
                pids.append(s.start([path, "-port", str(port)], log=f"seed/{name}.log", ready=None))
            for proto, port in (("tcp", 9090), ("udp", 9091)):
                argv = ["python3", "labctl/timeclient.py", proto, SERVER, "--port", str(port), "--json",
                        "--retries", "5", "--timeout", "1"]
                out = json.loads(c.run(argv, check=False).stdout)
                assert out["ok"], out
                assert GO_TIME.search(out["reply"]), out["reply"]
                if proto == "tcp":
                    assert out["reply"].endswith("...Hallo")
        finally:
            for pid in pids:
                s.stop(pid)


def test_rdate_reads_rfc868_time_from_our_server(rdate, default_subnet_lab):
    client = default_subnet_lab.get("client1")
    with Connection(client) as c:
        out = c.run(["rdate", "-p", SERVER], timeout=20)
    assert re.search(r"\b20\d\d\b", out.stdout), out.stdout
