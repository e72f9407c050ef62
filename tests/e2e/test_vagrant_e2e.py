"""The Vagrant lab for real: four Debian 12 VMs under vagrant-libvirt (QEMU/TCG), the provisioners, and
the exercise on them through ``labctl --backend vagrant``. Minutes long: marked slow (CI always runs it).

What it does, and undoes whatever happens:
  * starts virtlogd and libvirtd by hand if none runs (no systemd here), stopped by PID afterwards;
  * builds the box with provision/box/build.sh unless it is there (removed again unless
    LABCTL_KEEP_BOX=1 or it was there before);
  * ``labctl --backend vagrant up`` on its own lab file (unique name, its own subnets, never
    192.168.20.x: no lab lock needed), checks isolation (no libvirt network forwards, no guest has a
    default route), that a second ``vagrant provision`` changes nothing, then ``run tcp`` and
    ``capture --port 8080 --run tcp``;
  * destroys everything and checks nothing is left: no VM, libvirt network, pool, volume, daemon,
    qemu process, LIBVIRT_* firewall chain; ip_forward as it was.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labctl.backends.vagrant import VagrantBackend
from labctl.lab import load_lab
from labctl.remote import Group
from tests.requires import missing, require_root, require_tool

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BOX = os.environ.get("LABCTL_BOX", "labctl/debian12")
URI = "qemu:///system"
SUBNET_OCTET = 230   # the lab on 192.168.230.0/24, Vagrant's management network on .231
TOOLS = ("vagrant", "virsh", "libvirtd", "virtlogd", "qemu-system-x86_64", "qemu-img", "debootstrap",
         "mke2fs", "dnsmasq")


def _missing() -> list[str]:
    missing = [t for t in TOOLS if shutil.which(t, path=os.environ["PATH"] + ":/usr/sbin:/sbin") is None]
    plugins = subprocess.run(["vagrant", "plugin", "list"], capture_output=True, text=True,
                             check=False).stdout if "vagrant" not in missing else ""
    if "vagrant-libvirt" not in plugins:
        missing.append("vagrant-libvirt")
    return missing


def _virsh(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(["virsh", "-c", URI, *args], capture_output=True, text=True, check=check,
                          timeout=60)


def _names(*args: str) -> list[str]:
    return [n.strip() for n in _virsh(*args, "--name").stdout.splitlines() if n.strip()]


REAPER = r"""
import ctypes, os, shlex, subprocess, sys, threading
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans below us come to us
done = threading.Event()
def reap():
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            if done.is_set():
                return
            done.wait(0.05)
threading.Thread(target=reap, daemon=True).start()
for line in sys.stdin:  # one command per line, e.g. "libvirtd -d -p FILE" (it daemonizes)
    subprocess.Popen(shlex.split(line))
done.set()
while True:  # stdin closed: wait until no adopted process is left, then go
    try:
        os.waitpid(-1, 0)
    except ChildProcessError:
        break
"""


def _libvirt_chains() -> set[tuple[str, str, str]]:
    """(program, table, chain) of every LIBVIRT_* firewall chain (libvirt adds them for its networks)."""
    found = set()
    for program in ("iptables", "ip6tables"):
        if shutil.which(program) is None:
            continue
        for table in ("filter", "nat", "mangle"):
            out = subprocess.run([program, "-w", "-t", table, "-S"], capture_output=True, text=True,
                                 check=False).stdout
            found |= {(program, table, m) for m in re.findall(r"^-N (LIBVIRT_\w+)$", out, re.M)}
    return found


def _nft_tables() -> set[tuple[str, str]]:
    """(family, name) of every nftables table (nft is required by the libvirt fixture)."""
    out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=False).stdout
    return {(f[1], f[2]) for f in (line.split() for line in out.splitlines()) if len(f) == 3}


def _nft_table_rules(family: str, table: str) -> list[str]:
    """The rule lines of one table (not its chain headers)."""
    out = subprocess.run(["nft", "list", "table", family, table], capture_output=True, text=True,
                         check=False).stdout
    return [line for line in (raw.strip() for raw in out.splitlines())
            if line and not line.startswith(("table ", "chain ", "type ", "}", "{"))]


def _remove_libvirt_chains(chains: set[tuple[str, str, str]]) -> None:
    """Delete the jumps to, then the chains that libvirt added during the test (and only those)."""
    for program, table in {(p, t) for p, t, _ in chains}:
        ours = {c for p, t, c in chains if (p, t) == (program, table)}
        rules = subprocess.run([program, "-w", "-t", table, "-S"], capture_output=True, text=True,
                               check=False).stdout.splitlines()
        for rule in rules:
            fields = rule.split()
            if fields[:1] == ["-A"] and "-j" in fields and fields[fields.index("-j") + 1] in ours:
                subprocess.run([program, "-w", "-t", table, "-D", *fields[1:]], check=False)
        for chain in ours:
            subprocess.run([program, "-w", "-t", table, "-F", chain], check=False)
        for chain in ours:
            subprocess.run([program, "-w", "-t", table, "-X", chain], check=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2] != "Z"


def _pid_from(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def _stop(pid: int, timeout: float = 20) -> None:
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


def _alive_with(proc: Path, lab_name: str) -> bool:
    """True if the process is alive and its command line names this lab (qemu, libvirt's dnsmasq)."""
    try:
        return f"labctl-{lab_name}".encode() in (proc / "cmdline").read_bytes() and _alive(int(proc.name))
    except (OSError, ValueError):
        return False


@pytest.fixture(scope="module")
def libvirt(tmp_path_factory):
    """A libvirtd to talk to: the running one, or virtlogd + libvirtd started here and stopped by PID."""
    require_root()
    require_tool("nft", "apt-get install nftables")  # the leftover check reads nftables' tables
    absent = _missing()
    if absent:  # CI always runs the VM test: install.sh --dev installs these
        missing(", ".join(absent), "./install.sh --dev, or apt-get install -y --no-install-recommends "
                "qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients vagrant "
                "vagrant-libvirt debootstrap dnsmasq-base e2fsprogs")
    before = {"ip_forward": Path("/proc/sys/net/ipv4/ip_forward").read_text(), "chains": _libvirt_chains(),
              "nft_tables": _nft_tables()}
    started: list[int] = []
    d = tmp_path_factory.mktemp("libvirt")
    reaper = None
    if _virsh("version").returncode != 0:
        # The daemons and QEMU double-fork; their orphans go to the nearest subreaper. Init here reaps
        # zombies only now and then, and libvirt waits for a killed QEMU's pid to vanish: every
        # capability probe and every VM stop would take many seconds. This reaper reaps at once.
        reaper = subprocess.Popen([sys.executable, "-c", REAPER], stdin=subprocess.PIPE, text=True)
        for daemon in ("virtlogd", "libvirtd"):
            pid_file = d / f"{daemon}.pid"
            reaper.stdin.write(shlex.join([daemon, "-d", "-p", str(pid_file)]) + "\n")
            reaper.stdin.flush()
            for _ in range(200):
                pid = _pid_from(pid_file)
                if pid:
                    started.append(pid)
                    break
                time.sleep(0.05)
            else:
                pytest.fail(f"{daemon} did not start (no pid in {pid_file})")
        for _ in range(200):
            if _virsh("version").returncode == 0:
                break
            time.sleep(0.1)
    before["networks"] = set(_names("net-list", "--all"))
    before["active_networks"] = set(_names("net-list"))
    before["pools"] = set(_names("pool-list", "--all"))
    assert "default" not in before["active_networks"], "libvirt's NAT 'default' network is active: refusing"
    try:
        yield before
    finally:
        problems = []
        for pool in set(_names("pool-list", "--all")) - before["pools"]:
            for volume in _virsh("vol-list", pool).stdout.splitlines()[2:]:
                if volume.split():
                    _virsh("vol-delete", volume.split()[0], "--pool", pool)
            _virsh("pool-destroy", pool)
            _virsh("pool-undefine", pool)
        for pid in reversed(started):
            _stop(pid)
        if reaper is not None:
            reaper.stdin.close()  # it exits once its input ends and every orphan it adopted is gone
            try:
                reaper.wait(timeout=30)
            except subprocess.TimeoutExpired:
                reaper.kill()
                problems.append("the reaper still had live children (qemu?) after 30 s")
        if started:
            left = [pid for pid in subprocess.run(["pgrep", "-x", "libvirtd|virtlogd|qemu-system-x86"],
                                                  capture_output=True, text=True, check=False).stdout.split()
                    if _alive(int(pid))]  # a zombie waits for init to reap it: it is gone
            if left:
                problems.append(f"processes left: {left}")
        new_chains = _libvirt_chains() - before["chains"]
        _remove_libvirt_chains(new_chains)
        if _libvirt_chains() - before["chains"]:
            problems.append(f"firewall chains left: {_libvirt_chains() - before['chains']}")
        # libvirt's iptables-nft calls create the ip/ip6 filter, nat and mangle tables: remove the
        # ones that were not there before, once they hold no rule of anybody's
        for family, table in _nft_tables() - before["nft_tables"]:
            if not _nft_table_rules(family, table):
                subprocess.run(["nft", "delete", "table", family, table], check=False)
        if _nft_tables() - before["nft_tables"]:
            problems.append(f"nft tables left: {_nft_tables() - before['nft_tables']}")
        if Path("/proc/sys/net/ipv4/ip_forward").read_text() != before["ip_forward"]:
            problems.append("net.ipv4.ip_forward changed")
        if problems:
            pytest.fail("libvirt teardown: " + "; ".join(problems))


@pytest.fixture(scope="module")
def box(libvirt):
    """The box (built now if missing; how long it took is printed), removed after unless it was there."""
    def have_box() -> bool:
        out = subprocess.run(["vagrant", "box", "list"], capture_output=True, text=True, check=False).stdout
        return any(line.split()[:2] == [BOX, "(libvirt,"] for line in out.splitlines())

    existed = have_box()
    if not existed:
        t0 = time.monotonic()
        proc = subprocess.run(["bash", str(REPO / "provision/box/build.sh"), BOX], capture_output=True,
                              text=True, timeout=1200, check=False)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        print(f"\nbox {BOX} built in {time.monotonic() - t0:.0f} s")
        assert have_box()
    try:
        yield BOX
    finally:
        if not existed and not os.environ.get("LABCTL_KEEP_BOX"):
            subprocess.run(["vagrant", "box", "remove", "--force", "--all", BOX], capture_output=True,
                           check=False)
            uploaded = BOX.replace("/", "-VAGRANTSLASH-") + "_vagrant_box_image"
            for pool in _names("pool-list", "--all"):
                for line in _virsh("vol-list", pool).stdout.splitlines()[2:]:
                    if line.split() and line.split()[0].startswith(uploaded):
                        _virsh("vol-delete", line.split()[0], "--pool", pool)
            slug = BOX.replace("/", "-")
            for suffix in ("vmlinuz", "initrd.img"):
                Path(f"/var/lib/libvirt/boot/{slug}-{suffix}").unlink(missing_ok=True)


def _cli(lab_file: Path, state_root: Path, *args: str, timeout: float = 300,
         backend: tuple[str, ...] = ("--backend", "vagrant")) -> subprocess.CompletedProcess:
    argv = [sys.executable, str(REPO / "labctl.py"), "--lab", str(lab_file), "--state-dir", str(state_root),
            *backend, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False,
                          env={**os.environ, "LABCTL_BOX": BOX, "LABCTL_VAGRANT_PROVIDER": "libvirt"})


def test_four_vms_provisioned_and_the_exercise_on_them(box, libvirt, tmp_path):
    name = "v" + secrets.token_hex(3)
    lab_file = tmp_path / f"{name}.yml"
    lab_file.write_text(
        f"name: {name}\nsubnet: 192.168.{SUBNET_OCTET}.0/24\nhost_address: 192.168.{SUBNET_OCTET}.1\n"
        f"server_address: 192.168.{SUBNET_OCTET}.2\nclients: 3\n"
        f"vagrant:\n  box: {box}\n  memory: 512\n  provider: libvirt\n"
        f"  management_network: 192.168.{SUBNET_OCTET + 1}.0/24\n")
    state_root = tmp_path / "state"
    lab = load_lab(lab_file)
    backend = VagrantBackend(lab, state_root / name)
    timings = {}
    try:
        t0 = time.monotonic()
        up = _cli(lab_file, state_root, "up", timeout=1200)
        timings["up"] = time.monotonic() - t0
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:] + backend._log_tail(30)

        # isolation: no libvirt network forwards anywhere, no guest has a default route
        for network in _names("net-list"):
            xml = _virsh("net-dumpxml", network, check=True).stdout
            assert "<forward" not in xml, f"libvirt network {network} forwards: {xml}"
        inventory = backend.inventory()
        assert [h.address for h in inventory] == [n.address for n in lab.nodes]
        assert all(h.user == "root" and h.host_key.startswith("ssh-ed25519 ") for h in inventory)
        assert len({h.host_key for h in inventory}) == 4, "every VM must have its own host key"
        with Group(inventory.hosts) as group:
            routes = group.run(["ip", "route", "show", "default"])
            assert routes.ok, routes.failures
            assert all(r.stdout.strip() == "" for r in routes.results.values()), routes.results
            python = group.run(["sh", "-c", "python3 --version && tcpdump --version | head -n 1"])
            assert python.ok, python.failures

        # the provisioners are idempotent: a second run changes nothing
        log_size = backend.log_file.stat().st_size
        t0 = time.monotonic()
        backend.vagrant().provision()
        timings["second provision"] = time.monotonic() - t0
        second = backend.log_file.read_text()[log_size:]
        assert "changed:" not in second, second
        for script in ("common.sh", "server.sh", "client.sh"):
            assert f"{script}: 0 changes" in second, second
        assert second.count("common.sh: 0 changes") == 4

        t0 = time.monotonic()
        run = _cli(lab_file, state_root, "run", "tcp", "--json")
        timings["run tcp"] = time.monotonic() - t0
        assert run.returncode == 0, run.stdout + run.stderr
        result = json.loads(run.stdout.strip().splitlines()[-1])
        assert [r["ok"] for r in result["results"]] == [True] * 3

        pcap = tmp_path / "vm.pcap"
        t0 = time.monotonic()
        cap = _cli(lab_file, state_root, "capture", "--port", "8080", "--run", "tcp", "--json",
                   "-o", str(pcap))
        timings["capture --run tcp"] = time.monotonic() - t0
        assert cap.returncode == 0, cap.stdout + cap.stderr
        outcome = json.loads(cap.stdout.strip().splitlines()[-1])
        assert outcome["stats"]["dropped"] == 0 and outcome["stats"]["captured"] >= 3 * 5
        assert outcome["interface"] == inventory.server.lab_interface

        # one inventory for all: the VMs through the ssh backend and the exported file
        exported = _cli(lab_file, state_root, "inventory", "--format", "yaml")
        assert exported.returncode == 0, exported.stderr
        inventory_file = tmp_path / "vms.yml"
        inventory_file.write_text(exported.stdout)
        run = _cli(lab_file, state_root, "run", "udp", "--json",
                   backend=("--backend", "ssh", "--inventory", str(inventory_file)))
        assert run.returncode == 0, run.stdout + run.stderr
        assert [r["ok"] for r in json.loads(run.stdout.strip().splitlines()[-1])["results"]] == [True] * 3
    finally:
        t0 = time.monotonic()
        down = _cli(lab_file, state_root, "down", timeout=600)
        backend.clean()
        timings["down"] = time.monotonic() - t0
        print("\n" + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
        left_vms = [d for d in _names("list", "--all") if d.startswith(f"labctl-{name}-")]
        left_networks = [n for n in _names("net-list", "--all") if n.startswith(f"labctl-{name}")]
        left_processes = [p.name for p in Path("/proc").iterdir()
                          if p.name.isdigit() and _alive_with(p, name)]
        assert down.returncode == 0, down.stderr
        assert not left_vms and not left_networks, (left_vms, left_networks)
        assert not left_processes, f"processes of the lab left (qemu, dnsmasq): {left_processes}"
