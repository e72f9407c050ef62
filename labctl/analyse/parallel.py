"""``--json --jobs N``: N forked worker processes share the work on a big capture.

Every worker reads the whole file but keeps only the conversations whose port numbers hash to its
share (the low bytes of the two ports XOR-ed, so both directions of a conversation land in the same
worker), analyses them exactly as the single-process path does, and writes their JSON lines to its
own temporary files. The parent merges the lines back into first-packet order (frame numbers) and
adds up their totals. Same document as ``json_report.write_json`` (the workers write their lines with
float times, ``milliseconds.FloatClock``, whose totals merge exactly).
"""
from __future__ import annotations

import os
from pathlib import Path

TYPE_CHECKING = False   # (typing is not imported at run time: it costs start-up time)
if TYPE_CHECKING:
    from typing import TextIO


def default_jobs(path: str | Path) -> int:
    """Worker processes for ``--json`` when ``--jobs`` is not given: 1.

    Each worker reads and decodes the whole file and keeps only its share, so the workers together
    use more CPU than one process; since the single-process path got about twice as fast, two workers
    gain little wall time even on idle cores and lose it on a loaded machine (CI). ``--jobs N`` still
    splits the work when asked.
    """
    return 1


def _worker(path: str, part: int, parts: int, tmp: str) -> dict:
    from labctl.analyse.conversations import build
    from labctl.analyse.json_report import write_lines
    from labctl.analyse.milliseconds import FloatClock

    b, info = build(path, detail=0, part=part, parts=parts)
    files = {p: Path(tmp) / f"{p}.{part}" for p in ("tcp", "udp")}
    with files["tcp"].open("w") as ft, files["udp"].open("w") as fu:
        totals = write_lines(b, FloatClock(b.times), lambda lines: ft.write("\n".join(lines) + "\n"),
                             lambda lines: fu.write("\n".join(lines) + "\n"))
    import resource

    meta = {"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "packets": b.packets,
            "bytes": b.bytes, "skipped": b.skipped, "skipped_bytes": b.skipped_bytes, "ipv6": b.ipv6,
            "notes": b.notes,
            "first_ts": b.first_ts,
            "last_ts": b.last_ts}
    return {"totals": totals, "tcp_frame": b.tcp.frames,
            "udp_frame": b.udp.frames, "files": {k: str(v) for k, v in files.items()},
            "info": info, "meta": meta}


def write_json_parallel(path: str | Path, out: TextIO, jobs: int):
    """Write the JSON document for ``path`` using ``jobs`` worker processes; returns a summary-only
    Analysis (for its warnings)."""
    import contextlib
    import heapq
    import json
    import pickle
    import signal
    import tempfile

    from labctl.analyse.conversations import Builder
    from labctl.analyse.json_report import summary_dict
    from labctl.analyse.milliseconds import FloatClock
    from labctl.analyse.model import Analysis
    from labctl.analyse.summary import Facts

    path = str(path)
    with tempfile.TemporaryDirectory(prefix="labctl-analyse-") as tmp:
        kids = []
        for part in range(1, jobs):     # the parent does part 0 itself
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:   # worker
                os.close(r)
                try:
                    result = {"ok": _worker(path, part, jobs, tmp)}
                except BaseException as exc:  # reported by the parent
                    result = {"error": exc}
                with os.fdopen(w, "wb") as f:
                    pickle.dump(result, f, protocol=pickle.HIGHEST_PROTOCOL)
                os._exit(0)
            os.close(w)
            kids.append((pid, r))
        results = []
        try:
            results.append({"ok": _worker(path, 0, jobs, tmp)})
        except Exception as exc:
            results.append({"error": exc})
        except BaseException:           # Ctrl-C and the like: stop the workers (by pid) and go
            for pid, r in kids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGTERM)
                os.waitpid(pid, 0)
                os.close(r)
            raise
        for pid, r in kids:
            with os.fdopen(r, "rb") as f:
                data = f.read()
            os.waitpid(pid, 0)
            results.append(pickle.loads(data) if data else {"error": RuntimeError("worker died")})
        for res in results:
            if "error" in res:
                raise res["error"]
        done = [res["ok"] for res in results]
        tcp, udp = done[0]["totals"]
        for d in done[1:]:
            tcp.merge(d["totals"][0])
            udp.merge(d["totals"][1])
        first = done[0]
        b = Builder(0)
        clock = FloatClock(b.times)
        for k, v in first["meta"].items():
            if k != "rss_mb":
                setattr(b, k, v)
        info = first["info"]
        analysis = Analysis(path, info, b)
        out.flush()
        raw = getattr(out, "buffer", None)    # bytes straight through: no decoding and re-encoding
        write = raw.write if raw is not None else (lambda b: out.write(b.decode()))
        write(b'{"conversations":[')
        sep = b""
        for proto in ("tcp", "udp"):
            handles = [open(d["files"][proto], "rb") for d in done]  # noqa: SIM115 (closed below)
            try:
                streams = [zip(d[f"{proto}_frame"], h) for d, h in zip(done, handles)]
                for _frame, line in heapq.merge(*streams):
                    write(sep)
                    write(line[:-1])
                    sep = b",\n"
            finally:
                for h in handles:
                    h.close()
        write(b'],\n"summary":')
        from labctl.analyse.clients import udp_clients

        clients = udp_clients(udp.seen)
        summary = summary_dict(Facts.of(analysis), tcp.finish(clock), udp.finish(clock), clients)
        write(json.dumps(summary, indent=1).encode())
        write(b"}\n")
        if raw is not None:
            raw.flush()
    if os.environ.get("LABCTL_BENCH_RSS"):   # bench/analyse.py sums the processes' peaks
        import resource
        import sys

        rss = [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024]   # the parent did part 0
        rss += [d["meta"]["rss_mb"] for d in done[1:]]
        print("labctl-rss " + " ".join(f"{x:.1f}" for x in rss), file=sys.stderr)
    return analysis
