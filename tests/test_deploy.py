"""deploy's pure parts: what each node gets, the probe it sends, how it reads the answer."""
from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from labctl.deploy import (
    CLIENT_PROGRAM,
    LAUNCHER_FILES,
    SERVER_FILES,
    SERVER_PROGRAM,
    SERVERCTL,
    SERVERCTL_FILES,
    builtin_server_argv,
    file_hash,
    files_for,
    parse_probe,
    probe_script,
    server_ports,
    serverctl_argv,
)
from labctl.inventory import Host
from labctl.lab import Ports
from labctl.programs import builtin, parse_program, resolve

SERVER = Host("server", "server", "192.168.20.2")
CLIENT = Host("client1", "client", "192.168.20.3")


def test_builtin_server_argv_binds_the_lab_address_with_the_lab_ports():
    argv = builtin_server_argv("192.168.20.2", Ports(tcp=8080, proto=8081, time=37))
    assert argv[:2] == ["python3", "labctl/timeserver.py"]
    assert argv[argv.index("--bind") + 1] == "192.168.20.2"
    flags = ("--port", "--proto-port", "--time-port")
    assert [argv[argv.index(f) + 1] for f in flags] == ["8080", "8081", "37"]


def test_each_node_gets_the_launcher_and_its_side_of_the_program(tmp_path):
    tcp = resolve(builtin("tcp"), Ports())
    server = [f.remote for f in files_for(SERVER, tcp)]
    assert server == [*SERVERCTL_FILES, *LAUNCHER_FILES, *SERVER_FILES]
    assert [f.remote for f in files_for(CLIENT, tcp)] == [*LAUNCHER_FILES, CLIENT_PROGRAM]
    (tmp_path / "server.py").write_text("#!/usr/bin/env python3\n")
    (tmp_path / "client").write_bytes(b"\x7fELF")
    mine = resolve(parse_program("mine", {"server": "python3 server.py --port {port}",
                                          "client": "./client {server}"}), Ports(), lab_base=tmp_path)
    assert [f.remote for f in files_for(SERVER, mine)][-1] == "programs/mine/server.py"
    assert [f.remote for f in files_for(CLIENT, mine)] == [*LAUNCHER_FILES, "programs/mine/client"]


def test_the_server_node_gets_every_file_the_server_imports():
    files = {f.remote: f.local for f in files_for(SERVER, resolve(builtin("udp"), Ports()))}
    imported = {line.split()[1] + ".py" for name in SERVER_FILES
                for line in files[name].read_text().splitlines() if line.startswith("from timeserver_")}
    assert imported and imported <= set(files)  # nothing the server imports is left behind
    assert "import startat" in files[SERVERCTL].read_text() and "startat.py" in files
    assert "from listening import" in files[SERVERCTL].read_text() and "listening.py" in files


def test_serverctl_argv_waits_for_every_port_of_the_builtin_server():
    argv = serverctl_argv(resolve(builtin("tcp"), Ports(time=0)), SERVER, Ports(time=0))
    assert argv[:4] == ["python3", "-S", "labctl/serverctl.py", "--dir"] and "start" in argv
    own = argv[:argv.index("--")]
    ports = [own[i + 1] for i, w in enumerate(own) if w == "--port"]
    assert ports == ["8080/tcp", "8080/udp", "8081/tcp"]  # RFC 868 off: port 37 not waited for
    server = argv[argv.index("--") + 1:]
    assert server == builtin_server_argv(SERVER.address, Ports(time=0))
    assert argv[argv.index("--cmd") + 1] == shlex.join(server)


def test_serverctl_argv_of_a_program_fills_in_its_placeholders(tmp_path):
    (tmp_path / "srv").write_bytes(b"\x7fELF")
    spec = parse_program("go", {"server": "./srv -addr {address}:{port} -name {node}", "client": "nc",
                                "port": 9000, "ready_timeout": 2})
    program = resolve(spec, Ports(), lab_base=tmp_path)
    argv = serverctl_argv(program, SERVER, Ports())
    assert argv[argv.index("--") + 1:] == ["labctl/programs/go/srv", "-addr", "192.168.20.2:9000", "-name",
                                           "server"]
    assert argv[argv.index("--id") + 1] == "go" and argv[argv.index("--ready-timeout") + 1] == "2"
    assert server_ports(program, Ports()) == ["9000"]


def test_probe_script_runs_in_a_real_shell(tmp_path):
    d = tmp_path / "my dir"  # spaces survive the quoting
    names = [SERVER_PROGRAM, "programs/go/my server"]
    script = probe_script(SERVER, names, str(d), "go")
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout
    assert (d / "programs" / "go").is_dir() and out.strip() == ""  # nothing there: no hash, no server
    (d / SERVER_PROGRAM).write_text("x")
    (d / "programs/go/my server").write_text("y")
    (d / "servers").mkdir()
    # a process whose command line is that of serverctl's keeper for server "go"
    keeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "serverctl.py", "--dir",
                               "labctl/servers", "start", "--id", "go", "--node", "server"])
    other = subprocess.Popen(["sleep", "30"])
    try:
        (d / "servers/go.pid").write_text(f"{keeper.pid}\n")
        (d / "servers/go.cmd").write_text("labctl/programs/go/srv -port 8080\n")
        state = parse_probe(subprocess.run(["sh", "-c", probe_script(SERVER, names, str(d), "go")],
                                           capture_output=True, text=True, check=True).stdout)
        assert state.hashes == {SERVER_PROGRAM: file_hash(d / SERVER_PROGRAM),
                                "programs/go/my server": file_hash(d / "programs/go/my server")}
        assert state.server_pid == keeper.pid and state.server_cmd == "labctl/programs/go/srv -port 8080"
        # a recorded PID that is not a keeper of that server (here: `sleep`) does not count as running
        (d / "servers/go.pid").write_text(f"{other.pid}\n")
        state = parse_probe(subprocess.run(["sh", "-c", probe_script(SERVER, names, str(d), "go")],
                                           capture_output=True, text=True, check=True).stdout)
        assert state.server_pid is None
    finally:
        for p in (keeper, other):
            p.kill()
            p.wait()


def test_parse_probe_reads_hashes_of_names_with_spaces_and_the_legacy_server():
    h = "a" * 64
    state = parse_probe(f"{h}  programs/x/my client\nSERVER 12 ./srv -p 1\nLEGACY 7\n")
    assert state.hashes == {"programs/x/my client": h}
    assert (state.server_pid, state.server_cmd, state.legacy_pid) == (12, "./srv -p 1", 7)


def test_files_keep_their_mode_here(tmp_path):
    """(what deploy puts: the local mode, plus owner read/write so a later deploy can replace it)"""
    script = tmp_path / "client.py"
    script.write_text("print('hi')\n")
    script.chmod(0o644)
    program = resolve(parse_program("p", {"server": "builtin", "client": "python3 client.py"}), Ports(),
                      lab_base=tmp_path)
    local = files_for(CLIENT, program)[-1].local
    assert Path(local) == script.resolve() and (local.stat().st_mode & 0o111) == 0
