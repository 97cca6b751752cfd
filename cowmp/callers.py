"""Where cowmp's warnings point: at the user's line, found by walking out of the frames
of cowmp, ``multiprocessing`` and ``concurrent.futures`` (and of joblib and loky, whose
pools call them).

A fixed ``stacklevel`` is right for one path only: ``cowmp.fork()`` is one call from the
user, ``cowmp.Process(...).start()`` several (through ``multiprocessing.process``), an
executor or a ``Pool`` more.  :func:`stacklevel` counts them on each call.
"""

from __future__ import annotations

import sys
import types

__all__ = ["stacklevel"]

#: packages whose frames are machinery between the user's call and cowmp's fork: cowmp,
#: the standard library's process pools, and the pools built on them (joblib, loky)
_MACHINERY = ("cowmp", "multiprocessing", "concurrent.futures", "joblib", "loky")


def _internal(frame: types.FrameType) -> bool:
    name = frame.f_globals.get("__name__") or ""
    if name.startswith("importlib.") or frame.f_code.co_filename.startswith("<frozen"):
        return True
    return any(name == package or name.startswith(package + ".") for package in _MACHINERY)


def stacklevel() -> int:
    """The ``stacklevel`` that makes a ``warnings.warn`` made by the caller of this
    function point at the first frame outside cowmp and the standard library's process
    machinery (the outermost frame if there is none: a library's own thread)."""
    frame = sys._getframe(1)  # the function that warns: stacklevel 1
    level = 1
    while frame.f_back is not None and _internal(frame):
        frame = frame.f_back
        level += 1
    return level
