"""The Vagrant lab for real: four Debian 12 VMs under vagrant-libvirt (QEMU/TCG), the provisioners, and
the design card's commands on them. Minutes long: marked slow (CI always runs it). **One boot serves every
VM check**: the module fixture ``vms`` boots the lab once; each check is a test function taking ``vms``
(add new VM checks the same way, before the last one).

What it does, and undoes whatever happens:
  * starts virtlogd and libvirtd by hand if none runs (no systemd here), stopped by PID afterwards;
  * builds the box with provision/box/build.sh unless it is there (removed again unless
    LABCTL_KEEP_BOX=1 or it was there before);
  * ``vagrant up --provider=libvirt`` in the project directory, the user's way, with its own lab file
    (unique name, its own subnets, never 192.168.20.x: no lab lock needed) named by ``LABCTL_LAB``, state
    in ``LABCTL_STATE`` and Vagrant's machines in ``VAGRANT_DOTFILE_PATH`` (the Vagrantfile and labctl
    both read these), then the card's ``python labctl.py run tcp`` and ``python labctl.py capture --port
    8080`` (stopped by SIGINT) with **no --backend**: labctl must find the VMs itself;
  * isolation (no libvirt network forwards, no guest has a default route), a second ``vagrant
    provision`` changes nothing, ``capture --run tcp``, ``labctl ssh client1 CMD`` (pinned host key),
    netem delay (docs/links.md), the ssh backend through the exported inventory;
  * ``python labctl.py down`` (again without a flag) and checks nothing is left: no VM, Vagrant machine,
    libvirt network, pool, volume, daemon, qemu process, LIBVIRT_* firewall chain; ip_forward as it was.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import struct
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


def _libvirt_made_tables(before: dict) -> set[tuple[str, str]]:
    """Tables that appeared since the fixture started, but a lab's own guard (``labctl-NAME``): each lab's
    teardown checks its own, and a namespace lab elsewhere on the machine may have one of its own."""
    return {(f, t) for f, t in _nft_tables() - before["nft_tables"] if not t.startswith("labctl-")}


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
        for family, table in _libvirt_made_tables(before):
            if not _nft_table_rules(family, table):
                subprocess.run(["nft", "delete", "table", family, table], check=False)
        if _libvirt_made_tables(before):
            problems.append(f"nft tables left: {_libvirt_made_tables(before)}")
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


# --- the lab, booted once for every VM check -----------------------------------------------------------

class Vms:
    """The booted lab: its files, the environment the card's commands run in, and the timings."""

    def __init__(self, root: Path, box: str) -> None:
        self.name = "v" + secrets.token_hex(3)
        self.root = root
        self.lab_file = root / f"{self.name}.yml"
        self.lab_file.write_text(
            f"name: {self.name}\nsubnet: 192.168.{SUBNET_OCTET}.0/24\n"
            f"host_address: 192.168.{SUBNET_OCTET}.1\nserver_address: 192.168.{SUBNET_OCTET}.2\nclients: 3\n"
            f"vagrant:\n  box: {box}\n  memory: 512\n  provider: libvirt\n"
            f"  management_network: 192.168.{SUBNET_OCTET + 1}.0/24\n")
        self.state_root = root / "state"
        # what a user's shell would hold: the lab file and state directory that both the Vagrantfile and
        # labctl read, and Vagrant's own machine directory (so the project's .vagrant stays untouched).
        # No LABCTL_BACKEND, no --backend: labctl must find the VMs itself.
        self.env = {"LABCTL_LAB": str(self.lab_file), "LABCTL_STATE": str(self.state_root),
                    "VAGRANT_DOTFILE_PATH": str(root / "dotvagrant"), "LABCTL_BOX": box}
        self.lab = load_lab(self.lab_file)
        self.timings: dict[str, float] = {}

    def environ(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("LABCTL_BACKEND", "LABCTL_VAGRANT_PROVIDER")}
        return {**env, **self.env}

    def labctl(self, *args: str, timeout: float = 300, timing: str | None = None
               ) -> subprocess.CompletedProcess:
        """``python labctl.py ARGS`` in the project directory, as the card writes it."""
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "labctl.py", *args], capture_output=True, text=True,
                              timeout=timeout, cwd=REPO, check=False, env=self.environ())
        if timing:
            self.timings[timing] = time.monotonic() - t0
        return proc

    def backend(self) -> VagrantBackend:
        return VagrantBackend(self.lab, self.state_root / self.name)


@pytest.fixture(scope="module")
def vms(box, libvirt, tmp_path_factory):
    """``vagrant up --provider=libvirt`` in the project directory (the user's way), once; destroyed after."""
    lab = Vms(tmp_path_factory.mktemp("vms"), box)
    saved = {k: os.environ.get(k) for k in (*lab.env, "LABCTL_BACKEND")}
    os.environ.update(lab.env)  # the VagrantBackend the checks build here reads the same environment
    os.environ.pop("LABCTL_BACKEND", None)
    log = lab.root / "vagrant-up.log"
    try:
        t0 = time.monotonic()
        try:  # four VMs under TCG on a machine at load ~30 took > 25 min: the Vagrantfile's boot_timeout
            with open(log, "w") as out:  # (900 s per VM) is the real limit, this one only a backstop
                up = subprocess.run(["vagrant", "up", "--provider=libvirt"], cwd=REPO, env=lab.environ(),
                                    stdout=out, stderr=subprocess.STDOUT, timeout=2700, check=False)
        except subprocess.TimeoutExpired:
            pytest.fail(f"vagrant up still running after {time.monotonic() - t0:.0f} s: "
                        + log.read_text()[-2000:])
        lab.timings["vagrant up"] = time.monotonic() - t0
        assert up.returncode == 0, log.read_text()[-4000:]
        yield lab
    finally:
        t0 = time.monotonic()
        down = lab.labctl("down", timeout=600)  # chooses the vagrant backend by itself, too
        lab.backend().clean()
        lab.timings["down"] = time.monotonic() - t0
        print("\nVM test timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in lab.timings.items()))
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        left_vms = [d for d in _names("list", "--all") if d.startswith(f"labctl-{lab.name}-")]
        left_networks = [n for n in _names("net-list", "--all") if n.startswith(f"labctl-{lab.name}")]
        left_processes = [p.name for p in Path("/proc").iterdir()
                          if p.name.isdigit() and _alive_with(p, lab.name)]
        left_machines = list((lab.root / "dotvagrant" / "machines").glob("*/*/id"))
        assert down.returncode == 0, down.stdout + down.stderr
        assert "backend vagrant (found " in down.stderr, down.stderr
        assert not left_vms and not left_networks, (left_vms, left_networks)
        assert not left_processes, f"processes of the lab left (qemu, dnsmasq): {left_processes}"
        assert not left_machines, f"Vagrant still lists machines: {left_machines}"
        assert ("inet", f"labctl-{lab.name}") not in _nft_tables(), "down removes the lab's forwarding guard"


def _last_json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _handshakes(pcap: Path, server: str) -> list[tuple[float, float]]:
    """Per TCP connection seen at the server: (SYN -> SYN-ACK, SYN-ACK -> ACK) in ms (classic pcap,
    Ethernet, IPv4; stdlib, so the check does not lean on the analyser it would be checking)."""
    data = pcap.read_bytes()
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    scale = 1e-9 if magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d") else 1e-6
    assert struct.unpack(endian + "I", data[20:24])[0] == 1, "expected an Ethernet capture"
    seen: dict[tuple, dict[str, float]] = {}
    pos = 24
    while pos + 16 <= len(data):
        sec, frac, incl, _orig = struct.unpack(endian + "IIII", data[pos:pos + 16])
        frame, pos, ts = data[pos + 16:pos + 16 + incl], pos + 16 + incl, sec + frac * scale
        if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
            continue
        ihl = (frame[14] & 0x0F) * 4
        src, dst = socket.inet_ntoa(frame[26:30]), socket.inet_ntoa(frame[30:34])
        tcp = frame[14 + ihl:]
        sport, dport = struct.unpack("!HH", tcp[:4])
        flags = tcp[13]
        client = (dst, dport) if src == server else (src, sport)
        conn = seen.setdefault(client, {})
        if flags & 0x12 == 0x02 and src != server:
            conn.setdefault("syn", ts)
        elif flags & 0x12 == 0x12 and src == server:
            conn.setdefault("synack", ts)
        elif flags & 0x17 == 0x10 and src != server and "synack" in conn:
            conn.setdefault("ack", ts)
    return [((c["synack"] - c["syn"]) * 1000, (c["ack"] - c["synack"]) * 1000)
            for c in seen.values() if {"syn", "synack", "ack"} <= set(c)]


# --- the VM checks: one boot serves them all; add a check as one more test function taking `vms` ------

def test_the_card_run_tcp_finds_the_vms_by_itself(vms):
    """After a plain ``vagrant up``, ``python labctl.py run tcp`` drives the VMs (no flag, no labctl up)."""
    status = vms.labctl("status", "--json", timing="status")
    assert json.loads(status.stdout)["backend"] == "vagrant", status.stdout + status.stderr
    assert "backend vagrant (found 4 Vagrant machines (libvirt)" in status.stderr, status.stderr
    result = _last_json(vms.labctl("run", "tcp", "--json", timing="run tcp (first: adopts the VMs, deploys)"))
    assert [r["ok"] for r in result["results"]] == [True] * 3, result
    vms.labctl("run", "tcp", "--json", timing="run tcp (again)")


def test_isolation_and_pinned_host_keys(vms):
    for network in _names("net-list"):
        xml = _virsh("net-dumpxml", network, check=True).stdout
        assert "<forward" not in xml, f"libvirt network {network} forwards: {xml}"
    inventory = vms.backend().inventory()
    assert [h.address for h in inventory] == [n.address for n in vms.lab.nodes]
    assert all(h.user == "root" and h.host_key.startswith("ssh-ed25519 ") for h in inventory)
    assert len({h.host_key for h in inventory}) == 4, "every VM must have its own host key"
    with Group(inventory.hosts) as group:
        routes = group.run(["ip", "route", "show", "default"])
        assert routes.ok, routes.failures
        assert all(r.stdout.strip() == "" for r in routes.results.values()), routes.results
        python = group.run(["sh", "-c", "python3 --version && tcpdump --version | head -n 1"])
        assert python.ok, python.failures


def test_the_forwarding_guard_is_on_both_libvirt_bridges(vms):
    """The first labctl command after a plain ``vagrant up`` put labctl's forwarding guard on the lab's
    and Vagrant's management bridge (``labctl down`` removes it: the libvirt fixture's leftover check
    sees any nft table left). The guard's traffic checks: tests/e2e/test_vagrant_guard_e2e.py."""
    vms.backend().inventory()
    bridges = [line.split(":", 1)[1].strip() for network in (f"labctl-{vms.name}", f"labctl-{vms.name}-mgmt")
               for line in _virsh("net-info", network, check=True).stdout.splitlines()
               if line.startswith("Bridge:")]
    assert len(bridges) == 2, bridges
    rules = "\n".join(_nft_table_rules("inet", f"labctl-{vms.name}"))
    for bridge in bridges:
        assert f'iifname "{bridge}" oifname "{bridge}"' in rules, rules
    status = json.loads(vms.labctl("status", "--json").stdout)
    assert status["forward_guard"].startswith(f"nft table inet labctl-{vms.name} on "), status


def test_provisioning_is_idempotent(vms):
    """A second provision (labctl's key now in, the server's unit stopped by labctl) changes nothing."""
    backend = vms.backend()
    log_size = backend.log_file.stat().st_size if backend.log_file.exists() else 0
    t0 = time.monotonic()
    backend.vagrant().provision()
    vms.timings["second provision"] = time.monotonic() - t0
    second = backend.log_file.read_text()[log_size:]
    assert "changed:" not in second, second
    for script in ("common.sh", "server.sh", "client.sh"):
        assert f"{script}: 0 changes" in second, second
    assert second.count("common.sh: 0 changes") == 4


def test_the_card_capture_until_ctrl_c(vms):
    """``python labctl.py capture --port 8080``, a run meanwhile, then SIGINT: a complete pcap."""
    pcap = vms.root / "card.pcap"
    t0 = time.monotonic()
    argv = [sys.executable, "labctl.py", "capture", "--port", "8080", "--json", "-o", str(pcap)]
    cap = subprocess.Popen(argv, cwd=REPO, env=vms.environ(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    err_lines: list[str] = []
    try:
        for line in cap.stderr:  # wait until tcpdump listens
            err_lines.append(line)
            if "tcpdump listening on" in line:
                break
        else:
            pytest.fail("capture ended before tcpdump listened: " + "".join(err_lines) + cap.stdout.read())
        run = _last_json(vms.labctl("run", "tcp", "--json"))
        assert [r["ok"] for r in run["results"]] == [True] * 3
        cap.send_signal(signal.SIGINT)
        out, rest = cap.communicate(timeout=120)
    finally:
        if cap.poll() is None:
            cap.kill()
            cap.wait()
    vms.timings["capture until SIGINT"] = time.monotonic() - t0
    assert cap.returncode == 0, "".join(err_lines) + rest + out
    outcome = json.loads(out.strip().splitlines()[-1])
    assert outcome["interrupted"] and outcome["stats"]["dropped"] == 0, outcome
    assert outcome["stats"]["captured"] >= 3 * 5, outcome
    assert len(_handshakes(pcap, vms.lab.server_address)) == 3, "three whole TCP handshakes in the pcap"
    assert outcome["interface"] == vms.backend().inventory().server.lab_interface


def test_capture_with_run(vms):
    pcap = vms.root / "run.pcap"
    outcome = _last_json(vms.labctl("capture", "--port", "8080", "--run", "tcp", "--json", "-o", str(pcap),
                                    timing="capture --run tcp"))
    assert outcome["stats"]["dropped"] == 0 and outcome["stats"]["captured"] >= 3 * 5


def test_capture_on_every_vm(vms):
    """``capture --nodes all`` on the VMs: one pcapng, one named interface per node, per-interface counts
    equal to each tcpdump's own and to tshark's; every client's SYN seen at the client and at the
    server; the nodes' clocks measured and said."""
    tshark = require_tool("tshark", "apt-get install tshark")
    pcap = vms.root / "every-node.pcapng"
    outcome = _last_json(vms.labctl("capture", "--nodes", "all", "--run", "tcp", "--json", "-o", str(pcap),
                                    timing="capture --nodes all --run tcp"))
    nodes = {n["node"]: n for n in outcome["nodes"]}
    assert set(nodes) == {"server", "client1", "client2", "client3"}, outcome
    assert all(n["stats"]["dropped"] == 0 and n["clock"]["kind"] for n in nodes.values()), outcome
    argv = [tshark, "-r", str(pcap), "-T", "fields", "-e", "frame.interface_name", "-e", "tcp.flags"]
    fields = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=120).stdout
    rows = [line.split("\t") for line in fields.splitlines() if line.strip()]
    per_interface: dict[str, int] = {}
    syns: dict[str, int] = {}
    for name, flags in rows:
        per_interface[name] = per_interface.get(name, 0) + 1
        if flags and int(flags, 16) & 0x12 == 0x02:
            syns[name] = syns.get(name, 0) + 1
    assert {name.split("/")[0] for name in per_interface} == set(nodes), per_interface
    for name, count in per_interface.items():
        assert count == nodes[name.split("/")[0]]["packets"], (name, count, outcome["nodes"])
    by_node = {name.split("/")[0]: n for name, n in syns.items()}
    clients = [by_node.get(c, 0) for c in ("client1", "client2", "client3")]
    # (a slow VM may send its SYN again: every copy a client sent reached the server)
    assert min(clients) >= 1 and by_node.get("server") == sum(clients), syns


def test_the_exercise_on_the_vms(vms):
    """``labctl exercise`` on the running VMs: every hour captured and answered, one report, the lab
    left up (it was up before)."""
    out = vms.root / "exercise"
    proc = vms.labctl("exercise", "-o", str(out), timeout=900, timing="exercise")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((out / "run.json").read_text())
    assert data["ok"] and [h["protocol"] for h in data["hours"]] == ["tcp", "udp", "proto"], data
    assert all(r["ok"] for h in data["hours"] for r in h["run"]["results"]), data
    assert not data["taken_down"] and (out / "report.html").stat().st_size > 10_000
    status = vms.labctl("status", "--json")
    assert all(n["up"] for n in json.loads(status.stdout)["nodes"]), status.stdout


def test_labctl_ssh_through_the_vagrant_backend(vms):
    """``labctl ssh client1 CMD``: the system ssh client, labctl's key, the host key pinned from the
    inventory (StrictHostKeyChecking=yes against only that key)."""
    proc = vms.labctl("ssh", "client1", "sh", "-c", "hostname; id -un", timing="ssh client1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split() == ["client1", "root"], proc.stdout


def test_impairment_delay_with_netem(vms):
    """From docs/links.md: 50 ms on the server's link shows in the capture and in UDP replies; clearing
    leaves no 4c: root qdisc and no lcifb0 in the VM."""
    delayed = vms.labctl("impair", "--node", "server", "--delay", "50ms", timing="impair --delay 50ms")
    assert delayed.returncode == 0, delayed.stdout + delayed.stderr
    try:
        pcap = vms.root / "delayed.pcap"
        _last_json(vms.labctl("capture", "--run", "tcp", "--json", "-o", str(pcap)))
        handshakes = _handshakes(pcap, vms.lab.server_address)
        print(f"\nwith 50 ms on the server: (SYN->SYN-ACK, SYN-ACK->ACK) ms at the server: "
              f"{[(round(a, 1), round(b, 1)) for a, b in handshakes]}")
        assert len(handshakes) == 3
        # the server's tap sees its SYN-ACK either before or after the egress qdisc (kernel-dependent):
        # the whole handshake as seen at the server holds the 50 ms either way
        assert all(a + b >= 50 for a, b in handshakes), handshakes
        udp = _last_json(vms.labctl("run", "udp", "--json"))
        totals = [r["timings"]["total_ms"] for r in udp["results"]]
        print(f"run udp total_ms with 50 ms: {totals}")
        assert all(r["ok"] for r in udp["results"]) and all(t >= 50 for t in totals), udp
    finally:
        cleared = vms.labctl("impair", "--clear")
    assert cleared.returncode == 0, cleared.stdout + cleared.stderr
    backend = vms.backend()
    with Group([backend.inventory().server]) as group:
        server = backend.inventory().server
        shown = group.run(["sh", "-c", f"tc qdisc show dev {shlex.quote(server.lab_interface)}; "
                                       "ip -o link show lcifb0 2>&1 || true"])
    text = shown.results["server"].stdout
    assert "qdisc htb 4c:" not in text and " 4c: root" not in text, text
    assert "lcifb0:" not in text or "does not exist" in text, text
    udp = _last_json(vms.labctl("run", "udp", "--json"))
    totals = [r["timings"]["total_ms"] for r in udp["results"]]
    print(f"run udp total_ms after --clear: {totals}")
    assert min(totals) < 50, totals


# (capture on every node: add its check here, as one more function taking `vms`)


def test_the_ssh_backend_through_the_exported_inventory(vms):
    exported = vms.labctl("inventory", "--format", "yaml")
    assert exported.returncode == 0, exported.stderr
    inventory_file = vms.root / "vms.yml"
    inventory_file.write_text(exported.stdout)
    run = vms.labctl("--inventory", str(inventory_file), "run", "udp", "--json")
    assert "backend ssh (--inventory)" in run.stderr, run.stderr
    assert [r["ok"] for r in _last_json(run)["results"]] == [True] * 3
