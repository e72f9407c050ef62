"""`down` of a lab that is not up says one thing; a host-key mismatch says what re-pins (real lab, CLI)."""
from __future__ import annotations

from tests.said import stderr_lines


def _said(proc) -> list[str]:
    """What a command said (stdout, then stderr), beside the one stderr line naming the backend it uses."""
    return stderr_lines(proc.stdout + proc.stderr)


def test_down_twice_says_one_thing_each_time(make_lab):
    lab = make_lab(clients=1)
    assert lab.cli("up", timeout=120).returncode == 0
    first = lab.cli("down")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip().startswith(f"lab {lab.name} down (") and "not up" not in first.stdout
    second = lab.cli("down")
    assert second.returncode == 0, second.stderr
    said = _said(second)
    assert said == [f"lab {lab.name} is not up: nothing to take down"], said
    status = lab.cli("status")
    assert status.returncode == 1
    assert _said(status) == [
        f"lab {lab.name} (netns) is not up: labctl up brings it up"]  # not one "lab is not up" per node
    clean = lab.cli("clean")
    assert _said(clean) == [f"lab {lab.name}: nothing to clean"]
    assert lab.leftovers() == []


def test_a_host_key_mismatch_names_what_re_pins_and_that_works(make_lab):
    lab = make_lab(clients=1)
    assert lab.cli("up", timeout=120).returncode == 0
    pinned = lab.state_dir / "nodes" / "server" / "ssh_host_ed25519_key.pub"  # what labctl pins
    pinned.write_text((lab.state_dir / "nodes" / "client1" / "ssh_host_ed25519_key.pub").read_text())
    again = lab.cli("up", timeout=120)
    assert again.returncode == 1 and "does not match the pinned key" in again.stderr, again.stderr
    assert "run labctl up to re-pin" not in again.stderr  # `up` fails the same way: it does not re-pin
    assert "labctl down, then labctl up" in again.stderr
    assert lab.cli("down").returncode == 0  # what the message says works
    assert lab.cli("up", timeout=120).returncode == 0
    ssh = lab.cli("ssh", "server", "hostname")
    assert ssh.returncode == 0 and ssh.stdout.strip() == "server", ssh.stderr
    assert lab.cli("down").returncode == 0
