"""A fork server that loads the data itself, against workers that each load it.

``CowProcessPoolExecutor(4, loader=load, loader_args=(n,))``: the fork server, a new
interpreter, builds the data set once (tuples ``(i, str(i), [i])`` until about ``--gib``
GiB), shares it, and forks 4 workers from that state.  Against it: 4 ``spawn`` workers
(the same executor with ``mp_context=get_context("spawn")``), each of which runs the same
loader.  Each worker then reads every object of the data set once.  Measured: the time
until every worker has read it, and the total PSS of this process and all its
descendants (PSS, not RSS: a shared page counts once, split among those that map it).
The parent runs a thread meanwhile, as a Jupyter kernel or a server would: the loader's
fork server does not mind.  Ratio = spawn / loader (>1: the loader smaller or faster).
Target: the loader's total PSS at most half the spawn workers' (3.12+; on 3.10 and 3.11,
where reading an object writes its reference count, each worker copies what it reads).
Usage: python benchmarks/bench_loader.py [--gib 1.0] [--workers 4] [--quick]
"""

from __future__ import annotations

# Light imports at module level: spawned workers import this module to find the tasks.
import argparse
import os
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for path in (HERE, ROOT):  # this checkout's cowmp before any installed one
    if path not in sys.path:
        sys.path.insert(0, path)

#: bytes a tuple (i, str(i), [i]) takes with its objects, about (measured: 480 MiB for
#: 2,000,000 on 64-bit CPython)
BYTES_PER_ROW = 252


def load(rows: int) -> list:
    return [(i, str(i), [i]) for i in range(rows)]


def read_all(_: int) -> tuple[int, int]:
    """Read every object of the loaded data once; return (a checksum, this worker)."""
    import cowmp

    total = 0
    for number, text, box in cowmp.loaded():
        total += number + len(text) + box[0]
    return total, os.getpid()


def tree_pss() -> int:
    import psutil

    me = psutil.Process()
    total = 0
    for process in [me, *me.children(recursive=True)]:
        try:
            total += process.memory_full_info().pss
        except psutil.Error:
            pass
    return total


def run(label: str, workers: int, rows: int, context) -> dict:
    import cowmp

    start = time.perf_counter()
    with cowmp.CowProcessPoolExecutor(workers, mp_context=context, loader=load,
                                      loader_args=(rows,)) as ex:
        seen: set[int] = set()
        checksum = None
        while len(seen) < workers:  # until every worker has read the whole data set
            for value, pid in ex.map(read_all, range(workers), chunksize=1):
                seen.add(pid)
                checksum = value
        seconds = time.perf_counter() - start
        pss = tree_pss()
    return {"label": label, "seconds": seconds, "pss": pss, "checksum": checksum}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="about 50 MiB, 2 workers")
    args = parser.parse_args()
    if args.quick:
        args.gib, args.workers = 0.05, 2
    from _common import MiB, header, record

    import cowmp

    header("bench_loader: a fork server that loads the data, against spawn workers")
    if cowmp.FALLBACK:
        print("cowfork falls back to loky here (no fork): the loader runs in each worker; "
              "nothing to compare")
        return 0
    rows = int(args.gib * (1 << 30) / BYTES_PER_ROW)
    print(f"# {rows:,} rows (about {args.gib:g} GiB), {args.workers} workers; a thread "
          "runs in this process meanwhile")
    stop = threading.Event()
    host = threading.Thread(target=stop.wait, name="host-thread")
    host.start()
    try:
        loader = run("cowmp loader", args.workers, rows, None)
        spawned = run("spawn, each loads", args.workers, rows,
                      cowmp.get_context("spawn"))
    finally:
        stop.set()
        host.join()
    assert loader["checksum"] == spawned["checksum"], "the workers read different data"
    print(f"{'':22}{'seconds':>10}{'total PSS MiB':>16}")
    for result in (loader, spawned):
        print(f"{result['label']:22}{result['seconds']:10.2f}{result['pss'] / MiB:16.0f}")
    ratio = spawned["pss"] / loader["pss"]
    print(f"ratio spawn / loader: PSS {ratio:.2f}, time "
          f"{spawned['seconds'] / loader['seconds']:.2f}")
    record("loader", {"workers": args.workers, "gib": args.gib,
                      "loader_pss_mib": round(loader["pss"] / MiB),
                      "spawn_pss_mib": round(spawned["pss"] / MiB),
                      "loader_s": round(loader["seconds"], 2),
                      "spawn_s": round(spawned["seconds"], 2)})
    if sys.version_info >= (3, 12):
        verdict = "PASS" if ratio >= 2 else "FAIL"
    else:
        verdict = ("n/a: on this Python reading an object writes its reference count, so "
                   "each worker copies what it reads")
    print(f"target loader total PSS at most half the spawn workers' (3.12+): {verdict} "
          f"({loader['pss'] / MiB:.0f} MiB against {spawned['pss'] / MiB:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
