"""The life cycle of a pool, side by side: creating it, every worker's first result, and
shutting it down; then many create/map/shutdown cycles.

For ``cowmp.CowProcessPoolExecutor``, ``multiprocessing.get_context("fork").Pool`` and
``concurrent.futures.ProcessPoolExecutor`` (fork context), each measurement in a fresh
interpreter (importing cowmp patches parts of the standard library), the libraries
alternated round-robin over ``--repeat`` rounds, medians reported:

* ``create``: the constructor;
* ``all workers``: from then until one task per worker has returned.  The tasks wait at a
  barrier made before the pool (its workers inherit it), so each worker runs exactly one
  of them: this is the time until every worker is up and answering;
* ``shutdown``: ``shutdown(wait=True)`` (for Pool, ``close()`` and ``join()``);
* ``life cycle``: the sum of the three.  Target: cowmp's is at most Pool's;
* ``cycle``: ``--cycles`` times (in one interpreter) create, ``map`` of ``x * 2`` over 100
  numbers with default arguments, shutdown; the time per cycle.  Target: cowmp's is at
  most the slower of Pool's and ProcessPoolExecutor's (reported against both).

Ratios are peer / cowmp (>1: cowmp faster).  The exit status is 0 whether the targets are
met or not (PASS/FAIL is printed).
Usage: python benchmarks/bench_lifecycle.py [--workers 2] [--repeat 9] [--cycles 50]
"""

from __future__ import annotations

# Only light standard-library imports at module level: workers import this module.
import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# This checkout's cowmp before any installed one; then _common and this module.
PATH = ([ROOT] if os.path.isfile(os.path.join(ROOT, "cowmp", "__init__.py")) else []) + [HERE]

LIBRARIES = {
    "cowmp": "cowmp.CowProcessPoolExecutor",
    "pool": "fork context Pool",
    "futures": "ProcessPoolExecutor (fork)",
}
PHASES = ("create", "all workers", "shutdown")
TIMEOUT = 300  # seconds, per measurement
BARRIER = None  # made by child() before the pool, inherited by its workers


def meet(_: int) -> int:
    """Wait until every worker holds one of these tasks; return this worker's pid."""
    BARRIER.wait(30)
    return os.getpid()


def double(x: int) -> int:
    return x * 2


def child(library: str, workers: int, cycles: int) -> None:
    """One measurement: print the phases' seconds and the seconds per cycle as JSON."""
    global BARRIER
    import multiprocessing

    from _common import POOL_IMPORTS, start_pool

    for module in POOL_IMPORTS[library]:
        __import__(module)
    if library == "cowmp":
        import cowmp

        make = lambda: cowmp.CowProcessPoolExecutor(max_workers=workers)  # noqa: E731
    elif library == "futures":
        from concurrent.futures import ProcessPoolExecutor

        make = lambda: ProcessPoolExecutor(  # noqa: E731
            max_workers=workers, mp_context=multiprocessing.get_context("fork"))
    else:
        make = lambda: multiprocessing.get_context("fork").Pool(workers)  # noqa: E731
    BARRIER = multiprocessing.get_context("fork").Barrier(workers)

    t0 = time.perf_counter()
    pool = make()
    t1 = time.perf_counter()
    if library == "pool":
        pids = pool.map(meet, range(workers), chunksize=1)
    else:
        pids = [f.result() for f in [pool.submit(meet, i) for i in range(workers)]]
    t2 = time.perf_counter()
    if library == "pool":
        pool.close()
        pool.join()
    else:
        pool.shutdown(wait=True)
    t3 = time.perf_counter()
    if len(set(pids)) != workers:
        raise SystemExit(f"{library}: {len(set(pids))} workers answered, not {workers}")

    expected = [x * 2 for x in range(100)]
    start = time.perf_counter()
    for _ in range(cycles):
        run, shutdown = start_pool(library, workers)
        if list(run(double, range(100), None)) != expected:
            raise SystemExit(f"{library}: wrong results")
        shutdown()
    per_cycle = (time.perf_counter() - start) / cycles
    print(json.dumps({"create": t1 - t0, "all workers": t2 - t1, "shutdown": t3 - t2,
                      "cycle": per_cycle}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--cycles", type=int, default=50)
    args = parser.parse_args()
    if args.workers < 1 or args.repeat < 1 or args.cycles < 1:
        parser.error("--workers, --repeat and --cycles must be at least 1")
    sys.path[:0] = [HERE]
    from _common import check_cowmp, header, record, run_child

    import cowmp

    if cowmp.FALLBACK:
        sys.exit("bench_lifecycle compares pools of forked workers, and cowmp falls back to "
                 "loky's spawned workers here (no os.fork, or COWMP_FORCE_FALLBACK=1)")
    header(f"Life cycle of a pool of {args.workers} workers, median of {args.repeat} rounds "
           f"(round-robin, fresh interpreter per measurement); {args.cycles} "
           "create/map/shutdown cycles per measurement")
    print(f"# cowmp from {check_cowmp(PATH)}")
    runs: dict[str, list[dict]] = {lib: [] for lib in LIBRARIES}
    names = list(LIBRARIES)
    for r in range(args.repeat):
        for lib in names[r % len(names):] + names[:r % len(names)]:
            runs[lib].append(run_child(PATH, "bench_lifecycle",
                                       f"child({lib!r}, {args.workers}, {args.cycles})",
                                       LIBRARIES[lib], TIMEOUT))
    med = {lib: {key: statistics.median(m[key] for m in runs[lib])
                 for key in (*PHASES, "cycle")} for lib in LIBRARIES}
    for lib in LIBRARIES:  # the median of the sums, not the sum of the medians
        med[lib]["life cycle"] = statistics.median(sum(m[p] for p in PHASES)
                                                   for m in runs[lib])
    print()
    print("median milliseconds; ratio = peer / cowmp (>1: cowmp faster)")
    print(f"{'phase':12} " + " ".join(f"{lib:>9}" for lib in LIBRARIES)
          + f" {'pool/cowmp':>10} {'futures/cowmp':>13}")
    for key in (*PHASES, "life cycle", "cycle"):
        t = {lib: med[lib][key] for lib in LIBRARIES}
        print(f"{key:12} " + " ".join(f"{t[lib] * 1e3:9.2f}" for lib in LIBRARIES)
              + f" {t['pool'] / t['cowmp']:10.2f} {t['futures'] / t['cowmp']:13.2f}")
        record("lifecycle", {"phase": key, **{f"{lib}_ms": t[lib] * 1e3 for lib in LIBRARIES},
                             "pool_over_cowmp": t["pool"] / t["cowmp"],
                             "futures_over_cowmp": t["futures"] / t["cowmp"]})
    targets = [
        ("life cycle (create, every worker's first result, shutdown) at most Pool's",
         med["cowmp"]["life cycle"] <= med["pool"]["life cycle"],
         f"{med['cowmp']['life cycle'] * 1e3:.2f} ms against "
         f"{med['pool']['life cycle'] * 1e3:.2f} ms"),
        ("create/map/shutdown cycle at most the slower of Pool's and "
         "ProcessPoolExecutor's",
         med["cowmp"]["cycle"] <= max(med["pool"]["cycle"], med["futures"]["cycle"]),
         f"{med['cowmp']['cycle'] * 1e3:.2f} ms against Pool {med['pool']['cycle'] * 1e3:.2f}"
         f" ms and ProcessPoolExecutor {med['futures']['cycle'] * 1e3:.2f} ms"),
    ]
    print()
    for text, met, measured in targets:
        verdict = "PASS" if met else "FAIL"
        print(f"target {text}: {verdict} ({measured})")
        record("lifecycle", {"target": text, "measured": measured, "result": verdict})


if __name__ == "__main__":
    main()
