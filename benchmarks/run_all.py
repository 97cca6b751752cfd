"""Run every benchmark of this directory; write RESULTS.md with their figures, the Python
version and machine, and PNG charts.

Each ``bench_*.py`` runs as a subprocess of this interpreter (``sys.executable``); its
output is captured (and echoed), and the key figures it records through
``_common.record`` (into the file that ``COWMP_BENCH_RESULTS`` names) become the tables
and charts.  A benchmark that fails or times out is reported in RESULTS.md, the others
still run, and the command exits with status 1 at the end.  Charts need matplotlib
(``pip install 'cowmp[plot]'``); without it RESULTS.md is written without them.
PNGs go to ``results/`` beside the ``--out`` file.

``--quick`` gives every benchmark small sizes, so that the whole run takes a few minutes:
a smoke test, not figures to publish (it writes to ``--out`` all the same: give another
path to keep the published RESULTS.md).
Usage: python benchmarks/run_all.py [--quick] [--out benchmarks/RESULTS.md]
       [--only NAME ...] [--timeout SECONDS] [--quiet]
"""

from __future__ import annotations

import argparse
import ast
import datetime
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS_ENV = "COWMP_BENCH_RESULTS"  # as in _common.py
PLOT_HINT = "pip install 'cowmp[plot]'"

#: the order of RESULTS.md (the headline first); benchmarks not named here follow, by name
ORDER = ["scaling", "gc", "share", "exit", "parent_policy", "startup", "executor", "lifecycle",
         "shapes", "loader", "joblib", "gunicorn", "uwsgi", "dask"]
#: arguments of --quick, by benchmark (a full run uses each benchmark's defaults)
QUICK_ARGS = {
    "scaling": ["--gib", "0.1", "--workers", "1,2,4"],
    "gc": ["--objects", "200000"],
    "share": ["--objects", "200000"],
    "exit": ["--entries", "300000"],
    "parent_policy": ["--children", "20", "--objects", "100000"],
    "startup": ["--gib", "0.1", "--workers", "2"],
    "executor": ["--tasks", "10000", "--repeat", "1"],
    "shapes": ["--quick"],
    "lifecycle": ["--repeat", "5", "--cycles", "10"],
    "loader": ["--quick"],
    "joblib": ["--quick"],
    "gunicorn": ["--quick"],
    "uwsgi": ["--quick"],
    "dask": ["--quick"],
}
FULL_TIMEOUT = 1800.0  # seconds, per benchmark
QUICK_TIMEOUT = 600.0


@dataclass
class Outcome:
    """One benchmark's run."""

    name: str  # "gc" for bench_gc.py
    script: str
    args: list[str]
    summary: str = ""
    returncode: int | None = None
    timed_out: bool = False
    seconds: float = 0.0
    stdout: str = ""
    stderr: str = ""
    records: list[dict] = field(default_factory=list)
    charts: list[tuple[str, str]] = field(default_factory=list)  # (file name, alt text)
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.timed_out or self.returncode != 0

    @property
    def status(self) -> str:
        if self.timed_out:
            return "FAILED (timed out)"
        return "ok" if self.returncode == 0 else f"FAILED (exit code {self.returncode})"


# --- discovering and running -------------------------------------------------------------


def discover() -> dict[str, str]:
    """Benchmark name -> script path, in the order of RESULTS.md."""
    found = {entry[len("bench_"):-len(".py")]: os.path.join(HERE, entry)
             for entry in os.listdir(HERE)
             if entry.startswith("bench_") and entry.endswith(".py")}
    order = [name for name in ORDER if name in found]
    order += sorted(name for name in found if name not in ORDER)
    return {name: found[name] for name in order}


def summary_of(script: str) -> str:
    """The first paragraph of the script's docstring, on one line, in markdown."""
    with open(script, encoding="utf-8") as file:
        doc = ast.get_docstring(ast.parse(file.read())) or ""
    first = doc.strip().split("\n\n")[0]
    return " ".join(first.split()).replace("``", "`")


def run_one(outcome: Outcome, results_file: str, timeout: float, echo: bool) -> None:
    """Run one benchmark; fill ``outcome`` with its exit status, output and records."""
    env = dict(os.environ, **{RESULTS_ENV: results_file})
    env["PYTHONUNBUFFERED"] = "1"
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, outcome.script, *outcome.args], cwd=ROOT,
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, errors="replace",
                            start_new_session=True)  # its own group: a timeout ends it all

    def expire() -> None:
        outcome.timed_out = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    timer = threading.Timer(timeout, expire)
    timer.start()
    errors: list[str] = []
    reader = threading.Thread(target=lambda: errors.extend(proc.stderr), daemon=True)
    reader.start()
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if echo:
            print(f"    {line}", end="", flush=True)
    proc.wait()
    timer.cancel()
    reader.join()
    outcome.seconds = time.perf_counter() - start
    outcome.returncode = proc.returncode
    outcome.stdout, outcome.stderr = "".join(lines), "".join(errors)
    if outcome.timed_out:
        outcome.notes.append(f"Stopped after {timeout:.0f} s (--timeout).")
    outcome.records = read_records(results_file, outcome)


def read_records(path: str, outcome: Outcome) -> list[dict]:
    records = []
    if not os.path.exists(path):
        return records
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                outcome.notes.append(f"Record {number} is not JSON and was left out.")
                continue
            if item.get("bench") != outcome.name:
                outcome.notes.append(f"Record {number} names benchmark {item.get('bench')!r} "
                                     f"and was left out.")
                continue
            records.append({key: value for key, value in item.items() if key != "bench"})
    return records


# --- the environment ---------------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            for line in file:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Hardware", "cpu model") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> str:
    parts = [platform.platform(), cpu_model()]
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
        parts.append(f"{os.cpu_count()} logical cores"
                     + (f" ({physical} physical)" if physical else ""))
        parts.append(f"{psutil.virtual_memory().total / 2**30:.1f} GiB RAM")
    except ImportError:
        parts.append(f"{os.cpu_count()} logical cores")
    return "; ".join(parts)


def python() -> str:
    text = f"{platform.python_implementation()} {platform.python_version()}"
    build = " ".join(platform.python_build())
    extra = []
    if hasattr(sys, "_is_gil_enabled") and not sys._is_gil_enabled():
        extra.append("free-threaded")
    # (not the interpreter's path: it names this machine's directories, nothing more)
    return (f"{text} ({build}; {platform.python_compiler()}{'; ' if extra else ''}"
            f"{', '.join(extra)})")


def git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "--no-optional-locks", "-C", ROOT, *args],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def cowmp_version(out_path: str) -> str:
    code = (f"import sys; sys.path.insert(0, {ROOT!r}); import cowmp; "
            "print(getattr(cowmp, '__version__', '?'))")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=120)
        version = out.stdout.strip() if out.returncode == 0 else "not importable"
    except (OSError, subprocess.TimeoutExpired):
        version = "not importable"
    text = version
    commit = git("rev-parse", "--short", "HEAD")
    if commit:
        text += f", commit {commit.strip()}"
        status = git("status", "--porcelain", "--", "cowmp", "benchmarks") or ""
        ignored = (os.path.relpath(out_path, ROOT),
                   os.path.relpath(os.path.join(os.path.dirname(out_path), "results"), ROOT))
        changed = [line[3:].strip() for line in status.splitlines() if line[3:].strip()]
        changed = [name for name in changed if not name.startswith(ignored)]
        if changed:
            shown = ", ".join(f"`{name}`" for name in changed[:6])
            more = f" and {len(changed) - 6} more" if len(changed) > 6 else ""
            text += f" with uncommitted changes to {shown}{more}"
    return text


# --- tables ------------------------------------------------------------------------------

UNITS = {"_mib": "MiB", "_s": "s", "_pct": "%", "_us": "µs"}


def column(key: str) -> str:
    for suffix, unit in UNITS.items():
        if key.endswith(suffix):
            return f"{key[:-len(suffix)].replace('_', ' ')} ({unit})"
    return key.replace("_", " ")


def cell(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        size = abs(value)
        if size == 0:
            return "0"
        if size >= 100:
            return f"{value:,.0f}"
        if size >= 10:
            return f"{value:.1f}"
        if size >= 1:
            return f"{value:.2f}"
        return f"{value:.3f}" if size >= 0.001 else f"{value:.2g}"
    if isinstance(value, (list, dict)):
        value = json.dumps(value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def tables(records: list[dict]) -> list[list[str]]:
    """Records with the same keys form one table, in the order they first appear."""
    groups: dict[tuple[str, ...], list[dict]] = {}
    for item in records:
        groups.setdefault(tuple(item), []).append(item)
    return [markdown_table([column(key) for key in keys],
                           [[cell(item[key]) for key in keys] for item in items])
            for keys, items in groups.items()]


def scaling_pivot(records: list[dict]) -> list[list[str]]:
    """bench_scaling: total PSS, workers by method, beside the data set once per process."""
    data = [item for item in records if "total_pss_mib" in item]
    if not data:
        return []
    methods = list(dict.fromkeys(item["method"] for item in data))
    counts = sorted({item["workers"] for item in records if "workers" in item})
    rows = []
    for workers in counts:
        here = {item["method"]: item for item in data if item["workers"] == workers}
        heap = next((item["data_mib"] for item in here.values()), None)
        row = [str(workers), cell(heap * (workers + 1)) if heap else "–"]
        for method in methods:
            item = here.get(method)
            if item is None:
                row.append("skipped")
            elif item.get("vs_cowfork") and not method.startswith("cowfork"):
                row.append(f"{cell(item['total_pss_mib'])} ({item['vs_cowfork']:.2f}×)")
            else:
                row.append(cell(item["total_pss_mib"]))
        rows.append(row)
    header = ["workers", "data set × (workers + 1) (MiB)",
              *(f"{method} (MiB)" for method in methods)]
    return [markdown_table(header, rows)]


PIVOTS = {"scaling": scaling_pivot}
PIVOT_NOTES = {
    "scaling": "Total PSS of the parent, its workers and the processes each start method "
               "started, in MiB; in brackets, how many times cowfork's total.",
}


# --- charts ------------------------------------------------------------------------------

COLORS = {"fork": "#c44e52", "forkserver": "#dd8452", "spawn": "#8172b2", "loky": "#937860",
          "cowfork": "#55a868", "cowmp": "#55a868"}


def color(label: str) -> str | None:
    for key in ("cowfork", "cowmp", "forkserver", "spawn", "loky", "fork"):
        if key in label:
            return COLORS[key]
    return None


def load_pyplot():  # type: ignore[no-untyped-def]
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def mib_axis(axes) -> None:  # type: ignore[no-untyped-def]
    from matplotlib.ticker import FuncFormatter

    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))


def bar_labels(axes, bars, fmt: str) -> None:  # type: ignore[no-untyped-def]
    axes.bar_label(bars, labels=[fmt.format(bar.get_height()) for bar in bars], padding=2,
                   fontsize=8)


def subtitle() -> str:
    return f"Python {platform.python_version()}, {os.cpu_count()} cores"


def finish(plt, figure, axes, path: str, ylabel: str, title: str) -> None:  # type: ignore[no-untyped-def]
    """A bar chart's common end: y label, title, horizontal grid, saved."""
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize=11)
    axes.grid(axis="y", alpha=0.3)
    save(plt, figure, path)


def chart_scaling(plt, records: list[dict], path: str) -> str | None:  # type: ignore[no-untyped-def]
    data = [item for item in records if "total_pss_mib" in item]
    if not data:
        return None
    figure, axes = plt.subplots(figsize=(8.5, 5.2))
    counts = sorted({item["workers"] for item in data})
    heaps = {item["workers"]: item["data_mib"] for item in data}
    for method in dict.fromkeys(item["method"] for item in data):
        points = sorted((item["workers"], item["total_pss_mib"]) for item in data
                        if item["method"] == method)
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        axes.plot(xs, ys, marker="o", linewidth=2, label=method, color=color(method))
        axes.annotate(f"{ys[-1]:,.0f}", (xs[-1], ys[-1]), textcoords="offset points",
                      xytext=(6, 0), va="center", fontsize=8)
    axes.plot(counts, [heaps[n] * (n + 1) for n in counts], linestyle="--", color="grey",
              label="data set × (workers + 1)")
    axes.set_xscale("log", base=2)
    axes.set_xticks(counts, [str(n) for n in counts])
    axes.minorticks_off()
    axes.set_xlim(counts[0] / 1.25, counts[-1] * 1.35)
    axes.set_ylim(bottom=0)
    mib_axis(axes)
    axes.set_xlabel("workers")
    axes.set_ylabel("total PSS: parent + workers + helpers (MiB)")
    heap = max(heaps.values())
    axes.set_title(f"Memory of a pool over a {heap:,.0f} MiB data set, by start method\n"
                   f"(each worker reads every object, then collects; {subtitle()})",
                   fontsize=11)
    axes.grid(alpha=0.3)
    axes.legend()
    save(plt, figure, path)
    return "Total PSS against the number of workers, by start method"


def chart_gc(plt, records: list[dict], path: str) -> str | None:  # type: ignore[no-untyped-def]
    data = [item for item in records if "child_private_pct" in item]
    if not data:
        return None
    figure, axes = plt.subplots(figsize=(6, 4.5))
    labels = [item["method"] for item in data]
    bars = axes.bar(labels, [item["child_private_pct"] for item in data],
                    color=[color(label) for label in labels], width=0.5)
    axes.bar_label(bars, labels=[f"{item['child_private_pct']:.1f}%\n"
                                 f"({item['child_private_mib']:,.0f} MiB)" for item in data],
                   padding=2, fontsize=9)
    axes.set_ylim(0, 100)
    axes.set_xlabel("start method of the child")
    finish(plt, figure, axes, path, "child's private memory (USS, % of the heap)",
           f"A forked child runs three full collections over a\n"
           f"{data[0]['heap_mib']:,.0f} MiB inherited heap ({subtitle()})")
    return "Child private memory after garbage collection, fork against cowfork"


def chart_share(plt, records: list[dict], path: str) -> str | None:  # type: ignore[no-untyped-def]
    data = [item for item in records if "child_private_mib" in item]
    if not data:
        return None
    figure, axes = plt.subplots(figsize=(7, 4.5))
    labels = ["the parent's heap\n(inherited)",
              *(f"child's private memory\n{item['case']}" for item in data)]
    values = [data[0]["heap_mib"], *(item["child_private_mib"] for item in data)]
    shades = ["#999999", *("#c44e52" if item["case"].startswith("no") else "#55a868"
                           for item in data)]
    bars = axes.bar(labels, values, width=0.55, color=shades)
    bar_labels(axes, bars, "{:,.1f}")
    axes.set_ylim(0, max(values) * 1.15)
    mib_axis(axes)
    finish(plt, figure, axes, path, "MiB (USS)",
           f"A cowfork child reads every object, then collects:\n"
           f"with and without cowmp.share() ({subtitle()})")
    return "Child private memory with and without cowmp.share()"


def chart_startup(plt, records: list[dict], path: str) -> str | None:  # type: ignore[no-untyped-def]
    data = [item for item in records if "first_result_s" in item]
    if not data:
        return None
    import numpy

    labels = [item["executor"].replace(" (", "\n(").replace("cowmp.", "cowmp.\n")
              for item in data]
    xs = numpy.arange(len(data))
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    width = 0.38
    first = left.bar(xs - width / 2, [item["first_result_s"] for item in data], width,
                     label="first result", color="#4c72b0")
    every = left.bar(xs + width / 2, [item["all_workers_s"] for item in data], width,
                     label="a task done by every worker", color="#dd8452")
    bar_labels(left, first, "{:.2f}")
    bar_labels(left, every, "{:.2f}")
    left.set_ylabel("seconds since the executor was created")
    left.set_title("Time to the first result and to all workers")
    left.legend(fontsize=8)
    pss = right.bar(xs, [item["total_pss_mib"] for item in data], 0.55,
                    color=[color(item["executor"]) for item in data])
    bar_labels(right, pss, "{:,.0f}")
    right.axhline(data[0]["heap_mib"], linestyle="--", color="grey",
                  label=f"the parent's heap ({data[0]['heap_mib']:,.0f} MiB)")
    mib_axis(right)
    right.set_ylabel("total PSS: parent + all children (MiB)")
    right.set_title("Memory while every worker runs a task")
    right.legend(fontsize=8, loc="lower right")
    for axes in (left, right):
        axes.set_xticks(xs, labels, fontsize=8)
        axes.set_ylim(top=axes.get_ylim()[1] * 1.12)
        axes.grid(axis="y", alpha=0.3)
    figure.suptitle(f"Executor start-up with {data[0]['workers']} workers beside a "
                    f"{data[0]['heap_mib']:,.0f} MiB heap ({subtitle()})", fontsize=11)
    save(plt, figure, path)
    return "Executor start-up time and total PSS, by executor"


def chart_executor(plt, records: list[dict], path: str) -> str | None:  # type: ignore[no-untyped-def]
    data = [item for item in records if "map_s" in item]
    if not data:
        return None
    import numpy

    libraries = list(dict.fromkeys(item["library"] for item in data))
    modes = list(dict.fromkeys(item["mode"] for item in data))
    names = {"default": "default arguments", "chunk512": "chunksize=512"}
    xs = numpy.arange(len(libraries))
    width = 0.8 / len(modes)
    figure, axes = plt.subplots(figsize=(10, 5))
    shades = ("#4c72b0", "#dd8452", "#55a868", "#8172b2")
    for index, mode in enumerate(modes):
        shade = shades[index % len(shades)]
        times = {item["library"]: item["map_s"] for item in data if item["mode"] == mode}
        bars = axes.bar(xs + (index - (len(modes) - 1) / 2) * width,
                        [times.get(lib, 0) for lib in libraries], width,
                        label=names.get(mode, mode), color=shade)
        bar_labels(axes, bars, "{:.3g}")
    axes.set_yscale("log")
    from matplotlib.ticker import FuncFormatter

    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axes.set_xticks(xs, [lib.replace(" (", "\n(").replace("cowmp.", "cowmp.\n")
                         for lib in libraries], fontsize=8)
    axes.set_ylabel("map time, median (seconds, log scale)")
    axes.set_title(f"Mapping {data[0]['tasks']:,} tiny tasks on {data[0]['workers']} workers, "
                   f"median of {data[0]['rounds']} round{'s' if data[0]['rounds'] > 1 else ''}"
                   f" ({subtitle()})", fontsize=11)
    axes.legend(title="every library called with", fontsize=8)
    axes.grid(axis="y", alpha=0.3)
    save(plt, figure, path)
    return "Map time by library, with default arguments and chunksize=512"


def chart_exit(plt, records: list[dict], path: str) -> str | None:  # type: ignore[no-untyped-def]
    data = [item for item in records if "minor_faults" in item]
    if not data:
        return None
    figure, axes = plt.subplots(figsize=(7, 4.5))
    labels = [item["child"].replace(" + ", "\n+ ") for item in data]
    shades = ["#c44e52", "#55a868", "#dd8452", "#8172b2"]
    bars = axes.bar(labels, [item["minor_faults"] for item in data], width=0.5,
                    color=[shades[index % len(shades)] for index in range(len(data))])
    bar_labels(axes, bars, "{:,.0f}")
    mib_axis(axes)
    finish(plt, figure, axes, path, "minor page faults of the child (count)",
           f"Exit of a forked child of a {data[0]['dict_entries']:,}-entry dict "
           f"after SIGTERM\n({subtitle()})")
    return "Minor page faults of a forked child's exit"


def chart_parent_policy(plt, records: list[dict], path: str) -> str | None:  # type: ignore[no-untyped-def]
    data = [item for item in records if "parent_growth_mib" in item]
    if not data:
        return None
    import numpy

    scenarios = list(dict.fromkeys(item["scenario"] for item in data))
    methods = list(dict.fromkeys(item["method"] for item in data))
    xs = numpy.arange(len(scenarios))
    width = 0.8 / len(methods)
    shades = {"fork": "#c44e52", "cowfork (auto)": "#55a868", "cowfork (frozen)": "#8172b2"}
    figure, axes = plt.subplots(figsize=(9, 4.8))
    for index, method in enumerate(methods):
        growth = {item["scenario"]: item["parent_growth_mib"] for item in data
                  if item["method"] == method}
        bars = axes.bar(xs + (index - (len(methods) - 1) / 2) * width,
                        [growth.get(s, 0) for s in scenarios], width, label=method,
                        color=shades.get(method))
        bar_labels(axes, bars, "{:,.0f}")
    axes.set_xticks(xs, scenarios)
    axes.set_xlabel("scenario (garbage made between forks, held across a fork, "
                    "with a long-lived sibling)", fontsize=9)
    axes.set_ylabel("parent's USS growth (MiB)")
    axes.set_title(f"A parent starts {data[0]['children']} short-lived children "
                   f"({data[0]['heap_tuples']:,}-tuple heap; {subtitle()})", fontsize=11)
    axes.legend(title="start method (gc policy)", fontsize=8)
    axes.grid(axis="y", alpha=0.3)
    save(plt, figure, path)
    return "Parent memory growth by scenario and gc policy"


def save(plt, figure, path: str) -> None:  # type: ignore[no-untyped-def]
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def chart_shapes(plt, records: list[dict], path: str) -> str | None:  # type: ignore[no-untyped-def]
    """The ratios of bench_shapes as its own heat map (cells by mode)."""
    data = [item for item in records if "cell" in item]
    if not data:
        return None
    sys.path.insert(0, HERE)
    from bench_shapes import heat_map

    cells = list(dict.fromkeys(item["cell"] for item in data))
    modes = list(dict.fromkeys(item["mode"] for item in data))
    by_key = {(item["cell"], item["mode"]): item for item in data}
    ratios = [[by_key.get((cell, mode), {}).get(key) for mode in modes
               for key in ("peers_over_cowmp", "best_over_cowmp")] for cell in cells]
    columns = [f"{mode}\n{name}" for mode in modes for name in ("peers/cowmp", "best/cowmp")]
    heat_map(cells, columns, ratios, path, "ratio of medians (>1: cowmp default faster)")
    return "cowmp's default map against the faster of Pool and ProcessPoolExecutor, by shape"


def chart_lifecycle(plt, records: list[dict], path: str) -> str | None:  # type: ignore[no-untyped-def]
    """bench_lifecycle's phases, a group of bars per phase, a bar per pool."""
    data = [item for item in records if "phase" in item]
    if not data:
        return None
    import numpy

    libraries = [key[:-3] for key in data[0] if key.endswith("_ms")]
    names = {"cowmp": "cowmp.CowProcessPoolExecutor", "pool": "fork context Pool",
             "futures": "ProcessPoolExecutor (fork)"}
    xs = numpy.arange(len(data))
    width = 0.8 / len(libraries)
    figure, axes = plt.subplots(figsize=(10, 5))
    shades = ("#4c72b0", "#dd8452", "#55a868")
    for index, lib in enumerate(libraries):
        bars = axes.bar(xs + (index - (len(libraries) - 1) / 2) * width,
                        [item[f"{lib}_ms"] for item in data], width,
                        label=names.get(lib, lib), color=shades[index % len(shades)])
        bar_labels(axes, bars, "{:.2g}")
    axes.set_xticks(xs, [item["phase"] for item in data])
    axes.set_ylabel("milliseconds, median")
    axes.set_title(f"Life cycle of a pool ({subtitle()})", fontsize=11)
    axes.legend(fontsize=8)
    axes.grid(axis="y", alpha=0.3)
    save(plt, figure, path)
    return "The phases of a pool's life, cowmp beside Pool and ProcessPoolExecutor"


CHARTS = {"scaling": chart_scaling, "gc": chart_gc, "share": chart_share,
          "startup": chart_startup, "executor": chart_executor, "exit": chart_exit,
          "parent_policy": chart_parent_policy, "shapes": chart_shapes,
          "lifecycle": chart_lifecycle}


def draw(plt, outcome: Outcome, results_dir: str) -> bool:  # type: ignore[no-untyped-def]
    """Draw the benchmark's chart; False if drawing it failed."""
    chart = CHARTS.get(outcome.name)
    path = os.path.join(results_dir, f"{outcome.name}.png")
    if os.path.exists(path):
        os.remove(path)  # never leave the chart of an earlier run beside these figures
    if chart is None or plt is None or not outcome.records:
        return True
    try:
        alt = chart(plt, outcome.records, path)
    except Exception as error:  # noqa: BLE001 - reported, the other charts still drawn
        plt.close("all")
        outcome.notes.append(f"The chart could not be drawn: {type(error).__name__}: {error}")
        print(f"  chart of bench_{outcome.name}: FAILED: {type(error).__name__}: {error}",
              file=sys.stderr)
        return False
    if alt:
        outcome.charts.append((os.path.basename(path), alt))
    return True


# --- RESULTS.md --------------------------------------------------------------------------


def duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s" if minutes else f"{seconds:.1f} s"


def fenced(text: str) -> list[str]:
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [f"{fence}text", text.rstrip("\n"), fence]


def section(outcome: Outcome, results_link: str, plt) -> list[str]:  # type: ignore[no-untyped-def]
    command = shlex.join(["python", os.path.relpath(outcome.script, ROOT), *outcome.args])
    lines = [f"## bench_{outcome.name}", "", outcome.summary or "(no docstring)", "",
             f"`{command}`: {outcome.status}, {duration(outcome.seconds)}.", ""]
    if outcome.failed:
        tail = "\n".join((outcome.stderr or outcome.stdout).strip().splitlines()[-20:])
        lines += [f"**This benchmark failed** ({outcome.status}); the end of its output:", "",
                  *fenced(tail or "(no output)"), ""]
    for note in outcome.notes:
        lines += [f"Note: {note}", ""]
    pivot = PIVOTS.get(outcome.name)
    if pivot and outcome.records:
        for table in pivot(outcome.records):
            if outcome.name in PIVOT_NOTES:
                lines += [PIVOT_NOTES[outcome.name], ""]
            lines += [*table, ""]
    for table in tables(outcome.records):
        lines += [*table, ""]
    if not outcome.records:
        lines += ["No figures were recorded.", ""]
    for name, alt in outcome.charts:
        lines += [f"![{alt}]({results_link}/{name})", ""]
    if outcome.name in CHARTS and not outcome.charts and plt is None and outcome.records:
        lines += [f"(Chart left out: matplotlib is not installed; `{PLOT_HINT}`.)", ""]
    lines += ["<details><summary>Full output</summary>", "",
              *fenced(outcome.stdout or "(no output)")]
    if outcome.stderr.strip():
        lines += ["", "Standard error:", "", *fenced(outcome.stderr)]
    lines += ["", "</details>", ""]
    return lines


def load_average() -> str:
    try:
        return " / ".join(f"{value:.2f}" for value in os.getloadavg())
    except (AttributeError, OSError):
        return "unknown"


def write_results(path: str, outcomes: list[Outcome], quick: bool, argv: list[str],
                  started: datetime.datetime, seconds: float, loads: tuple[str, str],
                  plt) -> None:  # type: ignore[no-untyped-def]
    failed = [o for o in outcomes if o.failed]
    lines = ["# Benchmark results", "",
             "Written by `benchmarks/run_all.py`, which runs every `benchmarks/bench_*.py`, "
             "each in its own interpreter; memory is USS (private) or PSS (proportional), "
             "never RSS. Run it again with the command below.", ""]
    if quick:
        lines += ["**Quick run**: every benchmark was given small sizes (`--quick`); "
                  "these figures check that the benchmarks work and are not the ones to "
                  "quote (fixed costs weigh more at small sizes, so that some targets, set "
                  "for the full sizes, may fail).", ""]
    info = [
        ("Date", started.strftime("%Y-%m-%d %H:%M %Z").strip()),
        ("Command", f"`{shlex.join(['python', 'benchmarks/run_all.py', *argv])}`"),
        ("Python", python()),
        ("Machine", machine()),
        ("cowmp", cowmp_version(path)),
        ("Total time", duration(seconds)),
        ("Load average (1 / 5 / 15 min)", f"{loads[0]} before the run, {loads[1]} after it "
                                          "(the benchmarks' own processes count)"),
    ]
    lines += markdown_table(["", ""], [[f"**{key}**", value] for key, value in info]) + [""]
    if plt is None:
        lines += [f"Charts are left out: matplotlib is not installed. To get them: "
                  f"`{PLOT_HINT}`, then run the command again.", ""]
    rows = []
    for o in outcomes:
        verdicts = [item["result"] for item in o.records if "target" in item]
        targets = ", ".join(f"{verdicts.count(v)} {v}" for v in dict.fromkeys(verdicts))
        rows.append([f"[bench_{o.name}](#bench_{o.name})", cell(o.summary), o.status,
                     duration(o.seconds), targets or "–"])
    lines += markdown_table(["benchmark", "what it measures", "status", "time", "targets"],
                            rows) + [""]
    if failed:
        lines += [f"**{len(failed)} benchmark(s) failed**: "
                  + ", ".join(f"bench_{o.name}" for o in failed) + ".", ""]
    results_link = "results"
    for outcome in outcomes:
        lines += section(outcome, results_link, plt)
    with open(path, "w", encoding="utf-8") as file:
        file.write("\n".join(lines).rstrip("\n") + "\n")


# --- main --------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small sizes: the whole run takes a few minutes")
    parser.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"),
                        help="the markdown file to write (default benchmarks/RESULTS.md); "
                             "charts go to results/ beside it")
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="run only these benchmarks (gc, bench_gc or bench_gc.py)")
    parser.add_argument("--timeout", type=float,
                        help=f"seconds per benchmark (default {FULL_TIMEOUT:.0f}, "
                             f"{QUICK_TIMEOUT:.0f} with --quick)")
    parser.add_argument("--quiet", action="store_true",
                        help="do not echo the benchmarks' output")
    args = parser.parse_args()

    benches = discover()
    if args.only:
        wanted = []
        for name in args.only:
            short = os.path.basename(name).removesuffix(".py").removeprefix("bench_")
            if short not in benches:
                parser.error(f"--only: no benchmark {name!r}; choose among "
                             f"{', '.join(benches)}")
            wanted.append(short)
        benches = {name: path for name, path in benches.items() if name in wanted}
    timeout = args.timeout or (QUICK_TIMEOUT if args.quick else FULL_TIMEOUT)
    out = os.path.abspath(args.out)
    results_dir = os.path.join(os.path.dirname(out), "results")
    os.makedirs(results_dir, exist_ok=True)
    plt = load_pyplot()
    if plt is None:
        print(f"matplotlib is not installed: RESULTS.md will have no charts ({PLOT_HINT})")

    started = datetime.datetime.now().astimezone()
    load_before = load_average()
    clock = time.perf_counter()
    outcomes = []
    ok = True
    with tempfile.TemporaryDirectory(prefix="cowmp-bench-") as scratch:
        for index, (name, script) in enumerate(benches.items(), 1):
            extra = QUICK_ARGS.get(name, []) if args.quick else []
            outcome = Outcome(name, script, extra, summary=summary_of(script))
            if args.quick and name not in QUICK_ARGS:
                outcome.notes.append("No quick sizes are defined for this benchmark: it ran "
                                     "with its defaults.")
            print(f"[{index}/{len(benches)}] {shlex.join(['bench_' + name + '.py', *extra])}",
                  flush=True)
            run_one(outcome, os.path.join(scratch, f"{name}.jsonl"), timeout, not args.quiet)
            print(f"  {outcome.status} in {duration(outcome.seconds)}, "
                  f"{len(outcome.records)} records", flush=True)
            if outcome.failed:
                ok = False
                tail = outcome.stderr.strip().splitlines()[-15:]
                for line in tail:
                    print(f"  stderr: {line}", file=sys.stderr)
            ok = draw(plt, outcome, results_dir) and ok
            outcomes.append(outcome)
    write_results(out, outcomes, args.quick, sys.argv[1:], started,
                  time.perf_counter() - clock, (load_before, load_average()), plt)
    failed = [o for o in outcomes if o.failed]
    print(f"wrote {os.path.relpath(out)} and {len(sum((o.charts for o in outcomes), []))} "
          f"chart(s) in {os.path.relpath(results_dir)} "
          f"({duration(time.perf_counter() - clock)})")
    if failed:
        print(f"FAILED: {', '.join('bench_' + o.name for o in failed)}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
