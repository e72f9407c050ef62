"""State directories through the real CLI and the real namespace lab: the unusable and the unsafe ones
are refused with one line before anything is built; a planted symlink is replaced, never written through."""
from __future__ import annotations

import os
import subprocess

from tests.e2e.conftest import leftovers


def _one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("labctl: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_a_state_dir_under_tmp_is_refused_before_anything_is_built(make_lab, tmp_path):
    lab = make_lab(clients=1)
    lab.state_root = tmp_path / "state"  # /tmp/pytest-of-...: every node hides it behind its own /tmp
    proc = lab.cli("up")
    _one_line_error(proc, "under /tmp", "--state-dir")
    assert "log" not in proc.stderr  # it used to blame a missing sshd log file
    assert leftovers(lab.name, lab.state_dir) == []


def test_labctl_state_under_tmp_is_refused_too(make_lab, tmp_path):
    lab = make_lab(clients=1)
    env = {**os.environ, "LABCTL_STATE": str(tmp_path / "state")}
    argv = lab.cli_argv("up")
    i = argv.index("--state-dir")
    del argv[i:i + 2]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    _one_line_error(proc, "under /tmp", "LABCTL_STATE")
    assert leftovers(lab.name, tmp_path / "state" / lab.name) == []


def test_a_foreign_owned_state_dir_is_refused_and_nothing_is_built(make_lab):
    lab = make_lab(clients=1)
    lab.state_dir.mkdir(mode=0o700, parents=True)
    try:
        os.chown(lab.state_dir, 65534, 65534)
        _one_line_error(lab.cli("up"), "belongs to uid 65534")
        assert not any(p.startswith(("netns", "link")) for p in leftovers(lab.name, lab.state_dir))
        os.chown(lab.state_dir, 0, 0)
        os.chmod(lab.state_dir, 0o777)
        _one_line_error(lab.cli("up"), "writable by group or others")
    finally:
        os.rmdir(lab.state_dir)


def test_a_planted_symlink_in_the_state_dir_is_replaced_not_written_through(make_lab, tmp_path):
    lab = make_lab(clients=1)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    lab.state_dir.mkdir(mode=0o700, parents=True)
    for name in ("id_ed25519.pub", "authorized_keys", "known_hosts"):
        (lab.state_dir / name).symlink_to(victim)
    up = lab.cli("up", timeout=120)
    assert up.returncode == 0, up.stderr
    assert victim.read_text() == "precious\n"
    for name in ("id_ed25519.pub", "authorized_keys", "known_hosts"):
        assert not (lab.state_dir / name).is_symlink()
    ssh = lab.cli("ssh", "client1", "hostname", timeout=60)  # the real sshd took the rewritten files
    assert ssh.returncode == 0 and ssh.stdout.strip() == "client1", ssh.stderr
    assert lab.cli("down").returncode == 0
