"""One line, never a traceback: analyse's output paths, and Ctrl-C (a real SIGINT) while labctl loads."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pcapwrite import tcp_daytime, write_pcap

ROOT = Path(__file__).resolve().parents[1]


def _labctl(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "labctl.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60, **kw)


def _one_line(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """One ``labctl: ...`` line, or argparse's usage and its one ``error:`` line (exit 2)."""
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    if proc.returncode == 2 and lines and lines[0].startswith("usage:"):
        lines = [line for line in lines if ": error: " in line]
    else:
        assert len(lines) == 1 and lines[0].startswith("labctl: "), proc.stderr
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def pcap(tmp_path) -> Path:
    return write_pcap(tmp_path / "x.pcap", tcp_daytime("10.0.0.2", 40000, "10.0.0.1", 8080, 100.0))


def test_html_into_a_directory_or_under_a_file_is_one_line(pcap, tmp_path):
    (tmp_path / "file").write_text("")
    _one_line(_labctl("analyse", str(pcap), "--html", str(tmp_path)), "--html", "is a directory")
    _one_line(_labctl("analyse", str(pcap), "--html", str(tmp_path / "file" / "r.html")), "cannot create")
    _one_line(_labctl("analyse", str(pcap), "--html", "/proc/labctl-report.html"), "/proc/labctl-report.html")


def test_html_to_a_full_disk_is_one_line(pcap):
    _one_line(_labctl("analyse", str(pcap), "--html", "/dev/full"), "cannot write /dev/full")


def test_svg_onto_a_file_or_an_unwritable_place_is_one_line(pcap, tmp_path):
    (tmp_path / "file").write_text("")
    _one_line(_labctl("analyse", str(pcap), "--svg", str(tmp_path / "file")), "--svg", "not a directory")
    _one_line(_labctl("analyse", str(pcap), "--svg", "/proc/labctl-ladders"), "/proc/labctl-ladders")
    _one_line(_labctl("analyse", str(pcap), "--svg", ""), "--svg", "needs a path")


def test_bad_counts_are_one_line(pcap):
    _one_line(_labctl("analyse", str(pcap), "--detail", "-1"), "--detail must be 0 or more")
    _one_line(_labctl("analyse", str(pcap), "--json", "--jobs", "0"), "--jobs must be 1 to 64")


@pytest.mark.parametrize("marker", ["labctl", "labctl.__main__", "labctl.errors", "labctl.backends",
                                    "labctl.cli", "labctl.lab", "labctl.inventory", "labctl.cli.types"])
def test_ctrl_c_while_labctl_loads_is_one_line(marker):
    """A real SIGINT while labctl's modules load: ``-X importtime`` says (on stderr) when each import
    finished, so the signal lands just after ``marker`` loaded, inside labctl's own start-up."""
    argv = [sys.executable, "-X", "importtime", str(ROOT / "labctl.py"), "analyse", "--help"]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.startswith("import time:") and line.rstrip().split("|")[-1].strip() == marker:
            os.kill(proc.pid, signal.SIGINT)
            break
    else:
        pytest.fail(f"{marker} never loaded: {''.join(seen)[-500:]}")
    _, rest = proc.communicate(timeout=30)
    err = [line for line in rest.splitlines() if not line.startswith("import time:")]
    assert "Traceback" not in rest, rest
    assert proc.returncode in (130, 0), (proc.returncode, err)  # 0: it was done before the signal came
    if proc.returncode == 130:
        assert err == ["labctl: interrupted"], err
