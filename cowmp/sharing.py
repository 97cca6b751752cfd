"""Objects registered for sharing: sent to forked workers by reference (DESIGN §2.5).

A worker forked from a snapshot already holds every object that existed at that moment.
:func:`share` registers an object; an executor created afterwards records which shared
objects its fork server inherited, and its pickler (:mod:`cowmp.serialize`) writes those
as a reference (pickle's ``persistent_id``): a task that captures a shared 1 GiB table
costs a few bytes to send, not a gigabyte.  The worker resolves the reference in its own
copy of this registry.

Registered objects live as long as the process: the registry holds them.
"""

from __future__ import annotations

import threading
from typing import TypeVar

from . import heap

__all__ = ["is_shared", "share", "shared_objects"]

T = TypeVar("T")

#: key -> object.  The key is the object's id() at registration; the registry keeps the
#: object alive, so the id is never reused while the entry exists.
_registry: dict[int, object] = {}
_lock = threading.Lock()


def share(obj: T) -> T:
    """Register ``obj`` for sharing with workers forked after this call; return ``obj``.

    The object (and everything it refers to) is frozen for the garbage collector, so no
    collection in this process or a forked child writes into it, and executors created
    afterwards send it to their workers by reference instead of pickling it.  Shared
    objects are never freed.  Share data, loaded once, that workers read.
    """
    if obj is None or isinstance(obj, (bool, int, float)):
        return obj  # a number is cheaper to pickle than to look up
    with _lock:
        _registry[id(obj)] = obj
    heap.freeze_all()
    return obj


def is_shared(obj: object) -> bool:
    """Has ``obj`` been registered with :func:`share`?"""
    return _registry.get(id(obj)) is obj


def shared_objects() -> dict[int, object]:
    """A copy of the registry (key -> object), as a fork server inherits it."""
    with _lock:
        return dict(_registry)


def lookup(key: int) -> object:
    """The shared object registered under ``key`` (in a forked worker)."""
    try:
        return _registry[key]
    except KeyError:
        raise LookupError(
            f"no object shared under key {key:#x} in this process: it was shared after "
            "the executor's fork server was created"
        ) from None
