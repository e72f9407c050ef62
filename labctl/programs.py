"""Programs: what runs on the server node and on every client node, as data.

A program is a server command and a client command (any language), from the lab file's ``programs:``
section, from the command line (``labctl run --server CMD --client CMD``), or built in: ``tcp``,
``udp``, ``proto`` and ``time`` are labctl's own time server with its client speaking that protocol.

    programs:
      go-tcp:
        server: ../shared/bench/seed-tcpserver -port 8080
        client: ../shared/bench/seed-tcpclient
      mine:
        server: ./server.py --port {port}
        client: ./client.py {server} {port}
        port: 9000            # what {port} is, where the server must listen (default: ports.tcp)
        timeout: 5            # seconds a client may run from the start instant (default 5)

A command is split like a shell would (quotes) but never run by one: each word is one argument.
Placeholders in a word: ``{server}`` the server's lab address, ``{port}``, ``{node}`` the node's name,
``{address}`` the node's lab address (``{{``/``}}`` for braces). A word names a local file that labctl
copies to the node when it is the first word and exists relative to the lab file's folder (or is an
absolute path outside the system's own directories), or a later word that exists there as a file
(``python3 server.py``); anything else is the node's own (``nc``, ``python3``, ``/bin/sh``).

This module is data only: it parses and checks, and :func:`resolve` turns a spec into a
:class:`Program` with its local files and the remote paths they get. Nothing here touches a node.
"""
from __future__ import annotations

import math
import re
import shlex
import string
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from labctl.errors import LabctlError

BUILTIN_NAMES = ("tcp", "udp", "proto", "time")
BUILTIN_SERVER = "builtin"        # `server: builtin` in the lab file: labctl's time server
PLACEHOLDERS = ("server", "port", "node", "address")
KEYS = ("server", "client", "port", "timeout", "ready", "ready_timeout", "input", "files", "startup")
DEFAULT_TIMEOUT = 5.0             # s a client may run from the instant (the seed's UDP client never ends)
MAX_TIMEOUT = 3600.0              # every timeout is bounded
DEFAULT_READY_TIMEOUT = 15.0      # s for a server to listen after it was started (a Python start in a
#                                   VM under QEMU without KVM on a busy machine took 5 s: the VM test)
MAX_READY_TIMEOUT = 120.0
MAX_INPUT = 65536                 # bytes of `input:` for a client's stdin
PROGRAMS_DIR = "programs"         # on a node, under labctl's folder (deploy.REMOTE_DIR)
SYSTEM_DIRS = ("/usr/", "/bin/", "/sbin/", "/lib", "/etc/", "/proc/", "/sys/", "/dev/", "/run/")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_FILE_NAME_RE = re.compile(r"^[A-Za-z0-9._+@%=,-][A-Za-z0-9._+@%=, -]*$")


class ProgramError(LabctlError, ValueError):
    """A program is malformed, unknown, or names a local file that is not there."""


@dataclass(frozen=True)
class ProgramSpec:
    """A program as written: command templates and settings; files not looked at yet."""

    name: str
    server: str                    # command template, or BUILTIN_SERVER
    client: str                    # command template ('' for a built-in client)
    port: int | None = None        # None: the lab's tcp port (8080)
    timeout: float | None = None   # None: DEFAULT_TIMEOUT (built-in: from the client's own timeout)
    ready: str | None = None       # a regex the server's log must show; default: a listening socket
    ready_timeout: float = DEFAULT_READY_TIMEOUT
    input: str | None = None       # text for each client's stdin (e.g. for nc -u)
    files: tuple[str, ...] = ()    # more local files to copy beside the server's and client's
    startup: float | None = None   # s a client needs from exec to its first network call (lead)
    builtin: str | None = None     # the built-in client's protocol (tcp, udp, proto, time), if any
    server_base: Path | None = None  # folder relative names are taken from (None: the lab file's)
    client_base: Path | None = None

    @property
    def builtin_server(self) -> bool:
        return self.server == BUILTIN_SERVER

    def describe(self, side: str) -> str:
        """The command as a user reads it."""
        if side == "server" and self.builtin_server:
            return "timeserver.py (built-in)"
        if side == "client" and self.builtin is not None:
            return f"timeclient.py {self.builtin} {{server}} (built-in)"
        return self.server if side == "server" else self.client


def builtin(protocol: str) -> ProgramSpec:
    """The built-in program ``tcp``/``udp``/``proto``/``time``: our server, our client."""
    return ProgramSpec(name=protocol, server=BUILTIN_SERVER, client="", builtin=protocol)


# --- parsing: the lab file's section, the command line ----------------------------------------------

def parse_section(value: Any) -> dict[str, ProgramSpec]:
    """The ``programs:`` section: ``NAME: {server: CMD, client: CMD, ...}`` for each program."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProgramError("programs: expected NAME: {server: CMD, client: CMD} entries, "
                           f"got {type(value).__name__}")
    return {str(name): parse_program(name, entry) for name, entry in value.items()}


def parse_program(name: Any, entry: Any) -> ProgramSpec:
    """One entry of the section, checked: names, keys, types, placeholders."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ProgramError(f"program name {name!r}: use up to 32 lowercase letters, digits, - and _, "
                           "starting with a letter")
    if not isinstance(entry, dict):
        raise ProgramError(f"program {name}: expected server: and client: commands, got {entry!r}")
    unknown = [k for k in entry if k not in KEYS]
    if unknown:
        raise ProgramError(f"program {name}: unknown key {str(unknown[0])!r} (known: {', '.join(KEYS)})")
    for key in ("server", "client"):
        if key not in entry:
            raise ProgramError(f"program {name}: needs a {key}: command")
    spec = ProgramSpec(
        name=name, server=_command(name, "server", entry["server"]),
        client=_command(name, "client", entry["client"]),
        port=_port(name, entry.get("port")),
        timeout=_seconds(name, "timeout", entry.get("timeout"), MAX_TIMEOUT),
        ready=_regex(name, entry.get("ready")),
        ready_timeout=_seconds(name, "ready_timeout", entry.get("ready_timeout"), MAX_READY_TIMEOUT)
        or DEFAULT_READY_TIMEOUT,
        input=_input(name, entry.get("input")),
        files=_files(name, entry.get("files")),
        startup=_seconds(name, "startup", entry.get("startup"), 60.0))
    if spec.client == BUILTIN_SERVER:
        raise ProgramError(f"program {name}: client: builtin is not a command (the built-in clients are "
                           "the programs tcp, udp, proto and time)")
    return spec


def _command(name: str, key: str, value: Any) -> str:
    where = f"program {name}: {key}"
    if not isinstance(value, str) or not value.strip():
        raise ProgramError(f"{where}: expected a command line, got {value!r}")
    words = split(value, where)
    for i, word in enumerate(words):
        fields = placeholders(word, where)
        if i == 0 and fields:
            raise ProgramError(f"{where}: the program itself ({word!r}) cannot be a placeholder")
    return value.strip()


def split(command: str, where: str) -> list[str]:
    """A command line as words, quotes honoured as a shell would (one clear line when it can't)."""
    try:
        words = shlex.split(command)
    except ValueError as exc:
        raise ProgramError(f"{where}: {exc} in {command!r}") from None
    if not words:
        raise ProgramError(f"{where}: empty command")
    return words


def placeholders(word: str, where: str) -> list[str]:
    """The placeholders a word uses; unknown ones and format specs are refused."""
    try:
        parsed = list(string.Formatter().parse(word))
    except ValueError as exc:
        raise ProgramError(f"{where}: {exc} in {word!r} (write {{{{ and }}}} for literal braces)") from None
    found = []
    for _text, field_name, spec, conversion in parsed:
        if field_name is None:
            continue
        if field_name not in PLACEHOLDERS or spec or conversion:
            raise ProgramError(f"{where}: unknown placeholder {{{field_name}}} in {word!r} "
                               f"(known: {', '.join('{' + p + '}' for p in PLACEHOLDERS)})")
        found.append(field_name)
    return found


def _port(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ProgramError(f"program {name}: port must be a port number 1..65535, got {value!r}")
    return value


def _seconds(name: str, key: str, value: Any, maximum: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 < value <= maximum:
        raise ProgramError(f"program {name}: {key} must be a number of seconds above 0 and at most "
                           f"{maximum:g}, got {value!r}")
    return float(value)


def _regex(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ProgramError(f"program {name}: ready must be a regular expression, got {value!r}")
    try:
        re.compile(value)
    except re.error as exc:
        raise ProgramError(f"program {name}: ready {value!r} is not a regular expression: {exc}") from None
    return value


def _input(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value.encode()) > MAX_INPUT:
        raise ProgramError(f"program {name}: input must be text of at most {MAX_INPUT} bytes")
    return value


def _files(name: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ProgramError(f"program {name}: files must be a list of local files, got {value!r}")
    return tuple(value)


def find(programs: Mapping[str, ProgramSpec], name: str) -> ProgramSpec:
    """The program called ``name``: the lab file's first, then the built-ins."""
    if name in programs:
        return programs[name]
    if name in BUILTIN_NAMES:
        return builtin(name)
    known = sorted(set(programs) | set(BUILTIN_NAMES))
    raise ProgramError(f"no program named {name!r} (known: {', '.join(known)}; define yours under "
                       "programs: in the lab file, or use --server/--client)")


def ad_hoc(base: ProgramSpec | None, *, server: str | None = None, client: str | None = None,
           port: int | None = None, cwd: Path | None = None) -> ProgramSpec:
    """``base`` with the command line's ``--server``/``--client``/``--port`` (their files relative to
    ``cwd``). Without a base: program ``adhoc``, the built-in server and tcp client unless replaced."""
    if base is None:  # the built-in server and the built-in tcp client, unless replaced
        base = ProgramSpec(name="adhoc", server=BUILTIN_SERVER, client="", builtin="tcp")
    changes: dict[str, Any] = {}
    cwd = cwd or Path.cwd()
    if server is not None:
        changes.update(server=_command("(command line)", "--server", server), server_base=cwd, ready=None)
    if client is not None:
        changes.update(client=_command("(command line)", "--client", client), client_base=cwd, builtin=None,
                       input=None, startup=None)
    if port is not None:
        changes["port"] = _port("(command line)", port)
    return replace(base, **changes) if changes else base


# --- resolution: which local files, where they go ----------------------------------------------------

@dataclass(frozen=True)
class LocalFile:
    """A local file and where it goes on a node (relative to labctl's folder there)."""

    local: Path
    remote: str


@dataclass(frozen=True)
class Command:
    """One side of a program, ready to be formatted for a node: words and the files they name."""

    words: tuple[str, ...]
    files: tuple[tuple[int, LocalFile], ...] = ()   # (index of the word, the file it names)

    @property
    def local_files(self) -> tuple[LocalFile, ...]:
        return tuple(f for _, f in self.files)

    def argv(self, remote_dir: str, *, server: str, port: int, node: str, address: str) -> list[str]:
        """The command on a node: files at their remote paths, placeholders filled in."""
        values = {"server": server, "port": port, "node": node, "address": address}
        named = dict(self.files)
        return [f"{remote_dir}/{named[i].remote}" if i in named else w.format(**values)
                for i, w in enumerate(self.words)]


@dataclass(frozen=True)
class Program:
    """A resolved program: what each node gets and runs."""

    spec: ProgramSpec
    port: int
    server: Command | None                 # None: the built-in server (deploy knows its command)
    client: Command | None                 # None: the built-in client
    extra: tuple[LocalFile, ...] = field(default=())

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def server_id(self) -> str:
        """The name its server is managed under on the node (the built-ins share one server)."""
        return "timeserver" if self.server is None else self.spec.name

    @property
    def timeout(self) -> float:
        return self.spec.timeout or DEFAULT_TIMEOUT


def resolve(spec: ProgramSpec, ports: Any, *, lab_base: Path | None = None) -> Program:
    """Find the local files of ``spec`` (relative ones in its base folder) and give each a remote path.

    ``ports`` is the lab's :class:`~labctl.lab.Ports`: ``{port}`` defaults to ``ports.tcp``; the
    built-in clients use the port of their protocol.
    """
    lab_base = lab_base or Path.cwd()
    remote_dir = f"{PROGRAMS_DIR}/{spec.name}"
    seen: dict[str, Path] = {}

    def place(path: Path) -> LocalFile:
        name = path.name
        if not _FILE_NAME_RE.match(name):
            raise ProgramError(f"program {spec.name}: {path}: use a file name of letters, digits, spaces "
                               "and ._+-@%=, only")
        if name in seen and seen[name] != path:
            raise ProgramError(f"program {spec.name}: two different files are both named {name} "
                               f"({seen[name]} and {path}); rename one")
        seen[name] = path
        return LocalFile(path, f"{remote_dir}/{name}")

    def side(template: str, base: Path, where: str) -> Command:
        words = split(template, where)
        files = []
        for i, word in enumerate(words):
            path = local_file(word, base, first=i == 0, where=where)
            if path is not None:
                files.append((i, place(path)))
        return Command(tuple(words), tuple(files))

    server = None if spec.builtin_server else side(spec.server, spec.server_base or lab_base,
                                                    f"program {spec.name}: server")
    client = None if spec.builtin is not None else side(spec.client, spec.client_base or lab_base,
                                                         f"program {spec.name}: client")
    extra = []
    for name in spec.files:
        path = (lab_base / name).expanduser()
        if not path.is_file():
            raise ProgramError(f"program {spec.name}: files: {path} not found")
        extra.append(place(path.resolve()))
    port = spec.port or builtin_port(spec.builtin or "tcp", ports)
    return Program(spec, port, server, client, tuple(extra))


def builtin_port(protocol: str, ports: Any) -> int:
    """The lab port of a built-in protocol (tcp and udp share one)."""
    return {"tcp": ports.tcp, "udp": ports.tcp, "proto": ports.proto, "time": ports.time}[protocol]


def local_file(word: str, base: Path, *, first: bool, where: str) -> Path | None:
    """The local file ``word`` names, or None when it is the node's (a command, an argument)."""
    if word.startswith("-") or "{" in word or "}" in word or "\0" in word:
        return None
    path = Path(word).expanduser()
    if path.is_absolute():
        if not first or any(str(path).startswith(d) for d in SYSTEM_DIRS):
            return None  # /bin/sh, /usr/bin/python3, /dev/null: the node's own
        if not path.is_file():
            raise ProgramError(f"{where}: {path} not found (an absolute path is a file here, "
                               "copied to the node)")
        return path.resolve()
    candidate = base / path
    if candidate.is_file():
        return candidate.resolve()
    if first and "/" in word:
        raise ProgramError(f"{where}: {word} not found in {base} (relative paths are taken from the "
                           "lab file's folder; the command line's from the current folder)")
    return None
