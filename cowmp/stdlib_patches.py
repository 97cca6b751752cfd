"""Every change cowmp makes to the standard library and to the interpreter's global
state, in one place, applied once by ``import cowmp`` (docs/design.md §6).

A context named ``"cowfork"`` is not ``"fork"``, so each standard-library check for the
name ``"fork"`` would take its non-fork branch.  Per supported version (3.10-3.14, read
from their sources), and what cowmp does about it:

* ``multiprocessing.context._concrete_contexts`` (all versions): ``"cowfork"`` is added,
  so that ``multiprocessing.get_context("cowfork")``, ``set_start_method("cowfork")``
  and every library that takes a start method by name know it
  (:func:`register_start_method`).
* ``concurrent.futures.ProcessPoolExecutor.__init__`` (3.10+):
  ``_safe_to_dynamically_spawn_children = start_method != "fork"`` decides whether
  workers may be forked on demand, from a parent that already runs the executor's
  manager thread; ``max_tasks_per_child`` is refused for ``"fork"`` (3.11+) for the
  same reason.  A forking cowfork context is treated like ``"fork"`` in both
  (:func:`teach_process_pool_executor`).
* ``multiprocessing.spawn.get_preparation_data`` (all versions): a spawned or
  forkserver child is told the parent's default start method and sets it before it
  imports anything else, so a parent whose default is ``"cowfork"`` would make that
  child fail.  The name is sent as a token whose unpickling imports cowmp first
  (:func:`send_importable_method_names`).
* ``multiprocessing.reduction.ForkingPickler`` (all versions, POSIX): every SemLock
  class gets a reducer that refuses, clearly, to send a fork-only semaphore to a spawned
  process (:func:`cowmp.synchronize.check_semlock_portable`; 3.10 would crash in the
  child, 3.11+ raise a generic error) (:func:`register_semlock_reducers`).
* loky's pickler (loky 3.5-3.7, whose private ``reduction._dispatch_table`` is read and
  written): every reducer registered with ``ForkingPickler`` (Value, Array and Barrier
  arenas, sharedctypes' ctypes types, the SemLock check) is mirrored into it, past and
  future registrations, once loky is in use (:func:`mirror_registrations_into_loky`;
  loky's side is :func:`cowmp.fallback.mirror_reducer`, the only module that imports
  loky).
* ``compileall`` (3.12+) swaps ``"fork"`` for ``"forkserver"`` for its executor; with
  the executor taught above, cowfork needs no swap.
* ``DefaultContext.get_all_start_methods`` is a fixed list on 3.10-3.13 (and CPython's
  own tests check that list), so cowfork is listed by ``cowmp.get_all_start_methods()``
  only; 3.14 lists every registered context, cowfork included.

joblib learns the ``"cowfork"`` backend when ``joblib.parallel`` is imported, before or
after cowmp (:func:`cowmp.joblib_backend.install_import_hook`, an import hook that leaves
``sys.meta_path`` once it has fired; joblib is not imported by it).

Hooks cowmp registers in the interpreter (:func:`register_hooks`): at fork, the
descriptor registry's lock is held across every fork and the registered descriptors are
closed in the child (:mod:`cowmp.handles`), and a child forgets its parent's executors
(:func:`cowmp.pool_manager.forget_parent_pools`); at exit, executors finish their work before
non-daemon threads are joined, as the standard executor's do
(:func:`cowmp.pool_manager.shut_down_at_exit`, through ``threading._register_atexit``, 3.9+).
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
import threading
from multiprocessing import context as mp_context
from multiprocessing import spawn
from typing import Any

from . import fallback, handles, joblib_backend, pool_manager, synchronize
from .context import cowfork_context, is_forking_cowfork
from .start_method import METHOD, ImportingMethodName

__all__ = ["install"]

_installed = False


def register_start_method() -> None:
    mp_context._concrete_contexts[METHOD] = cowfork_context  # type: ignore[attr-defined]


def teach_process_pool_executor() -> None:
    from concurrent.futures import process as cf_process

    executor = cf_process.ProcessPoolExecutor
    original = executor.__init__
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

    executor.__init__ = __init__


def send_importable_method_names() -> None:
    original = spawn.get_preparation_data

    @functools.wraps(original)
    def get_preparation_data(name):  # type: ignore[no-untyped-def]
        data = original(name)
        if data.get("start_method") == METHOD:
            data["start_method"] = ImportingMethodName(data["start_method"])
        return data

    spawn.get_preparation_data = get_preparation_data


def register_semlock_reducers() -> None:
    if sys.platform != "win32":
        synchronize.register_reducers()


def mirror_registrations_into_loky() -> None:
    """``ForkingPickler.register`` also tells loky's pickler (once loky is in use:
    :func:`cowmp.fallback.mirror_reducer`)."""
    from multiprocessing import reduction as mp_reduction
    from multiprocessing.reduction import ForkingPickler

    original = ForkingPickler.register.__func__  # type: ignore[attr-defined]

    def register(cls, type, reduce):  # type: ignore[no-untyped-def]
        original(cls, type, reduce)
        fallback.mirror_reducer(type, reduce)

    ForkingPickler.register = classmethod(register)  # type: ignore[assignment]
    mp_reduction.register = ForkingPickler.register  # the module's alias of it


def register_hooks() -> None:
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(before=handles.before_fork,
                            after_in_parent=handles.after_fork_in_parent,
                            after_in_child=handles.after_fork_in_child)
        os.register_at_fork(after_in_child=pool_manager.forget_parent_pools)
    register_atexit: Any = getattr(threading, "_register_atexit", None)
    if register_atexit is not None:
        register_atexit(pool_manager.shut_down_at_exit)
    else:  # pragma: no cover - threading._register_atexit exists since 3.9
        import atexit

        atexit.register(pool_manager.shut_down_at_exit)


def install() -> None:
    """Apply everything above, once (``import cowmp`` calls it)."""
    global _installed
    if _installed:
        return
    _installed = True
    register_start_method()
    teach_process_pool_executor()
    send_importable_method_names()
    register_semlock_reducers()
    mirror_registrations_into_loky()
    if fallback.loky_loaded():
        fallback.mirror_all_reducers()
    register_hooks()
    joblib_backend.install_import_hook()
