"""CowProcessPoolExecutor.submit: results, keyword arguments, exceptions with the worker's
traceback, cancelling a queued future, concurrent.futures.wait and as_completed."""

from __future__ import annotations

import concurrent.futures as cf

import executor_support as support
import pytest
from executor_support import add, ready_workers, sleep_return, square

import cowmp
from cowmp import CowProcessPoolExecutor

no_leftovers = support.no_leftovers


def _raise_value_error(message):
    raise ValueError(message)


def test_submit_returns_results_and_passes_kwargs():
    with CowProcessPoolExecutor(max_workers=2) as ex:
        assert ex.submit(square, 7).result(timeout=30) == 49
        assert ex.submit(add, 1, b=2).result(timeout=30) == 3
        assert ex.submit(add, a=5).result(timeout=30) == 5
        futures = [ex.submit(square, i) for i in range(50)]
        assert [f.result(timeout=30) for f in futures] == [i * i for i in range(50)]


def test_exception_is_reraised_with_the_worker_traceback_as_cause():
    with CowProcessPoolExecutor(max_workers=2) as ex:
        future = ex.submit(_raise_value_error, "boom from the worker")
        with pytest.raises(ValueError, match="boom from the worker") as info:
            future.result(timeout=30)
        cause = info.value.__cause__
        assert isinstance(cause, cowmp.RemoteTraceback)
        text = str(cause)
        assert "Traceback (most recent call last)" in text
        assert "_raise_value_error" in text
        assert 'raise ValueError(message)' in text
        assert "ValueError: boom from the worker" in text
        assert ex.submit(square, 4).result(timeout=30) == 16  # the pool goes on


@pytest.mark.timeout(60)
def test_a_queued_future_can_be_cancelled():
    with CowProcessPoolExecutor(max_workers=2) as ex:
        ready_workers(ex)
        futures = [ex.submit(sleep_return, 0.3, i) for i in range(6)]
        assert futures[-1].cancel()
        with pytest.raises(cf.CancelledError):
            futures[-1].result(timeout=30)
        assert [f.result(timeout=30) for f in futures[:4]] == [0, 1, 2, 3]


@pytest.mark.timeout(60)
def test_wait_and_as_completed_work_on_its_futures():
    with CowProcessPoolExecutor(max_workers=2) as ex:
        ready_workers(ex)
        slow = ex.submit(sleep_return, 1.0, "slow")
        fast = ex.submit(sleep_return, 0.01, "fast")
        done, not_done = cf.wait([slow, fast], timeout=30,
                                 return_when=cf.FIRST_COMPLETED)
        assert fast in done and slow in not_done
        done, not_done = cf.wait([slow, fast], timeout=30)
        assert done == {slow, fast} and not not_done
        futures = [ex.submit(sleep_return, 0.05 * (5 - i), i) for i in range(5)]
        completed = list(cf.as_completed(futures, timeout=30))
        assert sorted(f.result() for f in completed) == list(range(5))
        assert len(completed) == 5
