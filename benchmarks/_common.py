"""Shared by the benchmarks: building the inherited heap, measuring memory (USS, never RSS),
recording key figures for ``run_all.py``."""

from __future__ import annotations

import json
import os
import platform
import sys

import psutil

#: this checkout, whose cowmp a benchmark measures before any installed one (a benchmark
#: that imports this module first needs no path set-up of its own)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isfile(os.path.join(ROOT, "cowmp", "__init__.py")) and ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def build_heap(n: int) -> list:
    """docs/design.md §1's heap: ``n`` tuples ``(i, str(i), [i])`` (2,000,000 ≈ 480 MiB), as the
    demo builds it."""
    from cowmp.demo import make_data

    return make_data(n)


def uss(pid: int | None = None) -> int:
    return psutil.Process(pid or os.getpid()).memory_full_info().uss


def header(title: str) -> None:
    print(f"# {title}")
    print(f"# Python {platform.python_version()} ({sys.implementation.name}), "
          f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}")


MiB = 1024 * 1024

#: names a file to which :func:`record` appends its figures (set by ``run_all.py``)
RESULTS_ENV = "COWMP_BENCH_RESULTS"


def record(name: str, figures: dict) -> None:
    """Append ``{"bench": name, **figures}`` as one JSON line to the file that the
    environment variable ``COWMP_BENCH_RESULTS`` names; nothing when it is not set.

    ``run_all.py`` turns the records of a benchmark into tables (records with the same keys
    form one table, a row each) and charts.  Keys end with their unit: ``_mib`` (MiB),
    ``_s`` (seconds), ``_pct`` (percent), ``_us`` (microseconds)."""
    path = os.environ.get(RESULTS_ENV)
    if not path:
        return
    with open(path, "a", encoding="utf-8") as file:
        file.write(json.dumps({"bench": name, **figures}) + "\n")


def measure_child(fork, work) -> tuple[float, int]:
    """Fork with ``fork``; the child runs ``work()`` and waits while the parent reads its
    USS.  Return the seconds ``work`` took and the child's USS after it."""
    import time

    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = fork()
    if pid == 0:
        start = time.perf_counter()
        work()
        os.write(ready_w, f"{time.perf_counter() - start:.3f}".encode())
        os.read(go_r, 1)
        os._exit(0)
    elapsed = float(os.read(ready_r, 64))
    private = uss(pid)
    os.write(go_w, b"x")
    os.waitpid(pid, 0)
    for fd in (ready_r, ready_w, go_r, go_w):
        os.close(fd)
    return elapsed, private


def run_child(path: list[str], module: str, call: str, label: str, timeout: float) -> dict:
    """Run ``module.call`` in a fresh interpreter with ``path`` first on sys.path; return
    the JSON object it prints last.  Exits with a message naming ``label`` on failure."""
    import subprocess

    code = f"import sys; sys.path[:0] = {path!r}; import {module}; {module}.{call}"
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=timeout)
    except subprocess.TimeoutExpired:
        sys.exit(f"FAILED: {label} took more than {timeout} s")
    if out.returncode != 0:
        sys.exit(f"FAILED: {label}, exit code {out.returncode}:\n{out.stderr}{out.stdout}")
    for line in out.stderr.splitlines():
        print(f"    ({label}) stderr: {line}")
    return json.loads(out.stdout.splitlines()[-1])


def check_cowmp(path: list[str], hint: str = "") -> str:
    """Fail clearly if the cowmp found through ``path`` has no executor; return where it
    is."""
    sys.path[:0] = path
    try:
        import cowmp
    except ImportError as error:
        sys.exit(f"FAILED: cannot import cowmp: {error}")
    where = os.path.dirname(cowmp.__file__)
    if not hasattr(cowmp, "CowProcessPoolExecutor"):
        sys.exit(f"FAILED: cowmp.CowProcessPoolExecutor does not exist (cowmp imported from "
                 f"{where}){hint}")
    return where


# --- the pools compared by bench_executor and bench_shapes ------------------------------

#: modules each library needs, imported by a measurement before its clock starts
POOL_IMPORTS = {
    "cowmp": ["cowmp"],
    "futures": ["multiprocessing", "concurrent.futures"],
    "pool": ["multiprocessing", "multiprocessing.pool"],
    "loky": ["loky"],
    "mpire": ["mpire"],
}


def start_pool(library: str, workers: int):
    """Create the pool; return ``(run(fn, data, chunksize) -> results, shutdown())``."""
    if library in ("cowmp", "futures", "loky"):
        if library == "cowmp":
            import cowmp

            ex = cowmp.CowProcessPoolExecutor(max_workers=workers)
        elif library == "futures":
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            ex = ProcessPoolExecutor(max_workers=workers,
                                     mp_context=multiprocessing.get_context("fork"))
        else:
            import loky

            ex = loky.get_reusable_executor(max_workers=workers)

        def run(fn, data, chunksize):
            return ex.map(fn, data, chunksize=chunksize) if chunksize else ex.map(fn, data)

        return run, lambda: ex.shutdown(wait=True)
    if library == "pool":
        import multiprocessing

        pool = multiprocessing.get_context("fork").Pool(workers)

        def run(fn, data, chunksize):
            return pool.map(fn, data, chunksize=chunksize) if chunksize else pool.map(fn, data)

        def shutdown():
            pool.close()
            pool.join()

        return run, shutdown
    if library == "mpire":
        import mpire

        pool = mpire.WorkerPool(n_jobs=workers)

        def run(fn, data, chunksize):
            return pool.map(fn, data, chunk_size=chunksize) if chunksize else pool.map(fn, data)

        return run, pool.terminate  # what leaving `with WorkerPool(...)` does
    raise ValueError(f"unknown library {library!r}")


def report_servers(name: str, results: dict, phases: dict[str, str], plain: str,
                   cowmp: str, short: str, *, quick: bool, width: int = 16,
                   before_312: str = "") -> None:
    """Print and record a pre-fork server benchmark (bench_gunicorn, bench_uwsgi):
    ``results[label]`` holds, under each key of ``phases``, each worker's USS after it
    read the data, and ``total_pss``, ``stop_s``, ``requests`` and ``failures``.  Then
    the ratio ``plain`` / ``cowmp`` (``short`` names the latter) and the target (3.12+):
    ``cowmp``'s workers own at most a third of ``plain``'s, and no request failed."""
    import statistics

    print(f"{'worker USS MiB (mean)':24}" + "".join(f"{h:>{width}}" for h in phases.values())
          + f"{'total PSS MiB':>15}{'stop s':>8}{'requests':>10}{'failed':>8}")
    for label, result in results.items():
        means = [statistics.mean(result[phase].values()) / MiB for phase in phases]
        print(f"{label:24}" + "".join(f"{mean:{width}.1f}" for mean in means)
              + f"{result['total_pss'] / MiB:15.0f}{result['stop_s']:8.2f}"
              f"{result['requests']:10}{len(result['failures']):8}")
        record(name, {"server": label,
                      **{f"{phase}_uss_mib": round(mean, 1)
                         for phase, mean in zip(phases, means, strict=True)},
                      "total_pss_mib": round(result["total_pss"] / MiB),
                      "stop_s": round(result["stop_s"], 2),
                      "failed": len(result["failures"])})

    def every(result: dict) -> list[int]:
        return [uss for phase in phases for uss in result[phase].values()]

    worst, least = max(every(results[cowmp])), min(every(results[plain]))
    print(f"ratio plain / {short}: worker USS "
          f"{statistics.mean(every(results[plain])) / statistics.mean(every(results[cowmp])):.1f}"
          f", total PSS {results[plain]['total_pss'] / results[cowmp]['total_pss']:.2f}")
    failed = sum(len(result["failures"]) for result in results.values())
    if quick:
        verdict = ("n/a with --quick: its data set is too small against a worker's own "
                   "few MiB")
    elif sys.version_info >= (3, 12):
        verdict = "PASS" if worst * 3 <= least and not failed else "FAIL"
    else:
        verdict = ("n/a: on this Python reading an object writes its reference count, so "
                   f"each worker copies what it reads{before_312}")
    print(f"target {short} worker USS at most a third of plain's, no failed request "
          f"(3.12+): {verdict} ({worst / MiB:.1f} MiB at most against "
          f"{least / MiB:.1f} MiB at least; {failed} failed)")
