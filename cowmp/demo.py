"""``python -m cowmp demo``: how much of an inherited heap do forked workers copy?

The parent builds a heap of tuples ``(i, str(i), [i])``, then starts the same workers
under the standard ``fork`` start method and under ``cowfork``.  Each worker runs the
garbage collector over what it inherited (three full collections) and waits; the parent
then reads every worker's private memory (USS) and prints the two side by side.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass

from . import memory
from .context import FALLBACK

MiB = 1024 * 1024


@dataclass
class Row:
    method: str
    private_per_worker: list[int]
    start_seconds: float
    work_seconds: float


def _worker(done, release) -> None:  # type: ignore[no-untyped-def]
    gc.enable()
    start = time.perf_counter()
    for _ in range(3):
        gc.collect()
    done.put(time.perf_counter() - start)
    release.wait(120)


def run_method(method: str, workers: int) -> Row:
    import multiprocessing

    import cowmp

    ctx = cowmp.get_context(method) if method == "cowfork" else multiprocessing.get_context(method)
    done, release = ctx.Queue(), ctx.Event()
    start = time.perf_counter()
    procs = [ctx.Process(target=_worker, args=(done, release), daemon=True)
             for _ in range(workers)]
    for p in procs:
        p.start()
    started = time.perf_counter() - start
    work = max(done.get(timeout=600) for _ in procs)
    private = [memory.private_bytes(p.pid) for p in procs]
    release.set()
    for p in procs:
        p.join(60)
    return Row(method, private, started, work)


def build_heap(objects: int) -> list:
    return [(i, str(i), [i]) for i in range(objects)]


def main(objects: int, workers: int, out=print) -> list[Row]:  # type: ignore[no-untyped-def]
    before = memory.private_bytes()
    started = time.perf_counter()
    data = build_heap(objects)
    heap = memory.private_bytes() - before
    out(f"heap: {objects:,} tuples (i, str(i), [i]) = {heap / MiB:,.0f} MiB, built in "
        f"{time.perf_counter() - started:.1f} s; {workers} workers each run 3 full GC passes")
    if FALLBACK:
        out("note: os.fork is unavailable or COWMP_FORCE_FALLBACK is set: cowfork spawns "
            "through loky here and nothing is shared")
    rows = [run_method("fork", workers) if not FALLBACK else None, run_method("cowfork", workers)]
    rows = [r for r in rows if r is not None]
    out(f"{'start method':14}{'private/worker':>16}{'% of heap':>11}{'all workers':>13}"
        f"{'start s':>9}{'GC s':>8}")
    for row in rows:
        mean = sum(row.private_per_worker) / len(row.private_per_worker)
        out(f"{row.method:14}{mean / MiB:13,.1f} MiB{mean / heap:10.1%}"
            f"{sum(row.private_per_worker) / MiB:9,.0f} MiB{row.start_seconds:9.2f}"
            f"{row.work_seconds:8.2f}")
    if len(rows) == 2:
        fork_total = sum(rows[0].private_per_worker)
        cow_total = sum(rows[1].private_per_worker)
        out(f"cowfork workers copied {cow_total / max(fork_total, 1):.1%} of what fork "
            f"workers copied ({(fork_total - cow_total) / MiB:,.0f} MiB saved)")
    del data
    return rows
