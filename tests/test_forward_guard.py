"""The forwarding guard's nft commands with a fake ``run`` (for real: tests/e2e/test_forward_guard_e2e.py)."""
from __future__ import annotations

import subprocess

import pytest

from labctl.backends import forward_guard
from labctl.errors import LabctlError


class FakeNft:
    """Records nft calls; tables exist once installed, until deleted; ``nft list`` shows the installed
    rules as nft does, each counter at 7 packets."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[list[str], str | None]] = []
        self.tables: dict[str, str] = {}
        self.fail = fail

    def __call__(self, argv, input=None, **kwargs) -> subprocess.CompletedProcess:
        self.calls.append((argv, input))
        rc, out = 0, ""
        if self.fail:
            rc = 1
        elif argv[1:3] == ["-f", "-"]:
            name = input.splitlines()[0].split()[-1]
            self.tables[name] = input.split("{", 1)[1].replace(" counter ", " counter packets 7 bytes 420 ")
        elif argv[1] == "list":
            rc = 0 if argv[-1] in self.tables else 1
            out = f"table inet {argv[-1]} {{{self.tables[argv[-1]]}" if rc == 0 else ""
        elif argv[1] == "delete":
            self.tables.pop(argv[-1], None)
        return subprocess.CompletedProcess(argv, rc, out, "boom" if self.fail else "")


def test_ruleset_drops_forwarding_off_the_bridge_but_not_within():
    text = forward_guard.ruleset("lab", "lab-br")
    lines = [line.strip() for line in text.splitlines()]
    assert lines[:2] == ["table inet labctl-lab", "delete table inet labctl-lab"]  # atomic replace
    assert "type filter hook forward priority filter - 10; policy accept;" in lines
    rules = [line for line in lines if line.startswith(("iifname", "oifname"))]
    assert rules[0].startswith('iifname "lab-br" oifname "lab-br"') and " accept " in rules[0]
    assert rules[1].startswith('iifname "lab-br" counter drop')
    assert rules[2].startswith('oifname "lab-br" counter drop')


def test_install_is_idempotent_and_remove_takes_exactly_that_table():
    nft = FakeNft()
    forward_guard.install("lab", "lab-br", run=nft)
    forward_guard.install("lab", "lab-br", run=nft)
    assert set(nft.tables) == {"labctl-lab"}
    assert forward_guard.present("lab", run=nft)
    assert forward_guard.counters("lab", run=nft) == {"within the lab": 7, "out of the lab": 7,
                                                      "into the lab": 7}
    assert forward_guard.describe("lab", run=nft) == (
        "nft table inet labctl-lab on lab-br: dropped 7 packet(s) routed out of the lab, 7 into it")
    assert forward_guard.remove("lab", run=nft) is True
    assert ["nft", "delete", "table", "inet", "labctl-lab"] in [argv for argv, _ in nft.calls]
    assert forward_guard.remove("lab", run=nft) is False
    assert not forward_guard.present("lab", run=nft)
    assert forward_guard.describe("lab", run=nft).startswith("missing: no nft table inet labctl-lab")


def test_several_bridges_each_keep_their_own_traffic_and_nothing_goes_between_them():
    """The vagrant backend's libvirt networks: the lab's bridge and Vagrant's management bridge."""
    text = forward_guard.ruleset("lab", "virbr1", "virbr2", "virbr1")
    rules = [line.strip() for line in text.splitlines() if line.strip().startswith(("iifname", "oifname"))]
    assert rules == ['iifname "virbr1" oifname "virbr1" counter accept comment "within the lab"',
                     'iifname "virbr2" oifname "virbr2" counter accept comment "within the lab"',
                     'iifname { "virbr1", "virbr2" } counter drop comment "out of the lab"',
                     'oifname { "virbr1", "virbr2" } counter drop comment "into the lab"']
    nft = FakeNft()
    forward_guard.install("lab", "virbr1", "virbr2", run=nft)
    assert forward_guard.counters("lab", run=nft)["within the lab"] == 14  # summed over the bridges
    assert " on virbr1, virbr2: " in forward_guard.describe("lab", run=nft)
    with pytest.raises(LabctlError, match="not a Linux interface name"):
        forward_guard.ruleset("lab", "virbr1", 'x" accept')


def test_install_failure_is_one_clear_error():
    with pytest.raises(LabctlError, match=r"could not install the forwarding guard.*boom"):
        forward_guard.install("lab", "lab-br", run=FakeNft(fail=True))


@pytest.mark.parametrize("lab, bridge", [("Lab", "lab-br"), ("x;y", "lab-br"), ("lab", 'br" accept'),
                                         ("lab", "a" * 16), ("", "br")])
def test_names_that_could_inject_nft_syntax_are_refused(lab, bridge):
    with pytest.raises(LabctlError):
        forward_guard.ruleset(lab, bridge)
