"""The one safe writer of state directories: 0700, ours only, never through a symlink."""
from __future__ import annotations

import os
import stat

import pytest

from labctl.statefiles import StateDirError, check_outside_node_mounts, open_append, secure_dir, write_file
from tests.requires import require_root


def test_a_new_state_dir_and_its_missing_parents_are_0700(tmp_path):
    d = secure_dir(tmp_path / "a" / "b")
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "a").st_mode) == 0o700


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o777])
def test_a_group_or_other_writable_state_dir_is_refused(tmp_path, mode):
    d = tmp_path / "lab"
    d.mkdir()
    os.chmod(d, mode)
    with pytest.raises(StateDirError, match=r"writable by group or others .*chmod 700"):
        write_file(d / "known_hosts", "x")
    assert not (d / "known_hosts").exists()


def test_a_foreign_owned_state_dir_is_refused(tmp_path):
    require_root()
    d = tmp_path / "lab"
    d.mkdir(mode=0o700)
    os.chown(d, 65534, 65534)
    with pytest.raises(StateDirError, match=r"belongs to uid 65534, not to you"):
        secure_dir(d)


def test_a_state_dir_in_a_dir_others_may_change_is_refused(tmp_path):
    parent = tmp_path / "shared"
    parent.mkdir()
    os.chmod(parent, 0o777)  # not sticky: anyone could rename the lab's directory away and plant one
    with pytest.raises(StateDirError, match=r"which another user may change"):
        secure_dir(parent / "lab")


def test_a_state_dir_that_is_a_symlink_is_refused(tmp_path):
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "lab").symlink_to(tmp_path / "real")
    with pytest.raises(StateDirError, match=r"is a symlink"):
        secure_dir(tmp_path / "lab")


@pytest.mark.parametrize("name", ["id_ed25519", "id_ed25519.pub", "authorized_keys", "known_hosts",
                                  "manifest.json"])
def test_writing_replaces_a_planted_symlink_and_never_touches_its_target(tmp_path, name):
    d = secure_dir(tmp_path / "lab")
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (d / name).symlink_to(victim)
    write_file(d / name, "labctl's\n", 0o600)
    assert victim.read_text() == "precious\n"
    assert not (d / name).is_symlink()
    assert (d / name).read_text() == "labctl's\n"
    assert stat.S_IMODE(os.lstat(d / name).st_mode) == 0o600
    assert sorted(p.name for p in d.iterdir()) == [name]  # no temporary file left


def test_a_written_file_has_its_mode_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        write_file(tmp_path / "lab" / "known_hosts", "k\n", 0o644)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "lab" / "known_hosts").st_mode) == 0o644


def test_a_log_is_never_opened_through_a_symlink(tmp_path):
    d = secure_dir(tmp_path / "lab")
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (d / "delayer.log").symlink_to(victim)
    with pytest.raises(StateDirError, match=r"a symlink: labctl does not follow it"):
        open_append(d / "delayer.log")
    assert victim.read_text() == "precious\n"
    with open_append(d / "dockerd.log") as f:
        f.write(b"one\n")
    assert (d / "dockerd.log").read_bytes() == b"one\n"


@pytest.mark.parametrize("path", ["/tmp/labctl", "/tmp", "/root/labstate", "/tmp/../tmp/x"])
def test_a_state_dir_the_nodes_cannot_see_is_refused(path):
    with pytest.raises(StateDirError, match=r"under /(tmp|root), which every netns node replaces"):
        check_outside_node_mounts(path)


@pytest.mark.parametrize("path", ["/run/labctl", "/var/tmp/labctl", "/tmpfoo/x", "/rootless"])
def test_other_state_dirs_are_fine_for_the_nodes(path):
    check_outside_node_mounts(path)
