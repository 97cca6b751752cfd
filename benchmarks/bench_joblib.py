"""joblib's "cowfork" backend against its default, loky, with a large X: wall time and
total memory.

A process builds X (float64, ``--mib`` MiB, 64 features) and y, then runs one workload
twice under ``parallel_config(backend=..., n_jobs=--jobs)``: a first call (loky starts
its workers; cowfork forks an executor, as it does for every call) and a second one
(loky's workers are warm).  Workloads:

* ``cv``: scikit-learn's ``cross_validate(Ridge(), X, y, cv=--folds)``.  Each fold copies
  its rows of X (``X[train]``) in the worker whatever the backend;
* ``columns``: ``joblib.Parallel`` over blocks of 8 columns of X, each task reading its
  columns of the whole X (no copy): what sharing alone changes.

Backends, each in a fresh interpreter: ``loky`` (joblib's default: X is dumped once to a
memory-mapped file in /dev/shm, which the workers map), ``cowfork + share()`` (X and y
passed to ``cowmp.share()`` first: inherited by the fork, sent by reference),
``cowfork`` without ``share()`` (X pickled for each task, as loky does with
``max_nbytes=None``).  While a case runs, this process reads every 0.1 s the total PSS of
the case's process and all its descendants (``cowmp.memory``: never RSS), plus joblib's
memmapping files in /dev/shm, whose pages count in PSS only where a process maps them
(total = PSS outside those files + their size), and keeps the peak.  Also printed: the
bytes the case process wrote (``/proc/self/io``: pickles sent, files dumped) per call,
and whether the scores agree.  Ratios are loky / cowfork + share() (>1: cowfork faster,
or smaller).  For information: no target.  Needs joblib, scikit-learn and Linux.
Usage: python benchmarks/bench_joblib.py [--mib 512] [--folds 5] [--jobs 2]
       [--workloads cv,columns] [--quick]
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PATH = ([ROOT] if os.path.isfile(os.path.join(ROOT, "cowmp", "__init__.py")) else []) + [HERE]

BACKENDS = {
    "loky": "loky (joblib's default)",
    "share": "cowfork + share()",
    "plain": "cowfork, no share()",
}
FEATURES = 64
BLOCK = 8  # columns per task of the "columns" workload
SAMPLE = 0.1  # seconds between two memory readings
TIMEOUT = 1800  # seconds, per case
SHM_PATTERN = "/dev/shm/joblib_memmapping_folder_{pid}_*"


# -- the case, in a fresh interpreter ----------------------------------------------------


def written() -> int:
    """Bytes this process has passed to write() and its kin, every thread counted."""
    with open("/proc/self/io") as file:
        for line in file:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    return 0


def column_stats(X, start: int):
    """Mean and standard deviation of X's columns ``start`` to ``start + BLOCK``, read
    row block by row block (no copy of X)."""
    import numpy as np

    total = np.zeros(BLOCK)
    squares = np.zeros(BLOCK)
    for row in range(0, X.shape[0], 65536):
        part = X[row:row + 65536, start:start + BLOCK]
        total += part.sum(axis=0)
        squares += (part * part).sum(axis=0)
    mean = total / X.shape[0]
    return mean, np.sqrt(squares / X.shape[0] - mean * mean)


def case(workload: str, backend: str, mib: float, folds: int, jobs: int) -> None:
    """One case; print its figures as JSON, last."""
    import warnings

    import cowmp
    from cowmp import joblib_backend

    joblib_backend.install_import_hook()  # what `import cowmp` does once it is wired in
    warnings.simplefilter("ignore", cowmp.ForkWithThreadsWarning)  # OpenBLAS's threads
    warnings.simplefilter("ignore", cowmp.SharingWarning)  # before 3.12
    warnings.simplefilter("ignore", joblib_backend.LargeArgumentWarning)  # the point here
    import numpy as np
    from joblib import Parallel, delayed, parallel_config
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import cross_validate

    rng = np.random.default_rng(0)
    rows = max(int(mib * 2**20) // (8 * FEATURES), 1000)
    X = rng.standard_normal((rows, FEATURES))
    y = X @ rng.standard_normal(FEATURES) + rng.standard_normal(rows)
    if backend == "share":
        cowmp.share(X)
        cowmp.share(y)
    data_pss = cowmp.memory.process(copied=False).proportional
    name = "loky" if backend == "loky" else "cowfork"
    calls = []
    for _ in range(2):
        start, before = time.perf_counter(), written()
        with parallel_config(backend=name, n_jobs=jobs):
            if workload == "cv":
                out = cross_validate(Ridge(), X, y, cv=folds)["test_score"]
            else:
                stats = Parallel()(delayed(column_stats)(X, start)
                                   for start in range(0, FEATURES, BLOCK))
                out = np.concatenate([mean for mean, _ in stats])
        calls.append({"seconds": time.perf_counter() - start, "written": written() - before,
                      "result": [float(v) for v in out]})
    print(json.dumps({"rows": rows, "x_bytes": X.nbytes, "data_pss": data_pss,
                      "calls": calls}), flush=True)


# -- reading a case's memory from outside --------------------------------------------------


def shm_files(root: int) -> tuple[int, set[str]]:
    """Bytes of joblib's memmapping files of process ``root``, and their paths."""
    paths = set()
    size = 0
    for folder in glob.glob(SHM_PATTERN.format(pid=root)):
        for dirpath, _, names in os.walk(folder):
            for name in names:
                path = os.path.join(dirpath, name)
                try:
                    size += os.stat(path).st_size
                except OSError:
                    continue
                paths.add(path)
    return size, paths


def pss_in(pid: int, paths: set[str]) -> int:
    """PSS (bytes) of ``pid``'s mappings of the files ``paths``."""
    if not paths:
        return 0
    total, inside = 0, False
    try:
        with open(f"/proc/{pid}/smaps") as file:
            for line in file:
                first = line.split(maxsplit=1)[0]
                if "-" in first and not first.endswith(":"):  # a mapping's header line
                    fields = line.split(maxsplit=5)
                    inside = len(fields) == 6 and fields[5].strip() in paths
                elif inside and first == "Pss:":
                    total += int(line.split()[1]) * 1024
    except OSError:
        return 0
    return total


def reading(root: int) -> dict | None:
    """The case's memory now: its tree's PSS, the memmapping files, their sum."""
    from cowmp import memory

    try:
        rows = memory.tree(root)
    except (ProcessLookupError, PermissionError):
        return None
    pss = sum(row.proportional for row in rows)
    shm, paths = shm_files(root)
    mapped = sum(pss_in(row.pid, paths) for row in rows)
    return {"pss": pss, "shm": shm, "total": pss - mapped + shm, "processes": len(rows)}


def run_case(workload: str, backend: str, args: argparse.Namespace) -> dict:
    """Run a case in a fresh interpreter while reading its memory; its figures."""
    call = f"case({workload!r}, {backend!r}, {args.mib!r}, {args.folds}, {args.jobs})"
    code = f"import sys; sys.path[:0] = {PATH!r}; import bench_joblib; bench_joblib.{call}"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    peak: dict = {"total": 0}
    deadline = time.monotonic() + TIMEOUT
    while proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            sys.exit(f"FAILED: {workload} / {BACKENDS[backend]} took more than {TIMEOUT} s")
        now = reading(proc.pid)
        if now is not None and now["total"] > peak["total"]:
            peak = now
        time.sleep(SAMPLE)
    out, err = proc.communicate()
    label = f"{workload} / {BACKENDS[backend]}"
    if proc.returncode != 0:
        sys.exit(f"FAILED: {label}, exit code {proc.returncode}:\n{err}{out}")
    for line in err.splitlines():
        print(f"    ({label}) stderr: {line}")
    return {**json.loads(out.splitlines()[-1]), "peak": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=float, default=512, help="size of X, MiB")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--workloads", default="cv,columns")
    parser.add_argument("--quick", action="store_true", help="X of 16 MiB")
    args = parser.parse_args()
    if args.quick:
        args.mib = 16
    sys.path[:0] = PATH
    from _common import MiB, check_cowmp, header, record

    missing = [name for name in ("joblib", "sklearn") if importlib.util.find_spec(name) is None]
    if missing or not os.path.isdir("/proc/self"):
        print(f"skipped: needs {', '.join(missing) or 'Linux'} (pip install 'cowmp[joblib]')")
        return
    import joblib
    import sklearn

    workloads = [w for w in args.workloads.split(",") if w]
    header(f"joblib backends over X of {args.mib:g} MiB (float64, {FEATURES} features): "
           f"{', '.join(workloads)}; n_jobs={args.jobs}, each case in a fresh interpreter")
    print(f"# joblib {joblib.__version__}, scikit-learn {sklearn.__version__}; "
          f"cowmp from {check_cowmp(PATH)}")
    for workload in workloads:
        what = (f"cross_validate(Ridge(), cv={args.folds})" if workload == "cv" else
                f"Parallel over {FEATURES // BLOCK} blocks of {BLOCK} columns")
        print(f"\n## {workload}: {what}, called twice")
        results = {backend: run_case(workload, backend, args) for backend in BACKENDS}
        base = results["share"]
        print(f"{'backend':24} {'1st call s':>10} {'ratio':>6} {'2nd call s':>10} "
              f"{'ratio':>6} {'peak MiB':>9} {'ratio':>6} {'of it shm':>9} "
              f"{'written MiB/call':>16}  same result")
        reference = results["loky"]["calls"][0]["result"]
        for backend, label in BACKENDS.items():
            m = results[backend]
            first, second = (c["seconds"] for c in m["calls"])
            peak = m["peak"]
            write = max(c["written"] for c in m["calls"]) / MiB
            same = all(c["result"] == reference for c in m["calls"])
            print(f"{label:24} {first:10.2f} {first / base['calls'][0]['seconds']:6.2f} "
                  f"{second:10.2f} {second / base['calls'][1]['seconds']:6.2f} "
                  f"{peak['total'] / MiB:9.0f} {peak['total'] / base['peak']['total']:6.2f} "
                  f"{peak['shm'] / MiB:9.0f} {write:16.0f}  {same}", flush=True)
            record("joblib", {"workload": workload, "backend": label,
                              "x_mib": m["x_bytes"] / MiB, "jobs": args.jobs,
                              "first_call_s": first, "second_call_s": second,
                              "peak_total_mib": peak["total"] / MiB,
                              "peak_shm_mib": peak["shm"] / MiB,
                              "data_pss_mib": m["data_pss"] / MiB,
                              "written_per_call_mib": write, "same_result": same})
        print(f"(the case's own PSS holding X and y before the calls: "
              f"{base['data_pss'] / MiB:.0f} MiB; ratio = loky or the other / cowfork + "
              f"share(), >1: cowfork + share() faster or smaller)")


if __name__ == "__main__":
    main()
