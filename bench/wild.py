"""Captures from the wild: labctl's conversation tables and retransmission counts against tshark's.

    .venv/bin/python bench/wild.py DIR [DIR ...] [-j 2] [-v] [--save FILE] [--baseline FILE]

Walks DIR for capture files (.pcap, .pcapng, .cap, .trace, .dmp, .pcap.gz ...), runs for each
``python labctl.py analyse FILE --json`` (a subprocess: its own time and memory limits, a hang or a
traceback is seen as the user would see it) and ``tshark -n -r FILE -q -z conv,tcp -z conv,udp`` with
``-Y tcp.analysis.retransmission`` (one pass; tshark's results are cached by file content under
``~/.cache/labctl-wild``), and prints:

- files: found, read by tshark, analysed by labctl, refused by labctl with one clear line (and how
  many of those tshark found conversations in), tracebacks, time-outs;
- the percentage of analysed files whose conversation table (proto, endpoints, frames, bytes, as
  tshark rounds them) equals tshark's, and of analysed files with TCP whose retransmission count
  equals tshark's;
- impossible numbers: a conversation with payload above its bytes, a negative count, overhead outside
  0-100 %, the sides' payloads not adding up (and, apart, negative durations: a capture whose clock
  runs backwards, reported as recorded);
- how many of the differing files carry labctl's own account of why (a warning, or frames it says it
  did not analyse and why).

``-v`` lists every file that differs with the difference and labctl's own account (its warnings and
what it did not analyse), so each remaining difference can be checked for being explained. ``--save``
writes the per-file results as JSON; ``--baseline`` compares with a saved run (files that got better
or worse). The captures themselves are never part of this repository: fetch them (e.g. tcpdump's
tests/ directory) into a scratch directory.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXTENSIONS = (".pcap", ".pcapng", ".cap", ".trace", ".dmp", ".pcap.gz", ".pcapng.gz", ".ntar")
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "labctl-wild"
TIMEOUT = 120          # seconds for one file (labctl or tshark)
MEMORY = 2 << 30       # address-space limit of a labctl run
CONV = re.compile(r"^(\S+)\s+<->\s+(\S+)\s+\d+\s+\d+\s+\w+\s+\d+\s+\d+\s+\w+\s+(\d+)\s+(\d+)\s+(\w+)")


def find_captures(dirs: list[Path]) -> list[Path]:
    out = []
    for d in dirs:
        if d.is_file():
            out.append(d)
            continue
        for p in sorted(d.rglob("*")):
            if p.is_file() and p.name.lower().endswith(EXTENSIONS):
                out.append(p)
    return out


def tshark_version() -> str:
    r = subprocess.run(["tshark", "--version"], capture_output=True, text=True)
    return r.stdout.splitlines()[0] if r.stdout else "?"


def run_tshark(path: Path, version: str) -> dict:
    """tshark's conversation table and retransmitted frames for ``path`` (cached by content)."""
    digest = hashlib.sha1(path.read_bytes() + version.encode()).hexdigest()
    cached = CACHE / f"{digest}.json"
    if cached.exists():
        return json.loads(cached.read_text())
    argv = ["tshark", "-n", "-r", str(path), "-z", "conv,tcp", "-z", "conv,udp",
            "-Y", "tcp.analysis.retransmission", "-T", "fields", "-e", "frame.number"]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, errors="replace")
        out, err, rc = r.stdout, r.stderr, r.returncode
    except subprocess.TimeoutExpired:
        out, err, rc = "", "timeout", -1
    convs: list = []
    retrans = 0
    proto = None
    tables = 0
    for line in out.splitlines():
        if line.startswith("TCP Conversations"):
            proto, tables = "tcp", tables + 1
        elif line.startswith("UDP Conversations"):
            proto, tables = "udp", tables + 1
        elif proto is None and line.strip().isdigit():
            retrans += 1
        m = CONV.match(line)
        if m and proto:
            a, b, frames, nbytes, unit = m.groups()
            convs.append([proto, *sorted((a, b)), int(frames), f"{nbytes} {unit}"])
    res = {"read": tables == 2, "convs": convs, "retrans": retrans, "rc": rc,
           "error": err.replace('Running as user "root" and group "root". This could be dangerous.', "")
           .strip()[:300]}
    CACHE.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(res))
    return res


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))


def run_labctl(path: Path) -> dict:
    """labctl's JSON for ``path`` as a user gets it, or how it failed."""
    argv = [sys.executable, str(ROOT / "labctl.py"), "analyse", str(path), "--json"]
    t = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                            preexec_fn=_limits)
    timer = threading.Timer(TIMEOUT, proc.kill)     # by its pid
    timer.start()
    bufs: dict[str, bytes] = {}
    readers = [threading.Thread(target=lambda n=n, f=f: bufs.__setitem__(n, f.read()))
               for n, f in (("out", proc.stdout), ("err", proc.stderr))]
    for r in readers:
        r.start()
    _, status, usage = os.wait4(proc.pid, 0)       # this process's own peak memory
    proc.returncode = os.waitstatus_to_exitcode(status)
    timer.cancel()
    for r in readers:
        r.join()
    out, err = bufs["out"], bufs["err"]
    rss = usage.ru_maxrss / 1024
    if time.perf_counter() - t >= TIMEOUT:
        return {"status": "timeout", "seconds": TIMEOUT}
    secs = time.perf_counter() - t
    text = err.decode(errors="replace")
    if "Traceback" in text or proc.returncode < 0:
        return {"status": "traceback", "error": text[-1500:], "rc": proc.returncode, "seconds": secs}
    if proc.returncode != 0:
        return {"status": "refused", "error": text.strip()[:300], "seconds": secs}
    try:
        doc = json.loads(out)
    except ValueError as exc:
        return {"status": "traceback", "error": f"bad JSON: {exc}", "seconds": secs}
    return {"status": "ok", "seconds": secs, "rss_mb": rss, "doc": doc,
            "stderr": [ln for ln in text.splitlines() if ln.strip()]}


def tshark_bytes(n: int) -> str:
    """A byte count as tshark 4.0's conversation table prints it (format_size, SI units)."""
    if n < 10_000:
        return f"{n} bytes"
    if n < 10_000_000:
        return f"{n // 1000} kB"
    if n < 10_000_000_000:
        return f"{n // 1000_000} MB"
    return f"{n // 1000_000_000} GB"


def _endpoint(ep: str) -> str:
    """'[2001:db8::1]:80' -> '2001:db8::1:80' (tshark's way of writing an IPv6 endpoint)."""
    if ep.startswith("["):
        addr, port = ep[1:].split("]:")
        return f"{addr}:{port}"
    return ep


def impossible(conv: dict) -> list[str]:
    """What cannot be true of a conversation."""
    bad = []
    for k in ("packets", "bytes", "payload_bytes", "client_payload_bytes", "server_payload_bytes",
              "header_bytes", "retransmissions", "out_of_order", "dup_acks"):
        if isinstance(conv.get(k), int) and conv[k] < 0:
            bad.append(f"{k} {conv[k]} < 0")
    if conv["payload_bytes"] > conv["bytes"]:
        bad.append(f"payload {conv['payload_bytes']} > bytes {conv['bytes']}")
    if conv["client_payload_bytes"] + conv["server_payload_bytes"] != conv["payload_bytes"]:
        bad.append("client + server payload != payload")
    if not 0 <= conv["overhead_pct"] <= 100:
        bad.append(f"overhead {conv['overhead_pct']} %")
    if conv.get("retransmissions", 0) > conv["packets"]:
        bad.append(f"{conv['retransmissions']} retransmissions > {conv['packets']} packets")
    return bad


def compare(path: Path, version: str) -> dict:
    shark = run_tshark(path, version)
    mine = run_labctl(path)
    res = {"file": str(path), "status": mine["status"], "tshark_read": shark["read"],
           "tshark_convs": len(shark["convs"]), "seconds": round(mine.get("seconds", 0), 3)}
    if mine["status"] != "ok":
        res["error"] = mine.get("error", "")
        return res
    doc = mine["doc"]
    ours = Counter()
    retrans = 0
    bad = []
    backwards = []    # negative durations: the capture's clock ran backwards (times as recorded)
    for c in doc["conversations"]:
        a, b = sorted((_endpoint(c["client"]), _endpoint(c["server"])))
        ours[(c["proto"], a, b, c["packets"], tshark_bytes(c["bytes"]))] += 1
        retrans += c.get("retransmissions", 0)
        bad += [f"{c['proto']} {c['client']} {c['server']}: {x}" for x in impossible(c)]
        if c.get("duration_ms") is not None and c["duration_ms"] < 0:
            backwards.append(f"{c['proto']} {c['client']} {c['server']}: duration {c['duration_ms']} ms")
    theirs = Counter(tuple(x) for x in shark["convs"])
    has_tcp = any(k[0] == "tcp" for k in theirs) or any(k[0] == "tcp" for k in ours)
    res.update(conv_equal=ours == theirs, has_tcp=has_tcp, retrans=retrans,
               tshark_retrans=shark["retrans"], retrans_equal=retrans == shark["retrans"],
               impossible=bad, backwards=backwards, rss_mb=round(mine["rss_mb"], 1))
    if ours != theirs:
        res["only_labctl"] = [list(k) for k in (ours - theirs).elements()][:8]
        res["only_tshark"] = [list(k) for k in (theirs - ours).elements()][:8]
        res["n_only"] = [sum((ours - theirs).values()), sum((theirs - ours).values())]
    s = doc["summary"]
    res["says"] = {"not_analysed": s.get("not_analysed", {}), "warnings": s.get("warnings", []),
                   "link_types": s.get("link_types", [])}
    return res


def pct(a: int, b: int) -> str:
    return f"{100.0 * a / b:.1f} %" if b else "-"


def report(results: list[dict], verbose: bool) -> dict:
    ok = [r for r in results if r["status"] == "ok"]
    refused = [r for r in results if r["status"] == "refused"]
    tb = [r for r in results if r["status"] == "traceback"]
    to = [r for r in results if r["status"] == "timeout"]
    eq = [r for r in ok if r["conv_equal"]]
    tcp = [r for r in ok if r["has_tcp"]]
    req = [r for r in tcp if r["retrans_equal"]]
    bad = [r for r in ok if r["impossible"]]
    missed = [r for r in refused if r["tshark_convs"]]
    figures = {"files": len(results), "tshark_read": sum(r["tshark_read"] for r in results),
               "analysed": len(ok), "refused": len(refused), "refused_with_conversations": len(missed),
               "tracebacks": len(tb), "timeouts": len(to),
               "conv_equal_pct": round(100.0 * len(eq) / len(ok), 2) if ok else None,
               "files_with_tcp": len(tcp),
               "retrans_equal_pct": round(100.0 * len(req) / len(tcp), 2) if tcp else None,
               "impossible_conversations": sum(len(r["impossible"]) for r in bad),
               "negative_durations": sum(len(r.get("backwards", [])) for r in ok)}
    if verbose:
        for r in tb + to:
            print(f"\n== {r['status'].upper()} {r['file']}\n{r.get('error', '')}")
        for r in missed:
            print(f"\n== REFUSED (tshark: {r['tshark_convs']} conversations) {r['file']}\n   {r['error']}")
        for r in ok:
            if r["conv_equal"] and r["retrans_equal"] and not r["impossible"]:
                continue
            print(f"\n== {r['file']}")
            if not r["conv_equal"]:
                print(f"   conversations: {r['n_only'][0]} only labctl, {r['n_only'][1]} only tshark")
                for k in r["only_labctl"]:
                    print(f"     labctl: {k}")
                for k in r["only_tshark"]:
                    print(f"     tshark: {k}")
            if not r["retrans_equal"] and r["has_tcp"]:
                print(f"   retransmissions: labctl {r['retrans']}, tshark {r['tshark_retrans']}")
            for x in r["impossible"]:
                print(f"   IMPOSSIBLE {x}")
            says = r["says"]
            print(f"   labctl says: not analysed {says['not_analysed']}; warnings {says['warnings']}")
    print()
    print(f"files {figures['files']}, read by tshark {figures['tshark_read']}, analysed by labctl "
          f"{figures['analysed']}, refused {figures['refused']} (tshark found conversations in "
          f"{figures['refused_with_conversations']}), tracebacks {figures['tracebacks']}, time-outs "
          f"{figures['timeouts']}")
    print(f"conversation tables equal to tshark's: {len(eq)}/{len(ok)} = {pct(len(eq), len(ok))}")
    print(f"retransmission counts equal (files with TCP): {len(req)}/{len(tcp)} = {pct(len(req), len(tcp))}")
    print(f"impossible numbers: {figures['impossible_conversations']} in {len(bad)} files (payload above the "
          f"bytes, negative counts, overhead outside 0-100 %); negative durations (the capture's clock "
          f"runs backwards): {figures['negative_durations']}")
    explained = [r for r in ok if not r["conv_equal"]
                 and (r["says"]["warnings"] or r["says"]["not_analysed"])]
    print(f"tables that differ with labctl saying why (warnings or what it did not analyse): "
          f"{len(explained)} of {len(ok) - len(eq)}")
    slow = max(ok, key=lambda r: r["seconds"], default=None)
    if slow:
        big = max(ok, key=lambda r: r.get("rss_mb", 0))
        print(f"slowest labctl run {slow['seconds']:.2f} s ({Path(slow['file']).name}); largest peak "
              f"{big['rss_mb']:.0f} MB ({Path(big['file']).name})")
    return figures


def against_baseline(results: list[dict], baseline: Path) -> None:
    old = {r["file"]: r for r in json.loads(baseline.read_text())["results"]}

    def good(r: dict) -> tuple:
        return (r["status"] == "ok", r.get("conv_equal", False), r.get("retrans_equal", False),
                not r.get("impossible"))

    better = [r["file"] for r in results if r["file"] in old and good(r) > good(old[r["file"]])]
    worse = [r["file"] for r in results if r["file"] in old and good(r) < good(old[r["file"]])]
    print(f"against {baseline}: {len(better)} files better, {len(worse)} worse")
    for f in worse:
        print(f"   worse: {f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", type=Path, nargs="+", metavar="DIR")
    ap.add_argument("-j", "--jobs", type=int, default=2, help="files at a time (default 2)")
    ap.add_argument("-v", "--verbose", action="store_true", help="list every difference")
    ap.add_argument("--save", type=Path, help="write the per-file results here (JSON)")
    ap.add_argument("--baseline", type=Path, help="a --save file of an earlier run to compare with")
    args = ap.parse_args()
    files = find_captures(args.dirs)
    if not files:
        print("no capture files found", file=sys.stderr)
        return 2
    version = tshark_version()
    print(f"{len(files)} capture files; {version}; labctl from {ROOT}", file=sys.stderr)
    done = 0
    results = []
    with ThreadPoolExecutor(args.jobs) as pool:
        for r in pool.map(lambda p: compare(p, version), files):
            results.append(r)
            done += 1
            if done % 100 == 0:
                print(f"  {done}/{len(files)}", file=sys.stderr)
    figures = report(results, args.verbose)
    if args.baseline:
        against_baseline(results, args.baseline)
    if args.save:
        args.save.write_text(json.dumps({"figures": figures, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
