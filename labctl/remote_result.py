"""What the remote layer hands back: one command's :class:`Result`, a fan-out's per-host results and
failures (:class:`GroupResult`), and its errors, each one line (:func:`reason` without the host)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

from labctl.errors import LabctlError

T = TypeVar("T")


class RemoteError(LabctlError):
    """A host could not be reached, refused us, or a remote operation failed."""


class HostKeyError(RemoteError):
    """The host's key is not the pinned one (or none is pinned): refuse, never auto-accept."""


@dataclass(frozen=True)
class Result:
    """What one remote command did."""

    host: str
    command: str
    exited: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exited == 0


class CommandFailed(RemoteError):
    """A remote command exited non-zero (with ``check=True``)."""

    def __init__(self, result: Result) -> None:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        detail = f": {' / '.join(tail)}" if tail else ""
        super().__init__(f"{result.host}: `{result.command}` exited {result.exited}{detail}")
        self.result = result


@dataclass
class GroupResult(Generic[T]):
    """Per-host results and per-host failures of one fanned-out call."""

    results: dict[str, T] = field(default_factory=dict)
    failures: dict[str, BaseException] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures

    def __getitem__(self, name: str) -> T:
        if name in self.failures:
            raise self.failures[name]
        return self.results[name]


def reason(exc: BaseException) -> str:
    """A host's failure as one line, without the host-name prefix the remote layer puts first
    (for tables that show the host in a column of its own)."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, RemoteError) and ": " in text:
        head, rest = text.split(": ", 1)
        if " " not in head.strip() or head.endswith(")"):
            return rest
    return text
