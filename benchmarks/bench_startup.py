"""Start-up of an executor beside a large heap: time to the first result, and to all workers.

A parent holds ~1 GiB of Python objects (tuples ``(i, str(i), [i])``, built until its USS
has grown by ``--gib``).  For ``cowmp.CowProcessPoolExecutor(max_workers=8)`` and
``ProcessPoolExecutor(8)`` with the ``fork``, ``forkserver`` and ``spawn`` contexts, this
measures the time from the executor's creation until the first ``submit(f).result()``
returns, then until 8 more tasks (one per worker, each sleeping 0.2 s, so that every
worker must have started) are done.  Then, untimed, while 8 further tasks (1 s each) run,
the total PSS of the parent and all its children (workers, and the forkserver and resource
tracker where there are any).  Spawn and forkserver workers do not inherit the heap: that
is the point of the comparison (they start a fresh interpreter instead; a ``python -c``
parent has no main module for them to re-import).  Each executor kind runs in a fresh
interpreter that builds the heap itself.  Ratios are peer / cowmp (>1: cowmp faster, or
smaller).  For information: no target.
Usage: python benchmarks/bench_startup.py [--gib 1.0] [--workers 8]
"""

from __future__ import annotations

# Only light standard-library imports at module level: spawn and forkserver workers import
# this module to find the tasks, and should not pay for more than a script would.
import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# This checkout's cowmp before any installed one; then _common and this module.
PATH = ([ROOT] if os.path.isfile(os.path.join(ROOT, "cowmp", "__init__.py")) else []) + [HERE]

KINDS = {
    "cowmp": "cowmp.CowProcessPoolExecutor",
    "fork": "ProcessPoolExecutor (fork)",
    "forkserver": "ProcessPoolExecutor (forkserver)",
    "spawn": "ProcessPoolExecutor (spawn)",
}
NAP = 0.2  # seconds, each of the timed tasks
HOLD = 1.0  # seconds, each of the tasks that run while memory is read
STEP = 100_000  # tuples added between two USS readings (~24 MiB)
TIMEOUT = 1800  # seconds, per executor kind


def first():
    return os.getpid()


def nap(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def executor_factory(kind: str, workers: int):
    if kind == "cowmp":
        import cowmp

        return lambda: cowmp.CowProcessPoolExecutor(max_workers=workers)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context(kind)
    return lambda: ProcessPoolExecutor(workers, mp_context=ctx)


def total_pss() -> tuple[int, int]:
    import psutil

    me = psutil.Process()
    pss = count = 0
    for proc in [me, *me.children(recursive=True)]:
        try:
            pss += proc.memory_full_info().pss
            count += 1
        except psutil.NoSuchProcess:
            pass
    return pss, count


def child(kind: str, gib: float, workers: int) -> None:
    """One executor kind, in a fresh interpreter: print its figures as JSON, then leave."""
    from _common import uss

    make = executor_factory(kind, workers)  # imports done before the clock starts
    before = uss()
    data: list = []
    while uss() - before < gib * 2**30:
        n = len(data)
        data.extend([(i, str(i), [i]) for i in range(n, n + STEP)])
    heap = uss() - before

    t0 = time.perf_counter()
    ex = make()
    ex.submit(first).result()
    t_first = time.perf_counter() - t0
    pids = {f.result() for f in [ex.submit(nap, NAP) for _ in range(workers)]}
    t_all = time.perf_counter() - t0

    holding = [ex.submit(nap, HOLD) for _ in range(workers)]
    time.sleep(0.05)  # let the workers take their task
    pss, processes = total_pss()
    during = not any(f.done() for f in holding)
    for f in holding:
        f.result()
    ex.shutdown(wait=True)
    print(json.dumps({"objects": len(data), "heap": heap, "first": t_first, "all": t_all,
                      "workers_used": len(pids), "pss": pss, "processes": processes,
                      "pss_during_tasks": during}), flush=True)
    sys.stderr.flush()
    os._exit(0)  # skip tearing the heap down object by object


def measure(kind: str, gib: float, workers: int) -> dict:
    from _common import run_child

    return run_child(PATH, "bench_startup", f"child({kind!r}, {gib!r}, {workers})",
                     KINDS[kind], TIMEOUT)


def check_cowmp() -> str:
    """Fail clearly if this checkout's cowmp has no executor; return where cowmp is."""
    sys.path[:0] = [HERE]
    from _common import check_cowmp

    return check_cowmp(PATH, "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=1.0, help="heap size, GiB of USS")
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()

    from _common import MiB, header, record

    header(f"Executor start-up beside a {args.gib:g} GiB heap: {args.workers} workers, "
           f"each executor kind in a fresh interpreter")
    print(f"# cowmp from {check_cowmp()}")
    results = {}
    for kind in KINDS:
        m = results[kind] = measure(kind, args.gib, args.workers)
        print(f"  {kind:10}  heap {m['objects']:,} tuples, {m['heap'] / MiB:.0f} MiB USS;  "
              f"first result {m['first']:.3f} s, all workers {m['all']:.3f} s", flush=True)

    cow = results["cowmp"]
    print()
    print(f"one run per kind; ratio = peer / cowmp (>1: cowmp faster, or smaller); "
          f"tasks of the second column sleep {NAP} s")
    print(f"{'executor':34} {'first s':>8} {'ratio':>6} {'all s':>7} {'ratio':>6} "
          f"{'workers':>8} {'PSS MiB':>8} {'ratio':>6} {'procs':>6}")
    for kind, label in KINDS.items():
        m = results[kind]
        note = "" if m["pss_during_tasks"] else "  (PSS read after the tasks ended)"
        print(f"{label:34} {m['first']:8.3f} {m['first'] / cow['first']:6.2f} "
              f"{m['all']:7.3f} {m['all'] / cow['all']:6.2f} "
              f"{m['workers_used']:>8} {m['pss'] / MiB:8.0f} {m['pss'] / cow['pss']:6.2f} "
              f"{m['processes']:>6}{note}")
        record("startup", {"executor": label, "workers": args.workers,
                           "heap_mib": m["heap"] / MiB, "first_result_s": m["first"],
                           "all_workers_s": m["all"], "workers_used": m["workers_used"],
                           "total_pss_mib": m["pss"] / MiB, "processes": m["processes"],
                           "pss_read_during_tasks": m["pss_during_tasks"]})


if __name__ == "__main__":
    main()
