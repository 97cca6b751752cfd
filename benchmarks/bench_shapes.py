"""End-to-end time of ``map`` with default arguments over a matrix of work shapes: cowmp's
executor beside the usual pools, and beside itself with a hand-tuned chunksize.

Targets, in every cell of the matrix and in both modes: ``cowmp.CowProcessPoolExecutor``
called with its default arguments (no chunksize) maps at least as fast as the fastest of
``multiprocessing.get_context("fork").Pool`` and ``concurrent.futures.ProcessPoolExecutor``
(fork context), both also at their defaults; and within 10% of cowmp given its best
chunksize for the cell (the fastest median among 1, 4, 16, 64, 256 and 1024, leaving out
those larger than the task count or giving more than 5,000 chunks).  Also measured, at
their defaults: ``loky.get_reusable_executor`` and ``mpire.WorkerPool`` (skipped, with the
reason printed, if mpire cannot be imported; mpire's default ``keep_alive=False`` restarts
its workers at every map, so its warm figure includes starting them).

A cell is a shape of work: task duration (pure CPU spun on the thread's CPU clock, or a
sleep) x task count x workers x input kind (list, range or generator).  Every task returns
``x * 2``; the functions are module-level (``functools.partial`` of one for the
parameters), so they are pickled by reference.  Two modes per cell, from one measurement:
``end-to-end`` = creating the pool + the first map (from the call until ``list(...)`` has
every result) + shutdown (after the second map); ``warm`` = the second map, the same work
as the first, which was its warm-up.  Each measurement runs in a fresh interpreter
(importing cowmp patches parts of the standard library, and a pool leaves threads and
state behind); the variants of a cell are alternated round-robin over ``--repeat`` rounds
and medians are reported.  The ratio ``peers/cowmp`` is the faster of Pool and
ProcessPoolExecutor divided by cowmp (>1: cowmp faster); ``best/cowmp`` is cowmp with its
best chunksize divided by cowmp at its default (>= 0.91 meets the target).  The ratios
are drawn as a heat map in ``benchmarks/results/shapes.png`` if matplotlib is installed.
The exit status is 0 whether the targets are met or not (PASS/FAIL is printed).

Usage: python benchmarks/bench_shapes.py [--quick | --long] [--repeat 3]
       [--only cowmp,best,futures,pool,loky,mpire] [--cells tiny,skewed,...]
``--quick`` measures a much smaller matrix, one round unless ``--repeat`` is given;
``--long`` adds the ends of the range (a million 1 µs tasks, 10 s tasks), where the
variants that would take minutes are left out with the reason printed.
"""

from __future__ import annotations

# Only light standard-library imports at module level: workers import this module to
# find the mapped functions.
import argparse
import functools
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
    "best": "cowmp, best chunksize",
    "futures": "ProcessPoolExecutor (fork)",
    "pool": "fork context Pool",
    "loky": "loky reusable executor",
    "mpire": "mpire WorkerPool",
}
MODES = {"e2e": "end to end (create + map + shutdown)", "warm": "warm (map after a warm-up map)"}
CHUNKSIZES = (1, 4, 16, 64, 256, 1024)
MAX_CHUNKS = 5000  # chunksizes giving more chunks than this are not tried for "best"
TIMEOUT = 600  # seconds, per measurement


# --- the work ----------------------------------------------------------------------------

def double(x):
    return x * 2


def spin(seconds, x):
    """Burn ``seconds`` of this thread's CPU time."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass
    return x * 2


def nap(seconds, x):
    time.sleep(seconds)
    return x * 2


def skewed(fast, slow, x):
    """One task in 100 (x = 0, 100, ...) spins ``slow`` seconds, the others ``fast``."""
    return spin(slow if x % 100 == 0 else fast, x)


# name: (label, function, task count, workers, input kind)
CELLS = {
    "one": ("one 0.1 s sleep, 2 workers", functools.partial(nap, 0.1), 1, 2, "list"),
    "tiny": ("1 µs CPU (x*2) x 10,000, 2 workers", double, 10_000, 2, "list"),
    "tiny-1w": ("1 µs CPU (x*2) x 10,000, 1 worker", double, 10_000, 1, "list"),
    "cpu1ms": ("1 ms CPU x 400, 2 workers", functools.partial(spin, 0.001), 400, 2, "list"),
    "cpu1ms-range": ("1 ms CPU x 400, 2 workers, range", functools.partial(spin, 0.001),
                     400, 2, "range"),
    "cpu1ms-gen": ("1 ms CPU x 400, 2 workers, generator", functools.partial(spin, 0.001),
                   400, 2, "generator"),
    "cpu50ms": ("50 ms CPU x 12, 2 workers", functools.partial(spin, 0.05), 12, 2, "list"),
    "sleep8": ("0.25 s sleep x 8, 4 workers", functools.partial(nap, 0.25), 8, 4, "list"),
    "sleep3": ("0.2 s sleep x 3, 4 workers", functools.partial(nap, 0.2), 3, 4, "list"),
    "sleep-8w": ("20 ms sleep x 64, 8 workers", functools.partial(nap, 0.02), 64, 8, "list"),
    "skewed": ("0.1 ms CPU, 1 in 100 100 ms, x 200, 2 workers",
               functools.partial(skewed, 0.0001, 0.1), 200, 2, "list"),
    "skewed-gen": ("0.1 ms CPU, 1 in 100 100 ms, x 400, 2 workers, generator",
                   functools.partial(skewed, 0.0001, 0.1), 400, 2, "generator"),
}
#: the ends of the range, with ``--long`` (minutes more)
LONG_CELLS = {
    "million": ("1 µs CPU (x*2) x 1,000,000, 2 workers, range", double, 1_000_000, 2,
                "range"),
    "ten-s": ("10 s sleep x 2, 2 workers", functools.partial(nap, 10.0), 2, 2, "list"),
}
#: variants left out of a cell, and why (printed)
SKIPPED = {
    "million": {lib: f"{name} sends a message per task: over a minute for a million, "
                     "far slower than Pool" for lib, name in
                (("futures", "ProcessPoolExecutor"), ("loky", "loky's executor"))},
}
QUICK_CELLS = {
    "q-tiny": ("1 µs CPU (x*2) x 2,000, 2 workers", double, 2_000, 2, "list"),
    "q-cpu1ms-gen": ("1 ms CPU x 100, 2 workers, generator", functools.partial(spin, 0.001),
                     100, 2, "generator"),
    "q-sleep3": ("0.2 s sleep x 3, 4 workers", functools.partial(nap, 0.2), 3, 4, "list"),
    "q-skewed": ("0.1 ms CPU, 1 in 100 100 ms, x 200, 2 workers",
                 functools.partial(skewed, 0.0001, 0.1), 200, 2, "list"),
}
ALL_CELLS = {**CELLS, **LONG_CELLS, **QUICK_CELLS}


def make_input(kind: str, tasks: int):
    if kind == "list":
        return list(range(tasks))
    if kind == "range":
        return range(tasks)
    return (x for x in range(tasks))


def chunksizes(tasks: int) -> list[int]:
    sizes = [cs for cs in CHUNKSIZES if cs <= tasks and tasks / cs <= MAX_CHUNKS]
    return sizes or [max(cs for cs in CHUNKSIZES if cs <= tasks)]


# --- one measurement, in a fresh interpreter ---------------------------------------------

def child(cell: str, library: str, chunksize: int | None) -> None:
    """One measurement: print ``{"e2e": s, "warm": s}`` as JSON."""
    from _common import POOL_IMPORTS, start_pool
    _, fn, tasks, workers, kind = ALL_CELLS[cell]
    expected = [x * 2 for x in range(tasks)]
    for module in POOL_IMPORTS[library]:
        importlib.import_module(module)
    first_input, second_input = make_input(kind, tasks), make_input(kind, tasks)
    t0 = time.perf_counter()
    run, shutdown = start_pool(library, workers)
    first = list(run(fn, first_input, chunksize))
    t1 = time.perf_counter()
    second = list(run(fn, second_input, chunksize))
    t2 = time.perf_counter()
    shutdown()
    t3 = time.perf_counter()
    if first != expected or second != expected:
        raise SystemExit(f"{library}: wrong results")
    print(json.dumps({"e2e": (t1 - t0) + (t3 - t2), "warm": t2 - t1}))


def measure(cell: str, library: str, chunksize: int | None) -> dict:
    from _common import run_child

    label = f"{LIBRARIES[library]} on {cell}" + (f", chunksize={chunksize}" if chunksize else "")
    return run_child(PATH, "bench_shapes", f"child({cell!r}, {library!r}, {chunksize!r})",
                     label, TIMEOUT)


def check_cowmp() -> str:
    """Fail clearly if this checkout's cowmp has no executor; return where cowmp is."""
    sys.path[:0] = [HERE]
    from _common import check_cowmp

    return check_cowmp(PATH, "; leave 'cowmp' and 'best' out with --only to measure the "
                             "peers alone")


# --- report ------------------------------------------------------------------------------

def heat_map(rows: list[str], columns: list[str], ratios: list[list[float | None]],
             path: str, title: str) -> str:
    """Draw the ratios (log scale, 1 white); return a message saying what happened."""
    try:
        import matplotlib
    except ImportError:
        return ("no heat map: matplotlib is not installed "
                "(pip install 'cowmp[plot]' or pip install matplotlib)")
    import math

    matplotlib.use("Agg")
    from matplotlib import pyplot
    from matplotlib.colors import TwoSlopeNorm

    values = [[math.log2(v) if v else math.nan for v in row] for row in ratios]
    finite = [abs(v) for row in values for v in row if not math.isnan(v)] or [1.0]
    span = max(max(finite), 0.1)
    figure, axes = pyplot.subplots(figsize=(2.0 + 1.6 * len(columns), 1.0 + 0.45 * len(rows)))
    image = axes.imshow(values, cmap="RdYlGn", aspect="auto",
                        norm=TwoSlopeNorm(vcenter=0.0, vmin=-span, vmax=span))
    for i, row in enumerate(ratios):
        for j, v in enumerate(row):
            axes.text(j, i, f"{v:.2f}" if v else "-", ha="center", va="center", fontsize=9)
    axes.set_xticks(range(len(columns)), columns, fontsize=8)
    axes.set_yticks(range(len(rows)), rows, fontsize=8)
    axes.set_title(title, fontsize=9)
    bar = figure.colorbar(image, ax=axes)
    bar.set_label("log2(ratio); >0: cowmp default faster", fontsize=8)
    figure.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    figure.savefig(path, dpi=120)
    pyplot.close(figure)
    return f"heat map written to {os.path.relpath(path)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a much smaller matrix")
    parser.add_argument("--long", action="store_true",
                        help="add a million tiny tasks and 10 s tasks (minutes more)")
    parser.add_argument("--repeat", type=int, default=None,
                        help="rounds (default 3, or 1 with --quick)")
    parser.add_argument("--only", default=",".join(LIBRARIES),
                        help="comma-separated subset of: " + ", ".join(LIBRARIES))
    parser.add_argument("--cells", default=None,
                        help="comma-separated subset of the matrix's cells (default: all)")
    args = parser.parse_args()
    repeat = args.repeat or (1 if args.quick else 3)
    requested = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in requested if name not in LIBRARIES]
    libraries = [name for name in LIBRARIES if name in requested]
    if unknown or not libraries:
        parser.error(f"--only: unknown {unknown}; choose among {', '.join(LIBRARIES)}")
    cells = QUICK_CELLS if args.quick else {**CELLS, **(LONG_CELLS if args.long else {})}
    if args.cells:
        wanted = [name.strip() for name in args.cells.split(",") if name.strip()]
        missing = [name for name in wanted if name not in cells]
        if missing or not wanted:
            parser.error(f"--cells: unknown {missing}; choose among {', '.join(cells)}")
        cells = {name: cells[name] for name in wanted}

    from _common import header, record

    header(f"Map with default arguments over {len(cells)} shapes of work, median of {repeat} "
           f"round(s) (round-robin, fresh interpreter per measurement)")
    if "cowmp" in libraries or "best" in libraries:
        print(f"# cowmp from {check_cowmp()}")
    if "mpire" in libraries and importlib.util.find_spec("mpire") is None:
        print("mpire: not importable, skipped (python -m pip install mpire)")
        libraries.remove("mpire")

    for cell in cells:
        for lib, why in SKIPPED.get(cell, {}).items():
            if lib in libraries:
                print(f"{cell}: {LIBRARIES[lib]} left out: {why}")
    # variant: (library key, library to start, chunksize)
    variants = {cell: [(lib, lib, None) for lib in libraries
                       if lib != "best" and lib not in SKIPPED.get(cell, {})]
                + ([("best", "cowmp", cs) for cs in chunksizes(cells[cell][2])]
                   if "best" in libraries else [])
                for cell in cells}
    runs: dict[tuple[str, str, int | None], list[dict]] = {
        (cell, lib, cs): [] for cell in cells for lib, _, cs in variants[cell]}
    started = time.perf_counter()
    for r in range(repeat):
        for cell in cells:
            vs = variants[cell]
            order = vs[r % len(vs):] + vs[:r % len(vs)]
            for lib, start_lib, cs in order:
                m = measure(cell, start_lib, cs)
                runs[cell, lib, cs].append(m)
                name = lib + (f"@{cs}" if cs else "")
                print(f"  round {r + 1}/{repeat}  {cell:13} {name:10} e2e {m['e2e']:7.3f} s"
                      f"  warm {m['warm']:7.3f} s", flush=True)
    print(f"# measured in {time.perf_counter() - started:.0f} s")

    shown = [lib for lib in LIBRARIES if lib in libraries]
    heat_columns: list[str] = []
    heat: dict[str, list[float | None]] = {cell: [] for cell in cells}
    for mode, title in MODES.items():
        med: dict[str, dict[str, float]] = {cell: {} for cell in cells}
        best_cs: dict[str, int] = {}
        for cell in cells:
            for lib, _, cs in variants[cell]:
                value = statistics.median(m[mode] for m in runs[cell, lib, cs])
                if lib != "best":
                    med[cell][lib] = value
                elif "best" not in med[cell] or value < med[cell]["best"]:
                    med[cell]["best"], best_cs[cell] = value, cs
        print()
        print(f"{title}: median seconds; peers/cowmp = min(pool, futures) / cowmp "
              f"(>1: cowmp faster); best/cowmp = cowmp best chunksize / cowmp default")
        print(f"{'cell':13} " + " ".join(f"{lib:>8}" for lib in shown)
              + f" {'best cs':>7} {'peers/cowmp':>11} {'best/cowmp':>10}")
        fails = {"peers": [], "best": []}
        for cell in cells:
            t = med[cell]
            cow = t.get("cowmp")
            peers = [t[lib] for lib in ("pool", "futures") if lib in t]
            peer_ratio = min(peers) / cow if cow and peers else None
            best_ratio = t["best"] / cow if cow and "best" in t else None
            if peer_ratio is not None and peer_ratio < 1:
                fails["peers"].append(cell)
            if best_ratio is not None and best_ratio < 1 / 1.1:
                fails["best"].append(cell)
            heat[cell] += [peer_ratio, best_ratio]
            print(f"{cell:13} " + " ".join(f"{t[lib]:8.3f}" if lib in t else f"{'-':>8}"
                                            for lib in shown)
                  + f" {best_cs.get(cell, '-'):>7} "
                  + (f"{peer_ratio:11.2f}" if peer_ratio else f"{'-':>11}") + " "
                  + (f"{best_ratio:10.2f}" if best_ratio else f"{'-':>10}"))
            _, _, tasks, workers, kind = cells[cell]
            record("shapes", {"mode": mode, "cell": cell, "tasks": tasks, "workers": workers,
                              "input": kind, "rounds": repeat,
                              **{f"{lib}_s": t.get(lib) for lib in shown},
                              "best_chunksize": best_cs.get(cell),
                              "peers_over_cowmp": peer_ratio, "best_over_cowmp": best_ratio})
        heat_columns += [f"{mode}\npeers/cowmp", f"{mode}\nbest/cowmp"]
        targets = {
            "peers": ("cowmp default at least as fast as the faster of Pool and "
                      "ProcessPoolExecutor in every cell", ("cowmp", "pool"), ("futures",)),
            "best": ("cowmp default within 10% of cowmp's best chunksize in every cell",
                     ("cowmp", "best"), ()),
        }
        for key, (text, needed, alternative) in targets.items():
            have = all(lib in libraries for lib in needed) or (
                "cowmp" in libraries and any(lib in libraries for lib in alternative))
            if not have:
                verdict = "n/a (the libraries it compares are not all measured)"
            else:
                verdict = "PASS" if not fails[key] else "FAIL"
            failed = f" (failed: {', '.join(fails[key])})" if fails[key] else ""
            print(f"target {text} ({mode}): {verdict}{failed}")
            record("shapes", {"target": f"{text} ({mode})",
                              "measured": f"{len(cells) - len(fails[key])}/{len(cells)} cells",
                              "result": verdict})
    print()
    from _common import RESULTS_ENV

    if os.environ.get(RESULTS_ENV):
        print("heat map: drawn by run_all.py beside its results")
    else:
        print(heat_map(list(cells), heat_columns, [heat[cell] for cell in cells],
                       os.path.join(HERE, "results", "shapes.png"),
                       "ratio of medians (>1: cowmp default faster)"))


if __name__ == "__main__":
    main()
