"""The one place where cowmp ends a process: how a forked child leaves (docs/design.md §4).

A child that leaves through the normal interpreter exit tears down its modules and
deallocates the inherited heap object by object: every refcount written, every page
copied, at the moment the child dies.  ``os._exit()`` skips that.  Before it the child
still flushes stdio and runs multiprocessing's finalizers; the parent's ``atexit``
handlers are not the child's to run.
"""

from __future__ import annotations

import atexit
import io
import os
import sys
import types
from multiprocessing import util
from typing import NoReturn

from . import heap

__all__ = ["exit", "finish_like_interpreter_exit", "pin_inherited_heap"]

#: Whether children of a hooked ``os.fork()`` pin their inherited heap at exit.
fast_exit_for_hooked_children = True


def flush_std_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (AttributeError, ValueError, OSError):
            pass


def leave(code: int, *, flush: bool = True) -> NoReturn:
    """Flush stdio (unless ``flush`` is false: a worker whose parent is gone must not
    wait on a pipe nobody reads) and end the process now with ``code``: the only
    ``os._exit`` in cowmp."""
    if flush:
        flush_std_streams()
    os._exit(code)


def exit(code: int | None = 0) -> NoReturn:  # noqa: A001 - mirrors sys.exit
    """End a forked child without tearing down the heap it inherited.

    Flushes ``sys.stdout``/``sys.stderr``, runs multiprocessing's finalizers (terminating
    daemonic children, joining the others, as multiprocessing does at exit), then calls
    ``os._exit(code)``.  ``atexit`` handlers are not run and other threads are not waited
    for.  ``code`` is an ``int`` (``None`` means 0), as for ``sys.exit``.
    """
    if code is None:
        code = 0
    if isinstance(code, bool) or not isinstance(code, int):
        raise TypeError(f"cowmp.exit() takes an int exit code, not {type(code).__name__}")
    try:
        util._exit_function()
    finally:
        leave(code)


def exit_status(code: object) -> int:
    """The status that ``sys.exit(code)`` ends a process with: None is 0, an int is
    itself, anything else is printed to stderr and gives 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    try:
        print(code, file=sys.stderr)
    except (AttributeError, ValueError, OSError):
        pass
    return 1


def finish_like_interpreter_exit(code: object) -> NoReturn:
    """End the process as the interpreter's exit would for ``sys.exit(code)``, minus the
    teardown of the heap: ``atexit`` handlers run (logging flushes its handlers there,
    multiprocessing runs its finalizers), stdio is flushed, and the process ends with
    ``os._exit``.  Threads still running are not waited for.

    How a cowfork ``Process`` child ends (:mod:`cowmp.popen`, which cleared the parent's
    handlers when the child began), and a forked server worker (:mod:`cowmp.gunicorn`:
    the handlers it inherited ran in it under the normal exit too, so nothing it did
    before is lost); only the walk over the inherited heap, which would copy every page
    of it, is skipped.
    """
    status = exit_status(code)
    try:
        atexit._run_exitfuncs()
    finally:
        leave(status)


def _pinnable(value: object) -> bool:
    """Data, not resources: objects whose teardown only frees memory."""
    if isinstance(value, (types.ModuleType, type, types.FunctionType, io.IOBase)):
        return False
    return not hasattr(type(value), "__del__")


_pinned: list = []


def pin_inherited_heap() -> None:
    """Keep module-level data alive through the interpreter's teardown.

    Registered with ``atexit`` in a forked child that may leave through the normal exit:
    it runs before the modules are cleared and takes one extra reference to each
    module-level data object (not to modules, classes, functions, files, or objects with a
    ``__del__``, which are torn down as usual).  The holder refers to itself and is frozen,
    so no collection and no refcount ever frees it: the teardown drops the module's
    reference, the object survives, and nothing below it is visited.  The cost is one
    refcount write per module-level object instead of one per object of the heap.
    """
    holder: list = [None]
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        holder.extend(v for v in list(namespace.values()) if _pinnable(v))
    holder[0] = holder  # a cycle: its refcount never reaches zero
    _pinned.append(holder)
    heap.freeze_all()  # and the collector never looks at it
