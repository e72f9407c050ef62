"""labctl.links: the links: section and the impair values, parsed and validated; merging per node."""
from __future__ import annotations

import pytest

from labctl.errors import LabctlError
from labctl.lab import LabError, load_lab
from labctl.links import (
    Impairment,
    LinkError,
    LinkSettings,
    format_rate,
    parse_links,
    parse_loss,
    parse_ms,
    parse_rate,
    resolve,
    update,
)

NODES = ["server", "client1", "client2", "client3"]


@pytest.mark.parametrize("text, pct", [("30%", 30.0), (30, 30.0), ("0.5%", 0.5), ("0", 0.0), ("100 %", 100.0),
                                       (12.345, 12.35)])
def test_loss_values(text, pct):
    assert parse_loss(text) == pct


@pytest.mark.parametrize("text", ["-1%", "101", "abc", "nan", "inf%", "", "30%%", True])
def test_bad_loss_is_one_clear_error(text):
    with pytest.raises(LinkError, match=r"^loss "):
        parse_loss(text)


@pytest.mark.parametrize("text, ms", [("50ms", 50.0), (50, 50.0), ("0.2s", 200.0), ("500us", 0.5), ("0", 0.0),
                                      (" 20 ms ", 20.0)])
def test_time_values(text, ms):
    assert parse_ms(text) == ms


@pytest.mark.parametrize("text", ["-5ms", "5 min", "ms", "11s", "1e9", "nan", True])
def test_bad_times(text):
    with pytest.raises(LinkError, match="delay"):
        parse_ms(text)


@pytest.mark.parametrize("text, bits", [("1mbit", 10**6), ("500kbit", 500_000), ("2gbit", 2 * 10**9),
                                        ("64000bit", 64000), ("1.5mbit", 1_500_000), ("0", 0), ("off", 0)])
def test_rate_values(text, bits):
    assert parse_rate(text) == bits


@pytest.mark.parametrize("text, why", [("1m", "with a unit"), ("1000", "with a unit"), ("10mbps", "say bits"),
                                       ("100bit", "between"), ("-1mbit", "with a unit"), ("1tbit", "unit")])
def test_bad_rates(text, why):
    with pytest.raises(LinkError, match=why):
        parse_rate(text)


def test_format_rate():
    assert [format_rate(r) for r in (10**6, 1_500_000, 2 * 10**9, 1234)] == ["1mbit", "1500kbit", "2gbit",
                                                                           "1234bit"]


def test_all_then_node_field_by_field():
    client2 = {"loss": "30%", "delay": "50ms", "jitter": "5ms", "rate": "1mbit"}
    links = parse_links({"all": {"delay": "20ms"}, "client2": client2})
    per_node = resolve(links, NODES)
    assert per_node["server"] == Impairment(delay=20.0)
    assert per_node["client2"] == Impairment(loss=30.0, delay=50.0, jitter=5.0, rate=10**6)
    assert per_node["client2"].describe() == "loss 30% delay 50ms jitter 5ms rate 1mbit (out)"
    assert Impairment().describe() == "none"


def test_direction_both_means_two_directions():
    assert Impairment(loss=1, direction="both").directions == ("out", "in")
    assert Impairment(loss=1, direction="in").directions == ("in",)
    assert Impairment(direction="both").directions == ()  # a perfect link shapes nothing


@pytest.mark.parametrize("raw, why", [({"client2": {"los": 3}}, "unknown setting"), ("fast", "mapping"),
                                      ({"client2": "30%"}, "expected a mapping"),
                                      ({"client2": {"direction": "up"}}, "one of out, in, both")])
def test_bad_sections(raw, why):
    with pytest.raises(LinkError, match=why):
        parse_links(raw)


def test_setting_back_to_zero_and_clear():
    current = resolve(parse_links({"all": {"loss": 30, "delay": 10}}), NODES)
    after = update(current, "client1", LinkSettings(loss=0))
    assert after["client1"] == Impairment(delay=10.0) and after["client2"].loss == 30
    everyone = update(after, "all", LinkSettings(delay=0))
    assert all(imp.delay == 0 for imp in everyone.values())
    cleared = update(current, "all", LinkSettings(), clear=True)
    assert not any(imp.active for imp in cleared.values())
    with pytest.raises(LinkError, match="no node named 'client9'"):
        update(current, "client9", LinkSettings(loss=1))


def test_lab_file_links_section(tmp_path):
    path = tmp_path / "l.yml"
    path.write_text("name: t\nclients: 2\nlinks:\n  all: {delay: 20ms}\n"
                    "  client2: {loss: 30%, rate: 1mbit}\n")
    lab = load_lab(path)
    per_node = resolve(lab.links, [n.name for n in lab.nodes])
    assert per_node["client2"] == Impairment(loss=30, delay=20, rate=10**6)
    path.write_text("name: t\nclients: 2\nlinks:\n  client5: {loss: 1%}\n")
    with pytest.raises(LabctlError, match="'client5' is not a node of lab 't'"):
        load_lab(path)
    path.write_text("name: t\nlinks:\n  client1: {loss: 300%}\n")
    with pytest.raises(LabctlError, match=r"lab file .*l.yml: links: client1: loss '300%'"):
        load_lab(path)
    assert issubclass(LinkError, LabctlError) and not issubclass(LinkError, LabError)
