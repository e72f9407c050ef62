"""The exercise report's lossy round: its reflection sentence carries this run's own figures."""
from __future__ import annotations

import html as html_module
import re
import shutil
from pathlib import Path

import pytest

from labctl.analyse import analyse_file
from labctl.analyse.exercise_report import lossy_figures, render_report
from labctl.analyse.story import LossyRound, lossy_round
from labctl.analyse.summary import ProtoSummary, totals

EXAMPLES = Path(__file__).resolve().parents[1] / "labctl" / "analyse" / "examples"


def _result(node: str, ok: bool, total_ms: float, attempts: int = 1, timeouts: int = 0) -> dict:
    return {"node": node, "address": f"10.0.0.{node[-1]}", "ok": ok, "reply": "t" if ok else None,
            "error": None if ok else "udp 10.0.0.1:8080: timed out", "attempts": attempts,
            "timeouts": timeouts, "timings": {"total_ms": total_ms}}


def _data(udp_results: list[dict]) -> dict:
    def hour(name: str, run: dict | None) -> dict:
        return {"protocol": name.split("-")[0], "name": name, "title": name, "ok": True, "seconds": 1.0,
                "pcap": f"{name}.pcap", "run": run, "capture": None, "failures": []}

    return {"ok": True, "loss": 30.0, "lab": {}, "commands": ["labctl exercise --loss 30"], "hours": [
        hour("tcp", {"results": [_result("client1", True, 2.0), _result("client2", True, 4.0)]}),
        hour("tcp-lossy", {"results": [_result("client1", True, 212.0), _result("client2", True, 4.0)]}),
        hour("udp-lossy", {"protocol": "udp", "results": udp_results}),
    ]}


@pytest.fixture
def directory(tmp_path):
    shutil.copy(EXAMPLES / "tcp-vs-udp.pcap", tmp_path / "tcp.pcap")
    shutil.copy(EXAMPLES / "tcp-vs-udp-lossy.pcap", tmp_path / "tcp-lossy.pcap")
    shutil.copy(EXAMPLES / "tcp-vs-udp-lossy.pcap", tmp_path / "udp-lossy.pcap")
    return tmp_path


def test_the_reflection_sentence_carries_the_figures_of_its_run(directory):
    data = _data([_result("client1", True, 1.0), _result("client2", False, 3000.0, 1, 1),
                  _result("client3", True, 1.0)])
    html = render_report(data, directory)
    clean = totals(analyse_file(directory / "tcp.pcap").builder)[0]
    lossy = totals(analyse_file(directory / "tcp-lossy.pcap").builder)[0]
    extra = lossy.packets / lossy.conversations - clean.packets / clean.conversations
    per_client_ms = lossy.retransmission_ms / 2          # 2 clients in this run's TCP results
    said = re.search(r'<p class="lossy"><b>([^<]*)</b></p>', html)
    assert said is not None, html
    text = html_module.unescape(said.group(1))
    assert text.startswith("With 30 % loss, TCP needed ")
    assert f"{extra:.1f}".rstrip("0").rstrip(".") + " extra packets" in text
    assert f"{per_client_ms:.0f} ms more per client and both got the time" in text
    assert "UDP lost 1 of 3 answers and nobody noticed but the client's timeout (1 timeout)" in text
    page = html_module.unescape(html)
    assert "ms more than the clean exchange" in page          # each TCP conversation's retransmissions
    assert "client2 10.0.0.2: got NO answer" in page and "[from the run's results]" in page


def test_figures_change_with_the_run():
    lossy = ProtoSummary("tcp", conversations=3, packets=36, retransmissions=6, retransmitted=3,
                         retransmission_ms=630.0)
    clean = ProtoSummary("tcp", conversations=3, packets=30)
    udp = {"results": [_result("client1", True, 1.0, attempts=3, timeouts=2),
                       _result("client2", True, 1.0)]}
    r = lossy_round(20.0, lossy, clean, {"results": [_result("client1", True, 1.0)] * 3}, udp)
    assert (r.extra_packets, r.resent_ms_per_client, r.udp_lost, r.udp_retries) == (2.0, 210.0, 0, 2)
    assert r.sentence().startswith("With 20 % loss, TCP needed 2 extra packets and 210 ms more per client "
                                   "and all 3 got the time; UDP lost none of its 2 answers")
    r = lossy_round(20.0, lossy, None, {"results": [_result("c1", True, 1.0), _result("c2", False, 3000.0)]},
                    {"results": [_result("client1", False, 1.0, attempts=2, timeouts=2)]})
    said = r.sentence()
    assert "3 packets sent again" in said and "1 of 2 got the time" in said   # no clean hour: resent count
    assert "(1 client gave up at its own timeout while TCP was still retransmitting)" in said
    assert "UDP lost 1 of 1 answers; only the clients' own retries (1 attempt more) tried again" in said
    unknown = LossyRound(10, 1, 1, None, 1.0, 0.0, 0, 1, 1, None, 0).sentence()
    assert "TCP needed 1 packet sent again" in unknown
    assert "nobody noticed but the client's timeout." in unknown      # timeouts not known: not claimed


def test_no_lossy_hour_no_sentence(directory):
    data = _data([])
    data["hours"] = data["hours"][:1]
    assert lossy_figures(data, {"tcp": analyse_file(directory / "tcp.pcap")}) is None
    assert 'class="lossy"' not in render_report(data, directory)
