"""Command line: ``python -m cowmp demo`` and ``python -m cowmp mem PID``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .memory import ProcessMemory

MiB = 1024 * 1024


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / MiB:,.1f}"


def format_tree(rows: Sequence[ProcessMemory], totals: Mapping[str, int | None]) -> str:
    """The ``mem`` table: one line per process, then the totals."""
    header = (f"{'PID':>8} {'PPID':>8}  {'ROLE':16} {'RSS MiB':>10} {'USS MiB':>10} "
              f"{'PSS MiB':>10} {'SHARED MiB':>11} {'COPIED MiB':>11}  NAME")
    lines = [header]
    for row in rows:
        lines.append(f"{row.pid:>8} {row.ppid:>8}  {row.role:16} {_mib(row.rss):>10} "
                     f"{_mib(row.uss):>10} {_mib(row.pss):>10} {_mib(row.shared):>11} "
                     f"{_mib(row.copied):>11}  {row.name}")
    lines.append(f"{'total':>8} {'':>8}  {f'{len(rows)} processes':16} "
                 f"{_mib(totals['rss']):>10} {_mib(totals['uss']):>10} "
                 f"{_mib(totals['pss']):>10} {_mib(totals['shared']):>11} "
                 f"{_mib(totals['copied']):>11}")
    lines.append("USS: owned alone. PSS: owned alone plus a share of each shared page; the "
                 "PSS total is what the tree costs. RSS counts shared pages in every process. "
                 "COPIED: a forked process's private memory in what it inherited.")
    return "\n".join(lines)


def mem(pid: int, as_json: bool, watch: float | None, out: Callable[[str], object] = print,
        rounds: int | None = None) -> int:
    """``python -m cowmp mem``: the memory of ``pid``'s tree, once or every ``watch``
    seconds (``rounds`` times, default until interrupted or the process ends)."""
    from . import memory

    done = 0
    while True:
        try:
            rows = memory.tree(pid)
        except (ProcessLookupError, PermissionError) as error:
            if done and isinstance(error, ProcessLookupError):
                return 0  # watched until it ended
            print(f"python -m cowmp mem: {error}", file=sys.stderr)
            return 1
        totals = memory.totals(rows)
        if as_json:
            out(json.dumps([row.as_dict() for row in rows]))
        else:
            if watch is not None and sys.stdout.isatty():
                out("\x1b[H\x1b[2J" + time.strftime("%H:%M:%S"))  # clear, then redraw
            out(format_tree(rows, totals))
        done += 1
        if watch is None or (rounds is not None and done >= rounds):
            return 0
        try:
            time.sleep(watch)
        except KeyboardInterrupt:
            return 0


def _positive(kind: type) -> Callable[[str], object]:
    def convert(text: str) -> object:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, not {text}")
        return value
    return convert


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cowmp", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="the same read-and-collect workload under fork, forkserver/spawn, loky "
                     "and cowfork: memory and time side by side")
    demo.add_argument("--objects", type=_positive(int), default=None,
                      help="tuples (i, str(i), [i]) in the data set (default 2,000,000, "
                           "about 450 MiB; --quick: 150,000)")
    demo.add_argument("--workers", type=_positive(int), default=None,
                      help="workers per start method (default 4; --quick: 2)")
    demo.add_argument("--methods", default=None,
                      help="comma-separated start methods among fork, forkserver, spawn, "
                           "loky, cowfork (default: all that this system has)")
    demo.add_argument("--workload", choices=("read", "collect"), default=None,
                      help="read: every worker reads every object, then collects (the "
                           "default on Python 3.12+); collect: workers only run full "
                           "collections, and a forked child's exit is timed (the default "
                           "on 3.10 and 3.11, where reading copies under any method)")
    demo.add_argument("--no-share", action="store_true",
                      help="do not call cowmp.share() before the cowfork workers start")
    demo.add_argument("--quick", action="store_true",
                      help="a small data set and 2 workers: done in well under 30 s")
    demo.add_argument("--plot", metavar="FILE.png",
                      help="also draw the figures into a PNG (needs matplotlib: "
                           "pip install 'cowmp[plot]')")
    memory = commands.add_parser(
        "mem", help="the memory of a process and its descendants: RSS, USS, PSS, shared, "
                    "copied since fork")
    memory.add_argument("pid", type=_positive(int), help="the root process of the tree")
    memory.add_argument("--json", action="store_true",
                        help="a JSON list of objects (pid, ppid, role, name, rss, uss, pss, "
                             "shared, swap, copied: bytes) instead of the table; one line "
                             "per reading with --watch")
    memory.add_argument("--watch", nargs="?", type=_positive(float), const=2.0, default=None,
                        metavar="SECONDS",
                        help="read again every SECONDS (default 2) until Ctrl-C or the "
                             "process ends")
    args = parser.parse_args(argv)
    if args.command == "mem":
        return mem(args.pid, args.json, args.watch)
    from . import demo as demo_module

    try:
        methods = demo_module.check_methods(args.methods)
        if args.plot:
            demo_module.check_plotting()
    except ValueError as error:
        parser.error(str(error))
    demo_module.main(
        objects=args.objects or (demo_module.QUICK_OBJECTS if args.quick
                                 else demo_module.DEFAULT_OBJECTS),
        workers=args.workers or (2 if args.quick else demo_module.DEFAULT_WORKERS),
        methods=methods, share=not args.no_share, plot=args.plot, workload=args.workload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
