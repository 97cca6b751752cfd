"""Where the standard library tests for the name ``"fork"``, taught about ``"cowfork"``.

A context named ``"cowfork"`` is not ``"fork"``, so each such check would take its
non-fork branch.  Per supported version (3.10–3.14, read from their sources):

* ``multiprocessing.synchronize.SemLock.__init__`` (unlink the semaphore at once, skip the
  resource tracker, refuse to pickle it): handled where cowfork makes its semaphores,
  :mod:`cowmp.synchronize`.
* ``concurrent.futures.ProcessPoolExecutor.__init__``: ``_safe_to_dynamically_spawn_children
  = start_method != "fork"`` (3.10+) decides whether workers may be forked on demand, from
  a parent that already runs the executor's manager thread; ``max_tasks_per_child`` is
  refused for ``"fork"`` (3.11+) for the same reason.  A forking cowfork context must be
  treated like ``"fork"`` in both: :func:`_teach_process_pool_executor`.
* ``multiprocessing.spawn.get_preparation_data``: a spawned or forkserver child is told
  the parent's default start method and sets it before it imports anything else, so a
  parent whose default is ``"cowfork"`` would make that child fail.  The name is sent as
  a token whose unpickling imports cowmp first: :func:`_send_importable_method_names`.
* ``compileall`` (3.12+) swaps ``"fork"`` for ``"forkserver"`` for its executor; with the
  executor taught above, cowfork needs no swap.
* ``DefaultContext.get_all_start_methods`` is a fixed list on 3.10–3.13 (and CPython's own
  tests check that list), so cowfork is listed by ``cowmp.get_all_start_methods()`` only;
  3.14 lists every registered context, cowfork included.
"""

from __future__ import annotations

import functools
import inspect
from multiprocessing import spawn

from .context import METHOD, ImportingMethodName, is_forking_cowfork

__all__ = ["install"]

_OUR_METHODS = frozenset({METHOD})


def _teach_process_pool_executor() -> None:
    from concurrent.futures import process as cf_process

    executor = cf_process.ProcessPoolExecutor
    original = executor.__init__
    if getattr(original, "_cowmp", False):
        return
    signature = inspect.signature(original)

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        arguments = signature.bind(self, *args, **kwargs).arguments
        ctx = arguments.get("mp_context")
        if is_forking_cowfork(ctx) and arguments.get("max_tasks_per_child") is not None:
            raise ValueError(
                "max_tasks_per_child is incompatible with the 'cowfork' start method in "
                "concurrent.futures.ProcessPoolExecutor (as with 'fork': replacement "
                "workers would be forked from a process that runs the executor's thread); "
                "supply a 'spawn' or 'forkserver' mp_context."
            )
        original(self, *args, **kwargs)
        if is_forking_cowfork(self._mp_context):
            # Fork every worker up front, before the manager thread exists.
            self._safe_to_dynamically_spawn_children = False

    __init__._cowmp = True  # type: ignore[attr-defined]
    executor.__init__ = __init__


def _send_importable_method_names() -> None:
    original = spawn.get_preparation_data
    if getattr(original, "_cowmp", False):
        return

    @functools.wraps(original)
    def get_preparation_data(name):  # type: ignore[no-untyped-def]
        data = original(name)
        if data.get("start_method") in _OUR_METHODS:
            data["start_method"] = ImportingMethodName(data["start_method"])
        return data

    get_preparation_data._cowmp = True  # type: ignore[attr-defined]
    spawn.get_preparation_data = get_preparation_data


def install() -> None:
    """Apply every adaptation above (idempotent; done by ``import cowmp``)."""
    _teach_process_pool_executor()
    _send_importable_method_names()
