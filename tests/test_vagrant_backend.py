"""The vagrant backend without VMs: python-vagrant drives a fake ``vagrant`` program on PATH.

The fake records every call (arguments and the environment labctl gives the Vagrantfile) and answers
like Vagrant 2.3 with vagrant-libvirt does; a fake ``virsh`` lists the libvirt networks its ``up``
made, and nft calls are recorded (the guard for real: tests/e2e/test_vagrant_guard_e2e.py). Also:
ssh-config parsing and the VirtualBox preflight.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from labctl.backends import make_backend
from labctl.backends.base import BackendError
from labctl.backends.vagrant.backend import parse_pin_output, parse_ssh_config
from labctl.backends.vagrant.libvirt_networks import parse_net_info_bridge
from labctl.backends.vagrant.preflight import (
    VagrantPreflightError,
    check_virtualbox,
    require,
    vbox_allowed_ranges,
    vbox_network_problem,
)
from labctl.errors import LabctlError
from labctl.inventory import LabNotUp
from labctl.lab import load_lab
from tests.test_forward_guard import FakeNft

FAKE_VAGRANT = r'''#!PYTHON
"""A fake vagrant: answers like Vagrant 2.3.4 + vagrant-libvirt, records each call."""
import fcntl, json, os, sys
state_file = os.environ["FAKE_VAGRANT_STATE"]
lock = open(state_file + ".lock", "w")
fcntl.flock(lock, fcntl.LOCK_EX)  # labctl runs vagrant ssh for the VMs in parallel
state = json.load(open(state_file))
args = sys.argv[1:]
keep = ("LABCTL_LAB", "LABCTL_CLIENTS", "LABCTL_PUBKEY", "LABCTL_SERVER_SERVICE", "VAGRANT_DOTFILE_PATH",
        "LABCTL_STATE")
state["calls"].append({"args": args, "env": {k: os.environ.get(k) for k in keep}, "cwd": os.getcwd()})
rc = 0
cmd = args[0]
names = [m for m in state["machines"]]
lab_file = os.environ.get("LABCTL_LAB")
lab = [line.split()[1] for line in open(lab_file) if line.startswith("name:")][0] if lab_file else "lab"
if cmd == "up":
    if state.get("fail_up"):
        print("Error while activating network: Call to virNetworkCreate failed", file=sys.stderr)
        rc = 1
    else:
        print("==> server: Creating domain")
        state["networks"] = {f"labctl-{lab}": "virbr7", f"labctl-{lab}-mgmt": "virbr8"}
        for m in names:
            state["machines"][m] = "running"
elif cmd == "status":
    for m, s in state["machines"].items():
        print(f"1700000000,{m},metadata,provider,libvirt")
        print(f"1700000000,{m},provider-name,libvirt")
        print(f"1700000000,{m},state,{s}")
elif cmd == "ssh-config":
    for m in names:
        print(f"Host {m}\n  HostName 192.168.121.{10 + names.index(m)}\n  User vagrant\n  Port 22\n"
              f"  UserKnownHostsFile /dev/null\n  StrictHostKeyChecking no\n  PasswordAuthentication no\n"
              f"  IdentityFile \"{state['key_dir']}/{m}/private_key\"\n"
              "  IdentitiesOnly yes\n  LogLevel FATAL\n")
elif cmd == "ssh":
    name, command = args[1], args[args.index("--command") + 1]
    address = command.split("show to ")[1].split("/")[0]
    print(state["host_keys"][name] + " root@" + name)
    print(f"3: eth1    inet {address}/24 brd 192.168.20.255 scope global eth1\\       valid_lft forever")
    if state.get("key_ok"):
        print("LABCTL_KEY_OK")
elif cmd == "destroy":
    state["networks"] = {}  # vagrant-libvirt removes the networks it made with their last VM
    for m in names:
        state["machines"][m] = "not_created"
elif cmd == "halt":
    for m in names:
        state["machines"][m] = "shutoff"
json.dump(state, open(state_file, "w"))
sys.exit(rc)
'''

FAKE_VIRSH = r'''#!PYTHON
"""A fake virsh: the libvirt networks the fake vagrant's up made."""
import json, os, sys
networks = json.load(open(os.environ["FAKE_VAGRANT_STATE"])).get("networks", {})
args = [a for a in sys.argv[1:] if a not in ("-c", "qemu:///system")]
if args[:1] == ["net-list"]:
    print("default")
    print("\n".join(networks))
elif args[:1] == ["net-info"]:
    if args[1] not in networks:
        sys.exit("error: Network not found")
    print(f"Name:           {args[1]}\nActive:         yes\nBridge:         {networks[args[1]]}")
else:
    print("Running hypervisor: QEMU 7.2.0")
'''

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH0oHZz4f6OPOBXbkKu4rLk6+6m0bQn1lFkP+Vd3w2cA"


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A fake vagrant and virsh first on PATH; returns a helper to read/modify the fake's state."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    vagrant = bin_dir / "vagrant"
    vagrant.write_text(FAKE_VAGRANT.replace("PYTHON", sys.executable))
    vagrant.chmod(0o755)
    virsh = bin_dir / "virsh"
    virsh.write_text(FAKE_VIRSH.replace("PYTHON", sys.executable))
    virsh.chmod(0o755)
    key_dir = tmp_path / "machines"
    machines = ["server", "client1", "client2", "client3"]
    for m in machines:
        (key_dir / m).mkdir(parents=True)
        (key_dir / m / "private_key").write_text("not a real key\n")
        (key_dir / m / "private_key").chmod(0o600)
    state_file = tmp_path / "fake-state.json"
    state = {"machines": dict.fromkeys(machines, "not_created"), "calls": [], "key_dir": str(key_dir),
             "host_keys": {m: HOST_KEY[:-4] + f"{i:03d}A" for i, m in enumerate(machines)}}
    state_file.write_text(json.dumps(state))
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_VAGRANT_STATE", str(state_file))
    monkeypatch.setenv("LABCTL_VAGRANT_PROVIDER", "libvirt")
    monkeypatch.setattr("labctl.backends.vagrant.backend.host_interface", lambda address: "virbr7")
    nft = FakeNft()
    monkeypatch.setattr("labctl.backends.vagrant.libvirt_networks.NFT", nft)

    class Fake:
        nft_calls = nft.calls
        nft_tables = nft.tables

        def state(self) -> dict:
            return json.loads(state_file.read_text())

        def update(self, **changes) -> None:
            s = self.state()
            s.update(changes)
            state_file.write_text(json.dumps(s))

        def calls(self) -> list[dict]:
            return self.state()["calls"]

    return Fake()


@pytest.fixture
def backend(fake, tmp_path, monkeypatch):
    return make_backend("vagrant", load_lab(), tmp_path / "state" / "lab")


def test_up_runs_vagrant_up_pins_keys_and_hands_out_the_lab_addresses(fake, backend):
    messages: list[str] = []
    fake.update(key_ok=True)
    inventory = backend.up(messages.append)
    up_call = fake.calls()[0]
    assert up_call["args"] == ["up", "--provision", "--provider=libvirt"]
    assert up_call["cwd"] == str(backend.project_dir) and (backend.project_dir / "Vagrantfile").is_file()
    env = up_call["env"]
    assert env["LABCTL_LAB"] == str(load_lab().source.resolve()) and env["LABCTL_CLIENTS"] == "3"
    assert env["LABCTL_SERVER_SERVICE"] == "0" and env["VAGRANT_DOTFILE_PATH"] is None  # project's .vagrant
    assert env["LABCTL_PUBKEY"] == f"{backend.client_key}.pub"
    assert backend.client_key.stat().st_mode & 0o777 == 0o600
    ssh_calls = [c["args"] for c in fake.calls() if c["args"][0] == "ssh"]
    assert sorted(c[1] for c in ssh_calls) == ["client1", "client2", "client3", "server"]
    assert all("cat /etc/ssh/ssh_host_ed25519_key.pub" in c[3] for c in ssh_calls)
    assert [h.address for h in inventory] == ["192.168.20.2", "192.168.20.3", "192.168.20.4", "192.168.20.5"]
    server = inventory.server
    assert (server.user, server.key_file, server.port) == ("root", backend.client_key, 22)
    assert server.host_key == fake.state()["host_keys"]["server"]  # the comment is dropped
    assert {h.host_key for h in inventory} == set(fake.state()["host_keys"].values())
    assert (server.interface, server.lab_interface) == ("virbr7", "eth1")
    assert "vagrant up --provider=libvirt" in messages[0]


def test_without_labctls_key_the_inventory_uses_vagrant_ssh_config(fake, backend):
    inventory = backend.up()
    assert any(c["args"] == ["ssh-config"] for c in fake.calls())
    client2 = inventory.get("client2")
    assert client2.user == "vagrant"
    assert client2.key_file == Path(fake.state()["key_dir"]) / "client2" / "private_key"
    assert client2.address == "192.168.20.4"  # never the management address ssh-config names


def test_status_inventory_halt_and_down(fake, backend):
    assert [s.up for s in backend.status()] == [False] * 4
    assert backend.status()[0].detail == "not_created"
    with pytest.raises(LabNotUp, match="not running: server, client1, client2, client3"):
        backend.inventory()
    backend.up()
    assert [s.up for s in backend.status()] == [True] * 4
    backend.halt()
    assert {s.detail for s in backend.status()} == {"poweroff"}  # python-vagrant normalises libvirt's shutoff
    with pytest.raises(LabNotUp, match="run labctl --backend vagrant up"):
        backend.inventory()
    backend.up()
    backend.down()
    assert fake.calls()[-1]["args"] == ["destroy", "--force"]
    assert not backend.pins_file.exists()
    fake.update(machines=dict.fromkeys(["server", "client1", "client2", "client3"], "running"),
                networks={"labctl-lab": "virbr7", "labctl-lab-mgmt": "virbr8"})
    # VMs that a plain `vagrant up` made: the first inventory adopts them (reads and pins each host key,
    # installs labctl's key for root over vagrant ssh), once, and puts the forwarding guard in place
    before = len(fake.calls())
    assert fake.nft_tables == {}
    inventory = backend.inventory()
    assert 'iifname { "virbr7", "virbr8" }' in fake.nft_tables["labctl-lab"]
    assert backend.pins_file.exists() and backend.client_key.is_file()
    assert [h.name for h in inventory] == ["server", "client1", "client2", "client3"]
    ssh_calls = [c for c in fake.calls()[before:] if c["args"][:1] == ["ssh"]]
    assert len(ssh_calls) == 4 and all("LABCTL_KEY_OK" in " ".join(c["args"]) for c in ssh_calls)
    before = len(fake.calls())
    backend.inventory()
    assert not [c for c in fake.calls()[before:] if c["args"][:1] == ["ssh"]], "adopted once, not per command"


def test_a_failed_vagrant_up_is_one_clear_error_quoting_its_log(fake, backend):
    fake.update(fail_up=True)
    with pytest.raises(BackendError, match=r"vagrant up failed \(exit 1\): .*virNetworkCreate failed"):
        backend.up()


def test_another_lab_file_gets_its_own_vagrant_state(fake, tmp_path, monkeypatch):
    lab_file = tmp_path / "other.yml"
    lab_file.write_text(load_lab().source.read_text().replace("name: lab ", "name: vtest ")
                        .replace("clients: 3", "clients: 2"))
    fake.update(machines=dict.fromkeys(["server", "client1", "client2"], "not_created"))
    b = make_backend("vagrant", load_lab(lab_file), tmp_path / "state" / "vtest")
    fake.update(key_ok=True)
    assert len(b.up()) == 3
    env = fake.calls()[0]["env"]
    assert env["LABCTL_LAB"] == str(lab_file) and env["LABCTL_CLIENTS"] == "2"
    assert env["VAGRANT_DOTFILE_PATH"] == str(tmp_path / "state" / "vtest" / "vagrant" / "dotfile")


def test_cli_status_and_missing_vagrant_are_clear(fake, tmp_path, capsys, monkeypatch):
    from labctl.cli import main

    state = ["--state-dir", str(tmp_path / "state")]
    assert main([*state, "--backend", "vagrant", "inventory"]) == 1
    assert "Vagrant VMs not running" in capsys.readouterr().err
    monkeypatch.setenv("PATH", "/nonexistent")
    assert main([*state, "--backend", "vagrant", "inventory"]) == 1
    err = capsys.readouterr().err
    assert "vagrant is not installed" in err and "Traceback" not in err


# --- ssh-config ------------------------------------------------------------------------------------

SSH_CONFIG = textwrap.dedent("""\
    Host server
      HostName 192.168.121.87
      User vagrant
      Port 22
      UserKnownHostsFile /dev/null
      StrictHostKeyChecking no
      PasswordAuthentication no
      IdentityFile "/home/a user/.vagrant/machines/server/libvirt/private_key"
      IdentityFile /home/a/.vagrant.d/insecure_private_key
      IdentitiesOnly yes
      LogLevel FATAL

    Host client1
      HostName 127.0.0.1
      User vagrant
      Port=2200
    """)


def test_ssh_config_parsing_of_several_machines():
    config = parse_ssh_config(SSH_CONFIG)
    assert list(config) == ["server", "client1"]
    assert config["server"]["HostName"] == "192.168.121.87"
    assert config["server"]["StrictHostKeyChecking"] == "no"  # parsed, and deliberately never used
    assert config["server"]["IdentityFile"] == ["/home/a user/.vagrant/machines/server/libvirt/private_key",
                                                "/home/a/.vagrant.d/insecure_private_key"]
    assert config["client1"]["Port"] == "2200" and config["client1"]["IdentityFile"] == []


def test_ssh_config_parsing_agrees_with_python_vagrant_for_one_machine():
    import vagrant

    one = SSH_CONFIG.split("\n\n")[0]
    theirs = vagrant.Vagrant()._parse_config(one)
    ours = parse_ssh_config(one)["server"]
    for key in ("HostName", "User", "Port", "IdentitiesOnly"):
        assert ours[key] == theirs[key]
    assert ours["IdentityFile"][-1] == theirs["IdentityFile"]


def test_pin_output_parsing():
    out = (f"{HOST_KEY} root@server\n"
           "3: eth1    inet 192.168.20.2/24 brd 192.168.20.255 scope global eth1\\       valid_lft forever\n"
           "LABCTL_KEY_OK\n")
    assert parse_pin_output(out) == (HOST_KEY, "eth1", True)
    assert parse_pin_output("cat: /etc/ssh/ssh_host_ed25519_key.pub: No such file\n") == ("", None, False)
    veth = "7: eth0@if8    inet 10.0.0.2/24 scope global eth0\n"
    assert parse_pin_output(HOST_KEY + "\n" + veth)[1] == "eth0"


# --- VirtualBox preflight --------------------------------------------------------------------------

@pytest.mark.parametrize("version, conf, problem", [
    ("6.1.26r145957", None, False),              # before the restriction
    ("6.1.28r147628", None, True),               # no networks.conf: only 192.168.56.0/21
    ("7.0.14r161095", None, True),
    ("7.0.14", "* 10.0.0.0/8 192.168.0.0/16\n", False),
    ("7.0.14", "* 192.168.20.0/24\n", False),
    ("7.0.14", "# * 192.168.20.0/24\n* 192.168.56.0/21\n", True),
    ("7.0.14", "* 192.168.20.0/25\n", True),     # too small for the /24
    ("7.0.14", "", True),
    ("", None, False),                           # unknown version: vagrant up will tell
])
def test_virtualbox_networks_conf(version, conf, problem):
    found = vbox_network_problem("192.168.20.0/24", version, conf)
    assert (found is not None) == problem
    if problem:
        assert "\n    * 192.168.20.0/24\n" in found
        assert ("create it" if conf is None else "add this line") in found
    assert vbox_network_problem("192.168.57.0/24", version, None) is None  # inside the default range


def test_allowed_ranges_parsing():
    assert [str(n) for n in vbox_allowed_ranges("* 10.0.0.0/8 fd00::/8 bogus\n  * 192.168.20.0/24 # lab\n")] \
        == ["10.0.0.0/8", "192.168.20.0/24"]
    assert [str(n) for n in vbox_allowed_ranges(None)] == ["192.168.56.0/21"]


def test_check_virtualbox_reads_vboxmanage_and_the_conf(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "VBoxManage").write_text("#!/bin/sh\necho 7.0.14r161095\n")
    (bin_dir / "VBoxManage").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    conf = tmp_path / "networks.conf"
    with pytest.raises(VagrantPreflightError, match=r"\* 192\.168\.20\.0/24"):
        check_virtualbox("192.168.20.0/24", conf)
    conf.write_text("* 192.168.20.0/24\n")
    check_virtualbox("192.168.20.0/24", conf)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(VagrantPreflightError, match="VirtualBox is not installed"):
        check_virtualbox("192.168.20.0/24", conf)


def test_virtualbox_provider_runs_the_preflight_before_vagrant_up(fake, backend, monkeypatch):
    monkeypatch.setenv("LABCTL_VAGRANT_PROVIDER", "virtualbox")
    (Path(os.environ["PATH"].split(":")[0]) / "VBoxManage").write_text("#!/bin/sh\necho 6.1.50\n")
    (Path(os.environ["PATH"].split(":")[0]) / "VBoxManage").chmod(0o755)
    monkeypatch.setattr("labctl.backends.vagrant.preflight.VBOX_NETWORKS_CONF",
                        Path("/nonexistent/networks.conf"))
    with pytest.raises(VagrantPreflightError, match="allows host-only networks only"):
        require(backend.provider, backend.lab.subnet)
    import labctl.backends.vagrant.preflight as vmod

    monkeypatch.setattr(vmod, "check_virtualbox",
                        lambda subnet: (_ for _ in ()).throw(VagrantPreflightError("stop here")))
    with pytest.raises(VagrantPreflightError, match="stop here"):
        backend.up()
    assert not any(c["args"][0] == "up" for c in fake.calls())  # refused before vagrant up


def test_the_fake_is_what_python_vagrant_calls(fake, tmp_path):
    """Guard: python-vagrant runs the ``vagrant`` it finds on PATH (what every test here relies on)."""
    import vagrant

    assert subprocess.run([sys.executable, "-c", "import vagrant; print(vagrant.get_vagrant_executable())"],
                          env={**os.environ, "PATH": "/nonexistent"}, capture_output=True, text=True
                          ).stdout.strip() == "None"
    v = vagrant.Vagrant(root=str(tmp_path))
    v.up(provider="libvirt")
    assert [s.state for s in v.status()] == ["running"] * 4
    v.destroy()
    assert [c["args"][0] for c in fake.calls()] == ["up", "status", "destroy"]
    assert fake.calls()[0]["cwd"] == str(tmp_path)
    assert set(fake.state()["machines"].values()) == {"not_created"}


def test_exported_inventory_of_the_vms_loads_back(fake, backend, tmp_path, capsys):
    from labctl.cli import main
    from labctl.inventory import load_inventory

    fake.update(key_ok=True)
    inventory = backend.up()
    state_root = str(backend.state_dir.parent)
    assert main(["--state-dir", state_root, "--backend", "vagrant", "inventory", "--format", "yaml"]) == 0
    path = tmp_path / "vms.yml"
    path.write_text(capsys.readouterr().out)
    assert load_inventory(path).hosts == inventory.hosts


def test_clean_removes_only_this_labs_libvirt_networks(fake, backend, tmp_path):
    bin_dir = Path(os.environ["PATH"].split(":")[0])
    calls = tmp_path / "virsh-calls"
    (bin_dir / "virsh").write_text(
        "#!/bin/sh\n"
        f"echo \"$*\" >> {calls}\n"
        "case \"$*\" in *net-list*) "
        "printf 'default\\nlabctl-lab\\nlabctl-lab-mgmt\\nlabctl-other\\n';; esac\n")
    removed = backend.clean()
    assert removed == ["libvirt network labctl-lab", "libvirt network labctl-lab-mgmt"]
    done = calls.read_text()
    assert "net-destroy labctl-lab\n" in done and "net-undefine labctl-lab-mgmt\n" in done
    assert "default" not in done.replace("net-list", "") and "labctl-other" not in done


def test_provider_comes_from_the_lab_file_then_env_then_what_is_installed(tmp_path, monkeypatch):
    from labctl.backends.vagrant import VagrantBackend

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.delenv("LABCTL_VAGRANT_PROVIDER", raising=False)
    lab = load_lab()
    assert VagrantBackend(lab, tmp_path).provider == "virtualbox"  # nothing installed: the user's default
    (bin_dir / "virsh").write_text("#!/bin/sh\n")
    (bin_dir / "virsh").chmod(0o755)
    assert VagrantBackend(lab, tmp_path).provider == "libvirt"
    (bin_dir / "VBoxManage").write_text("#!/bin/sh\n")
    (bin_dir / "VBoxManage").chmod(0o755)
    assert VagrantBackend(lab, tmp_path).provider == "virtualbox"
    monkeypatch.setenv("LABCTL_VAGRANT_PROVIDER", "libvirt")
    assert VagrantBackend(lab, tmp_path).provider == "libvirt"
    other = tmp_path / "lab.yml"
    other.write_text(lab.source.read_text().replace("  memory: 512", "  memory: 512\n  provider: hyperv"))
    with pytest.raises(BackendError, match="vagrant provider 'hyperv': use one of virtualbox, libvirt"):
        VagrantBackend(load_lab(other), tmp_path).provider  # noqa: B018


def test_an_unwritable_state_dir_is_a_clear_error(fake, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    b = make_backend("vagrant", load_lab(), blocker / "lab")
    with pytest.raises(LabctlError, match=r"cannot create state directory .*--state-dir"):
        b.up()


# --- the forwarding guard on libvirt's bridges ----------------------------------------------------------

def test_up_guards_the_labs_libvirt_bridges_and_down_removes_the_guard(fake, backend):
    messages: list[str] = []
    assert backend.guard_status() is None, "no network, no guard: nothing to show"
    backend.up(messages.append)
    rules = fake.nft_tables["labctl-lab"]
    assert 'iifname "virbr7" oifname "virbr7"' in rules and 'iifname "virbr8" oifname "virbr8"' in rules
    assert 'iifname { "virbr7", "virbr8" } counter' in rules and 'oifname { "virbr7", "virbr8" }' in rules
    assert any("forwarding guard on virbr7, virbr8 (nft table inet labctl-lab)" in m for m in messages)
    assert backend.guard_status().startswith("nft table inet labctl-lab on virbr7, virbr8: dropped 7")
    backend.up()  # again: the same one table
    assert list(fake.nft_tables) == ["labctl-lab"]
    fake.nft_tables.clear()  # somebody flushed the ruleset: status says so
    assert backend.guard_status().startswith("missing: no nft table inet labctl-lab (labctl up puts it back")
    backend.up()
    said: list[str] = []
    backend.down(said.append)
    assert fake.nft_tables == {}
    assert said[-1] == "removed the forwarding guard (nft table inet labctl-lab)"
    assert backend.guard_status() is None


def test_a_failed_up_still_guards_what_booted_and_keeps_its_own_error(fake, backend, monkeypatch):
    fake.update(fail_up=True, networks={"labctl-lab": "virbr7"})  # the lab network came up, then it failed
    with pytest.raises(BackendError, match=r"vagrant up failed"):
        backend.up()
    assert 'iifname "virbr7"' in fake.nft_tables["labctl-lab"]
    fake.update(networks={})
    fake.nft_tables.clear()
    with pytest.raises(BackendError, match=r"vagrant up failed"):  # no network: still up's error, not ours
        backend.up()
    assert fake.nft_tables == {}


def test_an_up_that_made_no_libvirt_network_is_refused_clearly(fake, backend, monkeypatch):
    monkeypatch.setattr("labctl.backends.vagrant.libvirt_networks.bridges", lambda lab_name: [])
    with pytest.raises(BackendError, match=r"found no libvirt network labctl-lab .*forwarding guard needs"):
        backend.up()


def test_virtualbox_networks_get_no_guard(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("LABCTL_VAGRANT_PROVIDER", "virtualbox")
    b = make_backend("vagrant", load_lab(), tmp_path / "state" / "lab")
    b.guard_forwarding(lambda _m: None)
    assert fake.nft_tables == {} and b.guard_status() is None
    b.down()
    assert fake.nft_calls == [], "no nft on a VirtualBox host (macOS, Windows): down never asks for it"


def test_libvirts_preflight_wants_nft_before_vagrant_up(fake, monkeypatch):
    import shutil

    which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, **kw: None if name == "nft" else which(name, **kw))
    with pytest.raises(VagrantPreflightError, match=r"nft is missing .*apt-get install -y nftables"):
        require("libvirt", "192.168.20.0/24")


def test_cli_status_shows_the_guard(fake, tmp_path, capsys):
    from labctl.cli import main

    state = ["--state-dir", str(tmp_path / "state")]
    make_backend("vagrant", load_lab(), tmp_path / "state" / "lab").up()  # (the CLI's would check SSH too)
    main([*state, "--backend", "vagrant", "status", "--json"])
    status = json.loads(capsys.readouterr().out)
    assert status["forward_guard"].startswith("nft table inet labctl-lab on virbr7, virbr8")
    main([*state, "--backend", "vagrant", "status"])
    assert "forwarding guard: nft table inet labctl-lab on virbr7, virbr8" in capsys.readouterr().out


def test_net_info_bridge_parsing():
    text = ("Name:           labctl-va24cf4\nUUID:           40ec4403-5c54-4f57-969c-16da8bccc587\n"
            "Active:         yes\nPersistent:     yes\nAutostart:      no\nBridge:         virbr2\n\n")
    assert parse_net_info_bridge(text) == "virbr2"  # as virsh 9.0 prints it
    assert parse_net_info_bridge("Name: x\nBridge:\n") is None
