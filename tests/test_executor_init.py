"""CowProcessPoolExecutor's arguments and initializer: invalid arguments of the constructor,
map and schedule are refused before anything starts; the initializer runs in every
worker, replacements included, with initargs that may hold the context's locks and
events; a failing initializer is logged and breaks the pool."""

from __future__ import annotations

from concurrent.futures.process import BrokenProcessPool

import executor_support as support
import pytest
from conftest import run_script
from executor_support import square

import cowmp
from cowmp import CowProcessPoolExecutor

no_leftovers = support.no_leftovers

_initialized = None
#: set in the workers by an initializer
EVENT = None


def _init(value):
    global _initialized
    _initialized = value


def _read_initialized():
    return _initialized


def _failing_init():
    raise OSError("initializer failed on purpose")


def _set_event(event):
    global EVENT
    EVENT = event


def _event_is_set(_):
    return EVENT.is_set()


@pytest.mark.parametrize("kwargs,error", [
    ({"max_workers": 0}, ValueError),
    ({"max_workers": -1}, ValueError),
    ({"initializer": 42}, TypeError),
    ({"initializer": "not callable"}, TypeError),
    ({"max_tasks_per_child": 0}, ValueError),
    ({"max_tasks_per_child": -3}, ValueError),
])
def test_constructor_argument_validation(kwargs, error):
    with pytest.raises(error):
        CowProcessPoolExecutor(**kwargs)


def test_map_and_schedule_argument_validation():
    with CowProcessPoolExecutor(max_workers=2) as ex:
        for chunksize in (0, -1):
            with pytest.raises(ValueError):
                ex.map(square, [1, 2], chunksize=chunksize)
        with pytest.raises(ValueError):
            ex.map(square, [1, 2], task_timeout=0)
        with pytest.raises(ValueError):
            ex.schedule(square, (1,), timeout=-1)
        assert list(ex.map(square, [1, 2, 3], chunksize=2)) == [1, 4, 9]


@pytest.mark.timeout(60)
def test_initializer_runs_in_every_worker_with_initargs():
    with CowProcessPoolExecutor(max_workers=2, initializer=_init,
                                initargs=("ready",)) as ex:
        futures = [ex.submit(_read_initialized) for _ in range(20)]
        assert {f.result(timeout=30) for f in futures} == {"ready"}
    assert _initialized is None  # ran in the workers, not here


@pytest.mark.timeout(60)
def test_initializer_runs_in_replacement_workers():
    with CowProcessPoolExecutor(max_workers=2, initializer=_init, initargs=(42,),
                                max_tasks_per_child=1) as ex:
        futures = [ex.submit(_read_initialized) for _ in range(4)]
        assert [f.result(timeout=30) for f in futures] == [42] * 4


@pytest.mark.timeout(120)
def test_initializer_arguments_may_hold_the_contexts_synchronization_objects():
    # as with ProcessPoolExecutor: a lock, event or queue of the context that starts
    # the workers goes to them through initargs (spawned workers included)
    ctx = cowmp.get_context("spawn")
    event = ctx.Event()
    event.set()
    with CowProcessPoolExecutor(max_workers=2, mp_context=ctx, initializer=_set_event,
                                initargs=(event,)) as ex:
        assert list(ex.map(_event_is_set, range(4))) == [True] * 4


@pytest.mark.timeout(60)
def test_failing_initializer_breaks_the_pool():
    with CowProcessPoolExecutor(max_workers=2, initializer=_failing_init) as ex:
        try:
            future = ex.submit(square, 3)
        except BrokenProcessPool as error:  # the workers' initializer failed before it
            broken = error
        else:
            with pytest.raises(BrokenProcessPool) as info:
                future.result(timeout=30)
            broken = info.value
        assert "initializer" in str(broken)
        with pytest.raises(BrokenProcessPool):
            ex.submit(square, 4)
        with pytest.raises(BrokenProcessPool):
            ex.map(square, [1])


@pytest.mark.timeout(120)
def test_a_failing_initializer_is_logged_and_breaks_the_pool():
    out = run_script("""
        import logging
        from concurrent.futures.process import BrokenProcessPool
        import cowmp

        logging.basicConfig()

        def init():
            raise OSError("initializer failed on purpose")

        if __name__ == "__main__":
            with cowmp.CowProcessPoolExecutor(2, initializer=init) as ex:
                future = ex.submit(pow, 2, 5)
                try:
                    future.result(timeout=30)
                except BrokenProcessPool as error:
                    print("broken")
    """, timeout=90)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["broken"], (out.stdout, out.stderr)
    assert "Exception in initializer" in out.stderr, out.stderr
    assert "initializer failed on purpose" in out.stderr, out.stderr
