"""Total memory of a parent and its workers over a 1 GiB data set, as workers are added:
cowfork beside fork and spawn.

The workload is ``cowmp.demo``'s (the one ``python -m cowmp demo`` prints): the parent
builds ~``--gib`` GiB of tuples ``(i, str(i), [i])`` with ``cowmp.demo.build``, then, for
each start method, ``cowmp.demo.run_method`` starts N workers that each read every element
of the data set, run a full collection and wait while the parent reads the total PSS of
itself, of the workers and of any process the method started beside them (resource
tracker, fork server).  Workers of ``fork`` and ``cowfork`` inherit the data set; those of
``spawn`` build their own copy, as a program loads its model or table again in each.
``cowfork`` calls ``cowmp.share()`` on the data set first on Python 3.12+.

Each worker count (1, 2, 4, 8 by default) runs in a fresh interpreter that builds the data
set once and runs the methods in the order fork, spawn, cowfork (cowfork last:
``share()`` makes the objects immortal for good).  The number of tuples is chosen once,
from the USS that a sample of them takes, so that every worker count has the same data
set.  Before each point, a point whose estimated memory exceeds what the system has
available is skipped, and the output says so.  For information: no target.
Usage: python benchmarks/bench_scaling.py [--gib 1.0] [--workers 1,2,4,8]
       [--methods fork,spawn,cowfork] [--no-share]
"""

from __future__ import annotations

# Only light standard-library imports at module level: this module is imported by the
# fresh interpreter of each worker count.
import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# This checkout's cowmp before any installed one; then _common and this module.
PATH = ([ROOT] if os.path.isfile(os.path.join(ROOT, "cowmp", "__init__.py")) else []) + [HERE]

METHODS = ("fork", "forkserver", "spawn", "loky", "cowfork")  # cowmp.demo's, in its order
DEFAULT_METHODS = "fork,spawn,cowfork"
SAMPLE = 250_000  # tuples built to measure the size of one (~55 MiB)
TIMEOUT = 1800  # seconds, per worker count
GiB = 2**30
MARGIN = 512 * 2**20  # bytes kept free beside every estimate


def estimate(method: str, workers: int, heap: int) -> int:
    """Bytes that ``workers`` workers of ``method`` may need beyond the parent, at worst:
    a copy of the data set each (spawn and the like build one; fork workers that read and
    collect copy most of what they inherit; so do cowfork workers where the data set
    cannot be made immortal), plus a margin."""
    share = method == "cowfork" and sys.version_info >= (3, 12)
    per_worker = heap // 4 if share else heap * 5 // 4
    return workers * per_worker + MARGIN


def child(objects: int, workers: int, methods: list[str], share: bool) -> None:
    """One worker count, in a fresh interpreter: build the data set, run each method, print
    the figures as JSON, then leave."""
    import dataclasses

    import psutil

    from cowmp import demo

    heap, seconds = demo.build(objects)
    rows = []
    for method in methods:
        need, available = estimate(method, workers, heap), psutil.virtual_memory().available
        if need > available:
            rows.append({"method": method, "workers": workers,
                         "skipped": f"would need ~{need / GiB:.1f} GiB, "
                                    f"{available / GiB:.1f} GiB available"})
            continue
        row = demo.run_method(method, workers, share=share)
        rows.append({**dataclasses.asdict(row), "label": row.label})
    print(json.dumps({"objects": objects, "heap": heap, "build": seconds, "rows": rows}),
          flush=True)
    sys.stderr.flush()
    os._exit(0)  # skip tearing the data set down object by object


def tuple_size() -> float:
    """USS bytes that one tuple ``(i, str(i), [i])`` of a large list takes here."""
    sys.path[:0] = [HERE]
    from _common import build_heap, uss

    before = uss()
    sample = build_heap(SAMPLE)
    size = (uss() - before) / len(sample)
    del sample
    return size


def parse_list(parser: argparse.ArgumentParser, text: str, what: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        parser.error(f"{what}: empty list")
    return items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=1.0, help="data set size, GiB of USS")
    parser.add_argument("--workers", default="1,2,4,8",
                        help="comma-separated worker counts (default 1,2,4,8)")
    parser.add_argument("--methods", default=DEFAULT_METHODS,
                        help=f"comma-separated subset of {', '.join(METHODS)} "
                             f"(default {DEFAULT_METHODS}); run in that order")
    parser.add_argument("--no-share", action="store_true",
                        help="do not call cowmp.share() before the cowfork workers start")
    args = parser.parse_args()
    try:
        counts = [int(n) for n in parse_list(parser, args.workers, "--workers")]
    except ValueError:
        parser.error(f"--workers: integers expected, got {args.workers!r}")
    if any(n < 1 for n in counts):
        parser.error("--workers: counts must be at least 1")
    requested = parse_list(parser, args.methods, "--methods")
    unknown = [m for m in requested if m not in METHODS]
    if unknown:
        parser.error(f"--methods: unknown {unknown}; choose among {', '.join(METHODS)}")
    methods = [m for m in METHODS if m in requested]

    sys.path[:0] = PATH
    import psutil
    from _common import MiB, header, record, run_child

    header(f"Total PSS of a parent and N workers over a {args.gib:g} GiB data set "
           f"(cowmp.demo's workload), each worker count in a fresh interpreter")
    objects = max(1, round(args.gib * GiB / tuple_size()))
    print(f"# data set: {objects:,} tuples (i, str(i), [i]); methods in this order: "
          f"{', '.join(methods)}; cowmp.share() before cowfork: "
          f"{'no' if args.no_share else 'yes, where the interpreter allows it (3.12+)'}")

    results: dict[int, list[dict]] = {}
    heaps: dict[int, int] = {}
    failures = []
    for workers in counts:
        need, available = int(args.gib * GiB * 1.5) + MARGIN, psutil.virtual_memory().available
        label = f"{workers} worker{'s' if workers > 1 else ''}"
        if need > available:
            print(f"  {label}: skipped, building the data set would need "
                  f"~{need / GiB:.1f} GiB, {available / GiB:.1f} GiB available", flush=True)
            for method in methods:
                record("scaling", {"method": method, "workers": workers,
                                   "skipped": "not enough memory for the data set"})
            continue
        try:
            m = run_child(PATH, "bench_scaling",
                          f"child({objects}, {workers}, {methods!r}, {not args.no_share})",
                          label, TIMEOUT)
        except SystemExit as error:  # run_child's report of a failed interpreter
            print(error.code, flush=True)
            failures.append(label)
            continue
        heaps[workers] = m["heap"]
        results[workers] = m["rows"]
        print(f"  {label}: data set {m['heap'] / MiB:,.0f} MiB USS, built in "
              f"{m['build']:.1f} s", flush=True)
        cow = next((row for row in m["rows"]
                    if row["method"] == "cowfork" and "skipped" not in row), None)
        for row in m["rows"]:
            if "skipped" in row:
                print(f"    {row['method']:18} skipped: {row['skipped']}", flush=True)
                record("scaling", {"method": row["method"], "workers": workers,
                                   "skipped": row["skipped"]})
                continue
            count = max(len(row["worker_private"]), 1)
            private = sum(row["worker_private"]) / count
            print(f"    {row['label']:18} total PSS {row['total_pss'] / MiB:8,.0f} MiB  "
                  f"parent {row['parent_pss'] / MiB:7,.0f} MiB  private/worker "
                  f"{private / MiB:7,.1f} MiB  start-up {row['startup_seconds']:6.2f} s  "
                  f"work {row['work_seconds']:6.2f} s", flush=True)
            record("scaling", {
                "method": row["label"], "workers": workers, "data_mib": m["heap"] / MiB,
                "total_pss_mib": row["total_pss"] / MiB,
                "vs_cowfork": row["total_pss"] / cow["total_pss"] if cow else None,
                "parent_pss_mib": row["parent_pss"] / MiB,
                "private_per_worker_mib": private / MiB,
                "pss_per_worker_mib": sum(row["worker_pss"]) / count / MiB,
                "startup_s": row["startup_seconds"], "work_s": row["work_seconds"],
                "share_s": row["share_seconds"]})

    print()
    print("total PSS (MiB) of the parent, its workers and the processes each method started; "
          "ratio = method / cowfork (>1: cowfork smaller)")
    print(f"{'workers':>7} {'data MiB':>9} {'x(N+1)':>8}"
          + "".join(f" {m:>9} {'ratio':>6}" for m in methods))
    for workers in counts:
        rows = {row["method"]: row for row in results.get(workers, [])}
        if not rows:
            print(f"{workers:>7} {'(no figures)':>18}")
            continue
        heap = heaps[workers]
        cow = rows.get("cowfork")
        cow_pss = cow["total_pss"] if cow and "skipped" not in cow else None
        line = f"{workers:>7} {heap / MiB:9,.0f} {heap * (workers + 1) / MiB:8,.0f}"
        for method in methods:
            row = rows.get(method)
            if row is None or "skipped" in row:
                line += f" {'skipped':>9} {'-':>6}"
                continue
            ratio = row["total_pss"] / cow_pss if cow_pss else None
            line += f" {row['total_pss'] / MiB:9,.0f} " + (f"{ratio:6.2f}" if ratio else
                                                           f"{'-':>6}")
        print(line)
    print("x(N+1): the data set once per process, parent included")
    if failures:
        sys.exit(f"FAILED: {', '.join(failures)}")


if __name__ == "__main__":
    main()
