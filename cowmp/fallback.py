"""The cowfork context where ``os.fork`` is missing: loky's spawn-based processes.

Where there is no ``fork()`` (Windows), or when ``COWMP_FORCE_FALLBACK=1`` forces it (so
that this path is tested on Linux), the cowfork context keeps its name and its API but
starts each process as a fresh interpreter through loky, which pickles the target with
cloudpickle (lambdas, closures and functions of ``__main__`` work).  Nothing is shared
then; everything must still work.  Locks, events, conditions and queues then come from
loky too: named semaphores that loky's resource tracker cleans up if a process dies.
"""

from __future__ import annotations

import os

__all__ = ["FORCE_VARIABLE", "Popen", "fallback_forced", "fork_missing"]

FORCE_VARIABLE = "COWMP_FORCE_FALLBACK"


def fork_missing() -> bool:
    return not hasattr(os, "fork")


def fallback_forced() -> bool:
    value = os.environ.get(FORCE_VARIABLE, "").strip().lower()
    return value not in ("", "0", "false", "no", "off")


if os.name == "nt":  # pragma: no cover - exercised on Windows only
    from loky.backend.popen_loky_win32 import Popen as _LokyPopen
else:
    from loky.backend.popen_loky_posix import Popen as _LokyPopen


class Popen(_LokyPopen):  # type: ignore[misc, valid-type]
    """loky's launcher, reporting itself as the cowfork start method."""

    method = "cowfork"
    cowmp_fallback = True

    def __init__(self, process_obj) -> None:  # type: ignore[no-untyped-def]
        # loky's launcher reads what only its own Process class has: any Process
        # (cowmp's, or multiprocessing's once the default method is cowfork) gets it here
        if not hasattr(process_obj, "env"):
            process_obj.env = {}
        if not hasattr(process_obj, "init_main_module"):
            # as spawn does: the child imports the main module as __mp_main__, so that
            # queues and pools that pickle __main__'s functions by reference work
            process_obj.init_main_module = True
        if process_obj._start_method is None:
            # a default-context Process: the child's default method is cowfork, as a
            # spawned child's is its parent's (loky's preparation data does not say it)
            from .context import METHOD, ImportingMethodName

            process_obj._start_method = ImportingMethodName(METHOD)
        super().__init__(process_obj)


# loky starts the child as ``python -m <module of the Popen class>``, whose ``__main__``
# is loky's child entry point: the subclass must name loky's module there.
Popen.__module__ = _LokyPopen.__module__


def register_loky_reducers() -> None:
    """Make loky's pickler know every reducer that multiprocessing registers in its own.

    multiprocessing registers reducers with ``ForkingPickler.register`` only: the memory
    arenas of Value, Array and Barrier (sent as a file descriptor), and each ctypes type
    that ``sharedctypes`` creates.  Every registration, past and future, is mirrored into
    loky's dispatch table, where loky has none of its own for the type.
    """
    from multiprocessing import reduction as mp_reduction
    from multiprocessing.reduction import ForkingPickler

    from loky.backend import reduction

    def mirror(cls: type, reduce: object) -> None:
        reduction._dispatch_table.setdefault(cls, reduce)

    for cls, reduce in list(ForkingPickler._extra_reducers.items()):
        mirror(cls, reduce)
    original = ForkingPickler.register.__func__
    if getattr(original, "_cowmp", False):
        return

    def register(cls, type, reduce):  # type: ignore[no-untyped-def]
        original(cls, type, reduce)
        mirror(type, reduce)

    register._cowmp = True  # type: ignore[attr-defined]
    ForkingPickler.register = classmethod(register)  # type: ignore[assignment]
    mp_reduction.register = ForkingPickler.register  # the module's alias of it
