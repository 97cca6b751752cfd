"""What fails to pickle or unpickle fails its task alone, with an error naming it, and the
pool goes on: an argument, keyword argument or function that cannot be pickled here; an
argument that cannot be rebuilt in the worker (raising, or calling sys.exit); a result
or exception that cannot be pickled there or rebuilt here."""

from __future__ import annotations

import pickle
import sys
import threading
from concurrent.futures.process import BrokenProcessPool

import executor_support as support
import pytest
from executor_support import (
    FailsToLoad,
    add,
    check_works,
    error_of,
    identity,
    in_worker,
    outcome_of,
    sleep_return,
    square,
)

import cowmp
from cowmp import CowProcessPoolExecutor

no_leftovers = support.no_leftovers
make_executor = support.make_executor


# -- what cannot be pickled, or rebuilt (module level: pickled by reference) -------------


def _raise_unpicklable():
    raise ValueError(threading.Lock())


def _make_generator():
    return (i for i in range(3))


class TwoArgError(Exception):
    """Pickles (its args are one message) but cannot be rebuilt: two arguments needed."""

    def __init__(self, code, detail):
        super().__init__(f"error {code}: {detail}")
        self.code = code
        self.detail = detail


def _raise_two_arg_error():
    raise TwoArgError(7, "needs two arguments to be rebuilt")


def _exit_when_loaded():
    sys.exit(1)


class _ExitsWhenLoaded:
    """Pickles anywhere; its unpickling calls ``sys.exit(1)``."""

    def __reduce__(self):
        return _exit_when_loaded, ()


def _bad_result(kind):
    return FailsToLoad() if kind == "value" else _ExitsWhenLoaded()


def _square_or_bad_result(x, bad):
    return FailsToLoad() if x == bad else x * x


def _raise_in_child():
    if in_worker():
        raise ValueError("argument refused in the worker on purpose")
    return _FailsInWorker()


class _FailsInWorker:
    """An argument whose unpickling raises ValueError in a worker (not in the parent)."""

    def __reduce__(self):
        return _raise_in_child, ()


def _exit_in_child():
    if in_worker():
        sys.exit(3)
    return _ExitsInWorker()


class _ExitsInWorker:
    """An argument whose unpickling calls ``sys.exit(3)`` in a worker."""

    def __reduce__(self):
        return _exit_in_child, ()


def _square_int(x):
    return x * x if isinstance(x, int) else f"got {type(x).__name__}"


# -- in the parent: what cannot be pickled -----------------------------------------------


@pytest.mark.timeout(60)
def test_an_argument_that_cannot_be_pickled_fails_that_future_alone():
    lock = threading.Lock()
    with CowProcessPoolExecutor(max_workers=2) as ex:
        error = ex.submit(identity, lock).exception(timeout=30)
        assert isinstance(error, cowmp.TaskPicklingError)
        assert isinstance(error, pickle.PicklingError)
        assert "lock" in str(error) and "argument 0" in str(error)
        error = ex.submit(add, 1, b=lock).exception(timeout=30)
        assert isinstance(error, cowmp.TaskPicklingError)
        assert "b=" in str(error) and "lock" in str(error)
        assert ex.submit(square, 6).result(timeout=30) == 36
        # in a map, only that item fails, where the map reaches it
        results = ex.map(identity, [1, lock, 3])
        assert next(results) == 1
        with pytest.raises(cowmp.TaskPicklingError, match="lock"):
            next(results)
        assert ex.submit(square, 7).result(timeout=30) == 49


@pytest.mark.timeout(60)
def test_a_function_that_cannot_be_pickled_fails_that_future_alone():
    lock = threading.Lock()
    with CowProcessPoolExecutor(max_workers=2) as ex:
        error = ex.submit(lambda: lock.locked()).exception(timeout=30)
        assert isinstance(error, cowmp.TaskPicklingError)
        assert "function" in str(error) and "lock" in str(error)
        assert ex.submit(square, 6).result(timeout=30) == 36


# -- in the worker: arguments that cannot be rebuilt, results that cannot be pickled -----


@pytest.mark.timeout(60)
def test_an_argument_that_cannot_be_rebuilt_in_the_worker_fails_its_map_item_alone(
        make_executor):
    ex = make_executor(max_workers=2)
    got = []
    results = ex.map(_square_int, [*range(9), _FailsInWorker()], chunksize=10, timeout=30)
    with pytest.raises(cowmp.TaskPicklingError) as info:
        for value in results:
            got.append(value)
    assert got == [i * i for i in range(9)]
    text = f"{info.value} {info.value.__cause__}"
    assert "refused in the worker on purpose" in text, text
    check_works(ex)


@pytest.mark.timeout(60)
def test_an_argument_whose_unpickling_calls_sys_exit_gives_task_pickling_error(
        make_executor):
    ex = make_executor(max_workers=2)
    kind, error = outcome_of(ex.submit(_square_int, _ExitsInWorker()), timeout=30)
    assert kind == "error", error
    assert not isinstance(error, SystemExit), repr(error)
    assert isinstance(error, cowmp.TaskPicklingError), repr(error)
    check_works(ex)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("task,name", [
    (_make_generator, "generator"),
    (threading.Lock, "lock"),
])
def test_a_result_that_cannot_be_pickled_fails_that_future_alone(task, name):
    with CowProcessPoolExecutor(max_workers=2) as ex:
        error = ex.submit(task).exception(timeout=30)
        assert isinstance(error, cowmp.TaskPicklingError)
        assert isinstance(error, pickle.PicklingError)
        assert "result" in str(error) and name in str(error)
        assert ex.submit(square, 6).result(timeout=30) == 36


def test_an_exception_that_cannot_be_pickled_is_reported_by_type_and_message():
    with CowProcessPoolExecutor(max_workers=2) as ex:
        error = ex.submit(_raise_unpicklable).exception(timeout=30)
        assert isinstance(error, RuntimeError)
        assert "ValueError" in str(error) and "could not be pickled" in str(error)
        assert isinstance(error.__cause__, cowmp.RemoteTraceback)
        assert ex.submit(square, 5).result(timeout=30) == 25


# -- back in the parent: results and exceptions that cannot be rebuilt --------------------


def test_task_unpickling_error_is_a_pickling_error_and_a_broken_pool():
    error_class = cowmp.TaskUnpicklingError
    assert issubclass(error_class, cowmp.TaskPicklingError)
    assert issubclass(error_class, pickle.PicklingError)
    assert issubclass(error_class, BrokenProcessPool)


@pytest.mark.timeout(60)
def test_an_exception_that_cannot_be_rebuilt_fails_its_task_alone(make_executor):
    ex = make_executor(max_workers=2)
    before = [ex.submit(sleep_return, 0.05, i) for i in range(5)]
    bad = ex.submit(_raise_two_arg_error)
    after = [ex.submit(sleep_return, 0.05, i) for i in range(5, 10)]
    error = error_of(bad, timeout=30)
    assert isinstance(error, cowmp.TaskUnpicklingError), repr(error)
    assert isinstance(error, cowmp.TaskPicklingError)
    assert isinstance(error, BrokenProcessPool)
    assert "TwoArgError" in str(error), str(error)
    assert isinstance(error.__cause__, TypeError), repr(error.__cause__)
    assert [f.result(timeout=30) for f in before + after] == list(range(10))
    check_works(ex)
    assert list(ex.map(square, range(20))) == [i * i for i in range(20)]


@pytest.mark.timeout(60)
def test_a_result_that_cannot_be_rebuilt_fails_its_task_alone(make_executor):
    ex = make_executor(max_workers=2)
    others = [ex.submit(sleep_return, 0.05, i) for i in range(5)]
    bad = ex.submit(_bad_result, "value")
    more = [ex.submit(sleep_return, 0.05, i) for i in range(5, 10)]
    error = error_of(bad, timeout=30)
    assert isinstance(error, cowmp.TaskUnpicklingError), repr(error)
    assert isinstance(error.__cause__, ValueError), repr(error.__cause__)
    assert [f.result(timeout=30) for f in others + more] == list(range(10))
    check_works(ex)


@pytest.mark.timeout(60)
def test_a_result_that_cannot_be_rebuilt_in_a_map_chunk_fails_that_item_alone(make_executor):
    ex = make_executor(max_workers=2)
    got = []
    results = ex.map(_square_or_bad_result, range(10), [9] * 10, chunksize=10, timeout=30)
    with pytest.raises(cowmp.TaskUnpicklingError) as info:
        for value in results:
            got.append(value)
    assert got == [i * i for i in range(9)]
    assert isinstance(info.value.__cause__, ValueError), repr(info.value.__cause__)
    check_works(ex)


@pytest.mark.timeout(60)
def test_a_result_whose_unpickling_calls_sys_exit_fails_its_task_alone(make_executor):
    ex = make_executor(max_workers=2)
    kind, error = outcome_of(ex.submit(_bad_result, "exit"), timeout=30)
    assert kind == "error", error
    assert not isinstance(error, SystemExit), repr(error)
    assert isinstance(error, cowmp.TaskUnpicklingError), repr(error)
    check_works(ex)
