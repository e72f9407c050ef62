"""The docker backend without a daemon: its names, its state, the image's recipe hash and cache, the
daemon helpers' errors, and that ``run``/``capture`` (``inventory()``) never load the Docker SDK.
tests/e2e/test_docker_e2e.py runs it for real."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from labctl.backends import make_backend
from labctl.backends.base import BackendError
from labctl.backends.docker import DockerBackend
from labctl.backends.docker import image as node_image
from labctl.backends.docker.daemon import DockerUnavailable, PrivateDaemon, connect, endpoint, ping_socket
from labctl.backends.docker.plan import DockerPlan, DockerState, plan
from labctl.cli import build_parser
from labctl.inventory import LabNotUp
from labctl.lab import Lab
from tests.said import stderr_lines

ROOT = Path(__file__).resolve().parent.parent
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOh5b0iJ3k5Z8u1rIhQpT2t7Lm0Yf8c3xW9sQ6eJ1bKz"


def _lab(**kw) -> Lab:
    return Lab(name=kw.pop("name", "dk"), subnet="192.168.66.0/24", host_address="192.168.66.1",
               server_address="192.168.66.2", **kw)


def test_plan_names_everything_after_the_lab():
    p = plan(_lab(name="longname", clients=200), "labctl-node:abc", "unix:///x.sock")
    assert p.network == "labctl-longname" and p.bridge == "longname-dk" and len(p.bridge) <= 15
    assert [n.container for n in p.nodes[:2]] == ["longname-server", "longname-client1"]
    assert p.nodes[-1].address == "192.168.66.202" and not p.complete


def test_plan_round_trips_and_pins_without_changing_its_shape():
    p = plan(_lab(), "labctl-node:abc", "unix:///x.sock")
    pinned = p.pinned({n.name: KEY for n in p.nodes})
    assert pinned.complete and all(n.host_key == KEY for n in pinned.nodes)
    assert pinned.same_shape(p) and DockerPlan.from_json(pinned.to_json()) == pinned
    other = plan(_lab(clients=2), "labctl-node:abc", "unix:///x.sock")
    assert not other.same_shape(p)
    assert not plan(_lab(), "labctl-node:def", "unix:///x.sock").same_shape(p)  # a new image: rebuild


def test_state_keeps_the_plan_and_the_pins(tmp_path):
    state = DockerState(tmp_path / "dk" / "docker")
    assert state.read_plan() is None
    p = plan(_lab(), "labctl-node:abc", "unix:///x.sock")
    state.write_plan(p)
    assert state.read_plan() == p and not state.known_hosts.exists()
    state.write_plan(p.pinned({n.name: KEY for n in p.nodes}))
    assert state.known_hosts.read_text().splitlines()[0] == f"192.168.66.2 {KEY}"
    state.plan_file.write_text("{broken")
    with pytest.raises(BackendError, match=r"damaged.*clean"):
        state.read_plan()
    state.remove()
    assert not (tmp_path / "dk").exists()  # the lab's directory held only this backend's


def test_inventory_comes_from_the_state_directory_only(tmp_path):
    backend = make_backend("docker", _lab(), tmp_path / "dk")
    assert isinstance(backend, DockerBackend) and backend.state_dir == tmp_path / "dk" / "docker"
    with pytest.raises(LabNotUp, match="run labctl --backend docker up"):
        backend.inventory()
    p = plan(_lab(), "labctl-node:abc", "unix:///x.sock")
    backend.state.write_plan(p)
    with pytest.raises(LabNotUp, match="did not finish"):
        backend.inventory()
    backend.state.write_plan(p.pinned({n.name: KEY for n in p.nodes}))
    inventory = backend.inventory()
    assert inventory.backend == "docker" and [h.name for h in inventory] == [n.name for n in _lab().nodes]
    server = inventory.server
    assert (server.address, server.port, server.user, server.host_key) == ("192.168.66.2", 22, "root", KEY)
    assert server.interface == "dk-dk" and server.lab_interface == "eth0"
    assert server.key_file == tmp_path / "dk" / "docker" / "id_ed25519"


def test_run_against_a_container_lab_does_not_load_the_docker_sdk(tmp_path):
    """`run`/`capture` get the inventory from the state directory: no SDK import, no daemon call."""
    backend = make_backend("docker", _lab(), tmp_path / "dk")
    p = plan(_lab(), "labctl-node:abc", "unix:///x.sock")
    backend.state.write_plan(p.pinned({n.name: KEY for n in p.nodes}))
    code = ("import sys; from pathlib import Path; from labctl.backends import make_backend; "
            "from labctl.lab import Lab; "
            "lab = Lab(name='dk', subnet='192.168.66.0/24', host_address='192.168.66.1', "
            "server_address='192.168.66.2'); "
            f"make_backend('docker', lab, Path({str(tmp_path / 'dk')!r})).inventory(); "
            "print('docker' in sys.modules, 'requests' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_status_and_down_without_a_daemon(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nothing.sock")
    backend = make_backend("docker", _lab(), tmp_path / "dk")
    assert [s.detail for s in backend.status()] == ["lab is not up"] * 4
    backend.down()  # nothing up, no daemon: nothing to do, no error
    p = plan(_lab(), "labctl-node:abc", endpoint())
    backend.state.write_plan(p.pinned({n.name: KEY for n in p.nodes}))
    assert all(not s.up and "no Docker daemon answers" in s.detail for s in backend.status())
    with pytest.raises(DockerUnavailable, match="no Docker daemon answers at unix://"):
        backend.down()  # the lab may still run somewhere: say so, keep the state


def test_connect_says_where_it_looked_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/missing.sock")
    assert endpoint() == f"unix://{tmp_path}/missing.sock"
    with pytest.raises(DockerUnavailable) as raised:
        connect(timeout=2)
    message = str(raised.value)
    assert "\n" not in message and str(tmp_path) in message and "DOCKER_HOST" in message
    monkeypatch.delenv("DOCKER_HOST")
    assert endpoint() == "unix:///var/run/docker.sock"
    assert not ping_socket(tmp_path / "missing.sock")


def test_a_private_daemon_is_started_with_its_own_everything(tmp_path):
    daemon = PrivateDaemon(tmp_path / "d")
    argv = daemon.argv("/usr/sbin/dockerd")
    for flag in ("--iptables=false", "--ip6tables=false", "--bridge=none"):
        assert flag in argv
    assert argv[argv.index("--data-root") + 1] == str(tmp_path / "d" / "data")
    assert argv[argv.index("--exec-root") + 1] == str(tmp_path / "d" / "exec")
    assert argv[argv.index("-H") + 1] == daemon.host == f"unix://{tmp_path}/d/docker.sock"
    assert argv[argv.index("-p") + 1] == str(tmp_path / "d" / "docker.pid")
    assert daemon.leftovers() == [] and daemon.pid is None


def test_the_image_is_named_by_its_recipe(tmp_path):
    copy = tmp_path / "project"
    for name in node_image.RECIPE:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, copy / name)
    tag = node_image.image_tag(copy)
    assert tag == node_image.image_tag(ROOT) and tag.startswith("labctl-node:") and len(tag) == 24
    with open(copy / "provision/node/sshd.conf", "a") as f:
        f.write("# changed\n")
    assert node_image.image_tag(copy) != tag  # a changed recipe is a new image
    (copy / "provision/rootfs.sh").unlink()
    with pytest.raises(node_image.ImageError, match=r"rootfs\.sh"):
        node_image.image_tag(copy)


def test_the_image_cache_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("LABCTL_CACHE", str(tmp_path / "cache"))
    tar = node_image.tarball("labctl-node:0123456789ab")
    assert tar == tmp_path / "cache" / "labctl-node-0123456789ab.tar"
    monkeypatch.delenv("LABCTL_CACHE")
    monkeypatch.setattr(node_image.os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert node_image.cache_dir() == tmp_path / "xdg" / "labctl"
    with pytest.raises(node_image.ImageError, match="needs root"):
        node_image.build_tarball(tmp_path / "x.tar", lambda _m: None)


def test_the_cli_offers_the_docker_backend():
    args = build_parser().parse_args(["--backend", "docker", "status", "--json"])
    assert args.backend == "docker"


def test_a_container_lab_that_is_not_up_is_one_clear_line(tmp_path):
    lab_file = tmp_path / "dk.yml"
    lab_file.write_text("name: dk\nsubnet: 192.168.66.0/24\nhost_address: 192.168.66.1\n"
                        "server_address: 192.168.66.2\nclients: 3\n")
    proc = subprocess.run([sys.executable, str(ROOT / "labctl.py"), "--backend", "docker", "--lab",
                           str(lab_file), "--state-dir", str(tmp_path / "state"), "run", "tcp", "--json"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    said = stderr_lines(proc.stderr)  # beside the line naming the backend
    assert said == ["labctl: lab is not up: run labctl --backend docker up "
                                                f"(lab dk: no plan in {tmp_path}/state/dk/docker)"]


def test_a_lab_held_by_another_daemon_is_not_touched(tmp_path, monkeypatch):
    backend = make_backend("docker", _lab(), tmp_path / "dk")
    p = plan(_lab(), "labctl-node:abc", "unix:///elsewhere.sock")
    backend.state.write_plan(p.pinned({n.name: KEY for n in p.nodes}))
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/here.sock")
    for step in (backend.down, backend.clean):
        with pytest.raises(BackendError, match=re.escape("DOCKER_HOST=unix:///elsewhere.sock")):
            step()
    assert backend.inventory().server.host_key == KEY  # the state is kept
