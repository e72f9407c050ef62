"""The reports of the example captures, byte for byte as they were (tests/golden/).

The files were written by the analysis as it stood before its modules were restructured (issue 9), so a
change of the code's shape that changes what a user sees fails here. After a change of the reports
that is meant, write them again and review the diff:

    LABCTL_GOLDEN_UPDATE=1 .venv/bin/python -m pytest tests/test_analyse_golden.py
"""
from __future__ import annotations

import io
import os
import re
from pathlib import Path

import pytest

from labctl.analyse import analyse_file, render_terminal, summarise
from labctl.analyse.html import LISTED, render_html
from labctl.analyse.json_report import write_json

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).resolve().parent / "golden"
EXAMPLES = ["tcp-vs-udp", "tcp-vs-udp-lossy"]


def _outputs(name: str) -> dict[str, str]:
    path = f"labctl/analyse/examples/{name}.pcap"     # as 'labctl analyse' is given it, from the root
    analysis = analyse_file(path)
    json_text, terminal = io.StringIO(), io.StringIO()
    write_json(analysis, json_text)
    render_terminal(analysis, out=terminal, ladders=2)
    html = render_html(summarise(analysis, listed=LISTED))
    html = re.sub(r"Report made by labctl on [0-9: -]+ UTC", "Report made by labctl on DATE UTC", html)
    return {"json": json_text.getvalue(), "txt": terminal.getvalue(), "html": html}


@pytest.mark.parametrize("name", EXAMPLES)
def test_reports_of_the_examples_are_unchanged(name, monkeypatch):
    monkeypatch.chdir(ROOT)
    for ext, text in _outputs(name).items():
        golden = GOLDEN / f"{name}.{ext}"
        if os.environ.get("LABCTL_GOLDEN_UPDATE"):
            golden.write_text(text, encoding="utf-8")
        assert text == golden.read_text(encoding="utf-8"), f"{golden} differs"
