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


class _SlotSequence:
    """A worker's slot as successive readings show it: the first ``slots.read`` (five
    item reads) sees ``first``, every later one ``then``."""

    def __init__(self, first, then):
        self.values = [first, then]
        self.reads = 0

    def __getitem__(self, offset):
        state = self.values[min(1, self.reads // 5)]
        self.reads += 1
        return state[offset]


def test_a_timeout_kills_only_if_the_late_task_is_still_the_one_running():
    """The deadline passed for task 1, but by the time the slot is read again the worker
    has begun task 2: no kill (task 2 has not run past anything)."""
    from cowmp.dispatch import Worker
    from cowmp.jobs import Job, Piece
    from cowmp.limits import Limits

    class Killer:
        def __init__(self):
            self.killed = []

        def kill(self, pid):
            self.killed.append(pid)

    class Watched(Limits):
        def __init__(self, array):
            self.workers = {0: worker}
            self.slot_array = array
            self.launcher = Killer()

    job = Job(cf.Future(), square, [(i,) for i in range(4)], None, single=False,
              timeout=0.5)
    piece = Piece(job, range(4))
    worker = Worker(0, object())
    worker.pid = 4242
    worker.add(piece)
    late = time.monotonic() - 10  # task 1 began long ago
    moved_on = _SlotSequence((piece.id, 1, late, 0), (piece.id, 2, time.monotonic(), 0))
    watched = Watched(moved_on)
    watched.check_deadlines()
    assert watched.launcher.killed == [] and worker.kill_reason is None
    still = _SlotSequence((piece.id, 1, late, 0), (piece.id, 1, late, 0))
    watched = Watched(still)
    watched.check_deadlines()
    assert watched.launcher.killed == [4242]
    assert worker.kill_reason == (piece.id, 1, 0.5)
