"""The ``vagrant`` backend: the lab as Vagrant VMs (VirtualBox by default, libvirt where it is missing).

``up`` runs ``vagrant up --provision`` through python-vagrant with the project's Vagrantfile, which
reads the same lab file. Then, once per ``up``, each VM's host key is read over Vagrant's own channel
(``vagrant ssh NAME -c 'cat /etc/ssh/ssh_host_ed25519_key.pub'``) and pinned: labctl never inherits
Vagrant's ``StrictHostKeyChecking no``. From then on labctl reaches every VM directly on its private
lab address, as root with its own key (installed by provision/common.sh), or, if that key is not in
the VM, as the user and key ``vagrant ssh-config`` names.

Under libvirt the VMs' networks are bridges on this machine (virbrN): ``up`` puts labctl's forwarding
guard on them (:mod:`labctl.backends.vagrant.libvirt_networks`), ``down`` takes it away, and
``status`` shows it. VirtualBox's networks are not this machine's bridges: no guard there.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from labctl.backends import forward_guard
from labctl.backends.base import Backend, BackendError, Check, NodeStatus, Progress
from labctl.backends.remote_links import RemoteLinks
from labctl.backends.running import vagrant_dotfile
from labctl.backends.vagrant import libvirt_networks, preflight
from labctl.backends.vagrant.preflight import LIBVIRT_URI, VagrantPreflightError
from labctl.inventory import Host, Inventory, LabNotUp
from labctl.lab import DEFAULT_LAB_FILE, Lab
from labctl.statefiles import secure_dir, write_file

PROJECT_DIR = Path(__file__).resolve().parents[3]  # where the Vagrantfile is
PROVIDERS = ("virtualbox", "libvirt")
HOST_KEY_FILE = "/etc/ssh/ssh_host_ed25519_key.pub"
_PUBKEY_RE = re.compile(r"^(ssh-ed25519|ecdsa-sha2-nistp\d+|ssh-rsa) [A-Za-z0-9+/=]+")


# --- ssh-config ----------------------------------------------------------------------------------------

def parse_ssh_config(text: str) -> dict[str, dict[str, Any]]:
    """``vagrant ssh-config`` output -> {machine: {option: value}}; IdentityFile is always a list."""
    machines: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        if "=" in key:  # "Key=value" is valid ssh_config too
            key, _, value = line.partition("=")
        value = value.strip().strip("=").strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        if key.lower() == "host":
            current = machines.setdefault(value, {"IdentityFile": []})
        elif current is not None:
            if key.lower() == "identityfile":
                current["IdentityFile"].append(value)
            else:
                current[key] = value
    return machines


def parse_pin_output(text: str) -> tuple[str, str | None, bool]:
    """What the pin command printed -> (host key ``TYPE BASE64``, lab interface, labctl key installed)."""
    host_key, interface, key_ok = "", None, False
    for line in text.splitlines():
        line = line.strip()
        if _PUBKEY_RE.match(line) and not host_key:
            host_key = " ".join(line.split()[:2])
        elif line == "LABCTL_KEY_OK":
            key_ok = True
        elif ": " in line and " inet " in line:  # `ip -o -4 addr show to ADDR`: "3: eth1    inet ..."
            interface = line.split()[1].split("@")[0]
    return host_key, interface, key_ok


def holds_address(address: str) -> bool:
    """True if this machine has ``address`` (binding to it succeeds only then; portable, sends nothing)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((address, 0))
        except OSError:
            return False
    return True


def host_interface(address: str) -> str | None:
    """The interface of this machine that holds ``address`` (the lab's bridge or host-only adapter);
    None where ``ip`` is missing (macOS, Windows): the route check then uses the source address."""
    if shutil.which("ip") is None:
        return None
    proc = subprocess.run(["ip", "-o", "-4", "addr", "show", "to", f"{address}/32"], capture_output=True,
                          text=True, check=False)
    for line in proc.stdout.splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[3].split("/")[0] == address:
            return fields[1].split("@")[0]
    return None


# --- the backend ---------------------------------------------------------------------------------------

class VagrantBackend(RemoteLinks, Backend):
    """Vagrant VMs from the project's Vagrantfile, driven through python-vagrant."""

    name = "vagrant"
    ssh_timeout = 15.0  # VMs under QEMU without KVM answer slowly

    def __init__(self, lab: Lab, state_dir: Path, *, project_dir: Path = PROJECT_DIR) -> None:
        super().__init__(lab, state_dir)
        self.project_dir = Path(project_dir)
        self.dir = Path(state_dir) / "vagrant"
        self.client_key = self.dir / "id_ed25519"
        self.pins_file = self.dir / "host_keys.json"
        self.log_file = self.dir / "vagrant.log"

    # --- python-vagrant -----------------------------------------------------------------------------

    @property
    def provider(self) -> str:
        """The lab file's ``vagrant.provider``, else env LABCTL_VAGRANT_PROVIDER, else what is installed."""
        chosen = str(self.lab.vagrant.get("provider") or os.environ.get("LABCTL_VAGRANT_PROVIDER") or "")
        if not chosen:
            chosen = "virtualbox" if shutil.which("VBoxManage") or not shutil.which("virsh") else "libvirt"
        if chosen not in PROVIDERS:
            raise BackendError(f"vagrant provider {chosen!r}: use one of {', '.join(PROVIDERS)}")
        return chosen

    def environment(self) -> dict[str, str]:
        """What the Vagrantfile is told: this lab's file, size, labctl's key, and where state goes."""
        env = dict(os.environ)
        lab_file = Path(self.lab.source or DEFAULT_LAB_FILE).resolve()
        env.update(LABCTL_LAB=str(lab_file), LABCTL_CLIENTS=str(self.lab.clients),
                   LABCTL_PUBKEY=f"{self.client_key}.pub", LABCTL_STATE=str(Path(self.state_dir).parent),
                   LABCTL_SERVER_SERVICE="0")  # labctl deploy runs the server itself
        dotfile = vagrant_dotfile(self.lab, self.state_dir, self.project_dir)
        if dotfile != self.project_dir / ".vagrant":  # another lab (or the user's choice): its own machines
            env["VAGRANT_DOTFILE_PATH"] = str(dotfile)
        return env

    def vagrant(self):
        """A python-vagrant handle on the project's Vagrantfile; output goes to the state dir's log."""
        import vagrant

        if shutil.which("vagrant") is None:
            raise VagrantPreflightError("vagrant is not installed: apt-get install -y "
                                        "--no-install-recommends "
                                        "vagrant (and vagrant-libvirt without VirtualBox)")
        secure_dir(self.dir)  # 0700, ours, or a clear refusal
        log = vagrant.make_file_cm(str(self.log_file))
        return vagrant.Vagrant(root=str(self.project_dir), env=self.environment(), out_cm=log, err_cm=log)

    @contextlib.contextmanager
    def _calling(self, what: str) -> Iterator[None]:
        """Turn a failed vagrant command into a :class:`BackendError` quoting the end of its log."""
        try:
            yield
        except subprocess.CalledProcessError as exc:
            raise BackendError(f"{what} failed (exit {exc.returncode}): {self._log_tail()} "
                               f"(full log: {self.log_file})") from None
        except (RuntimeError, OSError) as exc:
            raise BackendError(f"{what} failed: {exc}") from None

    def _log_tail(self, lines: int = 4) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return ""
        tail = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
        return " / ".join(tail)

    # --- interface ------------------------------------------------------------------------------------

    def up(self, progress: Progress | None = None, check: Check | None = None) -> Inventory:
        """``vagrant up --provision``, pin each VM's host key over Vagrant's channel, ``check`` SSH.

        A failed check leaves the VMs up (they take minutes to build): ``labctl down`` destroys them.
        """
        say = progress or (lambda _m: None)
        preflight.require(self.provider, self.lab.subnet)
        self._ensure_client_key()
        v = self.vagrant()
        say(f"vagrant up --provider={self.provider} ({len(self.lab.nodes)} VMs; log: {self.log_file})")
        try:
            with self._calling("vagrant up"):
                v.up(provider=self.provider, provision=True)
        except BaseException:
            with contextlib.suppress(Exception):  # the VMs that did boot are guarded all the same
                self.guard_forwarding(say)
            raise
        self.guard_forwarding(say)
        say("reading each VM's host key over vagrant ssh, to pin it")
        self.pin_host_keys(v)
        inventory = self.inventory()
        if check:
            check(inventory)
        return inventory

    def halt(self, progress: Progress | None = None) -> None:
        """Stop the VMs, keeping their disks (``vagrant halt``)."""
        if progress:
            progress("vagrant halt")
        with self._calling("vagrant halt"):
            self.vagrant().halt()

    def down(self, progress: Progress | None = None) -> str | None:
        """Destroy every VM of the lab (``vagrant destroy -f``), forget their host keys, and remove the
        forwarding guard (once the VMs are gone: never a moment with VMs and no guard)."""
        if progress:
            progress("vagrant destroy -f")
        if shutil.which("vagrant") is not None:
            with self._calling("vagrant destroy"):
                self.vagrant().destroy()
        with contextlib.suppress(FileNotFoundError):
            self.pins_file.unlink()
        if self.provider == "libvirt" and libvirt_networks.unguard(self.lab.name) and progress:
            progress(f"removed the forwarding guard ({libvirt_networks.guard_table(self.lab.name)})")
        return None  # vagrant destroy does not say whether there was a VM to destroy

    def clean(self, progress: Progress | None = None) -> list[str]:
        """``down``, then remove this lab's libvirt networks if vagrant-libvirt left any."""
        self.down(progress)
        removed = []
        if shutil.which("virsh") is not None:
            for network in self.libvirt_networks():
                subprocess.run(["virsh", "-c", LIBVIRT_URI, "net-destroy", network], capture_output=True,
                               check=False)
                subprocess.run(["virsh", "-c", LIBVIRT_URI, "net-undefine", network], capture_output=True,
                               check=False)
                removed.append(f"libvirt network {network}")
        return removed

    def libvirt_networks(self) -> list[str]:
        """This lab's libvirt networks (named by the Vagrantfile: labctl-NAME, labctl-NAME-mgmt)."""
        return libvirt_networks.of_lab(self.lab.name)

    def guard_forwarding(self, say: Progress) -> None:
        """Put the forwarding guard on the lab's libvirt bridges (idempotent; VirtualBox: nothing to do)."""
        if self.provider == "libvirt":
            libvirt_networks.guard(self.lab.name, say)

    def guard_status(self) -> str | None:
        return libvirt_networks.guard_status(self.lab.name) if self.provider == "libvirt" else None

    def machine_states(self) -> dict[str, str]:
        """{machine: state} from ``vagrant status`` (running, poweroff, not_created, ...)."""
        with self._calling("vagrant status"):
            return {s.name: s.state for s in self.vagrant().status()}

    def status(self) -> list[NodeStatus]:
        try:
            states = self.machine_states()
        except BackendError as exc:
            return [NodeStatus(n.name, n.role, n.address, False, str(exc)) for n in self.lab.nodes]
        return [NodeStatus(n.name, n.role, n.address, states.get(n.name) == "running",
                           states.get(n.name, "not in the Vagrantfile")) for n in self.lab.nodes]

    def inventory(self) -> Inventory:
        """Each running VM on its lab address, with its pinned host key; LabNotUp otherwise. Running VMs
        under libvirt without the forwarding guard (a plain ``vagrant up``) get it first."""
        states = self.machine_states()
        down = [n.name for n in self.lab.nodes if states.get(n.name) != "running"]
        if down:
            raise LabNotUp(f"Vagrant VMs not running: {', '.join(down)}: run labctl --backend vagrant up")
        if self.provider == "libvirt":
            try:
                if not libvirt_networks.guarded(self.lab.name):
                    self.guard_forwarding(lambda _m: None)  # a plain `vagrant up`, or a flushed ruleset
            except forward_guard.GuardError:
                if os.geteuid() == 0:
                    raise
                # a user who is not root cannot set nftables rules (the card's non-root path): libvirt's
                # isolated networks have no forward of their own, and `status` says the guard is unknown
        pins = self._read_pins()
        if any(n.name not in pins for n in self.lab.nodes):  # VMs of a plain `vagrant up`: adopt them once
            self._ensure_client_key()
            pins = self.pin_host_keys()
        missing = [n.name for n in self.lab.nodes if not pins.get(n.name, {}).get("host_key")]
        if missing:
            raise LabNotUp(f"no pinned host key for {', '.join(missing)}: run labctl --backend vagrant up "
                           "(it reads each VM's key over vagrant ssh once)")
        need_config = any(not pins[n.name].get("labctl_key") for n in self.lab.nodes)
        configs: dict[str, dict[str, Any]] = {}
        if need_config:
            with self._calling("vagrant ssh-config"):
                configs = parse_ssh_config(self.vagrant().ssh_config())
        interface = host_interface(self.lab.host_address)
        if interface is None and not holds_address(self.lab.host_address):
            raise LabNotUp(f"no interface on this machine holds the lab's host address "
                           f"{self.lab.host_address}: are the VMs' private networks up?")
        hosts = []
        for node in self.lab.nodes:
            pin = pins[node.name]
            if pin.get("labctl_key"):
                user, key = "root", self.client_key
            else:
                config = configs.get(node.name) or {}
                files = [f for f in config.get("IdentityFile", []) if Path(f).is_file()]
                if not files or not config.get("User"):
                    raise LabNotUp(f"{node.name}: vagrant ssh-config names no usable user and key")
                user, key = config["User"], Path(files[0])
            hosts.append(Host(name=node.name, role=node.role, address=node.address, port=22, user=user,
                              key_file=key, host_key=pin["host_key"], interface=interface,
                              lab_interface=pin.get("lab_interface") or "eth1",
                              host_address=self.lab.host_address))
        return Inventory(backend=self.name, hosts=tuple(hosts), lab=self.lab)

    # --- host keys ------------------------------------------------------------------------------------

    def pin_command(self, address: str) -> str:
        """The ``vagrant ssh`` command: print the VM's host key and its lab interface, and make sure
        labctl's key is root's (as provision/common.sh does, the same line, so a later provision changes
        nothing) and that the server's systemd unit is stopped (``labctl deploy`` runs the server; a
        plain ``vagrant up`` starts the unit). Prints LABCTL_KEY_OK when root takes labctl's key."""
        pub = self.client_key.with_suffix(".pub")
        key = pub.read_text().strip() if pub.is_file() else ""
        keys = "/root/.ssh/authorized_keys"
        adopt = (f'install -d -m 700 /root/.ssh && {{ grep -qxF -- "$1" {keys} 2>/dev/null '
                 f'|| printf "%s\\n" "$1" >> {keys}; }} && chmod 600 {keys}'
                 ' && { systemctl -q disable --now labctl-timeserver.service 2>/dev/null; true; }'
                 ' && echo LABCTL_KEY_OK')
        install = f"sudo -n sh -c {shlex.quote(adopt)} sh {shlex.quote(key)} 2>/dev/null; " if key else ""
        return f"cat {HOST_KEY_FILE}; ip -o -4 addr show to {shlex.quote(address)}/32; {install}true"

    def pin_host_keys(self, v=None) -> dict[str, dict[str, Any]]:
        """Read every VM's host key over Vagrant's channel (in parallel) and save them as the pins."""
        v = v or self.vagrant()

        def read(node) -> tuple[str, dict[str, Any]]:
            with self._calling(f"vagrant ssh {node.name}"):
                out = v.ssh(vm_name=node.name, command=self.pin_command(node.address))
            host_key, interface, key_ok = parse_pin_output(out)
            if not host_key:
                raise BackendError(f"{node.name}: could not read {HOST_KEY_FILE} over vagrant ssh "
                                   f"(got {out.strip()[:200]!r})")
            if interface is None:
                raise BackendError(f"{node.name}: no interface in the VM holds its lab address {node.address}"
                                   " (did the private network come up?)")
            return node.name, {"host_key": host_key, "lab_interface": interface, "labctl_key": key_ok}

        with ThreadPoolExecutor(max_workers=4) as pool:
            pins = dict(pool.map(read, self.lab.nodes))
        write_file(self.pins_file, json.dumps(pins, indent=1))
        return pins

    def _read_pins(self) -> dict[str, dict[str, Any]]:
        try:
            pins = json.loads(self.pins_file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise LabNotUp(f"{self.pins_file} is unreadable ({exc}): "
                           "run labctl --backend vagrant up") from None
        return pins if isinstance(pins, dict) else {}

    def _ensure_client_key(self) -> None:
        """labctl's own key pair for the VMs (the provisioner authorizes its public half for root)."""
        self.vagrant()  # makes the state directory, or says why it cannot
        from labctl.backends.keys import generate_keypair

        if os.path.islink(self.client_key) or not self.client_key.is_file():  # never through a symlink
            private, public = generate_keypair(f"labctl-{self.lab.name}")
            write_file(self.client_key, private)
            write_file(f"{self.client_key}.pub", public + "\n", 0o644)
        os.chmod(self.client_key, 0o600, follow_symlinks=False)
