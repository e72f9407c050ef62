"""Every command, every option, bad values: one clear line, never a traceback (the real parser, the real CLI).

The sweep walks ``labctl.cli.build_parser()`` itself, so a new option is swept without touching this file.
Each case runs ``labctl.cli.main(argv)`` in-process against a lab file of its own (lab ``hhard``, which is
never up) and a state directory under the test's tmp dir: commands that need a running lab must say
"lab is not up" in one line; ``up`` itself is refused before anything is built (a state directory under
/tmp cannot serve namespace nodes), so the sweep builds nothing. Output paths are relative to a scratch
working directory, or special files (/dev/full, /proc/...), never a real file of this machine.
"""
from __future__ import annotations

import argparse
import signal
from pathlib import Path

import pytest

from labctl.cli import build_parser, main
from tests.pcapwrite import tcp_daytime, write_pcap
from tests.said import stderr_lines

NUMBERS = ["0", "-1", "-99999999999999999999", "9" * 400, "1e999", "inf", "-inf", "nan", "0x10", "1.5",
           "abc", "", " ", "\t"]
SPECIAL = ["$(touch pwned)", "`touch pwned`", "'; touch pwned #", "☃ ünï", "--", "-x", "a" * 5000,
           "../../x", "%s%n", "{}", "\\"]
PATHS = ["", " ", "/dev/full", "/dev/null", "/proc/labctl-sweep/x", "file/below", "dir", "☃.pcap",
         "a" * 300, "../x"]
TIMEOUT = 30  # seconds per case: a case that hangs fails instead of stopping the sweep


class Hung(Exception):
    pass


def _values(action: argparse.Action) -> list[str]:
    if getattr(action.type, "__name__", "") == "path_arg":
        return PATHS
    return NUMBERS + SPECIAL


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("the parser has no commands")


def _positionals(name: str, sub: argparse.ArgumentParser, pcap: Path) -> list[str]:
    """Good values for a command's required positionals, so that each option's bad value is what's tested."""
    good = {"node": ["server"], "command": ["true"], "protocol": ["tcp"], "file": [str(pcap)]}
    out: list[str] = []
    for action in sub._actions:
        if not action.option_strings and action.required:
            out += good[action.dest]
    return out


def _cases(pcap: Path) -> list[tuple[str, list[str]]]:
    parser = build_parser()
    cases: list[tuple[str, list[str]]] = []
    for action in parser._actions:  # global options, with the commands that need no lab and one that does
        if not action.option_strings or isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        values = [*action.choices, "", "nope"] if action.choices else _values(action)
        for value in values:
            for command in ("status", "down", "clean"):
                cases.append((f"{action.option_strings[-1]}={value!r} {command}",
                              [action.option_strings[-1], value, command]))
    for name, sub in _commands(parser).items():
        base = _positionals(name, sub, pcap)
        cases.append((name, [name, *base]))
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if not action.option_strings:  # a positional: bad values in its place
                values = list(action.choices or []) + _values(action) if action.dest != "command" \
                    else SPECIAL
                for value in values:
                    argv = [value if a == _positionals(name, sub, pcap)[0] else a for a in base] \
                        if action.dest in ("node", "protocol", "file") else [*base[:-1], value]
                    cases.append((f"{name} <{action.dest}>={value!r}", [name, *argv]))
                continue
            opt = action.option_strings[-1]
            if action.nargs == 0:  # a flag
                cases.append((f"{name} {opt}", [name, opt, *base]))
                continue
            values = [*action.choices, "", "nope"] if action.choices else _values(action)
            for value in values:
                cases.append((f"{name} {opt}={value!r}", [name, *base, opt, value]))
    return cases


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    work = tmp_path / "w" / "o" / "r" / "k"  # relative output paths (and ../../x) stay in tmp_path
    work.mkdir(parents=True)
    (work / "file").write_text("a file, not a directory\n")
    (work / "dir").mkdir()
    monkeypatch.chdir(work)
    lab = tmp_path / "hhard.yml"
    lab.write_text("name: hhard\nsubnet: 192.168.71.0/24\nhost_address: 192.168.71.1\n"
                   "server_address: 192.168.71.2\nclients: 1\n")
    monkeypatch.delenv("LABCTL_BACKEND", raising=False)
    monkeypatch.delenv("LABCTL_DEBUG", raising=False)
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setenv("LABCTL_STATE", str(tmp_path / "state"))
    pcap = write_pcap(tmp_path / "x.pcap", tcp_daytime("10.0.0.2", 40000, "10.0.0.1", 8080, 100.0))
    return lab, tmp_path / "state", pcap, work


def _run_case(argv: list[str], capsys) -> tuple[int, str, str]:
    def hung(signum, frame):
        raise Hung(f"no answer after {TIMEOUT} s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(TIMEOUT)
    try:
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse: usage and one error line, exit 2 (or --help: 0)
            code = exc.code if isinstance(exc.code, int) else 1
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    out, err = capsys.readouterr()
    return code, out, err


def _short(text: str, n: int = 160) -> str:
    return text if len(text) <= n else f"{text[:n // 2]}...({len(text)} characters)...{text[-n // 2:]}"


def _judge(name: str, argv: list[str], code: int, out: str, err: str) -> str | None:
    """None when the case ended as a well-made tool ends, else what was wrong."""
    if "Traceback" in out + err:
        return f"traceback: {_short(out + err, 600)}"
    if code == 0 or (code == 1 and argv[-1] in ("status", "--json") and "status" in argv and out and not err):
        return None  # status of a lab that is not up: its table says so, exit 1
    lines = err.strip().splitlines()
    if code == 2 and lines and lines[0].startswith("usage:"):
        errors = [line for line in lines if ": error: " in line]
        return None if len(errors) == 1 else f"{name}: usage without one error line: {err[-400:]}"
    mine = [line for line in lines if line.startswith("labctl: ")]
    if not mine:
        return f"{name}: exit {code} without a 'labctl: ...' line: {err[-400:]!r}"
    longest = max(len(a) for a in argv)
    if len(mine[-1]) > 1000 + longest:  # it may quote the bad value, but not run on beyond it
        return f"a {len(mine[-1])}-character message"
    return None


def test_the_sweep_covers_every_command_and_option():
    cases = _cases(Path("x.pcap"))
    names = {c[0].split()[0] for c in cases}
    assert set(_commands(build_parser())) <= names | {c[0].split("=")[0] for c in cases}
    assert len(cases) > 400


BAD_INVENTORIES = {"empty.yml": b"", "binary.yml": b"\xff\xfe\x00\x81", "list.yml": b"- a\n- b\n",
                   "nohosts.yml": b"hosts: []\n", "yamlerror.yml": b"hosts: [\n",
                   "nokey.yml": b"hosts:\n- name: server\n  address: 192.168.71.2\n",
                   "huge-port.yml": b"hosts:\n- name: server\n  address: 192.168.71.2\n  port: 99999999999\n"}


@pytest.mark.parametrize("backend", ["netns", "ssh"])
def test_every_option_with_bad_values_prints_no_traceback(scratch, capsys, backend):
    """Each case through the default backend, and through ``--backend ssh`` (no inventory, or a bad one)."""
    lab, state, pcap, work = scratch
    problems = []
    cases = _cases(pcap)
    if backend == "ssh":
        for file, content in BAD_INVENTORIES.items():
            (work / file).write_bytes(content)
            cases += [(f"--inventory {file} {' '.join(c)}", ["--inventory", file, *c])
                      for c in (["status"], ["up"], ["run", "tcp"])]
    for name, argv in cases:
        full = ["--lab", str(lab), "--state-dir", str(state), "--backend", backend, *argv]  # later ones win
        try:
            code, out, err = _run_case(full, capsys)
        except Hung as exc:
            problems.append(f"{_short(name)}: {exc}")
            continue
        except BaseException as exc:  # what a user would have seen as a traceback
            capsys.readouterr()
            problems.append(f"{_short(name)}: {type(exc).__name__}: {_short(str(exc), 300)}")
            continue
        problem = _judge(name, argv, code, out, err)
        if problem:
            problems.append(f"{_short(name)}: {problem}")
    assert not (work / "pwned").exists() and not Path("/tmp/pwned").exists()
    assert not problems, f"{len(problems)} bad endings:\n" + "\n".join(problems[:60])


def test_commands_that_need_a_lab_say_it_is_not_up_in_one_line(scratch, capsys):
    lab, state, _, _ = scratch
    for argv in (["deploy"], ["run", "tcp"], ["run", "udp", "--timeout", "1"], ["capture", "--duration", "1"],
                 ["ssh", "server", "true"], ["inventory"], ["impair", "--loss", "1%"], ["status"]):
        code, out, err = _run_case(["--lab", str(lab), "--state-dir", str(state), *argv], capsys)
        said = [line for line in stderr_lines(err) if line.startswith("labctl: ")]  # beside the backend line
        if argv == ["status"]:
            assert code == 1 and out.strip() == "lab hhard (netns) is not up: labctl up brings it up"
            continue
        assert code == 1 and len(said) == 1 and "is not up" in said[0], (argv, out, err)
