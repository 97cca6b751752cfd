"""uWSGI workers over a dict loaded by the master: plain uWSGI against cowmp's recipe.

A real uWSGI (benchmarks/uwsgi_harness.py: a master, ``--workers`` workers, a Unix
socket) serves an application holding a dict of ``--items`` strings; every request
reads all of its values and answers with the worker's private memory (USS) after the
read.  Requests are sent one after the other through two phases: the first workers, and
workers replaced after ``--max-requests`` (at least 2 replacements).  Printed: each
phase's mean worker USS, the server's total PSS at the end (master and workers), the
seconds a stop takes (SIGINT to the master), the requests answered and those that
failed.  Servers: plain uWSGI; the README's recipe (the application ends its loading
with ``cowmp.share(TABLE)`` and ``cowmp.install_fork_hooks()``, and uWSGI runs with
``--py-call-uwsgi-fork-hooks``).  Ratio = plain / recipe (>1: cowmp smaller).  Target
(3.12+): a worker's private memory at most a third of a plain worker's, and no failed
request.  Needs uWSGI installed beside this interpreter (``pip install uwsgi``).
Usage: python benchmarks/bench_uwsgi.py [--items 1500000] [--workers 2]
       [--max-requests 10] [--quick]
"""

from __future__ import annotations

import argparse
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

SERVERS = {"plain uWSGI": False, "cowmp recipe": True}  # label: recipe
PHASES = {"first": "first", "replaced": "after replacements"}


def _phases(server, workers: int) -> dict:
    """Requests until every first worker has answered, then until ``2`` replacements
    have; each phase's workers' largest USS, the requests and the failures."""
    first = set(server.workers())
    seen: dict[str, dict[int, int]] = {phase: {} for phase in PHASES}
    requests, failures = 0, []
    deadline = time.monotonic() + 600
    while len(seen["first"]) < workers or len(seen["replaced"]) < 2:
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {requests} requests: {seen}")
        try:
            answer = server.read()
        except OSError as error:
            failures.append(repr(error))
            continue
        requests += 1
        phase = "first" if answer["pid"] in first else "replaced"
        found = seen[phase]
        found[answer["pid"]] = max(found.get(answer["pid"], 0), answer["uss"])
    return {**seen, "requests": requests, "failures": failures,
            "total_pss": server.total_pss()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_500_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-requests", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="150,000 items")
    args = parser.parse_args()
    if args.quick:
        args.items, args.max_requests = 150_000, 5
    from _common import header, report_servers
    from uwsgi_harness import APP, UwsgiServer, find_uwsgi

    header("bench_uwsgi: plain uWSGI against cowmp's recipe")
    if find_uwsgi() is None or not hasattr(os, "fork"):
        print(f"no uWSGI beside {sys.executable} (pip install uwsgi), or no fork: "
              "nothing to measure")
        return 0
    print(f"# a dict of {args.items:,} strings, {args.workers} workers, max-requests "
          f"{args.max_requests}; one client")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, recipe in SERVERS.items():
            server = UwsgiServer(Path(tmp) / label.split()[0], APP,
                                 "--max-requests", str(args.max_requests),
                                 "--min-worker-lifetime", "0", recipe=recipe,
                                 items=args.items, processes=args.workers)
            with server:
                results[label] = _phases(server, args.workers)
                results[label]["stop_s"] = server.stop()
    report_servers("uwsgi", results, PHASES, "plain uWSGI", "cowmp recipe", "recipe",
                   quick=args.quick, width=20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
