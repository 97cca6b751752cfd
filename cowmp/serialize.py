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
import struct
import sys
import traceback
import weakref
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import cloudpickle

from . import sharing

__all__ = ["SPLIT", "RemoteTraceback", "TaskPicklingError", "TaskUnpicklingError", "dumps",
           "loads", "pack_list", "unpack_list", "wrap_exception"]

PROTOCOL = pickle.HIGHEST_PROTOCOL
_MAIN_MARK = b"__main__"
_MISSING = object()
_FUNCTION = type(lambda: None)


def _rebuild_with_cause(cls: type, args: tuple, cause: BaseException | None) -> BaseException:
    error = cls(*args)
    error.__cause__ = cause
    return error


class TaskPicklingError(pickle.PicklingError):
    """A function, argument or result that cannot be sent between processes.

    Pickled with its ``__cause__`` (the original error), so that it reaches the parent
    whole from a worker.
    """

    def __reduce__(self) -> tuple:
        cause = self.__cause__
        if cause is not None:
            try:
                pickle.dumps(cause, PROTOCOL)
            except BaseException:  # noqa: BLE001 - any failure: describe it instead
                cause = RuntimeError(f"{type(cause).__qualname__}: {cause}")
        return _rebuild_with_cause, (type(self), self.args, cause)


class TaskUnpicklingError(TaskPicklingError, BrokenProcessPool):
    """What one task sent could not be rebuilt on the other side: an argument in the
    worker, or a result or an exception in the parent.  Only that task fails.

    Also a :class:`~concurrent.futures.process.BrokenProcessPool`, which the standard
    executor raises in these cases (it breaks the whole pool), so that code written for it
    still catches the error.  ``__cause__`` is the error raised while unpickling.
    """


class Snapshot:
    """What a fork server inherited: shared objects and ``__main__``'s namespace.

    Spawned workers inherit nothing but import the main script again, as
    multiprocessing's spawn does (``main_by_name``): a function or class of ``__main__``
    is then sent by name with its pickle by value beside it, used if the worker's
    ``__main__`` lacks it (defined under ``if __name__ == "__main__":``, or interactively).
    """

    def __init__(self, shared: dict[int, object], main: weakref.WeakValueDictionary,
                 main_by_name: bool = False) -> None:
        self.shared = shared
        self.main = main
        self.main_by_name = main_by_name

    @classmethod
    def take(cls, by_reference: bool) -> Snapshot:
        """``by_reference``: the workers are forked now, and inherit ``__main__``'s
        functions and classes.  Those are remembered weakly, and nothing else of
        ``__main__``: an executor keeps none of the script's data alive."""
        main = weakref.WeakValueDictionary()
        if not by_reference:
            return cls({}, main, main_by_name=True)
        module = sys.modules.get("__main__")
        for name, value in list(vars(module).items()) if module else ():
            if isinstance(value, (type, _FUNCTION)) and value.__module__ == "__main__":
                main[name] = value
        return cls(sharing.shared_objects(), main)


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
    except KeyboardInterrupt:
        raise
    except BaseException:  # noqa: BLE001 - any failure (a __reduce__'s SystemExit too)
        pass
    try:
        return _pickle_with(_CloudPickler, obj, snapshot)
    except KeyboardInterrupt:
        raise
    except BaseException as error:  # noqa: BLE001
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


def loads(data: bytes | memoryview) -> Any:
    return _Unpickler(io.BytesIO(data)).load()


# -- lists of values, each of which can fail alone ---------------------------------------
# A list of tasks' arguments or results travels as one pickle when it holds only what the
# C pickler writes itself (None, bools, numbers, strings, bytes, and tuples, lists, dicts
# and sets of those, at any depth): no code runs to unpickle it, so nothing in it can
# fail.  Anything else (an instance, a class, a function) makes the pickler call
# ``reducer_override``, which stops it: then each value is pickled on its own, so that one
# that cannot be pickled or unpickled fails its task alone.  ``W`` + pickle, or ``S`` +
# count + end offsets + the values' pickles (``R`` instead of ``W``: the pickle refers to
# shared objects, and needs cowmp's unpickler).

_WHOLE, _WHOLE_SHARED, SPLIT = b"W", b"R", b"S"
_COUNT = struct.Struct("!Q")


class _NotPlain(Exception):
    pass


class _PlainPickler(pickle.Pickler):
    """The C pickler, stopped by the first object it does not write itself."""

    def reducer_override(self, obj: Any) -> Any:  # noqa: D102
        raise _NotPlain


class _PlainSharingPickler(_Sharing, _PlainPickler):
    """The same, shared objects by reference (they are looked up, never rebuilt)."""


def without_frames(error: BaseException) -> BaseException:
    """``error`` and its causes without their tracebacks.  Their frames lead back through
    the stack of the thread that caught them (and form cycles with the locals that hold
    the error), keeping that thread's objects alive as long as the error lives."""
    seen = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.__traceback__ = None
        current = current.__cause__ or current.__context__
    return error


def _pickle_plain(values: list, snapshot: Snapshot, shared: bool) -> bytes | None:
    """The pickle of ``values`` if it holds only what cannot fail (see above), else None."""
    buffer = io.BytesIO()
    try:
        if shared:
            _PlainSharingPickler(buffer, snapshot).dump(values)
        else:
            _PlainPickler(buffer, PROTOCOL).dump(values)
    except _NotPlain:
        return None
    except RecursionError:  # nested too deeply for one pickle: value by value
        return None
    return buffer.getvalue()


def pack_list(values: list, snapshot: Snapshot, *,
              shared: bool = True) -> tuple[bytes, dict[int, BaseException]]:
    """Pickle ``values``; return the data and the errors of those that could not be
    pickled by position (they travel as an empty value).  Any exception a value's
    pickling raises is caught, ``SystemExit`` included."""
    use_shared = shared and bool(snapshot.shared)
    data = _pickle_plain(values, snapshot, use_shared)
    if data is not None:
        return (_WHOLE_SHARED if use_shared else _WHOLE) + data, {}
    failed: dict[int, BaseException] = {}
    buffer = io.BytesIO()
    pickler: Any = None
    ends = []
    for index, value in enumerate(values):
        start = buffer.tell()
        try:
            if pickler is None:
                pickler = (_SharingPickler(buffer, snapshot) if use_shared
                           else pickle.Pickler(buffer, PROTOCOL))
            pickler.dump(value)
            pickler.clear_memo()
            with buffer.getbuffer() as view:
                refers_to_main = _MAIN_MARK in view[start:].tobytes()
            if refers_to_main:
                raise pickle.PicklingError("refers to __main__")
        except BaseException:  # noqa: BLE001 - try the general pickler, as dumps() does
            pickler = None  # its state is unknown after a failure
            buffer.seek(start)
            buffer.truncate()
            try:
                buffer.write(_pickle_with(_CloudPickler, value, snapshot))
            except BaseException as error:  # noqa: BLE001 - the value's own failure
                buffer.seek(start)
                buffer.truncate()
                failed[index] = without_frames(error)
        ends.append(buffer.tell())
    index_part = struct.pack(f"!{len(ends)}Q", *ends)
    return b"".join((SPLIT, _COUNT.pack(len(ends)), index_part, buffer.getbuffer())), failed


def unpack_list(data: bytes | memoryview) -> tuple[list, dict[int, BaseException]]:
    """The values of :func:`pack_list`, and the errors raised while unpickling them by
    position (None stands in for those, and for values that travelled empty).  Any
    exception an unpickling raises is caught, ``SystemExit`` included."""
    view = memoryview(data)
    kind = view[:1]
    if kind == _WHOLE:
        return pickle.loads(view[1:]), {}
    if kind == _WHOLE_SHARED:
        return loads(view[1:]), {}
    count = _COUNT.unpack_from(view, 1)[0]
    base = 1 + _COUNT.size + 8 * count
    ends = struct.unpack_from(f"!{count}Q", view, 1 + _COUNT.size)
    values: list = []
    failed: dict[int, BaseException] = {}
    start = 0
    for index, end in enumerate(ends):
        value = None
        if end > start:
            try:
                value = loads(view[base + start:base + end])
            except BaseException as error:  # noqa: BLE001 - that value's failure alone
                failed[index] = without_frames(error)
        values.append(value)
        start = end
    return values, failed


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
    remote = RemoteTraceback(tb)
    if exc.__cause__ is None:
        exc.__cause__ = remote
    elif exc.__cause__.__cause__ is None:  # a cause of its own (TaskPicklingError)
        exc.__cause__.__cause__ = remote
    return exc


class _ExceptionWithTraceback:
    """An exception raised in a worker, with its traceback as text (the frames are let
    go at once: they would keep the task's locals alive)."""

    def __init__(self, exc: BaseException) -> None:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        exc.__traceback__ = None
        self.exc = exc
        self.tb = f'\n"""\n{text}"""'

    def __reduce__(self) -> tuple:
        return _rebuild_exception, (self.exc, self.tb)


def wrap_exception(exc: BaseException) -> _ExceptionWithTraceback:
    """An exception raised in a worker, ready for :func:`encode_errors`."""
    return _ExceptionWithTraceback(exc)


def encode_errors(errors: dict[int, Any], snapshot: Snapshot) -> bytes:
    """Pickle the exceptions (wrapped, by position) of a piece's tasks, each on its own,
    with its type, message and traceback as text beside it: an exception that cannot be
    rebuilt in the parent is still described there.  One that cannot be pickled at all is
    replaced by a RuntimeError that carries its type and message.  No exception: empty."""
    if not errors:
        return b""
    entries = []
    for index, wrapped in errors.items():
        if not isinstance(wrapped, _ExceptionWithTraceback):
            wrapped = _ExceptionWithTraceback(wrapped)
        exc = wrapped.exc
        name = type(exc).__qualname__
        message = _safe_str(exc)
        if len(message) > 500:
            message = message[:497] + "..."
        try:
            data = dumps(wrapped, snapshot, "exception")
        except BaseException as error:  # noqa: BLE001 - SystemExit from a __reduce__ too
            wrapped.exc = RuntimeError(
                f"{name}: {message} (the original exception could not be pickled: "
                f"{describe(error)})")
            data = pickle.dumps(wrapped, PROTOCOL)
        entries.append((index, name, message, wrapped.tb, data))
    return pickle.dumps(entries, PROTOCOL)


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # noqa: BLE001
        return f"<{type(exc).__name__}: str() failed>"


def decode_errors(data: bytes | memoryview,
                  describe_task: Any) -> dict[int, BaseException]:
    """The exceptions of :func:`encode_errors` by position.  One that cannot be rebuilt
    here becomes a :class:`TaskUnpicklingError` that names it (``describe_task(index)``
    names its task), its unpickling error as ``__cause__``."""
    errors: dict[int, BaseException] = {}
    if not len(data):
        return errors
    for index, name, message, tb, payload in loads(data):
        try:
            errors[index] = loads(payload)
        except BaseException as error:  # noqa: BLE001 - SystemExit from a reduce too
            failure = TaskUnpicklingError(
                f"task {describe_task(index)} raised {name}: {message}, which cannot be "
                f"rebuilt in this process: {describe(error)}")
            failure.__cause__ = without_frames(error)
            failure.remote_traceback = tb  # type: ignore[attr-defined]
            errors[index] = failure
    return errors
