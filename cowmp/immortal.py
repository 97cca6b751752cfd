"""Immortal objects: the one place where reference counts are rewritten (docs/design.md §5).

Every ``Py_INCREF``/``Py_DECREF`` writes the object, so a forked child that only reads
inherited data still copies nearly every page of it.  Since Python 3.12 (PEP 683) the
interpreter skips those writes for *immortal* objects, which it recognises by the value
of their reference count.  :func:`prepare` walks the data reachable from an object and,
on 64-bit GIL builds of 3.12 and later, gives each object that value, exactly as the
interpreter writes it:

* 3.12 and 3.13: ``ob_refcnt`` is set to ``_Py_IMMORTAL_REFCNT``, ``UINT_MAX`` (the low
  32 bits set); ``Py_INCREF`` saturates there and ``Py_DECREF`` tests bit 31;
* 3.14 and later: the 32-bit ``ob_refcnt`` field is set to
  ``_Py_IMMORTAL_INITIAL_REFCNT``, ``3 << 30``, and the 16-bit ``ob_flags`` beside it to
  ``_Py_IMMORTAL_FLAGS`` (1), as ``_Py_SetImmortalUntracked()`` does; any count with bit
  31 set is immortal, and the value sits mid-range so that old extensions' unchecked
  increments cannot end it.

What is walked: tuples and lists (their items), dicts (keys and values), sets and
frozensets (their items), and any other object through what its type reports to the
garbage collector (``tp_traverse``: instance attributes, ``__slots__``, the contents of
other containers).  What is not: types, modules, functions, methods, code, frames,
tracebacks, generators and coroutines, cells, weak references and descriptors (the
program, not its data; they are neither made immortal nor entered), and objects already
immortal (``None``, small ints, interned strings on 3.12, data shared before).  What is
walked but left mortal: an object whose type has a finalizer (``__del__``: it would never
run), an object that has weak references (they would never die, their callbacks never
run), and an interned string (the interpreter's table of interned strings owns it).

Each exact ``str`` and ``bytes`` gets its hash computed and cached, on every version: a
child's first dict lookup would otherwise write it.  Immortal objects are never freed,
even when nothing refers to them anymore: share data that lives as long as the process.

The walk is done by a C helper (``cowmp/_immortal.c``, built at install when a compiler
is present) or, failing that, by :func:`_walk_in_python` with ``ctypes``, to the same
result, some fifty times more slowly (about 2 µs an object).
"""

from __future__ import annotations

import ctypes
import functools
import gc
import sys
import sysconfig
import types
import warnings
import weakref
from typing import Any, NamedTuple

from . import callers

try:
    from . import _immortal  # type: ignore[attr-defined]
except ImportError:  # no compiler at install time
    _immortal = None

#: whether the C helper walks objects (else the pure-Python walk, about 50 times slower)
HAS_C_HELPER = _immortal is not None

__all__ = ["CAN_IMMORTALIZE", "HAS_C_HELPER", "SharingWarning", "Walked", "is_immortal", "prepare"]

FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
#: can this interpreter make objects immortal?  (3.12+, 64-bit, with the GIL)
CAN_IMMORTALIZE = sys.version_info >= (3, 12) and sys.maxsize > 2**32 and not FREE_THREADED
#: reference counts from this value up are immortal (bit 31 of the 32-bit count)
_IMMORTAL_FROM = 1 << 31

#: the program, not its data: neither made immortal nor entered (types and modules too)
EXCLUDED_TYPES: tuple[type, ...] = tuple(dict.fromkeys((
    types.FunctionType, types.LambdaType, types.BuiltinFunctionType,
    types.BuiltinMethodType, types.MethodType, types.CodeType, types.FrameType,
    types.TracebackType, types.GeneratorType, types.CoroutineType,
    types.AsyncGeneratorType, types.CellType, types.MethodWrapperType,
    types.WrapperDescriptorType, types.MethodDescriptorType,
    types.ClassMethodDescriptorType, types.GetSetDescriptorType,
    types.MemberDescriptorType, property, classmethod, staticmethod, functools.partial,
    weakref.ReferenceType, weakref.ProxyType, weakref.CallableProxyType,
)))

_HAVE_GC = 1 << 14  # Py_TPFLAGS_HAVE_GC: the collector tracks the type's objects


class SharingWarning(RuntimeWarning):
    """``cowmp.share()`` could not make the data immortal on this interpreter."""


class Walked(NamedTuple):
    """What :func:`prepare` did: objects visited, made immortal, and left mortal."""

    objects: int
    immortal: int
    mortal: int


def is_immortal(obj: object) -> bool:
    """Does the interpreter treat ``obj`` as immortal (never written by reference
    counting, never freed)?  Always False before 3.12."""
    return CAN_IMMORTALIZE and sys.getrefcount(obj) >= _IMMORTAL_FROM


def _why_not_immortal() -> str:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    if sys.version_info < (3, 12):
        return f"Python {version} cannot make objects immortal (Python 3.12 and newer can)"
    if FREE_THREADED:
        return (f"this free-threaded build of Python {version} cannot make objects "
                "immortal the way GIL builds of 3.12 and newer do")
    return "a 32-bit Python cannot make objects immortal (64-bit 3.12 and newer can)"


@functools.cache
def _warn_once() -> None:
    warnings.warn(
        f"cowmp.share(): {_why_not_immortal()}, so forked children that read shared "
        "data still copy its pages (every read writes a reference count). The data is "
        "frozen for the garbage collector and sent to workers by reference.",
        SharingWarning, stacklevel=callers.stacklevel())


def prepare(obj: object, immortalize: bool | None = None) -> Walked:
    """Walk the data reachable from ``obj``: cache string hashes, and make it immortal
    where the interpreter can (``immortalize=None``); warns once where it cannot."""
    if immortalize is None:
        immortalize = CAN_IMMORTALIZE
        if not immortalize:
            _warn_once()
    elif immortalize and not CAN_IMMORTALIZE:
        raise ValueError(f"cannot make objects immortal: {_why_not_immortal()}")
    if _immortal is not None:
        return Walked(*_immortal.walk(obj, immortalize, EXCLUDED_TYPES,
                                      weakref.getweakrefcount))
    return _walk_in_python(obj, immortalize)


# -- the same walk in Python (no C helper) ---------------------------------------------

if sys.version_info >= (3, 14):
    # the word of ob_refcnt (32 bits), ob_overflow and ob_flags (16 bits each): flags in
    # its top 16 bits whatever the byte order, ob_overflow 0 below a count of 2**32
    _IMMORTAL_WORD = (1 << 48) | (3 << 30)  # _Py_IMMORTAL_FLAGS, ..._INITIAL_REFCNT
else:
    _IMMORTAL_WORD = 0xFFFFFFFF  # ob_refcnt = _Py_IMMORTAL_REFCNT


def _make_immortal(obj: object) -> None:
    ctypes.c_uint64.from_address(id(obj)).value = _IMMORTAL_WORD


_is_interned = getattr(sys, "_is_interned", None)  # 3.13+; on 3.12 interned is immortal


def _may_immortalize(obj: object, kind: type) -> bool:
    if hasattr(kind, "__del__"):
        return False
    if kind.__weakrefoffset__ and weakref.getweakrefcount(obj):
        return False
    return not (_is_interned is not None and isinstance(obj, str) and _is_interned(obj))


def _children(obj: object, kind: type) -> Any:
    """What the C helper pushes: a container's own storage (not a subclass's
    ``__iter__``), else what the type reports to the collector."""
    if isinstance(obj, tuple):
        return tuple.__iter__(obj)
    if isinstance(obj, list):
        return list.__iter__(obj)
    if isinstance(obj, dict):
        return (item for pair in dict.items(obj) for item in pair)
    if isinstance(obj, frozenset):
        return frozenset.__iter__(obj)
    if isinstance(obj, set):
        return set.__iter__(obj)
    if kind.__flags__ & _HAVE_GC:
        return gc.get_referents(obj)
    return ()


def _walk_in_python(root: object, immortalize: bool) -> Walked:
    """:func:`prepare`'s walk without the C helper: the same rules (see _immortal.c)."""
    getrefcount = sys.getrefcount
    excluded = EXCLUDED_TYPES
    mortal_seen: set[int] = set()  # ids: every object stays alive, reachable from root
    walked = made = left = 0
    stack = [root]
    enabled = gc.isenabled()
    gc.disable()
    try:
        while stack:
            obj = stack.pop()
            kind = type(obj)
            if (getrefcount(obj) >= _IMMORTAL_FROM and CAN_IMMORTALIZE) or kind in excluded \
                    or isinstance(obj, (type, types.ModuleType)):
                continue
            immortal = immortalize and _may_immortalize(obj, kind)
            if not immortal and kind.__flags__ & _HAVE_GC:
                if id(obj) in mortal_seen:
                    continue
                mortal_seen.add(id(obj))
            if kind is str or kind is bytes:
                hash(obj)
            walked += 1
            if immortal:
                _make_immortal(obj)
                made += 1
            else:
                left += 1
            stack.extend(_children(obj, kind))
    finally:
        if enabled:
            gc.enable()
    return Walked(walked, made, left)
