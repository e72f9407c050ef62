"""deploy's pure parts: the probe it sends, how it reads the answer, when a node counts as current."""
from __future__ import annotations

import subprocess

from labctl.deploy import (
    SERVER_PROGRAM,
    file_hash,
    parse_probe,
    probe_script,
    server_argv,
)
from labctl.inventory import Host
from labctl.lab import Ports

SERVER = Host("server", "server", "192.168.20.2")
CLIENT = Host("client1", "client", "192.168.20.3")


def test_server_argv_binds_the_lab_address_with_the_lab_ports():
    argv = server_argv("192.168.20.2", Ports(tcp=8080, proto=8081, time=37))
    assert argv[:2] == ["python3", "labctl/timeserver.py"]
    assert argv[argv.index("--bind") + 1] == "192.168.20.2"
    flags = ("--port", "--proto-port", "--time-port")
    assert [argv[argv.index(f) + 1] for f in flags] == ["8080", "8081", "37"]


def test_probe_script_runs_in_a_real_shell(tmp_path):
    d = tmp_path / "my dir"  # spaces survive the quoting
    script = probe_script(SERVER, [SERVER_PROGRAM], str(d))
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout
    assert d.is_dir() and out.strip() == ""  # nothing there yet: no hash, no server
    (d / SERVER_PROGRAM).write_text("x")
    proc = subprocess.Popen(["sleep", "30"])
    try:
        (d / "timeserver.pid").write_text(f"{proc.pid}\n")
        (d / "timeserver.cmd").write_text("python3 labctl/timeserver.py --bind x\n")
        out = subprocess.run(["sh", "-c", probe_script(SERVER, [SERVER_PROGRAM], str(d))],
                             capture_output=True, text=True, check=True).stdout
        state = parse_probe(out)
        assert state.hashes[SERVER_PROGRAM] == file_hash(d / SERVER_PROGRAM)
        # a recorded PID that is not our server (here: `sleep`) does not count as running
        assert state.server_pid is None
    finally:
        proc.kill()
        proc.wait()


def test_the_server_node_gets_every_file_the_server_imports():
    from labctl.deploy import SERVER_FILES, programs_for

    files = programs_for(SERVER)
    assert set(files) == set(SERVER_FILES) and all(p.is_file() for p in files.values())
    imported = {line.split()[1] + ".py" for p in files.values() for line in p.read_text().splitlines()
                if line.startswith("from timeserver_")}
    assert imported <= set(files)  # nothing the server imports is left behind
