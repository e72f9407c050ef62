"""``labctl analyse FILE [--json] [--svg DIR] [--html FILE]``: ladders and the TCP-vs-UDP comparison."""
from __future__ import annotations

import argparse
import io
import os
import sys

from labctl.cli.types import path_arg


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "analyse", aliases=["analyze"],
        help="draw TCP/UDP ladder diagrams and compare the protocols from a pcap/pcapng capture",
        description="Read a capture (pcap or pcapng, e.g. from 'labctl capture' or 'tcpdump -w') and "
                    "show how TCP and UDP exchanged packets: one ladder diagram per conversation "
                    "(handshake, data, acknowledgements, retransmissions, unanswered datagrams) and a "
                    "table comparing packets, bytes, overhead and time to answer.",
        epilog="Examples: labctl analyse labctl/analyse/examples/tcp-vs-udp.pcap (a real capture); "
               "labctl analyse captures/server.pcap --html report.html --svg ladders/; "
               "labctl analyse client1.pcap server.pcap (one analysis of both ends); "
               "labctl analyse cap.pcap --json | jq .summary")
    p.add_argument("file", type=path_arg, nargs="+", metavar="FILE",
                   help="capture file (.pcap or .pcapng), a FIFO, or - for standard input "
                        "(labctl capture -o - | labctl analyse -); several files (or one pcapng of "
                        "several nodes, from 'labctl capture --nodes all') are read as one capture "
                        "taken at several points: each packet counted once, its one-way time between "
                        "nodes measured and each lost packet's last sighting named")
    p.add_argument("--json", action="store_true",
                   help="print every conversation and the summary as JSON (for scripts) instead of text")
    p.add_argument("--svg", type=path_arg, metavar="DIR",
                   help="write one printable SVG ladder per shown conversation (and a TCP-vs-UDP pair) "
                        "into DIR")
    p.add_argument("--html", type=path_arg, metavar="FILE",
                   help="write a self-contained HTML report (ladders, comparison, reflection answers)")
    p.add_argument("--results", type=path_arg, metavar="RUN.json",
                   help="the run this capture saw (labctl run --json, labctl capture --run --json, or an "
                        "exercise's run.json): each UDP client's own attempts, timeouts and answer, "
                        "which a capture on the server alone cannot show (a datagram lost before it)")
    p.add_argument("--ladders", type=int, default=1, metavar="N",
                   help="ladders per protocol in the terminal (default 1; 0 for none); the first "
                        "conversations, plus the first one that lost packets or was refused")
    p.add_argument("--detail", type=int, default=None, metavar="N",
                   help="conversations per protocol whose packets are kept for ladders (default 8; "
                        "memory stays small however large the capture)")
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="worker processes for --json (default 1: one process; N forks N workers "
                        "that split the conversations, same document)")
    p.add_argument("--replay", action="store_true",
                   help="replay the capture's ladders in the terminal at the pace the packets came "
                        "(one line per packet when stdout is not a terminal)")
    p.add_argument("--speed", type=float, default=1.0, metavar="X",
                   help="with --replay: 0.1 is ten times slower than real time, 2 twice as fast")
    p.set_defaults(handler=run_analyse)


def run_analyse(args: argparse.Namespace, ctx) -> int:
    try:
        return _run(args)
    except BrokenPipeError:   # 'labctl analyse F | head': the reader left, which is fine
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


MAX_JOBS = 64  # worker processes: each reads the whole file, more only load the machine


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse an --html FILE or --svg DIR that cannot be written, with one line."""
    import os

    from labctl.cli import CliError

    wanted = [(args.svg, True, "--svg")] if args.svg else []
    wanted += [(args.html, False, "--html")] if args.html else []
    for path, is_dir, option in wanted:
        if not str(path).strip():
            raise CliError(f"{option} needs a path")
        directory = path if is_dir else path.parent
        try:
            if path.exists() and path.is_dir() != is_dir:
                raise CliError(f"{option} {path}: {'not a directory' if is_dir else 'is a directory'}", 1)
            directory.mkdir(parents=True, exist_ok=True)
            writable = os.access(directory, os.W_OK) and (not path.exists() or os.access(path, os.W_OK))
        except OSError as exc:
            raise CliError(f"{option} {path}: cannot create {exc.filename or directory}: "
                           f"{exc.strerror or exc}", code=1) from None
        if not writable:
            raise CliError(f"{option} {path}: not writable", code=1)


def _run(args: argparse.Namespace) -> int:
    from labctl.analyse import analyse_file
    from labctl.analyse.conversations import DEFAULT_DETAIL
    from labctl.analyse.pcap import open_source
    from labctl.cli import CliError

    if args.replay:
        return _replay(args)
    if args.ladders < 0:
        raise CliError("--ladders must be 0 or more")
    if args.detail is not None and args.detail < 0:
        raise CliError("--detail must be 0 or more")
    if args.jobs is not None and not 1 <= args.jobs <= MAX_JOBS:
        raise CliError(f"--jobs must be 1 to {MAX_JOBS}")
    _check_outputs(args)  # before the analysis: an unwritable path fails in a second, not after it
    detail = args.detail if args.detail is not None else max(DEFAULT_DETAIL, args.ladders * 2)
    run, captured = None, None
    if args.results is not None:
        from labctl.analyse.clients import load_results

        one = str(args.file[0]) if len(args.file) == 1 and str(args.file[0]) != "-" else None
        run, captured = load_results(args.results, one)
    if _several_points(args.file):
        from labctl.analyse.multinode import analyse_captures

        return _report(args, analyse_captures(args.file, detail), run, captured)
    (path,) = args.file
    source = open_source(path, on_wait=lambda note: print(f"labctl: {note}", file=sys.stderr))
    if source.stream:      # a pcapng stream of several nodes (capture --nodes all -o -) is matched too
        from labctl.analyse.pcap import Source, read_exactly
        from labctl.analyse.points import HEAD, Prefixed, count_points_in

        head = read_exactly(source.file, HEAD)
        if count_points_in(head) > 1:
            from labctl.analyse.multinode import analyse_captures

            data = io.BytesIO(head + source.file.read())
            data.name = source.name
            source.close()
            return _report(args, analyse_captures([data], detail), run, captured)
        source = Source(Prefixed(head, source.file), source.name, stream=True, owned=source.owned)
    if args.json and not args.svg and not args.html and not source.stream and args.results is None:
        from labctl.analyse.parallel import default_jobs, write_json_parallel

        jobs = args.jobs if args.jobs is not None else default_jobs(path)
        if jobs > 1:      # (each worker reads the file: a stream is read once, by one process)
            source.close()
            analysis = write_json_parallel(path, sys.stdout, jobs)
            sys.stdout.flush()
            for w in analysis.warnings:
                print(f"labctl: warning: {w}", file=sys.stderr)
            return 0
    return _report(args, analyse_file(source, detail=detail), run, captured)


def _several_points(files: list) -> bool:
    """Several files, or one pcapng file of several interfaces: one analysis of several points."""
    from labctl.analyse.pcap import open_source
    from labctl.analyse.points import count_points
    from labctl.cli import CliError

    if len(files) == 1:
        f = str(files[0])
        return f != "-" and os.path.isfile(f) and count_points(f) > 1
    for f in files:
        if str(f) == "-":
            raise CliError("standard input ('-') can only be analysed alone; give the files' paths")
        source = open_source(f)          # one clear line for a missing file, a directory, a device
        stream = source.stream
        source.close()
        if stream:
            raise CliError(f"{f}: a FIFO or pipe can only be analysed alone; save it to a file first")
    return True


def _report(args: argparse.Namespace, analysis, run: dict | None = None, captured=None) -> int:
    """Print or write what was asked for (--json, the terminal report, --svg, --html); ``run`` and
    ``captured``: what ``--results`` read (the run's outcome per client, and which nodes were captured)."""
    from labctl.cli import CliError

    if args.json:
        from labctl.analyse.json_report import write_json

        write_json(analysis, sys.stdout, run, captured)
        sys.stdout.flush()
    written = []
    if not args.json or args.svg or args.html:
        from labctl.analyse import summarise

        listed = 0
        if args.html:
            from labctl.analyse.html import LISTED as listed
        summary = summarise(analysis, listed=listed, run=run, captured=captured)
        if not args.json:
            from labctl.analyse import terminal

            terminal.render(summary, ladders=args.ladders)
        try:
            if args.svg:
                from labctl.analyse.svg import write_svgs

                written += write_svgs(summary, args.svg, per_proto=max(args.ladders, 2))
            if args.html:
                from labctl.analyse.html import write_html

                written.append(write_html(summary, args.html))
        except OSError as exc:  # e.g. the disk filled up while writing
            raise CliError(f"cannot write {exc.filename or args.html or args.svg}: {exc.strerror or exc}",
                           code=1) from None
    for path in written:
        print(f"wrote {path}", file=sys.stderr if args.json else sys.stdout)
    for w in analysis.warnings:
        print(f"labctl: warning: {w}", file=sys.stderr)
    return 0


def _replay(args: argparse.Namespace) -> int:
    from labctl.analyse.live import LiveView, replay
    from labctl.analyse.pcap_stream import read_points
    from labctl.cli import CliError

    if not 0.001 <= args.speed <= 1000:
        raise CliError("--speed must be between 0.001 and 1000 (0.1: ten times slower than real time)")
    if args.json or args.svg or args.html:
        raise CliError("--replay draws in the terminal; drop --json, --svg and --html")
    if len(args.file) > 1:
        raise CliError("--replay replays one capture file (a pcapng of several nodes replays them all)")
    points, linktypes, packets, names = read_points(args.file[0])
    view = LiveView(sys.stdout, points, names, linktypes=linktypes)
    try:
        replay(packets, view, speed=args.speed)
    except KeyboardInterrupt:
        view.done()
        raise
    return 0
