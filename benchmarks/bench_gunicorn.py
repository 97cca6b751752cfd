"""gunicorn workers over a preloaded dict: plain gunicorn against cowmp.gunicorn's hooks.

A real gunicorn (sync workers, ``--preload``, 127.0.0.1, benchmarks/gunicorn_harness.py)
serves an application holding a dict of ``--items`` strings; every request reads all of
its values.  Two clients send requests one after the other throughout three phases: the
first workers; workers replaced after ``max_requests`` (at least 2 replacements); a HUP
reload.  Each worker reports its private memory (USS) after reading the dict; printed is
the mean per phase, the server's total PSS at the end (arbiter and workers), the seconds
a graceful stop takes (SIGTERM to the arbiter: each worker's exit, then the arbiter's),
the requests answered and those that failed.  Servers: plain gunicorn; cowmp's hooks alone
(``cowmp.gunicorn.apply(globals())`` in the configuration: the collector frozen across
each fork, workers ending without the heap's teardown); the hooks and the application's
``cowmp.share(DATA)`` (immortal on 3.12+).  Ratio = plain / hooks + share() (>1: cowmp
smaller).  Target (3.12+): a worker's private memory at most a third of a plain
worker's, and no failed request.  Needs gunicorn and Linux.
Usage: python benchmarks/bench_gunicorn.py [--items 1500000] [--workers 2]
       [--max-requests 30] [--quick]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for path in (HERE, ROOT):  # this checkout's cowmp before any installed one
    if path not in sys.path:
        sys.path.insert(0, path)

SERVERS = {  # label: (hooks, share)
    "plain gunicorn": (False, False),
    "cowmp hooks": (True, False),
    "cowmp hooks + share()": (True, True),
}
PHASES = {"first": "first", "restarted": "after restarts", "after_hup": "after HUP"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_500_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-requests", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="150,000 items")
    args = parser.parse_args()
    if args.quick:
        args.items, args.max_requests = 150_000, 15
    from _common import header, report_servers

    header("bench_gunicorn: plain gunicorn against cowmp.gunicorn's hooks")
    if importlib.util.find_spec("gunicorn") is None or not hasattr(os, "fork"):
        print("gunicorn is not installed (pip install 'cowmp[gunicorn]'), or no fork: "
              "nothing to measure")
        return 0
    from gunicorn_harness import Server, run_phases

    print(f"# a dict of {args.items:,} strings, {args.workers} sync workers, "
          f"max_requests {args.max_requests}, then a HUP reload; 2 clients throughout")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for number, (label, (hooks, share)) in enumerate(SERVERS.items()):
            server = Server(Path(tmp) / str(number), cowmp=hooks, share=share,
                            items=args.items, workers=args.workers,
                            max_requests=args.max_requests)
            server.start()
            try:
                results[label] = run_phases(server, restarts=2)
            finally:
                start = time.perf_counter()
                server.stop()
                results[label]["stop_s"] = time.perf_counter() - start
    report_servers("gunicorn", results, PHASES, "plain gunicorn", "cowmp hooks + share()",
                   "hooks + share()", quick=args.quick,
                   before_312=" (the hooks still save the collector's and the exit's copies)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
