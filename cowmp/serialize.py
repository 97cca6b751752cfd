"""How tasks and results travel between an executor and its workers.

Plain pickling where it works (the C pickler, fast), cloudpickle where it does not
(lambdas, closures, functions and classes defined in ``__main__`` or interactively).
Objects registered with :func:`cowmp.share` before the executor's fork server was created
travel by reference; so do ``__main__``'s functions and classes that the fork server
inherited (the same object, under the same name).  Something that cannot be pickled
raises :class:`TaskPicklingError`, which names it.
"""

from __future__ import annotations

import io
import pickle
import sys
import traceback
from typing import Any

import cloudpickle

from . import sharing

__all__ = ["RemoteTraceback", "TaskPicklingError", "dumps", "loads", "wrap_exception"]

PROTOCOL = pickle.HIGHEST_PROTOCOL
_MAIN_MARK = b"__main__"
_MISSING = object()


class TaskPicklingError(pickle.PicklingError):
    """A function, argument or result that cannot be sent between processes."""


class Snapshot:
    """What a fork server inherited: shared objects and ``__main__``'s namespace.

    Spawned workers inherit nothing but import the main script again, as
    multiprocessing's spawn does (``main_by_name``): a function or class of ``__main__``
    is then sent by name with its pickle by value beside it, used if the worker's
    ``__main__`` lacks it (defined under ``if __name__ == "__main__":``, or interactively).
    """

    def __init__(self, shared: dict[int, object], main: dict[str, object],
                 main_by_name: bool = False) -> None:
        self.shared = shared
        self.main = main
        self.main_by_name = main_by_name

    @classmethod
    def take(cls, by_reference: bool) -> Snapshot:
        if not by_reference:
            return cls({}, {}, main_by_name=True)
        main = sys.modules.get("__main__")
        return cls(sharing.shared_objects(), dict(vars(main)) if main else {})


def _main_attribute(name: str) -> Any:
    return getattr(sys.modules["__main__"], name)


def _main_attribute_or_value(name: str, qualname: str, by_value: bytes) -> Any:
    found = getattr(sys.modules.get("__main__"), name, None)
    if found is not None and getattr(found, "__qualname__", None) == qualname:
        return found
    return cloudpickle.loads(by_value)


def _persistent_id(snapshot: Snapshot, obj: object) -> int | None:
    key = id(obj)
    return key if snapshot.shared.get(key, _MISSING) is obj else None


class _Sharing:
    """Pickler mixin: shared objects of the snapshot go by reference."""

    def __init__(self, file: io.BytesIO, snapshot: Snapshot) -> None:
        super().__init__(file, PROTOCOL)  # type: ignore[call-arg]
        self._snapshot = snapshot

    def persistent_id(self, obj: object) -> int | None:  # noqa: D102
        return _persistent_id(self._snapshot, obj)


class _SharingPickler(_Sharing, pickle.Pickler):
    """The fast path: the C pickler, shared objects by reference."""


class _CloudPickler(_Sharing, cloudpickle.Pickler):
    """By value what cannot go by reference; the fork server's ``__main__`` by reference."""

    def reducer_override(self, obj: Any) -> Any:  # noqa: D102
        if getattr(obj, "__module__", None) == "__main__" and isinstance(
            obj, (type, type(_main_attribute))
        ):
            name = getattr(obj, "__name__", None)
            if name is not None and self._snapshot.main.get(name) is obj:
                return _main_attribute, (name,)
            main = sys.modules.get("__main__")
            if self._snapshot.main_by_name and getattr(main, name, None) is obj:
                return _main_attribute_or_value, (
                    name, obj.__qualname__, cloudpickle.dumps(obj, PROTOCOL))
        return super().reducer_override(obj)


class _Unpickler(pickle.Unpickler):
    def persistent_load(self, key: int) -> object:  # noqa: D102
        return sharing.lookup(key)


def _pickle_with(pickler_class: type, obj: object, snapshot: Snapshot) -> bytes:
    buffer = io.BytesIO()
    pickler_class(buffer, snapshot).dump(obj)
    return buffer.getvalue()


def dumps(obj: object, snapshot: Snapshot, what: str = "object", *,
          shared: bool = True) -> bytes:
    """Pickle ``obj``; :class:`TaskPicklingError` names ``what`` if it cannot be.

    ``shared=False`` promises that no shared object is inside (the caller checked), and
    skips the per-object reference check, which costs a Python call per object.
    """
    try:
        if shared and snapshot.shared:
            data = _pickle_with(_SharingPickler, obj, snapshot)
        else:
            data = pickle.dumps(obj, PROTOCOL)
        if _MAIN_MARK not in data:
            return data
    except Exception:  # noqa: BLE001 - any failure: try the general pickler
        pass
    try:
        return _pickle_with(_CloudPickler, obj, snapshot)
    except Exception as error:
        raise TaskPicklingError(f"cannot pickle {what}: {describe(error)}") from error


def holds_shared(snapshot: Snapshot, args: Any, star: bool, kwargs: Any) -> bool:
    """Does any task pass a shared object directly (an argument or a keyword value)?"""
    shared = snapshot.shared
    if not shared:
        return False
    for task in args:
        for arg in task if star else (task,):
            if shared.get(id(arg), _MISSING) is arg:
                return True
    for task_kwargs in kwargs or ():
        for value in task_kwargs.values():
            if shared.get(id(value), _MISSING) is value:
                return True
    return False


def loads(data: bytes) -> Any:
    return _Unpickler(io.BytesIO(data)).load()


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def short_repr(obj: object, limit: int = 80) -> str:
    try:
        text = repr(obj)
    except Exception:  # noqa: BLE001
        text = f"<{type(obj).__name__} object>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, attached as ``__cause__``."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


def _rebuild_exception(exc: BaseException, tb: str) -> BaseException:
    exc.__cause__ = RemoteTraceback(tb)
    return exc


class _ExceptionWithTraceback:
    def __init__(self, exc: BaseException) -> None:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.exc = exc
        self.tb = f'\n"""\n{text}"""'

    def __reduce__(self) -> tuple:
        return _rebuild_exception, (self.exc, self.tb)


def wrap_exception(exc: BaseException) -> object:
    """An exception raised in a worker, ready to be pickled with its traceback.

    An exception that cannot itself be pickled is replaced by a RuntimeError that
    carries its type and message.
    """
    wrapped = _ExceptionWithTraceback(exc)
    try:
        pickle.dumps(exc, PROTOCOL)
    except Exception as error:  # noqa: BLE001
        substitute = RuntimeError(
            f"{type(exc).__qualname__}: {exc} (the original exception could not be "
            f"pickled: {describe(error)})"
        )
        wrapped.exc = substitute
    return wrapped
