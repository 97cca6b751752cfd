"""Command line: the ``cowmp`` script and ``python -m cowmp``, with the commands
``demo`` (the same workload under each start method) and ``mem PID`` (the memory of a
process tree).

The help is plain text (no reST), usage and errors name the program as it was invoked,
an error in a command's arguments prints that command's usage (exit status 2), and a
reader that closes the pipe (``cowmp mem --watch PID | head``) ends the program quietly.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .memory import ProcessMemory

MiB = 1024 * 1024
#: the program's name for the ``cowmp`` script; ``python -m cowmp`` passes its own
PROG = "cowmp"
MODULE_PROG = "python -m cowmp"
#: exit status when the reader of stdout has gone (as Python's documentation advises)
BROKEN_PIPE_STATUS = 1
#: workers per start method with ``demo --quick`` (cowmp.demo has the other defaults)
QUICK_WORKERS = 2
#: ``mem --watch`` without a number of seconds
WATCH_SECONDS = 2.0


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
        rounds: int | None = None, *, prog: str = f"{PROG} mem") -> int:
    """``cowmp mem``: the memory of ``pid``'s tree, once or every ``watch`` seconds
    (``rounds`` times, default until interrupted or the process ends).  Errors are
    printed as ``prog: error: ...`` (status 1); Ctrl-C ends a watch (status 0)."""
    from . import memory

    done = 0
    try:
        while True:
            try:
                rows = memory.tree(pid)
            except (ProcessLookupError, PermissionError) as error:
                if done and isinstance(error, ProcessLookupError):
                    return 0  # watched until it ended
                print(f"{prog}: error: {error}", file=sys.stderr)
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
            sys.stdout.flush()  # each reading reaches a pipe (| grep, | head) at once
            time.sleep(watch)
    except KeyboardInterrupt:
        if watch is None:
            raise
        return 0  # Ctrl-C is how a watch ends


# -- arguments ------------------------------------------------------------------------------


def _positive(kind: type, text: str, what: str) -> Any:
    """``text`` read as ``kind`` (int, float), which must be above zero; ``what`` names
    what was expected when it is not a number at all."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
    if not value > 0 and not math.isnan(value):
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def _count(text: str) -> int:
    """A positive whole number (--objects, --workers)."""
    return _positive(int, text, "a whole number")


def _pid(text: str) -> int:
    """The id of a running process."""
    import psutil

    pid = _positive(int, text, "a process id (a whole number)")
    try:
        exists = psutil.pid_exists(pid)
    except OverflowError:  # past what the system's pids can be
        exists = False
    if not exists:
        raise argparse.ArgumentTypeError(f"no process with pid {pid}")
    return pid


def _seconds(text: str) -> float:
    """A positive, finite number of seconds (--watch)."""
    value = _positive(float, text, "a number of seconds")
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds, not {text}")
    if value > threading.TIMEOUT_MAX:  # more than time.sleep() takes
        raise argparse.ArgumentTypeError(
            f"must be at most {threading.TIMEOUT_MAX:g} seconds, not {text}")
    return value


def _methods(text: str) -> list[str]:
    """--methods: the start methods named, in the order the demo runs them."""
    from . import demo

    try:
        return demo.check_methods(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _png(path: str) -> str:
    """--plot: a file name, once matplotlib is known to be there."""
    from . import demo

    try:
        demo.check_plotting()
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return path


def _version() -> str:
    from . import __version__

    return f"cowmp {__version__} (Python {platform.python_version()}, {sys.executable})"


def _examples(prog: str, quick_objects: int) -> str:
    examples = [
        ("demo --quick", "every start method of the demo, side by side"),
        ("", f"({quick_objects:,} objects, {QUICK_WORKERS} workers each: seconds)"),
        ("mem 1234", "the memory of process 1234 and its descendants"),
        ("mem 1234 --watch", f"the same every {WATCH_SECONDS:g} seconds, until Ctrl-C"),
        ("COMMAND --help", "a command's options"),
    ]
    width = len(prog) + max(len(command) for command, _ in examples) + 3
    return "examples:\n" + "\n".join(
        f"{f'  {prog} {command}' if command else '':{width}}  {text}"
        for command, text in examples)


def _roles_help() -> str:
    """What ``mem``'s help says of the roles (:data:`cowmp.memory.ROLES`)."""
    import textwrap

    from .memory import ROLES

    width = max(map(len, ROLES)) + 2
    lines = ["roles (a cowmp executor reports its own exactly; in other trees they are "
             "guessed\nfrom the process tree and the command lines):"]
    for role, meaning in ROLES.items():
        lines.append(textwrap.fill(meaning, 86, initial_indent=f"  {role:{width}}",
                                   subsequent_indent=" " * (width + 2)))
    return "\n".join(lines)


class _CommandParser(argparse.ArgumentParser):
    """A command's parser: it reports the arguments it does not know itself, with its own
    usage (argparse leaves them to the top-level parser, whose usage is not the
    command's)."""

    def parse_known_args(self, args: Sequence[str] | None = None,
                         namespace: argparse.Namespace | None = None,
                         ) -> tuple[argparse.Namespace, list[str]]:
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The parser of the command line, naming the program ``prog`` in usage and errors."""
    from . import demo as demo_module

    parser = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Forked worker processes that keep sharing their parent's memory.\n"
                    "demo: what that saves, next to the other start methods;\n"
                    "mem: what a process and its descendants cost.",
        epilog=_examples(prog, demo_module.QUICK_OBJECTS))
    parser.add_argument("--version", action="version", version=_version(),
                        help="print the versions of cowmp and Python, and exit")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     title="commands", parser_class=_CommandParser)
    demo = commands.add_parser(
        "demo", help="the same workload under fork, forkserver (or spawn), loky and "
                     "cowfork: memory and time side by side",
        description="Build a data set of tuples (i, str(i), [i]); for each start method, "
                    "start the workers and let them work on it (--workload); print what "
                    "the parent and the workers cost together (total PSS), what each "
                    "worker owns alone (USS), what a forked worker has copied of the "
                    "parent's memory, and the time taken.")
    demo.add_argument("--objects", type=_count, default=None,
                      help=f"tuples (i, str(i), [i]) in the data set (default "
                           f"{demo_module.DEFAULT_OBJECTS:,}, about 400 MiB; with --quick: "
                           f"{demo_module.QUICK_OBJECTS:,})")
    demo.add_argument("--workers", type=_count, default=None,
                      help=f"workers per start method (default {demo_module.DEFAULT_WORKERS}; "
                           f"with --quick: {QUICK_WORKERS})")
    default_methods = demo_module.available_methods()
    demo.add_argument("--methods", type=_methods, default=None,
                      help=f"comma-separated start methods among "
                           f"{', '.join(demo_module.METHODS)}, run in that order (default "
                           f"on this system: {', '.join(default_methods)}"
                           f"{'' if 'spawn' in default_methods else '; spawn only if named'})")
    demo.add_argument("--workload", choices=demo_module.WORKLOADS, default=None,
                      help="read: every worker reads every object, then collects; "
                           "collect: workers only run full collections, and a forked "
                           "child's exit is measured (default on this system: "
                           f"{demo_module.default_workload()}; read from Python 3.12, "
                           "where share() makes objects immortal)")
    demo.add_argument("--no-share", action="store_true",
                      help="do not call cowmp.share() on the data set before the cowfork "
                           "workers start (by default it is called on Python 3.12 and "
                           "later, where cowfork forks, for the read workload)")
    demo.add_argument("--quick", action="store_true",
                      help=f"{demo_module.QUICK_OBJECTS:,} objects and {QUICK_WORKERS} "
                           "workers per start method, unless --objects or --workers say "
                           "otherwise: done in seconds")
    demo.add_argument("--plot", metavar="FILE.png", type=_png,
                      help="also draw the figures into a PNG (needs matplotlib: "
                           "pip install 'cowmp[plot]')")
    memory = commands.add_parser(
        "mem", help="the memory of a process and its descendants: RSS, USS, PSS, shared, "
                    "copied since fork",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Print the memory of process PID and of its descendants, one line each "
                    "with\nits role, then the totals.",
        epilog=_roles_help())
    memory.add_argument("pid", type=_pid, metavar="PID",
                        help="the process at the root of the tree")
    memory.add_argument("--json", action="store_true",
                        help="a JSON list of objects (pid, ppid, role, name, rss, uss, pss, "
                             "shared, swap, copied: bytes, null where unknown) instead of "
                             "the table; one line per reading with --watch")
    memory.add_argument("--watch", nargs="?", type=_seconds, const=WATCH_SECONDS,
                        default=None, metavar="SECONDS",
                        help=f"read again every SECONDS ({WATCH_SECONDS:g} if not given) "
                             "until Ctrl-C or the process ends")
    return parser


def _run(argv: list[str] | None, prog: str) -> int:
    args = build_parser(prog).parse_args(argv)
    if args.command == "mem":
        return mem(args.pid, args.json, args.watch, prog=f"{prog} mem")
    from . import demo

    demo.main(objects=args.objects or (demo.QUICK_OBJECTS if args.quick
                                       else demo.DEFAULT_OBJECTS),
              workers=args.workers or (QUICK_WORKERS if args.quick else demo.DEFAULT_WORKERS),
              methods=args.methods, share=not args.no_share, plot=args.plot,
              workload=args.workload)
    return 0


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); return the exit status.
    ``prog`` names the program in usage and errors."""
    try:
        status = _run(argv, prog)
        sys.stdout.flush()  # here, not at exit: a closed pipe is caught below
    except BrokenPipeError:
        # the reader has gone (| head): point stdout at /dev/null so that nothing fails
        # again when Python flushes it at exit, and end without a traceback
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return BROKEN_PIPE_STATUS
    return status


if __name__ == "__main__":
    sys.exit(main(prog=MODULE_PROG))
