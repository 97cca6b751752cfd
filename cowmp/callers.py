"""Where cowmp's warnings point: at the user's line, found by walking out of the frames
of cowmp, ``multiprocessing`` and ``concurrent.futures``.

A fixed ``stacklevel`` is right for one path only: ``cowmp.fork()`` is one call from the
user, ``cowmp.Process(...).start()`` several (through ``multiprocessing.process``), an
executor or a ``Pool`` more.  :func:`stacklevel` counts them on each call.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import sys

__all__ = ["stacklevel"]

_INTERNAL = tuple(
    os.path.dirname(os.path.abspath(module.__file__)) + os.sep  # type: ignore[type-var]
    for module in (sys.modules[__package__], multiprocessing, concurrent.futures)
)


def _internal(filename: str) -> bool:
    return filename.startswith(_INTERNAL) or filename.startswith("<frozen importlib")


def stacklevel() -> int:
    """The ``stacklevel`` that makes a ``warnings.warn`` made by the caller of this
    function point at the first frame outside cowmp and the standard library's process
    machinery (the outermost frame if there is none: a library's own thread)."""
    frame = sys._getframe(1)  # the function that warns: stacklevel 1
    level = 1
    while frame.f_back is not None and _internal(frame.f_code.co_filename):
        frame = frame.f_back
        level += 1
    return level
