"""``python -m cowmp demo``: what does a data set cost with N workers, by start method?

The parent builds a data set of tuples ``(i, str(i), [i])``.  For each start method it
starts N workers that each read every element of the data set, run a full collection and
wait; the parent then reads, while they wait, the memory of itself, of the workers and of
any process the method started beside them (forkserver, resource tracker), and prints:

* total PSS: what the parent and those processes cost together;
* private memory (USS) per worker: what each worker owns alone;
* start-up: seconds from the first ``start()`` until every worker has the data set;
* work: seconds the slowest worker took to read and collect.

Workers of ``fork`` and ``cowfork`` inherit the data set; those of ``forkserver``,
``spawn`` and ``loky`` start a new interpreter and build their own copy, as a program
loads its model or table again in each.  ``cowfork`` runs last and, on Python 3.12+, calls
``cowmp.share()`` on the data set first (immortal objects: reading them writes nothing).
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil

from . import memory
from .context import FALLBACK
from .immortal import CAN_IMMORTALIZE

__all__ = ["Row", "build", "draw_chart", "main", "run_method"]

MiB = 1024 * 1024
DEFAULT_OBJECTS = 2_000_000
QUICK_OBJECTS = 150_000
DEFAULT_WORKERS = 4
METHODS = ("fork", "forkserver", "spawn", "loky", "cowfork")
#: seconds a worker may take to start, or to do its work, before the demo gives up
TIMEOUT = 600.0

_data: list | None = None  # the data set, built by build() in the parent
_heap = 0  # its size in bytes (USS growth while it was built), for the rows


@dataclass
class Row:
    """One start method's figures (bytes and seconds)."""

    method: str
    workers: int
    heap: int  # the parent's data set (USS it grew by when building it)
    total_pss: int
    parent_pss: int
    worker_private: list[int] = field(default_factory=list)
    worker_pss: list[int] = field(default_factory=list)
    startup_seconds: float = 0.0
    work_seconds: float = 0.0
    share_seconds: float = 0.0
    shared: bool = False  # cowmp.share() ran before the workers started

    @property
    def label(self) -> str:
        return f"{self.method} + share()" if self.shared else self.method

    @property
    def mean_private(self) -> float:
        return sum(self.worker_private) / max(len(self.worker_private), 1)


def make_data(objects: int) -> list:
    return [(i, str(i), [i]) for i in range(objects)]


def build(objects: int) -> tuple[int, float]:
    """Build the data set in this process; return its size (USS growth) and seconds."""
    global _data, _heap
    _data = None
    gc.collect()
    before = memory.private_bytes()
    start = time.perf_counter()
    _data = make_data(objects)
    _heap = memory.private_bytes() - before
    return _heap, time.perf_counter() - start


def read_and_collect(data: list) -> int:
    total = 0
    for number, text, box in data:
        total += number + len(text) + box[0]
    gc.collect()
    return total


def _worker(objects: int | None, messages: Any, release: Any) -> None:
    """A worker: get the data set (inherited when ``objects`` is None, else built), say
    so, read and collect, say how long that took, wait to be measured."""
    gc.enable()
    data = _data if objects is None else make_data(objects)
    messages.put(("ready", os.getpid()))
    start = time.perf_counter()
    read_and_collect(data)
    messages.put(("done", time.perf_counter() - start))
    release.wait(TIMEOUT)


def _context(method: str) -> Any:
    if method in ("cowfork", "loky"):  # cowmp's get_context imports loky when asked
        from .context import default_context

        return default_context.get_context(method)
    return multiprocessing.get_context(method)


def _descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def run_method(method: str, workers: int, *, share: bool = True) -> Row:
    """Run the workload with ``workers`` workers of ``method`` over the data set that
    :func:`build` made; ``share``: call ``cowmp.share()`` first for cowfork (3.12+)."""
    if _data is None:
        raise RuntimeError("build the data set first: cowmp.demo.build(objects)")
    import cowmp

    inherits = method in ("fork", "cowfork") and not (method == "cowfork" and FALLBACK)
    share_seconds, shared = 0.0, False
    if method == "cowfork" and share and CAN_IMMORTALIZE and not FALLBACK:
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", cowmp.SharingWarning)
            cowmp.share(_data)
        share_seconds, shared = time.perf_counter() - start, True
    ctx = _context(method)
    before = _descendants()
    messages, release = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_worker, daemon=True,
                         args=(None if inherits else len(_data), messages, release))
             for _ in range(workers)]
    try:
        start = time.perf_counter()
        for p in procs:
            p.start()
        ready = work = 0.0
        for _ in range(2 * workers):
            kind, value = messages.get(timeout=TIMEOUT)
            if kind == "ready":
                ready = time.perf_counter() - start
            else:
                work = max(work, value)
        pids = [p.pid for p in procs]
        helpers = _descendants() - before - set(pids)
        roles = {os.getpid(): "parent", **dict.fromkeys(helpers, "helper"),
                 **dict.fromkeys(pids, "worker")}
        rows = memory.processes(roles)
    finally:
        release.set()
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join()
    by_pid = {row.pid: row for row in rows}
    return Row(method=method, workers=workers, heap=_heap,
               total_pss=sum(row.proportional for row in rows),
               parent_pss=by_pid[os.getpid()].proportional,
               worker_private=[by_pid[pid].uss for pid in pids if pid in by_pid],
               worker_pss=[by_pid[pid].proportional for pid in pids if pid in by_pid],
               startup_seconds=ready, work_seconds=work, share_seconds=share_seconds,
               shared=shared)


def available_methods() -> list[str]:
    """The default methods: fork, forkserver (else spawn), loky, cowfork; those this
    system has."""
    have = multiprocessing.get_all_start_methods()
    chosen = [m for m in ("fork", "forkserver") if m in have and not FALLBACK]
    if "forkserver" not in chosen:
        chosen.append("spawn")
    return [*chosen, "loky", "cowfork"]


def check_methods(text: str | None) -> list[str]:
    """The methods named in ``text`` (comma-separated), in the order the demo runs them
    (cowfork last: shared objects stay immortal); ValueError, naming the methods to
    choose from, for an unknown or unavailable one."""
    if text is None:
        return available_methods()
    names = [name.strip() for name in text.split(",") if name.strip()]
    have = set(multiprocessing.get_all_start_methods()) | {"loky", "cowfork"}
    choices = ", ".join(m for m in METHODS if m in have)
    for name in names:
        if name not in METHODS:
            raise ValueError(f"unknown start method {name!r}: choose among {choices}")
        if name not in have:
            raise ValueError(f"start method {name!r} is not available on this system: "
                             f"choose among {choices}")
    if not names:
        raise ValueError(f"no start method in {text!r}: choose among {choices}")
    return [m for m in METHODS if m in names]


def check_plotting() -> None:
    """ValueError if matplotlib, which draws the chart, is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ValueError("matplotlib is not installed: pip install 'cowmp[plot]'") from None


def format_rows(rows: Sequence[Row]) -> list[str]:
    lines = [f"{'start method':18}{'total PSS':>12}{'private/worker':>17}{'% of data':>10}"
             f"{'start-up s':>12}{'work s':>9}"]
    for row in rows:
        lines.append(f"{row.label:18}{row.total_pss / MiB:8,.0f} MiB{row.mean_private / MiB:13,.1f}"
                     f" MiB{row.mean_private / max(row.heap, 1):10.1%}"
                     f"{row.startup_seconds:12.2f}{row.work_seconds:9.2f}")
    return lines


def draw_chart(rows: Sequence[Row], path: str) -> None:
    """Total PSS and private memory per worker, by start method, into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    labels = [row.label for row in rows]
    figure, (left, right) = pyplot.subplots(1, 2, figsize=(11, 4.2))
    left.bar(labels, [row.total_pss / MiB for row in rows], color="#4c72b0")
    left.axhline(rows[0].heap / MiB, color="#c44e52", linestyle="--",
                 label="the data set, once")
    left.set_ylabel("MiB")
    left.set_title(f"Total PSS, parent + {rows[0].workers} workers")
    left.legend()
    right.bar(labels, [row.mean_private / MiB for row in rows], color="#55a868")
    right.set_ylabel("MiB")
    right.set_title("Private memory (USS) per worker")
    for axes in (left, right):
        axes.tick_params(axis="x", labelrotation=20)
        axes.bar_label(axes.containers[0], fmt="{:,.0f}")
        axes.set_ylim(top=axes.get_ylim()[1] * 1.2)  # room for the labels and legend
    figure.suptitle(f"Read every object, then collect: {rows[0].heap / MiB:,.0f} MiB of "
                    f"tuples, Python {sys.version.split()[0]}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def main(objects: int = DEFAULT_OBJECTS, workers: int = DEFAULT_WORKERS,
         methods: Sequence[str] | None = None, *, share: bool = True,
         plot: str | None = None, out: Callable[[str], object] = print) -> list[Row]:
    """Build the data set, run every method, print the table; return the rows."""
    methods = list(methods or available_methods())
    heap, seconds = build(objects)
    out(f"data set: {objects:,} tuples (i, str(i), [i]) = {heap / MiB:,.0f} MiB, built "
        f"in {seconds:.1f} s; {workers} workers per start method read every object, then "
        "collect")
    if FALLBACK:
        out("note: os.fork is unavailable or COWMP_FORCE_FALLBACK is set: cowfork spawns "
            "through loky here and nothing is shared")
    rows = []
    try:
        for method in methods:
            row = run_method(method, workers, share=share)
            rows.append(row)
            out(f"  {row.label}: done in {row.startup_seconds + row.work_seconds:.1f} s")
        out("")
        for line in format_rows(rows):
            out(line)
        cow = next((row for row in rows if row.method == "cowfork"), None)
        if cow is not None and cow.share_seconds:
            out(f"cowmp.share() took {cow.share_seconds:.2f} s before the cowfork workers "
                "started")
        elif cow is not None and not CAN_IMMORTALIZE:
            out(f"Python {sys.version.split()[0]}: reading an object writes its reference "
                "count, so readers copy what they read; cowmp.share() makes shared objects "
                "immortal from Python 3.12")
        for other in rows:
            if cow is not None and other is not cow:
                out(f"total PSS, {other.label} / {cow.label}: "
                    f"{other.total_pss / max(cow.total_pss, 1):.2f}")
        if plot:
            draw_chart(rows, plot)
            out(f"chart written to {plot}")
    finally:
        _release_data()
    return rows


def _release_data() -> None:
    global _data
    _data = None
