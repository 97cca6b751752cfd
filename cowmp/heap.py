"""The garbage-collector side of copy-on-write sharing: the one place where the GC is frozen.

A full collection writes into the header of every object it tracks, so a child that
collects an inherited heap copies most of its pages.  ``gc.freeze()`` moves every tracked
object into a permanent generation that collections skip; called right before ``fork()``
it leaves the whole inherited heap out of the child's collections (DESIGN §2.1).

What the *parent* does with its frozen objects afterwards is a trade-off, chosen by the
policy (:func:`set_gc_policy`, or the ``COWMP_GC_POLICY`` environment variable):

``"auto"`` (default)
    Before each fork, collect what is not frozen yet (everything made since the previous
    fork: the collector skips frozen objects, so this costs what was allocated since, and
    at the first fork only the young generations), so that garbage made between forks is
    freed instead of frozen; then freeze.  Frozen objects stay frozen, so the
    parent writes nothing into the pages its children share.  Objects frozen while alive
    that become cyclic garbage later would never be collected, so when no cowfork child is
    alive (nobody shares the pages, so writing them costs nothing) and at least a quarter
    more objects have been frozen since the last whole-heap collection, the parent thaws
    and collects everything before it freezes again: the same amortised rule CPython uses
    for its own full collections.  A parent that forks thousands of times stays bounded.
``"frozen"``
    Freeze before each fork and never collect on the parent's behalf (Instagram's
    original recipe).  Cheapest; cyclic garbage alive at a fork is never reclaimed.
``"unfreeze"``
    Freeze before each fork and unfreeze right after it in the parent.  The parent's
    collector then sees everything again and its collections copy the pages its children
    share; memory is reclaimed as usual.

A parent that disabled the GC itself (``gc.disable()``) is never collected by cowmp: the
objects are only frozen.  Children always re-enable the GC (CPython's documented recipe).
"""

from __future__ import annotations

import gc
import os
import threading

import psutil

__all__ = ["GC_POLICIES", "get_gc_policy", "set_gc_policy"]

GC_POLICIES = ("auto", "frozen", "unfreeze")

#: Fraction of new frozen objects (relative to the count after the last whole-heap
#: collection) that makes the "auto" policy thaw and collect when no child is alive.
THAW_GROWTH = 0.25
#: Below this many frozen objects a whole-heap collection is cheap: always allowed.
THAW_MIN_OBJECTS = 20_000


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
        # gc.get_freeze_count() right after the last collection of the whole heap.
        self.frozen_after_full = 0
        self.lock = threading.Lock()


_state = _HeapState(_policy_from_environment())

def children_alive() -> bool:
    """Is any child process, which may share our pages, still running?  Zombies are not.

    Asks the OS, so children of every kind count: multiprocessing's, ``cowmp.fork()``'s,
    those of an ``os.fork()`` made by other code.
    """
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


def _whole_heap_collection_due() -> bool:
    frozen = gc.get_freeze_count()
    if frozen <= _state.frozen_after_full:
        return False
    if frozen > THAW_MIN_OBJECTS and frozen < _state.frozen_after_full * (1 + THAW_GROWTH):
        return False
    return not children_alive()


def freeze_for_fork() -> None:
    """Run the parent's side of the protocol right before ``os.fork()``."""
    with _state.lock:
        whole_heap = False
        if _state.policy == "auto" and gc.isenabled():
            if _whole_heap_collection_due():
                gc.unfreeze()
                gc.collect()
                whole_heap = True
            elif gc.get_freeze_count() == 0:
                gc.collect(1)  # first freeze: the young only, not the whole heap
            else:
                gc.collect()  # what was made since the last freeze (frozen is skipped)
        gc.freeze()
        if whole_heap:
            _state.frozen_after_full = gc.get_freeze_count()


def after_fork_in_parent() -> None:
    """Run the parent's side of the protocol right after ``os.fork()``."""
    if _state.policy == "unfreeze":
        gc.unfreeze()


def after_fork_in_child() -> None:
    """Run the child's side: collections resume, but skip everything inherited."""
    global _state
    _state = _HeapState(_state.policy)
    _state.frozen_after_full = gc.get_freeze_count()
    gc.enable()
