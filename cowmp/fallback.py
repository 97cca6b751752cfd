"""The cowfork context where ``os.fork`` is missing: loky's spawn-based processes
(docs/design.md §6).

Where there is no ``fork()`` (Windows), or when ``COWMP_FORCE_FALLBACK=1`` forces it (so
that this path is tested on Linux), the cowfork context keeps its name and its API but
starts each process as a fresh interpreter through loky, which pickles the target with
cloudpickle (lambdas, closures and functions of ``__main__`` work).  Nothing is shared
then; everything must still work.  Locks, events, conditions and queues then come from
loky too: named semaphores that loky's resource tracker cleans up if a process dies.

This is the only module that imports loky, and only when it is used
(:func:`loky_context`, :func:`popen_class`): where fork exists, importing cowmp does not
import loky.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any

from .start_method import METHOD, ImportingMethodName

__all__ = ["FORCE_VARIABLE", "fallback_forced", "fork_missing", "loky_context",
           "loky_loaded", "loky_queue", "mirror_all_reducers", "mirror_reducer", "popen_class"]

FORCE_VARIABLE = "COWMP_FORCE_FALLBACK"


def fork_missing() -> bool:
    return not hasattr(os, "fork")


def fallback_forced() -> bool:
    value = os.environ.get(FORCE_VARIABLE, "").strip().lower()
    return value not in ("", "0", "false", "no", "off")


def loky_loaded() -> bool:
    """Has loky's process machinery been imported (by cowmp or by anyone)?"""
    return "loky.backend.reduction" in sys.modules


@functools.cache
def loky_context() -> Any:
    """loky's context (importing it registers the ``"loky"`` start method), with every
    reducer multiprocessing knows mirrored into loky's pickler."""
    from loky.backend.context import ctx_loky

    mirror_all_reducers()
    return ctx_loky


def loky_queue(kind: str) -> type:
    """loky's ``Queue`` or ``SimpleQueue`` class."""
    loky_context()
    from loky.backend import queues

    return getattr(queues, kind)


def mirror_reducer(cls: type, reduce: Any) -> None:
    """A reducer registered with multiprocessing's ``ForkingPickler``, made known to
    loky's pickler too, where loky has none of its own for the type (once loky is
    loaded: :mod:`cowmp.stdlib_patches` calls this for every registration).  Uses
    loky's private ``reduction._dispatch_table`` (the tested loky versions are pinned,
    and a test checks it is still there)."""
    reduction = sys.modules.get("loky.backend.reduction")
    if reduction is None:
        return
    table = reduction._dispatch_table
    if cls not in table or cls in _mirrored:  # loky's own reducers stay; ours follow
        table[cls] = reduce  # the latest registration (torch registers some twice)
        _mirrored.add(cls)


_mirrored: set[type] = set()  # the types whose reducer in loky's table is a mirror


def mirror_all_reducers() -> None:
    """Every reducer ``ForkingPickler`` has, mirrored (:func:`mirror_reducer`)."""
    from multiprocessing.reduction import ForkingPickler

    import loky.backend.reduction  # noqa: F401 - loaded for mirror_reducer

    for cls, reduce in list(ForkingPickler._extra_reducers.items()):
        mirror_reducer(cls, reduce)


@functools.cache
def popen_class() -> type:
    """loky's launcher, reporting itself as the cowfork start method."""
    loky_context()
    if os.name == "nt":  # pragma: no cover - exercised on Windows only
        from loky.backend.popen_loky_win32 import Popen as LokyPopen
    else:
        from loky.backend.popen_loky_posix import Popen as LokyPopen

    class Popen(LokyPopen):  # type: ignore[misc, valid-type]
        method = METHOD
        cowmp_fallback = True

        def __init__(self, process_obj: Any) -> None:
            # loky's launcher reads what only its own Process class has: any Process
            # (cowmp's, or multiprocessing's once the default method is cowfork) gets it
            if not hasattr(process_obj, "env"):
                process_obj.env = {}
            if not hasattr(process_obj, "init_main_module"):
                # as spawn does: the child imports the main module as __mp_main__, so
                # that queues and pools that pickle __main__'s functions by reference work
                process_obj.init_main_module = True
            if process_obj._start_method is None:
                # a default-context Process: the child's default method is cowfork, as a
                # spawned child's is its parent's (loky's preparation data does not say)
                process_obj._start_method = ImportingMethodName(METHOD)
            super().__init__(process_obj)

    # loky starts the child as ``python -m <module of the Popen class>``, whose
    # ``__main__`` is loky's child entry point: the subclass must name loky's module there
    Popen.__module__ = LokyPopen.__module__
    return Popen
