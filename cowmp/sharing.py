"""Data shared with forked children: :func:`share` and :func:`preload` (docs/design.md §5).

:func:`share` prepares data for children that read it without copying it: frozen for the
garbage collector (:mod:`cowmp.heap`), immortal on 3.12+ with its string hashes cached
(:mod:`cowmp.immortal`), and registered to be sent to forked workers by reference.

A worker forked from a snapshot already holds every object that existed at that moment.
:func:`share` registers an object; an executor created afterwards records which shared
objects its fork server inherited, and its pickler (:mod:`cowmp.serialize`) writes those
as a reference (pickle's ``persistent_id``): a task that captures a shared 1 GiB table
costs a few bytes to send, not a gigabyte.  The worker resolves the reference in its own
copy of this registry.

Registered objects live as long as the process: the registry holds them.
"""

from __future__ import annotations

import gc
import threading
import warnings
from collections.abc import Callable
from types import TracebackType
from typing import TypeVar

from . import heap, immortal

__all__ = ["is_shared", "load", "loaded", "preload", "share", "shared_objects"]

T = TypeVar("T")

#: key -> object.  The key is the object's id() at registration; the registry keeps the
#: object alive, so the id is never reused while the entry exists.
_registry: dict[int, object] = {}
_lock = threading.Lock()
_NOTHING = object()
_loaded: object = _NOTHING  # what the executor's loader returned, in its processes


def share(obj: T) -> T:
    """Prepare ``obj`` and everything it holds for forked children to read; return it.

    * Every object reachable from ``obj`` (containers, instances, dict keys and values) is
      made immortal on 64-bit Python 3.12+ with the GIL: reference counting never writes
      it again, so children that read it copy none of its pages, and it is never freed.
      Types, modules, functions, code and frames are not entered; objects with
      ``__del__`` or weak references are left mortal (see :mod:`cowmp.immortal`).
      Elsewhere ``share()`` does the rest and warns once (:class:`SharingWarning`).
    * String and bytes hashes are computed now, not written by a child's first lookup.
    * Everything is frozen for the garbage collector: no collection, in this process or
      a forked child, writes into it.
    * Executors created afterwards send ``obj`` to their workers by reference (a few
      bytes) instead of pickling it.

    Share data that is loaded once and lives as long as the process.
    """
    if obj is None or isinstance(obj, (bool, int, float)):
        return obj  # a number is cheaper to pickle than to look up
    immortal.prepare(obj)
    with _lock:
        _registry[id(obj)] = obj
    heap.freeze_all()
    return obj


class preload:  # noqa: N801 - a context manager, named as a function
    """Load data to share with the garbage collector off: ``with cowmp.preload() as
    loading: table = loading.share(build())``.

    Collections that run while a large structure is built free memory between its
    objects, and the children's later allocations then write into those holes, copying
    the pages around them; with the collector off there are none.  Objects passed to
    :meth:`share` are shared (:func:`share`) when the block ends without an exception.
    The collector is enabled again on the way out if it was enabled on the way in.
    """

    def __init__(self) -> None:
        self._pending: list[object] = []
        self._reenable = False

    def share(self, obj: T) -> T:
        """Share ``obj`` when the block ends; return it."""
        self._pending.append(obj)
        return obj

    def __enter__(self) -> preload:
        self._reenable = gc.isenabled()
        gc.disable()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        pending, self._pending = self._pending, []
        try:
            if kind is None:
                for obj in pending:
                    share(obj)
        finally:
            if self._reenable:
                gc.enable()


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


def load(loader: Callable[..., object], args: tuple = ()) -> object:
    """Run an executor's ``loader(*args)`` with the collector off (:class:`preload`),
    share what it returns (unless None), and keep it for :func:`loaded`.  Called once
    in the fork server that loads the data itself, or in each worker where workers are
    not forked (nothing is shared there)."""
    global _loaded
    with warnings.catch_warnings():
        # where objects cannot be made immortal, share() warns; the executor's
        # documentation says so, and there is no caller's line here to point at
        warnings.simplefilter("ignore", immortal.SharingWarning)
        with preload() as loading:
            value = loader(*args)
            if value is not None:
                loading.share(value)
    _loaded = value
    return value


def loaded() -> object:
    """In a worker of ``CowProcessPoolExecutor(loader=...)``: what the loader returned
    (loaded once by the fork server, shared by every worker).  LookupError elsewhere."""
    if _loaded is _NOTHING:
        raise LookupError("cowmp.loaded(): this process has no loaded data (call it in a "
                          "worker of CowProcessPoolExecutor(loader=...))")
    return _loaded
