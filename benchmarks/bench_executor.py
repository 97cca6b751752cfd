"""Throughput of many tiny tasks: cowmp's executor beside the usual pools, in one run.

Target: ``cowmp.CowProcessPoolExecutor`` maps 100,000 tiny tasks (``work(x) = x * 2``) on
2 workers at least as fast as the fastest of its peers, both when every library is called
with its default arguments (no chunksize: each one's own default or automatic chunking)
and when every library is given chunksize=512.  The peers:
``concurrent.futures.ProcessPoolExecutor`` with the ``fork`` context,
``multiprocessing.get_context("fork").Pool``, ``loky.get_reusable_executor`` and
``mpire.WorkerPool`` (skipped if mpire is not installed).

Each measurement runs in a fresh interpreter (importing cowmp patches parts of the
standard library, and a pool leaves threads and state behind), and the libraries are
alternated round-robin over ``--repeat`` rounds; medians are reported.  Per measurement:
``create`` is the constructor; ``warm-up`` one map, chunksize=1, of one task per worker
that sleeps 20 ms (so that each worker takes one): every worker has started and run a
task, whether the library starts them lazily (loky, the standard executor), in the
background (cowmp's fork server) or in the constructor (Pool); ``map`` (the figure
compared) runs from the call to map until the last result is consumed with ``list(...)``;
``shutdown`` is ``shutdown(wait=True)``, ``close(); join()`` or mpire's ``terminate()``.
mpire's default ``keep_alive=False`` restarts its workers at every map, so its map figure
includes starting them.  The function mapped is module-level and importable, so that it
is pickled by reference.  The cowmp measured is this checkout's (its location is printed).
Usage: python benchmarks/bench_executor.py [--tasks 100000] [--workers 2] [--repeat 3]
       [--only cowmp,futures,pool,loky,mpire]
"""

from __future__ import annotations

# Only light standard-library imports at module level: loky's workers import this module
# to find `work`.
import argparse
import importlib
import importlib.util
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
    "futures": "ProcessPoolExecutor (fork)",
    "pool": "fork context Pool",
    "loky": "loky reusable executor",
    "mpire": "mpire WorkerPool",
}
MODES = {
    "default": "default arguments (no chunksize given)",
    "chunk512": "chunksize=512 for every library",
}
CHUNKSIZE = 512
TIMEOUT = 3600  # seconds, per measurement


def work(x):
    return x * 2


def warm(x):
    time.sleep(0.02)
    return x


def child(library: str, mode: str, tasks: int, workers: int) -> None:
    """One measurement, in a fresh interpreter: print its timings as JSON."""
    from _common import POOL_IMPORTS, start_pool
    chunksize = CHUNKSIZE if mode == "chunk512" else None
    data = list(range(tasks))
    expected = [work(x) for x in data]
    for module in POOL_IMPORTS[library]:
        importlib.import_module(module)
    t0 = time.perf_counter()
    run, shutdown = start_pool(library, workers)
    t1 = time.perf_counter()
    warmed = list(run(warm, list(range(workers)), 1))
    t2 = time.perf_counter()
    results = list(run(work, data, chunksize))
    t3 = time.perf_counter()
    shutdown()
    t4 = time.perf_counter()
    if results != expected or warmed != list(range(workers)):
        raise SystemExit(f"{library}: wrong results")
    print(json.dumps({"create": t1 - t0, "warm": t2 - t1, "map": t3 - t2, "shutdown": t4 - t3}))


def measure(library: str, mode: str, tasks: int, workers: int) -> dict:
    from _common import run_child

    return run_child(PATH, "bench_executor",
                     f"child({library!r}, {mode!r}, {tasks}, {workers})",
                     f"{LIBRARIES[library]} ({mode})", TIMEOUT)


def check_cowmp() -> str:
    """Fail clearly if this checkout's cowmp has no executor; return where cowmp is."""
    sys.path[:0] = [HERE]
    from _common import check_cowmp

    return check_cowmp(PATH, "; leave 'cowmp' out with --only to measure the peers alone")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", default=",".join(LIBRARIES),
                        help="comma-separated subset of: " + ", ".join(LIBRARIES))
    args = parser.parse_args()
    requested = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in requested if name not in LIBRARIES]
    libraries = [name for name in LIBRARIES if name in requested]
    if unknown or not libraries:
        parser.error(f"--only: unknown {unknown}; choose among {', '.join(LIBRARIES)}")

    from _common import header, record

    header(f"Executor throughput: {args.tasks:,} tiny tasks on {args.workers} workers, "
           f"median of {args.repeat} rounds (round-robin, fresh interpreter per measurement)")
    if "cowmp" in libraries:
        print(f"# cowmp from {check_cowmp()}")
    if "mpire" in libraries and importlib.util.find_spec("mpire") is None:
        print("mpire: not importable, skipped (python -m pip install mpire)")
        libraries.remove("mpire")

    runs: dict[tuple[str, str], list[dict]] = {(lib, mode): [] for lib in libraries
                                               for mode in MODES}
    for r in range(args.repeat):
        order = libraries[r % len(libraries):] + libraries[:r % len(libraries)]
        for mode in MODES:
            for lib in order:
                m = measure(lib, mode, args.tasks, args.workers)
                runs[lib, mode].append(m)
                print(f"  round {r + 1}/{args.repeat}  {mode:8}  {lib:8}  map {m['map']:7.3f} s"
                      f"  (create {m['create']:.3f}, warm-up {m['warm']:.3f}, "
                      f"shutdown {m['shutdown']:.3f})", flush=True)

    for mode, title in MODES.items():
        med = {lib: {key: statistics.median(m[key] for m in runs[lib, mode])
                     for key in ("create", "warm", "map", "shutdown")} for lib in libraries}
        print()
        print(f"{title}: median seconds; ratio = peer map / cowmp map (>1: cowmp faster)")
        print(f"{'library':30} {'map s':>8} {'µs/task':>8} {'ratio':>7} "
              f"{'create s':>9} {'warm-up s':>10} {'shutdown s':>11}")
        cow = med["cowmp"]["map"] if "cowmp" in med else None
        for lib in libraries:
            t = med[lib]
            ratio = f"{t['map'] / cow:7.2f}" if cow else f"{'-':>7}"
            print(f"{LIBRARIES[lib]:30} {t['map']:8.3f} {t['map'] / args.tasks * 1e6:8.1f} "
                  f"{ratio} {t['create']:9.3f} {t['warm']:10.3f} {t['shutdown']:11.3f}")
            record("executor", {"mode": mode, "library": LIBRARIES[lib], "tasks": args.tasks,
                                "workers": args.workers, "rounds": args.repeat,
                                "map_s": t["map"], "per_task_us": t["map"] / args.tasks * 1e6,
                                "create_s": t["create"], "warm_up_s": t["warm"],
                                "shutdown_s": t["shutdown"]})
        peers = [med[lib]["map"] for lib in libraries if lib != "cowmp"]
        if cow is None or not peers:
            verdict = "n/a (cowmp and at least one peer are needed)"
        else:
            verdict = "PASS" if cow <= min(peers) else "FAIL"
        print(f"target cowmp at least as fast as the fastest peer ({mode}): {verdict}")
        record("executor", {"target": f"cowmp maps at least as fast as the fastest peer "
                                      f"({mode})",
                            "measured": f"{cow:.3f} s vs {min(peers):.3f} s"
                                        if cow is not None and peers else "-",
                            "result": verdict})


if __name__ == "__main__":
    main()
