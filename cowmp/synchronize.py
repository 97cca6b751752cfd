"""Locks, semaphores, conditions, events and barriers of the cowfork context.

A cowfork child inherits its parent's semaphores through the fork, so a cowfork
semaphore is made the way the ``fork`` context makes one: unlinked at creation, invisible
to every other process, never registered with the resource tracker (so none can leak).
The standard library decides that by comparing the context's name with ``"fork"``; the
constructors here are handed a view of the cowfork context that answers ``"fork"`` to that
one question and delegates everything else.

Such a semaphore cannot be rebuilt in a spawned process (3.10 crashes trying, 3.11+ raise
a generic error).  :func:`check_semlock_portable` is registered as the pickling reducer
of every SemLock class, for the standard library's and loky's picklers, so that sending
one to a ``spawn``, ``forkserver`` or ``loky`` process fails in the parent with an error
that names both contexts, on every supported version.
"""

from __future__ import annotations

import sys
from multiprocessing import context as mp_context
from multiprocessing import synchronize as mp_sync
from typing import Any

__all__ = ["ContextMismatchError", "check_semlock_portable"]


class ContextMismatchError(RuntimeError):
    """A synchronization object was sent to a process of a context it cannot live in."""


class _ForkNamedView:
    """Our context, except that it calls itself ``"fork"`` when a SemLock asks."""

    def __init__(self, ctx: mp_context.BaseContext) -> None:
        self._ctx = ctx

    def get_start_method(self, allow_none: bool = False) -> str:
        return "fork"

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)


def _target_context_name() -> str:
    popen = mp_context.get_spawning_popen()
    if popen is None:
        return "another process (pickled outside process start-up)"
    method = getattr(popen, "method", None) or type(popen).__module__
    if getattr(popen, "cowmp_fallback", False):
        return f"{method!r} (spawning through loky here: no os.fork, or COWMP_FORCE_FALLBACK)"
    return repr(method)


def check_semlock_portable(obj: mp_sync.SemLock) -> tuple:
    """Pickling reducer for SemLocks: refuse, clearly, one that only forks can carry."""
    if sys.platform != "win32" and getattr(obj, "_semlock", None) is not None:
        if obj._semlock.name is None:
            origin = getattr(obj, "_cowmp_origin", "fork")
            kind = type(obj).__name__
            raise ContextMismatchError(
                f"A {kind} created by the {origin!r} context (alone, or inside an Event, "
                f"Condition, Queue, Value...) cannot be sent to a process "
                f"started by the {_target_context_name()} context: {origin!r} semaphores "
                f"exist only in the process that made them and in its forked children. "
                f"Create the {kind} from the context that starts the process "
                f"(ctx = get_context(...); ctx.{kind}(), ctx.Process(...)), or start the "
                f"process with get_context({origin!r})."
            )
    return obj.__reduce_ex__(2)


class _CowSemLock:
    _cowmp_origin = "cowfork"


class Lock(_CowSemLock, mp_sync.Lock):
    def __init__(self, *, ctx: mp_context.BaseContext) -> None:
        super().__init__(ctx=_ForkNamedView(ctx))


class RLock(_CowSemLock, mp_sync.RLock):
    def __init__(self, *, ctx: mp_context.BaseContext) -> None:
        super().__init__(ctx=_ForkNamedView(ctx))


class Semaphore(_CowSemLock, mp_sync.Semaphore):
    def __init__(self, value: int = 1, *, ctx: mp_context.BaseContext) -> None:
        super().__init__(value, ctx=_ForkNamedView(ctx))


class BoundedSemaphore(_CowSemLock, mp_sync.BoundedSemaphore):
    def __init__(self, value: int = 1, *, ctx: mp_context.BaseContext) -> None:
        super().__init__(value, ctx=_ForkNamedView(ctx))


SEMLOCK_CLASSES: tuple[type, ...] = (
    mp_sync.Lock,
    mp_sync.RLock,
    mp_sync.Semaphore,
    mp_sync.BoundedSemaphore,
    Lock,
    RLock,
    Semaphore,
    BoundedSemaphore,
)


def register_reducers() -> None:
    """Install :func:`check_semlock_portable` in the pickler that starts processes.

    loky's pickler gets it too: :mod:`cowmp.stdlib_patches` mirrors every
    ``ForkingPickler`` registration into it once loky is in use.
    """
    from multiprocessing.reduction import ForkingPickler

    for cls in SEMLOCK_CLASSES:
        ForkingPickler.register(cls, check_semlock_portable)


def __getattr__(name: str) -> Any:
    """The rest of ``multiprocessing.synchronize`` (Condition, Event, Barrier...)."""
    try:
        return getattr(mp_sync, name)
    except AttributeError:
        raise AttributeError(f"module 'cowmp.synchronize' has no attribute {name!r}") from None
