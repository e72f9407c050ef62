"""labctl's vagrant and ssh paths as a student would run them on a laptop: not root, no ``ip`` tool.

A throw-away user (``useradd`` here, ``userdel`` after, whatever happens) runs ``python labctl.py`` with
a PATH holding only the host tools a laptop has (sh, ssh, ssh-keygen: no ``ip``) and its own HOME, so the
state goes to the per-user directory (~/.local/state/labctl), never /run/labctl:

* the vagrant backend against a fake ``vagrant`` (tests/test_vagrant_backend.py's): chosen by itself from
  the Vagrant machine directory, it adopts the VMs (pins their host keys) into the user's state directory;
* the ssh backend against a real namespace lab (built as root), through its exported inventory: the
  route check without ``ip`` refuses an inventory that gives it nothing to check, and passes with
  ``host_address`` (the portable source-address check); ``run udp`` and ``labctl ssh`` then work.
"""
from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from labctl.lab import load_lab
from tests.requires import require_root, require_tool
from tests.test_vagrant_backend import FAKE_VAGRANT, HOST_KEY

REPO = Path(__file__).resolve().parents[2]
LAPTOP_TOOLS = ("sh", "ssh", "ssh-keygen")  # what labctl may call on the host for these backends


class Student:
    def __init__(self, name: str, home: Path) -> None:
        self.name, self.home = name, home
        entry = pwd.getpwnam(name)
        self.uid, self.gid = entry.pw_uid, entry.pw_gid
        self.path = str(home / "bin")

    def own(self, *paths: Path) -> None:
        for path in paths:
            os.chown(path, self.uid, self.gid)

    def labctl(self, *args: str, env: dict[str, str] | None = None, timeout: float = 180
               ) -> subprocess.CompletedProcess:
        environ = {"HOME": str(self.home), "PATH": self.path, "LANG": "C.UTF-8", **(env or {})}
        return subprocess.run([sys.executable, "labctl.py", *args], cwd=REPO, env=environ, user=self.uid,
                              group=self.gid, extra_groups=[], capture_output=True, text=True,
                              timeout=timeout, check=False)


@pytest.fixture(scope="module")
def student():
    require_root()
    require_tool("useradd", "apt-get install passwd")
    name = "lcs" + secrets.token_hex(3)
    home = Path(tempfile.mkdtemp(prefix="labctl-student-"))
    subprocess.run(["useradd", "-M", "-d", str(home), "-s", "/usr/sbin/nologin", name], check=True)
    try:
        user = Student(name, home)
        (home / "bin").mkdir()
        for tool in LAPTOP_TOOLS:
            (home / "bin" / tool).symlink_to(require_tool(tool))
        assert shutil.which("ip", path=user.path) is None
        user.own(home, home / "bin")
        home.chmod(0o700)
        yield user
    finally:
        for proc in Path("/proc").iterdir():  # any process of this user still alive: stopped by its PID
            try:
                if proc.name.isdigit() and proc.stat().st_uid == pwd.getpwnam(name).pw_uid:
                    os.kill(int(proc.name), signal.SIGKILL)
            except (OSError, KeyError):
                continue
        subprocess.run(["userdel", name], check=False)
        shutil.rmtree(home, ignore_errors=True)
        assert name not in Path("/etc/passwd").read_text()


def _tree(user: Student, path: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(path):
        user.own(Path(dirpath), *(Path(dirpath) / n for n in dirnames + filenames))


def test_the_vagrant_backend_as_a_user_without_ip(student):
    work = student.home / "vagrant"
    (work / "bin").mkdir(parents=True)
    fake = work / "bin" / "vagrant"
    fake.write_text(FAKE_VAGRANT.replace("PYTHON", sys.executable))
    fake.chmod(0o755)
    machines = ["server", "client1", "client2", "client3"]
    for m in machines:
        (work / "keys" / m).mkdir(parents=True)
        (work / "keys" / m / "private_key").write_text("not a real key\n")
        (work / "dotvagrant" / "machines" / m / "libvirt").mkdir(parents=True)
        (work / "dotvagrant" / "machines" / m / "libvirt" / "id").write_text("uuid")
    state = {"machines": dict.fromkeys(machines, "running"), "calls": [], "key_dir": str(work / "keys"),
             "host_keys": {m: HOST_KEY[:-4] + f"{i:03d}A" for i, m in enumerate(machines)}, "key_ok": True}
    (work / "fake.json").write_text(json.dumps(state))
    lab_file = work / "hcard.yml"
    lab_file.write_text("name: hcard\nsubnet: 192.168.70.0/24\nhost_address: 192.168.70.1\n"
                        "server_address: 192.168.70.2\nclients: 3\nvagrant:\n  box: x\n  provider: libvirt\n")
    _tree(student, work)
    env = {"PATH": f"{work / 'bin'}:{student.path}", "FAKE_VAGRANT_STATE": str(work / "fake.json"),
           "VAGRANT_DOTFILE_PATH": str(work / "dotvagrant"), "LABCTL_LAB": str(lab_file)}

    status = student.labctl("status", "--json", env=env)
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"backend vagrant (found 4 Vagrant machines (libvirt) in {work / 'dotvagrant'})" in status.stderr
    assert [n["up"] for n in json.loads(status.stdout)["nodes"]] == [True] * 4

    inventory = student.labctl("inventory", "--format", "yaml", env=env)
    # the VMs are adopted (host keys read over vagrant ssh and pinned) in the user's own state directory;
    # then the lab's host address is not on this machine (the VMs are fake): one clear line, no `ip` needed
    assert inventory.returncode == 1, inventory.stdout + inventory.stderr
    assert inventory.stderr.splitlines()[-1] == (
        "labctl: no interface on this machine holds the lab's host address 192.168.70.1: "
        "are the VMs' private networks up?"), inventory.stderr
    state_dir = student.home / ".local" / "state" / "labctl" / "hcard" / "vagrant"
    pins = json.loads((state_dir / "host_keys.json").read_text())
    assert sorted(pins) == sorted(machines) and pins["server"]["host_key"] == state["host_keys"]["server"]
    assert (state_dir / "id_ed25519").stat().st_uid == student.uid
    assert (state_dir / "id_ed25519").stat().st_mode & 0o777 == 0o600
    assert state_dir.stat().st_mode & 0o777 == 0o700
    assert not Path("/run/labctl/hcard").exists()


def test_the_ssh_backend_as_a_user_without_ip(student, netns_lab):
    lab = netns_lab
    host_address = load_lab(lab.lab_file).host_address
    exported = lab.cli("inventory", "--format", "yaml")
    assert exported.returncode == 0, exported.stderr
    doc = yaml.safe_load(exported.stdout)
    work = student.home / "ssh"
    work.mkdir()
    key = work / "id_ed25519"
    shutil.copyfile(doc["hosts"][0]["key"], key)
    key.chmod(0o600)
    for host in doc["hosts"]:
        host["key"] = str(key)
        host.pop("host_address", None)
    unchecked = work / "unchecked.yml"
    unchecked.write_text(yaml.safe_dump(doc))
    for host in doc["hosts"]:
        host["host_address"] = host_address
    checked = work / "checked.yml"
    checked.write_text(yaml.safe_dump(doc))
    _tree(student, work)

    refused = student.labctl("--inventory", str(unchecked), "run", "udp", "--json")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "'ip' is missing here and the inventory gives no host_address" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr

    run = student.labctl("--inventory", str(checked), "run", "udp", "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "labctl: backend ssh (--inventory)" in run.stderr
    assert [r["ok"] for r in json.loads(run.stdout.strip().splitlines()[-1])["results"]] == [True] * 3

    shell = student.labctl("--inventory", str(checked), "ssh", "client1", "hostname")
    assert shell.returncode == 0, shell.stdout + shell.stderr
    assert shell.stdout.strip().endswith("client1"), shell.stdout
