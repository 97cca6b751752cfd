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


# loky starts the child as ``python -m <module of the Popen class>``, whose ``__main__``
# is loky's child entry point: the subclass must name loky's module there.
Popen.__module__ = _LokyPopen.__module__
