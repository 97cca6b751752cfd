"""More than one machine: Dask workers each with a cowmp executor that loads the data once,
against the same data loaded without sharing.

A ``distributed.LocalCluster`` of 2 worker processes (each stands for a machine), each
Dask worker running ``--workers`` tasks at once; every task reads the whole data set (a
dict of str -> str of about ``--mib`` MiB).  Three ways to hold the data, each on a fresh
cluster:

* **cowmp**: ``cowmp.dask.CowExecutorPlugin(loader=build)``: per Dask worker, a fork
  server (a new interpreter) builds the data once and forks ``--workers`` processes that
  share it; tasks annotated ``dask.annotate(executor="cowmp")`` run there.
* **Dask threads**: a plugin builds the data once in each Dask worker process and tasks
  run on Dask's own threads: one copy per Dask worker, but one interpreter (the GIL), no
  process parallelism.
* **ProcessPoolExecutor**: the standard executor (``spawn`` context: the Dask worker runs
  threads) registered as the worker's executor the same way, with an initializer that
  builds the data in each of its ``--workers`` processes: one copy per process.

Reported per Dask worker: how many times the data was built, and the total PSS of the Dask
worker process and all its descendants (``cowmp.memory``: PSS, never RSS), read once every
task has run; and the time until the data was ready on every worker and the time of the
tasks; every task's checksum is checked.  Targets (Python 3.12+, where reading shared
objects copies nothing): cowmp's total PSS below the ProcessPoolExecutor's, and close to
the threads' one copy per worker.  On 3.10 and 3.11 the cowmp processes copy the pages
they read (reading writes reference counts).
Usage: python benchmarks/bench_dask.py [--mib 200] [--workers 2] [--rounds 2] [--quick]
"""

from __future__ import annotations

# Light imports at module level: Dask's worker processes, the fork servers and the spawned
# processes import this module again (as the main script, and by name for the tasks).
import argparse
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for path in (HERE, ROOT):  # this checkout's cowmp before any installed one
    if path not in sys.path:
        sys.path.insert(0, path)

#: bytes an entry of :func:`build` takes with its strings (measured on 64-bit CPython 3.12)
BYTES_PER_ENTRY = 175
DASK_WORKERS = 2

#: in each process that holds the data as a global (a Dask worker, a spawned process)
TABLE: dict | None = None


def build(entries: int, log: str) -> dict[str, str]:
    """The data set; appends "pid parent-pid" to ``log`` (one line per build)."""
    with open(log, "a") as f:
        f.write(f"{os.getpid()} {os.getppid()}\n")
    return {f"{i:010d}": f"value-{i:010d}-" + "x" * 16 for i in range(entries)}


def expected_checksum(entries: int) -> int:
    """What :func:`checksum` gives for ``build(entries)``: keys of 10 characters, values
    of 33 (below 10**10 entries)."""
    return entries * (10 + 33)


def checksum(table: dict[str, str]) -> int:
    return sum(len(key) + len(value) for key, value in table.items())


def read_loaded(_: int) -> tuple[int, int]:
    """A task on the cowmp executor: read all the data its fork server loaded."""
    import cowmp

    return checksum(cowmp.loaded()), os.getpid()


def install_table(entries: int, log: str) -> None:
    """Build the data as this process's global (a Dask worker, a spawned process)."""
    global TABLE
    TABLE = build(entries, log)


def read_global(_: int) -> tuple[int, int]:
    """A task reading the data of the process it runs in."""
    assert TABLE is not None, "no data in this process"
    return checksum(TABLE), os.getpid()


def built_here(log: str) -> int:
    """How many times the data was built by this process or its children."""
    me = os.getpid()
    with open(log) as f:
        return sum(me in (int(pid), int(ppid)) for pid, ppid in (line.split() for line in f))


def wait_for_builds(log: str, count: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while built_here(log) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the data was built {built_here(log)} times, not {count}")
        time.sleep(0.05)


def tree_pss() -> tuple[int, int, int]:
    """(PSS of this process, total PSS of its descendants, how many they are)."""
    import cowmp.memory

    own, *descendants = cowmp.memory.tree()
    return own.proportional, cowmp.memory.totals(descendants)["pss"] or 0, len(descendants)


def plugins():  # type: ignore[no-untyped-def]
    """The two plugins of the baselines (distributed imported only here)."""
    from distributed import WorkerPlugin

    class ThreadsPlugin(WorkerPlugin):
        name = "bench-threads"

        def __init__(self, entries: int, log: str) -> None:
            self.entries, self.log = entries, log

        def setup(self, worker) -> None:  # type: ignore[no-untyped-def]
            import bench_dask

            bench_dask.install_table(self.entries, self.log)

    class ProcessPoolPlugin(WorkerPlugin):
        name = "bench-pool"

        def __init__(self, workers: int, entries: int, log: str) -> None:
            self.workers, self.entries, self.log = workers, entries, log

        async def setup(self, worker) -> None:  # type: ignore[no-untyped-def]
            import asyncio
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            import bench_dask

            pool = ProcessPoolExecutor(self.workers, multiprocessing.get_context("spawn"),
                                       initializer=bench_dask.install_table,
                                       initargs=(self.entries, self.log))
            # as many tasks as processes at once: each submit starts a process
            for future in [pool.submit(os.getpid) for _ in range(self.workers)]:
                await asyncio.wrap_future(future)
            await asyncio.to_thread(bench_dask.wait_for_builds, self.log, self.workers)
            worker.executors["pool"] = pool

        async def teardown(self, worker) -> None:  # type: ignore[no-untyped-def]
            import asyncio

            pool = worker.executors.pop("pool", None)
            if pool is not None:
                await asyncio.to_thread(pool.shutdown, True, cancel_futures=True)

    return ThreadsPlugin, ProcessPoolPlugin


def run(label: str, workers: int, entries: int, tasks: int) -> dict:
    """One way of holding the data, on a fresh cluster."""
    import bench_dask  # the tasks and helpers by name, not as __main__'s copies
    import dask
    from distributed import Client, LocalCluster

    from cowmp.dask import CowExecutorPlugin

    threads_plugin, pool_plugin = plugins()
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, "builds")
        open(log, "w").close()
        with dask.config.set({"distributed.worker.daemon": False}), LocalCluster(
                n_workers=DASK_WORKERS, threads_per_worker=workers, processes=True,
                host="127.0.0.1", dashboard_address=None) as cluster, Client(cluster) as client:
            start = time.perf_counter()
            if label == "cowmp":
                client.register_plugin(CowExecutorPlugin(
                    max_workers=workers, loader=bench_dask.build, loader_args=(entries, log)))
                executor, task = "cowmp", bench_dask.read_loaded
            elif label == "Dask threads":
                client.register_plugin(threads_plugin(entries, log))
                executor, task = "default", bench_dask.read_global
            else:
                client.register_plugin(pool_plugin(workers, entries, log))
                executor, task = "pool", bench_dask.read_global
            ready = time.perf_counter() - start
            start = time.perf_counter()
            with dask.annotate(executor=executor):
                results = client.gather(client.map(task, range(tasks), pure=False))
            seconds = time.perf_counter() - start
            builds = client.run(bench_dask.built_here, log)
            memory = client.run(bench_dask.tree_pss)
    addresses = sorted(memory)
    return {
        "label": label,
        "builds": [builds[address] for address in addresses],
        "own": [memory[address][0] for address in addresses],
        "children": [memory[address][1] for address in addresses],
        "pss": [memory[address][0] + memory[address][1] for address in addresses],
        "processes": [memory[address][2] for address in addresses],
        "ready": ready, "seconds": seconds,
        "checksums": {value for value, _ in results},
        "runners": len({pid for _, pid in results}),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=float, default=200.0,
                        help="size of the data set (default 200)")
    parser.add_argument("--workers", type=int, default=2,
                        help="processes (or threads) per Dask worker (default 2)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="tasks per process: each reads the whole data set (default 2)")
    parser.add_argument("--quick", action="store_true", help="about 20 MiB, 1 round")
    args = parser.parse_args()
    if args.quick:
        args.mib, args.rounds = 20.0, 1
    if args.workers < 1 or args.rounds < 1 or args.mib <= 0:
        parser.error("--mib, --workers and --rounds must be positive")
    try:
        import distributed  # noqa: F401
    except ImportError:
        print("distributed is not installed (pip install 'cowmp[dask]'): nothing to measure")
        return 0
    from _common import MiB, header, record

    import cowmp

    header("bench_dask: Dask workers with a cowmp executor that loads the data once")
    if cowmp.FALLBACK:
        print("cowfork falls back to loky here (no fork): nothing is shared; nothing to "
              "compare")
        return 0
    entries = int(args.mib * MiB / BYTES_PER_ENTRY)
    tasks = DASK_WORKERS * args.workers * args.rounds
    print(f"# {DASK_WORKERS} Dask workers x {args.workers} processes or threads; a dict of "
          f"{entries:,} str -> str (about {args.mib:g} MiB); {tasks} tasks, each reads all "
          "of it")
    expected = expected_checksum(entries)
    outcomes = [run(label, args.workers, entries, tasks)
                for label in ("cowmp", "Dask threads", "ProcessPoolExecutor")]
    print("# PSS per Dask worker: its own process + its descendants (the mean of the "
          f"{DASK_WORKERS}); builds: per Dask worker")
    width = 21
    print(f"{'':{width}}{'builds':>8}{'PSS MiB per Dask worker':>30}{'total PSS MiB':>15}"
          f"{'ready s':>9}{'tasks s':>9}  results")
    for out in outcomes:
        ok = out["checksums"] == {expected}
        own, children = (sum(out[key]) / len(out[key]) / MiB for key in ("own", "children"))
        per_worker = (f"{own:,.0f} + {children:,.0f} = {own + children:,.0f}"
                      f" ({sum(out['processes']) // DASK_WORKERS} proc.)")
        builds = " + ".join(map(str, out["builds"]))
        print(f"{out['label']:{width}}{builds:>8}{per_worker:>30}"
              f"{sum(out['pss']) / MiB:>15,.0f}{out['ready']:>9.2f}{out['seconds']:>9.2f}"
              f"  {'equal' if ok else 'WRONG'} ({out['runners']} processes ran them)")
        record("dask", {"setup": out["label"], "builds": sum(out["builds"]),
                        "dask_worker_pss_mib": round(own), "descendants_pss_mib": round(children),
                        "total_pss_mib": round(sum(out["pss"]) / MiB),
                        "ready_s": round(out["ready"], 2), "tasks_s": round(out["seconds"], 2),
                        "results_equal": ok})
        if not ok:
            print(f"FAILED: {out['label']} read {out['checksums']}, expected {expected}")
            return 1
    cow, threads, pool = (sum(out["pss"]) for out in outcomes)
    print(f"ratios: ProcessPoolExecutor / cowmp total PSS {pool / cow:.2f}; "
          f"cowmp / Dask threads total PSS {cow / threads:.2f}; Dask threads / cowmp task "
          f"time {outcomes[1]['seconds'] / outcomes[0]['seconds']:.2f}")
    if (os.cpu_count() or 1) < DASK_WORKERS * args.workers:
        print(f"(this machine has {os.cpu_count()} cores: the {DASK_WORKERS} Dask workers' "
              "threads already keep them busy, so processes cannot run the tasks faster)")
    target = "cowmp's total PSS below the ProcessPoolExecutor's (3.12+)"
    if sys.version_info >= (3, 12):
        verdict = "PASS" if cow < pool else "FAIL"
    else:
        verdict = ("n/a: on this Python reading an object writes its reference count, so "
                   "each process copies what it reads")
    print(f"target {target}: {verdict} ({cow / MiB:,.0f} MiB against {pool / MiB:,.0f} MiB)")
    record("dask", {"target": target, "measured": f"{cow / MiB:,.0f} / {pool / MiB:,.0f} MiB",
                    "result": verdict})
    return 0


if __name__ == "__main__":
    sys.exit(main())
