"""Programs as data: the lab file's programs: section, the built-ins, local files, placeholders, ad hoc."""
from __future__ import annotations

from pathlib import Path

import pytest

from labctl.lab import LabError, Ports, load_lab
from labctl.programs import (
    BUILTIN_NAMES,
    MAX_TIMEOUT,
    ProgramError,
    ad_hoc,
    builtin,
    find,
    parse_program,
    parse_section,
    resolve,
)

ARGS = {"server": "192.168.20.2", "port": 8080, "node": "client1", "address": "192.168.20.3"}


def test_the_lab_file_section_parses_into_programs(tmp_path):
    (tmp_path / "server.py").write_text("#!/usr/bin/env python3\n")
    lab_file = tmp_path / "lab.yml"
    lab_file.write_text("name: mine\nprograms:\n"
                        "  go-tcp:\n    server: ../bench/seed-tcpserver -port 8080\n"
                        "    client: ../bench/seed-tcpclient\n"
                        "  mine:\n    server: ./server.py --port {port}\n    client: nc {server} {port}\n"
                        "    port: 9000\n    timeout: 2.5\n    input: \"hi\\n\"\n")
    lab = load_lab(lab_file)
    assert set(lab.programs) == {"go-tcp", "mine"}
    mine = lab.programs["mine"]
    assert (mine.port, mine.timeout, mine.input) == (9000, 2.5, "hi\n")
    program = resolve(find(lab.programs, "mine"), lab.ports, lab_base=lab_file.parent)
    assert program.port == 9000 and program.timeout == 2.5
    assert program.server.argv("labctl", **ARGS) == ["labctl/programs/mine/server.py", "--port", "8080"]
    assert [f.local for f in program.server.local_files] == [(tmp_path / "server.py").resolve()]
    assert program.client.argv("labctl", **ARGS) == ["nc", "192.168.20.2", "8080"]  # nc: the node's own
    assert program.client.local_files == ()


@pytest.mark.parametrize("entry, message", [
    ({"client": "nc"}, "needs a server: command"),
    ({"server": "x", "client": "y", "colour": 1}, "unknown key 'colour'"),
    ({"server": "x {nope}", "client": "y"}, r"unknown placeholder \{nope\}"),
    ({"server": "x {port:>5}", "client": "y"}, "unknown placeholder"),
    ({"server": "{server}", "client": "y"}, "cannot be a placeholder"),
    ({"server": "x 'open", "client": "y"}, "No closing quotation"),
    ({"server": "", "client": "y"}, "expected a command line"),
    ({"server": "x", "client": "y", "port": 0}, "port must be a port number"),
    ({"server": "x", "client": "y", "port": True}, "port must be a port number"),
    ({"server": "x", "client": "y", "timeout": float("inf")}, "timeout must be a number of seconds"),
    ({"server": "x", "client": "y", "timeout": MAX_TIMEOUT + 1}, "at most 3600"),
    ({"server": "x", "client": "y", "timeout": -1}, "above 0"),
    ({"server": "x", "client": "y", "ready": "("}, "not a regular expression"),
    ({"server": "x", "client": "builtin"}, "client: builtin is not a command"),
])
def test_bad_programs_are_one_clear_line(entry, message):
    with pytest.raises(ProgramError, match=message):
        parse_program("p", entry)


def test_bad_names_and_shapes_are_refused(tmp_path):
    for bad in ("Go", "1x", "a b", "x" * 40):
        with pytest.raises(ProgramError, match="program name"):
            parse_program(bad, {"server": "x", "client": "y"})
    with pytest.raises(ProgramError, match="expected NAME"):
        parse_section(["go"])
    lab_file = tmp_path / "lab.yml"
    lab_file.write_text("name: x\nprograms:\n  go:\n    server: x {who}\n    client: y\n")
    with pytest.raises(LabError, match=r"lab file .*lab.yml: program go: server: unknown placeholder"):
        load_lab(lab_file)


def test_the_builtins_are_programs_of_the_same_kind():
    ports = Ports(tcp=8080, proto=8081, time=37)
    got = {name: resolve(find({}, name), ports) for name in BUILTIN_NAMES}
    assert {n: p.port for n, p in got.items()} == {"tcp": 8080, "udp": 8080, "proto": 8081, "time": 37}
    assert all(p.server is None and p.client is None and p.server_id == "timeserver" for p in got.values())
    with pytest.raises(ProgramError, match=r"no program named 'nope'.*known: proto, tcp, time, udp"):
        find({}, "nope")
    mine = parse_program("tcp", {"server": "nc -l 8080", "client": "nc {server} {port}"})
    assert find({"tcp": mine}, "tcp") is mine  # the lab file's program of that name replaces it


def test_which_words_are_local_files(tmp_path):
    (tmp_path / "client.py").write_text("")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srv").write_text("")
    spec = parse_program("p", {"server": "bin/srv -config /etc/hosts -data client.py",
                               "client": "python3 client.py {server} /dev/null missing.txt"})
    program = resolve(spec, Ports(), lab_base=tmp_path)
    assert program.server.argv("d", **ARGS) == ["d/programs/p/srv", "-config", "/etc/hosts", "-data",
                                                "d/programs/p/client.py"]
    assert program.client.argv("d", **ARGS) == ["python3", "d/programs/p/client.py", "192.168.20.2",
                                                "/dev/null", "missing.txt"]
    absolute = parse_program("q", {"server": "/bin/sh -c true", "client": f"{tmp_path}/client.py"})
    resolved = resolve(absolute, Ports(), lab_base=Path("/nonexistent"))
    assert resolved.server.argv("d", **ARGS)[0] == "/bin/sh"      # the system's own: not copied
    assert resolved.client.argv("d", **ARGS)[0] == "d/programs/q/client.py"


def test_a_missing_local_file_names_itself(tmp_path):
    spec = parse_program("p", {"server": "./server.py", "client": "nc"})
    with pytest.raises(ProgramError, match=r"program p: server: \./server\.py not found in"):
        resolve(spec, Ports(), lab_base=tmp_path)
    spec = parse_program("p", {"server": "builtin", "client": "nc", "files": ["helper.py"]})
    with pytest.raises(ProgramError, match=r"files: .*helper\.py not found"):
        resolve(spec, Ports(), lab_base=tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x").write_text("1")
    (tmp_path / "b" / "x").write_text("2")
    spec = parse_program("p", {"server": "a/x", "client": "b/x"})
    with pytest.raises(ProgramError, match="two different files are both named x"):
        resolve(spec, Ports(), lab_base=tmp_path)


def test_placeholders_and_braces():
    spec = parse_program("p", {"server": "builtin",
                               "client": "sh -c 'echo {{x}} {node}@{address} to {server}'"})
    program = resolve(spec, Ports(), lab_base=Path("/nonexistent"))
    assert program.client.argv("d", **ARGS) == ["sh", "-c", "echo {x} client1@192.168.20.3 to 192.168.20.2"]


def test_ad_hoc_commands_replace_a_side(tmp_path):
    (tmp_path / "client.py").write_text("")
    ours = ad_hoc(builtin("tcp"), client="./client.py {server}", cwd=tmp_path)
    assert ours.builtin_server and ours.builtin is None and ours.client_base == tmp_path
    program = resolve(ours, Ports(), lab_base=Path("/elsewhere"))  # --client files: the current folder's
    assert program.client.argv("d", **ARGS)[0] == "d/programs/tcp/client.py"
    theirs = ad_hoc(builtin("udp"), server="nc -u -l {port}", cwd=tmp_path)
    assert theirs.builtin == "udp" and not theirs.builtin_server  # our udp client against their server
    plain = ad_hoc(None, client="nc {server} {port}", port=9000)
    assert plain.name == "adhoc" and plain.builtin_server and plain.port == 9000
    assert ad_hoc(None).builtin == "tcp"
    with pytest.raises(ProgramError, match="port must be"):
        ad_hoc(None, port=70000)
