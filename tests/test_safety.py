"""The route check before any connection: ``ip route get`` where ``ip`` exists, the portable source
address check where it does not (real sockets and the real routing table; PATH without ``ip``)."""
from __future__ import annotations

import shutil

import pytest

from labctl.inventory import Host, LabNotUp
from labctl.safety import check_host, have_ip, source_address, unsafe_hosts
from tests.requires import require_tool


@pytest.fixture
def no_ip(tmp_path, monkeypatch):
    """PATH with no ``ip`` on it (as on macOS and Windows)."""
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert shutil.which("ip") is None and not have_ip()


def test_the_source_address_comes_from_the_routing_table_and_nothing_is_sent():
    assert source_address("127.0.0.1") == "127.0.0.1"
    assert source_address("127.3.4.5") == "127.0.0.1"  # 127/8 routes by lo, from 127.0.0.1


def test_without_ip_the_route_source_must_be_the_hosts_lab_address(no_ip):
    good = Host("server", "server", "127.0.0.1", interface="lo", host_address="127.0.0.1")
    check_host(good)
    wrong = Host("server", "server", "127.0.0.1", interface="lo", host_address="192.168.70.1")
    with pytest.raises(LabNotUp, match=r"127\.0\.0\.1 would be sent from 127\.0\.0\.1, not from this "
                                       r"machine's lab address 192\.168\.70\.1"):
        check_host(wrong)


def test_without_ip_an_interface_alone_cannot_be_checked_and_is_refused(no_ip):
    host = Host("client1", "client", "127.0.0.1", interface="lo")
    with pytest.raises(LabNotUp, match="'ip' is missing here and the inventory gives no host_address"):
        check_host(host)


def test_with_neither_interface_nor_host_address_no_check_applies():
    assert unsafe_hosts([Host("server", "server", "127.0.0.1")]) == {}


def test_with_ip_the_route_must_leave_by_the_interface():
    require_tool("ip", "apt-get install iproute2")
    hosts = [Host("server", "server", "127.0.0.1", interface="lo", host_address="192.168.70.1"),
             Host("client1", "client", "127.0.0.1", port=2222, interface="hcard-br")]
    refused = unsafe_hosts(hosts)
    assert list(refused) == ["client1"]  # with `ip`, the interface decides (the source is not asked)
    assert "routes via lo, not the lab's bridge hcard-br" in str(refused["client1"])
