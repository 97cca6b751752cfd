"""``python -m cowmp demo``: what does a data set cost with N workers, by start method?

The parent builds a data set of tuples ``(i, str(i), [i])``.  For each start method it
starts N workers that work on the data set and wait; the parent then reads, while they
wait, the memory of itself, of the workers and of any process the method started beside
them (forkserver, resource tracker), and prints:

* total PSS: what the parent and those processes cost together (PSS: each process's own
  pages plus its share of the pages it shares, so the sum is what the machine pays);
* private memory (USS) per worker: what each worker owns alone;
* copied: for a forked worker, the part of the parent's memory it has copied since the
  fork (a worker of another method has its own copy from the start);
* start-up: seconds from the first ``start()`` until every worker has the data set;
* work: seconds the slowest worker took.

Two workloads.  ``read`` (the default on Python 3.12+): every worker reads every object,
then runs a full collection; ``cowfork`` runs last and calls ``cowmp.share()`` on the data
set first (immortal objects: reading them writes nothing).  ``collect`` (the default on
3.10 and 3.11, where reading an object writes its reference count, so a reader copies
what it reads whatever the start method): every worker runs full collections, as a
pool's or a pre-fork server's long-lived workers do, and reads nothing; the demo then
also times a forked child's exit, interpreter teardown against ``cowmp.exit()``.

Workers of ``fork`` and ``cowfork`` inherit the data set; those of ``forkserver``,
``spawn`` and ``loky`` start a new interpreter and build their own copy, as a program
loads its model or table again in each.
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
from .immortal import CAN_IMMORTALIZE, HAS_C_HELPER

__all__ = ["WORKLOADS", "ExitCost", "Row", "build", "default_workload", "draw_chart",
           "exit_cost", "main", "run_method"]

MiB = 1024 * 1024
DEFAULT_OBJECTS = 2_000_000
QUICK_OBJECTS = 150_000
DEFAULT_WORKERS = 4
METHODS = ("fork", "forkserver", "spawn", "loky", "cowfork")
WORKLOADS = ("read", "collect")
#: full collections a worker of the ``collect`` workload runs
COLLECTIONS = 3
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
#: seconds a worker may take to start, or to do its work, before the demo gives up
TIMEOUT = 600.0

_data: list | None = None  # the data set, built by build() in the parent
_heap = 0  # its size in bytes (USS growth while it was built), for the rows


@dataclass
class Row:
    """One start method's figures (bytes and seconds)."""

    method: str
    workers: int
    heap: int  # the data set's size: the sum of its objects' sizes
    total_pss: int
    parent_pss: int
    worker_private: list[int] = field(default_factory=list)
    worker_pss: list[int] = field(default_factory=list)
    startup_seconds: float = 0.0
    work_seconds: float = 0.0
    share_seconds: float = 0.0
    shared: bool = False  # cowmp.share() ran before the workers started
    worker_copied: list[int] = field(default_factory=list)  # forked workers only
    parent_private: int = 0  # the parent's USS before the workers started
    workload: str = "read"

    @property
    def label(self) -> str:
        return f"{self.method} + share()" if self.shared else self.method

    @property
    def mean_private(self) -> float:
        return sum(self.worker_private) / max(len(self.worker_private), 1)

    @property
    def copied_share(self) -> float | None:
        """A forked worker's copied bytes as a part of the parent's private memory (at
        most 1); None for workers that were not forked."""
        if not self.worker_copied:
            return None
        mean = sum(self.worker_copied) / len(self.worker_copied)
        return min(mean / max(self.parent_private, 1), 1.0)


def make_data(objects: int) -> list:
    return [(i, str(i), [i]) for i in range(objects)]


def data_size(data: list) -> int:
    """The bytes of the data set's objects (the list, each tuple, int, str and list, with
    their collector headers): the same for the same size on every run, unlike the
    process's growth, which depends on what the allocator had free."""
    size = sys.getsizeof(data)
    for row in data:
        size += sum(map(sys.getsizeof, row)) + sys.getsizeof(row)
    return size


def build(objects: int) -> tuple[int, float]:
    """Build the data set in this process; return its size and the seconds it took."""
    global _data, _heap
    _data = None
    gc.collect()
    start = time.perf_counter()
    _data = make_data(objects)
    seconds = time.perf_counter() - start
    _heap = data_size(_data)
    return _heap, seconds


def _check_workload(workload: str) -> None:
    if workload not in WORKLOADS:
        raise ValueError(f"unknown workload {workload!r}: choose among {', '.join(WORKLOADS)}")


def default_workload() -> str:
    """``read`` where shared objects can be made immortal (3.12+, forking), else
    ``collect``."""
    return "read" if CAN_IMMORTALIZE and not FALLBACK else "collect"


def read_and_collect(data: list) -> int:
    total = 0
    for number, text, box in data:
        total += number + len(text) + box[0]
    gc.collect()
    return total


def collect_only(data: list) -> int:
    """What a long-lived worker's allocations trigger now and then: full collections,
    which visit every object the collector tracks (the inherited ones too, unless they
    are frozen)."""
    for _ in range(COLLECTIONS):
        gc.collect()
    return len(data)


def _worker(objects: int | None, workload: str, messages: Any, release: Any) -> None:
    """A worker: get the data set (inherited when ``objects`` is None, else built), say
    so, do the work, say how long that took, wait to be measured."""
    gc.enable()
    data = _data if objects is None else make_data(objects)
    messages.put(("ready", os.getpid()))
    start = time.perf_counter()
    (read_and_collect if workload == "read" else collect_only)(data)
    messages.put(("done", time.perf_counter() - start))
    release.wait(TIMEOUT)


def _context(method: str) -> Any:
    if method in ("cowfork", "loky"):  # cowmp's get_context imports loky when asked
        from .context import default_context

        return default_context.get_context(method)
    return multiprocessing.get_context(method)


def _descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def run_method(method: str, workers: int, *, share: bool = True,
               workload: str = "read") -> Row:
    """Run ``workload`` with ``workers`` workers of ``method`` over the data set that
    :func:`build` made; ``share``: call ``cowmp.share()`` first for cowfork (3.12+)."""
    _check_workload(workload)
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
    parent_private = memory.private_bytes()  # before the workers share its pages
    before = _descendants()
    messages, release = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_worker, daemon=True,
                         args=(None if inherits else len(_data), workload, messages,
                               release))
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
               shared=shared, workload=workload,
               parent_private=parent_private,
               worker_copied=[by_pid[pid].copied or 0 for pid in pids
                              if pid in by_pid] if inherits else [])


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
    lines = [f"{'start method':18}{'total PSS':>12}{'private/worker':>17}{'copied':>9}"
             f"{'start-up s':>12}{'work s':>9}"]
    for row in rows:
        share = row.copied_share
        copied = "own copy" if share is None else f"{share:.1%}"
        lines.append(f"{row.label:18}{row.total_pss / MiB:8,.0f} MiB"
                     f"{row.mean_private / MiB:13,.1f} MiB{copied:>9}"
                     f"{row.startup_seconds:12.2f}{row.work_seconds:9.2f}")
    return lines


#: what the table's figures mean, under it and on the chart
LEGEND = ("PSS: a process's own pages plus its share of those it shares (the sum is what "
          "the machine pays); USS: the pages it owns alone; copied: the part of the "
          "parent's memory a forked worker has copied since the fork")


@dataclass
class ExitCost:
    """A forked child's exit: pages it copied (minor page faults) while ending."""

    teardown_faults: int  # dropping the data set, as the interpreter's exit does
    cowmp_faults: int  # cowmp.exit(): os._exit, nothing torn down

    def line(self) -> str:
        return (f"a forked child's exit over the data set: the interpreter's teardown "
                f"copied {self.teardown_faults * PAGE / MiB:,.1f} MiB "
                f"({self.teardown_faults:,} page faults), cowmp.exit() "
                f"{self.cowmp_faults * PAGE / MiB:,.1f} MiB ({self.cowmp_faults:,})")


def _exit_faults(teardown: bool) -> int:
    """Fork a child that ends at once, by dropping the data set then ``os._exit`` (what
    the interpreter's exit does to the module globals, object by object) or through
    :func:`cowmp.exit`; return the minor page faults of its exit."""
    global _data
    from . import exiting, forking

    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = forking.protocol_fork(bare=True)
    if pid == 0:
        import resource

        os.write(ready_w, str(resource.getrusage(resource.RUSAGE_SELF).ru_minflt).encode())
        os.read(go_r, 1)
        if teardown:
            _data = None  # every object freed: its reference count and header written
            exiting.leave(0)
        exiting.exit(0)
    before = int(os.read(ready_r, 64))
    os.write(go_w, b"x")
    _, _, usage = os.wait4(pid, 0)
    for fd in (ready_r, ready_w, go_r, go_w):
        os.close(fd)
    return max(usage.ru_minflt - before, 0)


def exit_cost() -> ExitCost | None:
    """How much a forked child copies when it ends, with and without cowmp's exit; None
    where there is no fork (or the figures, from ``wait4``, are not kept)."""
    if _data is None:
        raise RuntimeError("build the data set first: cowmp.demo.build(objects)")
    if FALLBACK or not hasattr(os, "wait4"):
        return None
    return ExitCost(teardown_faults=_exit_faults(True), cowmp_faults=_exit_faults(False))


def draw_chart(rows: Sequence[Row], path: str) -> None:
    """Total PSS, private memory per worker and the timings, by start method, into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    labels = [row.label for row in rows]
    figure, (left, middle, right) = pyplot.subplots(1, 3, figsize=(15, 4.8))
    left.bar(labels, [row.total_pss / MiB for row in rows], color="#4c72b0")
    left.axhline(rows[0].heap / MiB, color="#c44e52", linestyle="--",
                 label="the data set, once")
    left.set_ylabel("MiB")
    left.set_title(f"Total PSS, parent + {rows[0].workers} workers")
    left.legend()
    middle.bar(labels, [row.mean_private / MiB for row in rows], color="#55a868")
    middle.set_ylabel("MiB")
    middle.set_title("Private memory (USS) per worker")
    startup = [row.startup_seconds for row in rows]
    right.bar(labels, startup, color="#8172b2", label="start-up")
    right.bar(labels, [row.work_seconds for row in rows], bottom=startup, color="#ccb974",
              label="work")
    right.set_ylabel("seconds")
    right.set_title("Start-up, then work")
    right.legend()
    for axes in (left, middle):
        axes.bar_label(axes.containers[0], fmt="{:,.0f}")
    for axes in (left, middle, right):
        axes.tick_params(axis="x", labelrotation=20)
        axes.set_ylim(top=axes.get_ylim()[1] * 1.2)  # room for the labels and legend
    work = ("read every object, then collect" if rows[0].workload == "read"
            else f"{COLLECTIONS} full collections, no reading")
    figure.suptitle(f"{work}: {rows[0].heap / MiB:,.0f} MiB of tuples, "
                    f"Python {sys.version.split()[0]}")
    figure.text(0.5, 0.01, LEGEND, ha="center", fontsize=8, wrap=True)
    figure.tight_layout(rect=(0, 0.05, 1, 1))
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def main(objects: int = DEFAULT_OBJECTS, workers: int = DEFAULT_WORKERS,
         methods: Sequence[str] | None = None, *, share: bool = True,
         plot: str | None = None, workload: str | None = None,
         out: Callable[[str], object] = print) -> list[Row]:
    """Build the data set, run every method, print the table; return the rows."""
    methods = list(methods or available_methods())
    workload = workload or default_workload()
    _check_workload(workload)
    heap, seconds = build(objects)
    work = ("read every object, then collect" if workload == "read"
            else f"run {COLLECTIONS} full collections and read nothing, as a pool's or a "
                 "server's long-lived workers do")
    out(f"data set: {objects:,} tuples (i, str(i), [i]) = {heap / MiB:,.0f} MiB, built "
        f"in {seconds:.1f} s; {workers} workers per start method {work}")
    if FALLBACK:
        out("note: os.fork is unavailable or COWMP_FORCE_FALLBACK is set: cowfork spawns "
            "through loky here and nothing is shared")
    elif workload == "collect" and not CAN_IMMORTALIZE:
        out(f"Python {sys.version.split()[0]}: reading an object writes its reference "
            "count, so a worker that reads the data copies what it reads under any start "
            "method (cowmp.share() makes shared objects immortal from Python 3.12); what "
            "cowfork saves here is what the collector and the exit would copy")
    rows = []
    try:
        for method in methods:
            # collect: no share(), so that the exit below frees (and copies) the data set
            row = run_method(method, workers, share=share and workload == "read",
                             workload=workload)
            rows.append(row)
            out(f"  {row.label}: done in {row.startup_seconds + row.work_seconds:.1f} s")
        out("")
        for line in format_rows(rows):
            out(line)
        out(LEGEND)
        ending = exit_cost() if workload == "collect" else None  # forks: after the rows
        if ending is not None:
            out(ending.line())
        cow = next((row for row in rows if row.method == "cowfork"), None)
        if cow is not None and cow.share_seconds:
            walker = ("its C helper" if HAS_C_HELPER
                      else "the pure-Python walk: the C helper was not built at install, "
                           "about 50 times slower")
            out(f"cowmp.share() took {cow.share_seconds:.2f} s before the cowfork workers "
                f"started: {cow.share_seconds / objects * 1e6:.2f} µs a tuple with its 3 "
                f"objects, walked once ({walker})")
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
