"""The garbage-collector side of copy-on-write sharing: the one place where the GC is frozen.

A full collection writes into the header of every object it tracks, so a child that
collects an inherited heap copies most of its pages.  ``gc.freeze()`` moves every tracked
object into a permanent generation that collections skip, and it is cheap: a splice of
the collector's lists, a few header writes.  Every cowfork child freezes everything it
inherited as the first thing it does after the fork; the GC is disabled in the parent
across the fork, so no collection can run in between (docs/design.md §3).  Children therefore
never collect the inherited heap, whatever the parent does.

What the *parent* freezes is a trade-off, chosen by the policy (:func:`set_gc_policy`,
or the ``COWMP_GC_POLICY`` environment variable):

``"auto"`` (default)
    The parent freezes its heap at a fork when no child is alive, that is when it starts
    to share pages that nobody shares yet, after collecting what is not frozen (at the
    first fork only the young generations).  Its own collections then never write into
    those pages while children share them.  Objects made while children are alive are
    left to the collector as under plain fork, so a pool that is made and dropped while
    another pool runs is freed as usual.  Objects frozen alive that become cyclic garbage
    later are reclaimed at a fork when no child is alive and the heap (its allocated
    memory blocks) has grown by a quarter since the last whole-heap collection (the
    parent thaws, collects everything and freezes again: CPython's own amortised rule
    for full collections), or at once by :func:`collect`.  A parent that forks
    thousands of times stays bounded.
``"frozen"``
    Freeze before every fork and never collect on the parent's behalf (Instagram's
    original recipe).  Cheapest; cyclic garbage alive at a fork is never reclaimed.
``"unfreeze"``
    The parent never keeps anything frozen: its collector runs as under plain fork,
    reclaims everything as usual, and its collections copy the pages its children share.

A parent that disabled the GC itself (``gc.disable()``) is never collected by cowmp: the
objects are only frozen.  Children always re-enable the GC (CPython's documented recipe).
"""

from __future__ import annotations

import gc
import os
import sys
import threading

import psutil

__all__ = ["GC_POLICIES", "collect", "get_gc_policy", "set_gc_policy"]

GC_POLICIES = ("auto", "frozen", "unfreeze")

#: Growth of the heap (in allocated memory blocks, relative to the count after the last
#: whole-heap collection) that makes the "auto" policy thaw and collect when no child is
#: alive.  Blocks, not ``gc.get_freeze_count()``: that one walks every frozen object.
THAW_GROWTH = 0.25


def _policy_from_environment() -> str:
    value = os.environ.get("COWMP_GC_POLICY", "auto").strip().lower() or "auto"
    if value not in GC_POLICIES:
        raise ValueError(
            f"COWMP_GC_POLICY={value!r} is not a cowmp GC policy; "
            f"choose one of {', '.join(map(repr, GC_POLICIES))}"
        )
    return value


class _HeapState:
    """Per-process bookkeeping of the freeze protocol (reset in every child)."""

    def __init__(self, policy: str) -> None:
        self.policy = policy
        # sys.getallocatedblocks() right after the last collection of the whole heap
        self.blocks_after_full = 0
        # whether this process has frozen its heap since it started
        self.froze = False
        # Forks between freeze_for_fork() and after_fork_in_parent(), in all threads,
        # and whether the GC was enabled before the first of them disabled it.
        self.forks_in_flight = 0
        self.reenable = False
        self.lock = threading.Lock()


_state = _HeapState(_policy_from_environment())


def _alive(pid: str) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rpartition(b")")[2].split()[0]
    except (OSError, IndexError):
        return False  # already reaped
    return state != b"Z"


def children_alive() -> bool:
    """Is any child process, which may share our pages, still running?  Zombies are not.

    Asks the OS, so children of every kind count: multiprocessing's, ``cowmp.fork()``'s,
    those of an ``os.fork()`` made by other code.  On Linux the kernel lists each thread's
    children (``/proc/self/task/*/children``); elsewhere psutil scans the process table.
    """
    if os.path.exists(f"/proc/self/task/{os.getpid()}/children"):
        for task in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{task}/children", "rb") as listing:
                    pids = listing.read().split()
            except OSError:
                continue  # the thread has ended; its children moved to another thread
            if any(_alive(pid.decode()) for pid in pids):
                return True
        return False
    try:
        children = psutil.Process().children()
    except psutil.Error:
        return True
    for child in children:
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            continue
    return False


def get_gc_policy() -> str:
    """Return the parent's GC policy: one of :data:`GC_POLICIES`."""
    return _state.policy


def set_gc_policy(policy: str) -> None:
    """Choose what the parent's garbage collector does around forks.

    See the module documentation for ``"auto"`` (default), ``"frozen"`` and ``"unfreeze"``.
    """
    if not isinstance(policy, str) or policy not in GC_POLICIES:
        raise ValueError(
            f"{policy!r} is not a cowmp GC policy; choose one of "
            f"{', '.join(map(repr, GC_POLICIES))}"
        )
    _state.policy = policy


def collect() -> int:
    """Collect the whole heap now, objects frozen by cowmp included; return what
    ``gc.collect()`` returns (the number of unreachable objects found).

    The collection that the ``"auto"`` policy does not make on its own while children
    are alive: call it after dropping large structures that were alive at a fork (a
    model, a terminated pool).  If anything was frozen, the survivors are frozen again.
    It writes into every page that live children share, so each of those pages is then
    copied once, by the parent.
    """
    with _state.lock:
        refreeze = gc.get_freeze_count() > 0
        gc.unfreeze()
        found = gc.collect()
        if refreeze:
            gc.freeze()
        _state.blocks_after_full = sys.getallocatedblocks()
        return found


def freeze_all() -> None:
    """Freeze every object tracked now (a child pinning its heap for the exit)."""
    gc.freeze()


def _whole_heap_collection_due() -> bool:
    # even a small heap is not collected whole at every fork: that costs milliseconds
    # (an executor made and shut down in a loop), and a quarter of growth bounds it
    return sys.getallocatedblocks() >= _state.blocks_after_full * (1 + THAW_GROWTH)


def _freeze_unshared_heap(collecting: bool) -> None:
    """"auto": the parent's pages are about to be shared for the first time since the
    last child ended.  Collect what is not frozen (or, when due, everything), freeze."""
    whole_heap = False
    if collecting:
        if not _state.froze:
            gc.collect(1)  # first freeze: the young only, not the whole heap
            _state.blocks_after_full = sys.getallocatedblocks()
        elif _whole_heap_collection_due():
            gc.unfreeze()
            gc.collect()
            whole_heap = True
        else:
            gc.collect()  # what was made since the last freeze (frozen is skipped)
    gc.freeze()
    _state.froze = True
    if whole_heap:
        _state.blocks_after_full = sys.getallocatedblocks()


def freeze_for_fork(collect: bool = True) -> None:
    """Run the parent's side of the protocol right before ``os.fork()``.

    Leaves the GC disabled until :func:`after_fork_in_parent`, so that no collection runs
    in the child before it has frozen what it inherits.  ``collect=False``: freeze only,
    whatever the policy (a fork server: its heap is the snapshot its parent shares with
    it, which a collection would copy, and it makes next to no garbage of its own).
    """
    with _state.lock:
        if _state.forks_in_flight == 0:
            _state.reenable = gc.isenabled()
        _state.forks_in_flight += 1
        gc.disable()
        if _state.policy == "frozen" or not collect:
            gc.freeze()
            _state.froze = True
        elif _state.policy == "auto" and not children_alive():
            _freeze_unshared_heap(collecting=_state.reenable)


def after_fork_in_parent() -> None:
    """Run the parent's side of the protocol right after ``os.fork()`` (or its failure)."""
    with _state.lock:
        _state.forks_in_flight -= 1
        if _state.forks_in_flight == 0 and _state.reenable:
            gc.enable()


def after_fork_in_child() -> None:
    """Run the child's side: freeze everything inherited, then let collections resume
    for the objects the child makes."""
    global _state
    gc.freeze()
    _state = _HeapState(_state.policy)
    _state.froze = True
    _state.blocks_after_full = sys.getallocatedblocks()
    gc.enable()


def __getattr__(name: str) -> object:
    """The rest of ``multiprocessing.heap`` (Arena, BufferWrapper...): with
    ``import cowmp as multiprocessing``, ``multiprocessing.heap`` is this module."""
    from multiprocessing import heap as mp_heap

    try:
        return getattr(mp_heap, name)
    except AttributeError:
        raise AttributeError(f"module 'cowmp.heap' has no attribute {name!r}") from None
