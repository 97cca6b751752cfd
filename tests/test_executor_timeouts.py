"""Timeouts: map's timeout bounds the wait for a result (as the standard map's does); a
per-task timeout (the executor's task_timeout, schedule's timeout, map's task_timeout)
fails the late task with TimeoutError and replaces its worker."""

from __future__ import annotations

import concurrent.futures as cf
import time

import executor_support as support
import pytest
from conftest import wait_for
from executor_support import add, ready_workers, sleep_return, square

from cowmp import CowProcessPoolExecutor

no_leftovers = support.no_leftovers


@pytest.mark.timeout(60)
def test_map_timeout_raises_the_timeout_error_of_the_standard_map():
    with CowProcessPoolExecutor(max_workers=2) as ex:
        results = ex.map(sleep_return, [5.0, 5.0], timeout=0.2)
        started = time.monotonic()
        with pytest.raises(cf.TimeoutError) as cow:
            next(results)
        waited = time.monotonic() - started
        ex.terminate_workers()  # nobody waits for the tasks
    assert waited < 4, f"the timeout came after {waited:.2f} s, not before the task ended"
    with cf.ThreadPoolExecutor(1) as reference:
        with pytest.raises(cf.TimeoutError) as standard:
            next(reference.map(time.sleep, [0.5], timeout=0.05))
    assert type(cow.value) is type(standard.value)


@pytest.mark.timeout(60)
def test_executor_task_timeout_fails_the_late_task_and_replaces_its_worker():
    with CowProcessPoolExecutor(max_workers=2, task_timeout=0.5) as ex:
        before = ready_workers(ex)
        started = time.monotonic()
        late = ex.submit(sleep_return, 20, "late")
        others = [ex.submit(sleep_return, 0.05, i) for i in range(10)]
        error = late.exception(timeout=30)
        assert isinstance(error, TimeoutError), repr(error)
        assert "timeout" in str(error)
        assert time.monotonic() - started < 10
        assert [f.result(timeout=30) for f in others] == list(range(10))
        after = wait_for(lambda: len(ex.worker_pids) == 2 and set(ex.worker_pids) != before
                          and set(ex.worker_pids), timeout=10)
        assert after and len(after - before) == 1, (before, after)
        assert ex.submit(square, 3).result(timeout=30) == 9


@pytest.mark.timeout(60)
def test_schedule_with_a_timeout():
    with CowProcessPoolExecutor(max_workers=2) as ex:
        late = ex.schedule(sleep_return, (20, "late"), timeout=0.5)
        quick = ex.schedule(add, (1,), {"b": 2}, timeout=5)
        untimed = ex.schedule(sleep_return, (0.6, "untimed"))
        assert quick.result(timeout=30) == 3
        assert isinstance(late.exception(timeout=30), TimeoutError)
        assert untimed.result(timeout=30) == "untimed"
        # submit() has no timeout without the executor's task_timeout
        assert ex.submit(sleep_return, 0.6, "slow").result(timeout=30) == "slow"


@pytest.mark.timeout(60)
def test_map_task_timeout():
    with CowProcessPoolExecutor(max_workers=2) as ex:
        results = ex.map(sleep_return, [0.01, 20, 0.01], ["a", "b", "c"],
                         task_timeout=0.5)
        assert next(results) == "a"
        with pytest.raises(TimeoutError):
            next(results)
        assert list(ex.map(square, range(10), task_timeout=5)) == [
            i * i for i in range(10)]
