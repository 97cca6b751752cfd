"""cowmp.CowProcessPoolExecutor: ProcessPoolExecutor's behaviour, plus crash recovery,
per-task timeouts, a fork server, share() by reference and progress bars."""

from __future__ import annotations

import collections
import concurrent.futures as cf
import ctypes
import itertools
import json
import os
import pickle
import select
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import psutil
import pytest
from conftest import gone, is_helper, requires_fork, run_script, wait_for

import cowmp
from cowmp import CowProcessPoolExecutor, serialize

ROOT = Path(__file__).resolve().parent.parent

# -- task functions (module level: picklable by reference) ---------------------------------


def _square(x):
    return x * x


def _add(a, b=0):
    return a + b


def _identity(x):
    return x


def _sleep_return(seconds, value=None):
    time.sleep(seconds)
    return value


def _raise_value_error(message):
    raise ValueError(message)


def _fail_at(x, bad):
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x * x


def _raise_unpicklable():
    raise ValueError(threading.Lock())


def _make_generator():
    return (i for i in range(3))


def _ppid():
    return os.getppid()


def _pid_square(x):
    return os.getpid(), x * x


def _kill_self():
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(10)


def _exit_3():
    os._exit(3)


def _segfault():
    ctypes.string_at(0)


def _crash_at(x, bad):
    if x == bad:
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)
    return x * x


_initialized = None


def _init(value):
    global _initialized
    _initialized = value


def _read_initialized():
    return _initialized


def _failing_init():
    raise OSError("initializer failed on purpose")


def _sum_len(seq):
    return sum(seq), len(seq)


def _is_shared(obj):
    return cowmp.is_shared(obj)


# -- helpers -------------------------------------------------------------------------------


def _all_ready(ex):
    workers = list(ex._pool.workers.values())
    return len(workers) == ex._max_workers and all(w.ready and w.pid for w in workers)


def _two_worker_pids(ex):
    """The executor's two worker pids, once both workers are ready (starts the manager)."""
    ex.submit(_identity, 0).result(timeout=30)
    assert wait_for(lambda: _all_ready(ex), timeout=30), "the workers never got ready"
    pids = set(ex.worker_pids)
    assert len(pids) == 2, pids
    return pids


def _zombies():
    """This process's descendants that have exited but were not reaped."""
    result = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                result.append(child.pid)
        except psutil.ZombieProcess:
            result.append(child.pid)
        except psutil.NoSuchProcess:
            pass
    return result


@pytest.fixture(autouse=True)
def _executor_cleaned_up():
    """After each test: no manager thread and no new child process (fork server, worker,
    zombie) is left; a leftover manager thread would also make the next fork warn."""
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield
    managers_gone = wait_for(lambda: not [t for t in threading.enumerate()
                                           if t.name == "cowmp-executor"], timeout=10)
    assert managers_gone, [t.name for t in threading.enumerate()]

    def left():
        return [p for p in me.children(recursive=True)
                if p.pid not in before and not is_helper(p)]

    assert wait_for(lambda: not left(), timeout=10), [
        (p.pid, p.status()) for p in left()]


# -- basic ProcessPoolExecutor behaviour ---------------------------------------------------


def test_submit_returns_results_and_passes_kwargs():
    with CowProcessPoolExecutor(max_workers=2) as ex:
        assert ex.submit(_square, 7).result(timeout=30) == 49
        assert ex.submit(_add, 1, b=2).result(timeout=30) == 3
        assert ex.submit(_add, a=5).result(timeout=30) == 5
        futures = [ex.submit(_square, i) for i in range(50)]
        assert [f.result(timeout=30) for f in futures] == [i * i for i in range(50)]


def test_context_manager_returns_executor_and_waits_for_pending_work():
    with CowProcessPoolExecutor(max_workers=2) as ex:
        assert isinstance(ex, CowProcessPoolExecutor)
        futures = [ex.submit(_sleep_return, 0.1, i) for i in range(6)]
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == list(range(6))
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(_square, 1)


def test_submit_and_map_after_shutdown_raise_runtime_error():
    ex = CowProcessPoolExecutor(max_workers=2)
    assert ex.submit(_square, 3).result(timeout=30) == 9
    ex.shutdown()
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        ex.submit(_square, 1)
    with pytest.raises(RuntimeError):
        ex.map(_square, [1, 2])
    ex.shutdown()  # a second shutdown is harmless


def test_shutdown_without_any_task_stops_the_workers():
    ex = CowProcessPoolExecutor(max_workers=2)
    server = ex.fork_server_pid
    ex.shutdown(wait=True)
    if server is not None:
        assert wait_for(lambda: gone(server), timeout=5)


@pytest.mark.timeout(60)
def test_shutdown_cancel_futures_cancels_only_tasks_not_started():
    with CowProcessPoolExecutor(max_workers=2) as ex:
        _two_worker_pids(ex)
        futures = [ex.submit(_sleep_return, 0.3, i) for i in range(12)]
        ex.shutdown(wait=True, cancel_futures=True)
    assert all(f.done() for f in futures)
    cancelled = [i for i, f in enumerate(futures) if f.cancelled()]
    finished = [i for i, f in enumerate(futures) if not f.cancelled()]
    # at most two tasks per worker (one running, one prefetched) had started
    assert len(cancelled) >= 12 - 4, (cancelled, finished)
    assert finished == list(range(len(finished)))  # the first ones, in submit order
    assert [futures[i].result() for i in finished] == finished


@pytest.mark.timeout(60)
def test_shutdown_wait_false_returns_at_once_and_work_still_completes():
    ex = CowProcessPoolExecutor(max_workers=2)
    futures = [ex.submit(_sleep_return, 0.3, i) for i in range(4)]
    started = time.monotonic()
    ex.shutdown(wait=False)
    assert time.monotonic() - started < 0.25
    with pytest.raises(RuntimeError):
        ex.submit(_square, 1)
    assert [f.result(timeout=30) for f in futures] == [0, 1, 2, 3]
    thread = ex._pool.thread
    thread.join(30)
    assert not thread.is_alive()


@pytest.mark.timeout(60)
def test_a_queued_future_can_be_cancelled():
    with CowProcessPoolExecutor(max_workers=2) as ex:
        _two_worker_pids(ex)
        futures = [ex.submit(_sleep_return, 0.3, i) for i in range(6)]
        assert futures[-1].cancel()
        with pytest.raises(cf.CancelledError):
            futures[-1].result(timeout=30)
        assert [f.result(timeout=30) for f in futures[:4]] == [0, 1, 2, 3]


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
        assert ex.submit(_square, 4).result(timeout=30) == 16  # the pool goes on


def test_an_exception_that_cannot_be_pickled_is_reported_by_type_and_message():
    with CowProcessPoolExecutor(max_workers=2) as ex:
        error = ex.submit(_raise_unpicklable).exception(timeout=30)
        assert isinstance(error, RuntimeError)
        assert "ValueError" in str(error) and "could not be pickled" in str(error)
        assert isinstance(error.__cause__, cowmp.RemoteTraceback)
        assert ex.submit(_square, 5).result(timeout=30) == 25


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


@pytest.mark.timeout(60)
def test_failing_initializer_breaks_the_pool():
    with CowProcessPoolExecutor(max_workers=2, initializer=_failing_init) as ex:
        future = ex.submit(_square, 3)
        with pytest.raises(BrokenProcessPool) as info:
            future.result(timeout=30)
        assert "initializer" in str(info.value)
        with pytest.raises(BrokenProcessPool):
            ex.submit(_square, 4)
        with pytest.raises(BrokenProcessPool):
            ex.map(_square, [1])


@pytest.mark.timeout(60)
def test_wait_and_as_completed_work_on_its_futures():
    with CowProcessPoolExecutor(max_workers=2) as ex:
        _two_worker_pids(ex)
        slow = ex.submit(_sleep_return, 1.0, "slow")
        fast = ex.submit(_sleep_return, 0.01, "fast")
        done, not_done = cf.wait([slow, fast], timeout=30,
                                 return_when=cf.FIRST_COMPLETED)
        assert fast in done and slow in not_done
        done, not_done = cf.wait([slow, fast], timeout=30)
        assert done == {slow, fast} and not not_done
        futures = [ex.submit(_sleep_return, 0.05 * (5 - i), i) for i in range(5)]
        completed = list(cf.as_completed(futures, timeout=30))
        assert sorted(f.result() for f in completed) == list(range(5))
        assert len(completed) == 5


@pytest.mark.timeout(60)
def test_a_short_task_does_not_wait_behind_a_long_one_while_a_worker_is_idle():
    with CowProcessPoolExecutor(max_workers=2) as ex:
        _two_worker_pids(ex)
        time.sleep(0.2)
        started = time.monotonic()
        long = ex.submit(_sleep_return, 2.0, "long")
        medium = ex.submit(_sleep_return, 0.2, "medium")
        short = ex.submit(_sleep_return, 0.01, "short")
        assert short.result(timeout=30) == "short"
        elapsed = time.monotonic() - started
        assert medium.result(timeout=30) == "medium"
        # the stdlib's executor runs it on the worker that finished "medium": ~0.2 s
        assert elapsed < 1.0, f"the short task finished after {elapsed:.2f} s"
        assert long.result(timeout=30) == "long"


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
                ex.map(_square, [1, 2], chunksize=chunksize)
        with pytest.raises(ValueError):
            ex.map(_square, [1, 2], task_timeout=0)
        with pytest.raises(ValueError):
            ex.schedule(_square, (1,), timeout=-1)
        assert list(ex.map(_square, [1, 2, 3], chunksize=2)) == [1, 4, 9]


# -- map -----------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_map_many_tiny_tasks_in_order():
    with CowProcessPoolExecutor(max_workers=2) as ex:
        assert list(ex.map(_square, range(20_000))) == [i * i for i in range(20_000)]
        assert list(ex.map(_square, iter(range(5000)))) == [i * i for i in range(5000)]
        assert list(ex.map(_square, [])) == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("chunksize", [1, 7, 1000])
def test_map_with_explicit_chunksize(chunksize):
    with CowProcessPoolExecutor(max_workers=2) as ex:
        assert list(ex.map(_square, range(500), chunksize=chunksize)) == [
            i * i for i in range(500)]


@pytest.mark.timeout(60)
def test_map_over_multiple_iterables_stops_at_the_shortest():
    with CowProcessPoolExecutor(max_workers=2) as ex:
        assert list(ex.map(_add, range(100), range(100, 300))) == [
            a + b for a, b in zip(range(100), range(100, 200), strict=True)]
        assert list(ex.map(_add, range(10), itertools.count(1000))) == [
            1000 + 2 * i for i in range(10)]


@pytest.mark.timeout(60)
def test_map_over_lists_tuples_and_ranges_which_are_sliced_as_they_are_sent():
    data = list(range(30_000))
    with CowProcessPoolExecutor(max_workers=2) as ex:
        assert list(ex.map(_square, data)) == [i * i for i in data]
        assert list(ex.map(_square, tuple(data))) == [i * i for i in data]
        assert list(ex.map(_square, range(5, 30_000, 3))) == [
            i * i for i in range(5, 30_000, 3)]
        assert list(ex.map(_add, data, range(1000))) == [2 * i for i in range(1000)]
        assert list(ex.map(_add, (1, 2, 3), [10, 20, 30, 40])) == [11, 22, 33]
        assert list(ex.map(_square, data, chunksize=512)) == [i * i for i in data]
        assert list(ex.map(_square, data[:3], chunksize=1)) == [0, 1, 4]


@pytest.mark.timeout(60)
def test_map_over_a_list_that_shrinks_meanwhile_stops_where_it_ends():
    data = list(range(200_000))
    with CowProcessPoolExecutor(max_workers=2) as ex:
        results = ex.map(_identity, data, chunksize=1000)
        assert next(results) == 0
        del data[50_000:]  # what was not read yet is gone, as for a list iterator
        rest = list(results)
        assert len(rest) < 200_000 - 1
        assert rest == list(range(1, len(rest) + 1))
        assert ex.submit(_square, 3).result(timeout=30) == 9


@pytest.mark.timeout(60)
def test_crash_among_tiny_tasks_of_a_list_fails_exactly_that_task():
    """Tiny tasks run untracked, their pieces are prefetched in batches and their
    outcomes held back: a crash still fails that task alone and loses no result."""
    bad = 31_337
    with CowProcessPoolExecutor(max_workers=2) as ex:
        list(ex.map(_square, range(10_000)))  # measured short: the next map goes fast
        got = []
        with pytest.raises(cowmp.WorkerDiedError, match="SIGKILL") as info:
            for value in ex.map(_crash_at, range(60_000), [bad] * 60_000):
                got.append(value)
        assert got == [i * i for i in range(bad)]
        assert str(bad) in str(info.value)
        futures = [ex.submit(_crash_at, i, bad) for i in range(bad - 2, bad + 3)]
        assert [f.exception(timeout=30) is not None for f in futures] == [
            False, False, True, False, False]


def test_busy_clock_counts_blocked_time_as_busy():
    from cowmp.worker import _BusyClock

    clock = _BusyClock()
    mark = clock.now()
    time.sleep(0.05)
    assert 0.04 <= clock.since(mark) < 5


def test_automatic_chunks_aim_at_a_time_and_take_at_most_a_worker_share():
    from cowmp.mapping import ChunkPolicy, TaskTimes
    from cowmp.tuning import CHUNK_SECONDS, MAX_CHUNK_TASKS

    fast = TaskTimes((1e-7 * 100, 100), evidence=100)  # 0.1 µs a task, trusted
    assert fast.per_task is not None
    total = remaining = 10_300_000
    policy = ChunkPolicy(workers=2, total=total)  # a list: sliced when sent, unbounded
    sizes = []
    while remaining > 0:
        size = min(policy.next_size(fast, completed=0, remaining=remaining), remaining)
        sizes.append(size)
        remaining -= size
    chunk = int(CHUNK_SECONDS / 1e-7)  # the time aimed at
    assert sizes[0] == chunk
    assert sizes == sorted(sizes, reverse=True)
    tail = [size for size in sizes if size != chunk]
    assert tail == [400_000, 400_000], sizes  # the rest: a chunk per worker
    # a quarter of each worker's share, as Pool
    assert ChunkPolicy(workers=2, total=1_001).next_size(fast, 0, 1_001) == 126
    # the rest of a long input: a chunk per worker
    assert ChunkPolicy(workers=2, total=100_000_000).next_size(fast, 0, 1_001) == 501
    iterator = ChunkPolicy(workers=2, in_memory=True)  # chunks wait in memory: bounded
    assert iterator.next_size(fast, 0, None) == MAX_CHUNK_TASKS
    slow = TaskTimes((1.0 * 100, 100), evidence=100)  # long tasks: one per chunk
    assert iterator.next_size(slow, 0, 100) == 1
    assert ChunkPolicy(workers=2, chunksize=7).next_size(slow, 0, 100) == 7
    assert ChunkPolicy(workers=2, max_tasks=3).next_size(fast, 0, None) == 3


def test_probe_chunks_start_at_one_task_and_grow_with_the_tasks_completed():
    """Before the time per task is known, a chunk has one task, then up to four times as
    many as have completed; the first measurements, however few, keep long tasks one per
    chunk."""
    from cowmp.mapping import ChunkPolicy, TaskTimes
    from cowmp.tuning import PROBE_GROWTH

    policy = ChunkPolicy(workers=2)
    times = TaskTimes()
    assert policy.next_size(times, completed=0, remaining=1_000_000) == 1
    times.measure(2e-6, 2)  # fast, but too few tasks to trust
    assert times.per_task is None
    assert policy.next_size(times, 2, 1_000_000) == 2 * PROBE_GROWTH
    assert policy.next_size(times, 6, 1_000_000) == 6 * PROBE_GROWTH
    times.measure(7e-6, 7)  # enough tasks now (decayed: 1 + 7): the time is known
    assert times.per_task is not None
    assert policy.next_size(times, 6, 1_000_000) > 6 * PROBE_GROWTH
    slow = TaskTimes()
    slow.measure(0.2, 1)  # one task took 0.2 s: chunks stay at one task
    assert policy.next_size(slow, 50, 1_000) == 1
    # a short rest: each worker's share
    assert ChunkPolicy(workers=2).next_size(TaskTimes(), 50, 3) == 2


def _counting(consumed):
    """itertools.count(), recording how far it was read."""
    for i in itertools.count():
        consumed.append(i)
        yield i


@pytest.mark.timeout(60)
def test_map_is_lazy_on_an_infinite_iterable():
    consumed = []
    with CowProcessPoolExecutor(max_workers=2) as ex:
        results = ex.map(_square, _counting(consumed))
        first = list(itertools.islice(results, 200))
        assert first == [i * i for i in range(200)]
        assert len(consumed) < 1_000_000  # read ahead, but not without bound
        del results  # abandoned: its pending chunks are dropped
        assert list(ex.map(_add, range(10), itertools.count(1000))) == [
            1000 + 2 * i for i in range(10)]
        assert ex.submit(_square, 3).result(timeout=30) == 9


@pytest.mark.timeout(60)
def test_map_result_is_a_generator_that_can_be_closed():
    with CowProcessPoolExecutor(max_workers=2) as ex:
        results = ex.map(_square, itertools.count())
        assert list(itertools.islice(results, 100)) == [i * i for i in range(100)]
        results.close()
        with pytest.raises(StopIteration):
            next(results)
        assert ex.submit(_square, 3).result(timeout=30) == 9


@pytest.mark.timeout(60)
def test_map_buffersize_bounds_how_far_the_input_is_read_ahead():
    consumed = []
    with CowProcessPoolExecutor(max_workers=2) as ex:
        results = ex.map(_identity, _counting(consumed), buffersize=10)
        assert next(results) == 0
        time.sleep(0.3)
        # one result yielded: at most 10 more tasks read (+1 of slack)
        assert len(consumed) <= 1 + 10 + 1, len(consumed)
        del results


@pytest.mark.timeout(60)
def test_map_raises_at_the_failing_item_like_the_stdlib():
    with CowProcessPoolExecutor(max_workers=2) as ex:
        got = []
        with pytest.raises(ValueError, match="bad item 37") as info:
            for value in ex.map(_fail_at, range(100), itertools.repeat(37)):
                got.append(value)
        assert got == [i * i for i in range(37)]
        assert isinstance(info.value.__cause__, cowmp.RemoteTraceback)
        assert "_fail_at" in str(info.value.__cause__)


@pytest.mark.timeout(60)
def test_map_timeout_raises_timeout_error():
    with CowProcessPoolExecutor(max_workers=2) as ex:
        results = ex.map(_sleep_return, [1.0, 1.0], timeout=0.2)
        started = time.monotonic()
        with pytest.raises(cf.TimeoutError):
            next(results)
        assert time.monotonic() - started < 0.9
        # the stdlib's map raises the same way
        with cf.ThreadPoolExecutor(1) as reference:
            with pytest.raises(cf.TimeoutError):
                next(reference.map(time.sleep, [0.5], timeout=0.05))


# -- functions: lambdas, closures, __main__ -------------------------------------------------


def test_lambdas_and_closures():
    offset = 1000

    def closure(x):
        return x + offset

    with CowProcessPoolExecutor(max_workers=2) as ex:
        assert ex.submit(lambda x: x * 3, 5).result(timeout=30) == 15
        assert ex.submit(closure, 1).result(timeout=30) == 1001
        assert list(ex.map(lambda x, y: x - y, [10, 20], [1, 2])) == [9, 18]
        assert list(ex.map(closure, range(5))) == [1000, 1001, 1002, 1003, 1004]


@pytest.mark.timeout(120)
def test_functions_and_classes_of_main_including_ones_defined_after_the_executor():
    out = run_script("""
        import cowmp

        def early(x):
            return ("early", x)

        class Point:
            def __init__(self, x):
                self.x = x

        def make_point(x):
            return Point(x)

        if __name__ == "__main__":
            with cowmp.CowProcessPoolExecutor(max_workers=2) as ex:
                SCALE = 10

                def late(x):
                    return ("late", x * SCALE)

                print(ex.submit(early, 1).result(30))
                print(ex.submit(late, 2).result(30))
                print(list(ex.map(late, range(3))))
                print(ex.submit(lambda: Point(7).x).result(30))
                p = ex.submit(make_point, 5).result(30)
                print(type(p).__name__, p.x)
            print("done")
    """, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "('early', 1)",
        "('late', 20)",
        "[('late', 0), ('late', 10), ('late', 20)]",
        "7",
        "Point 5",
        "done",
    ], out.stderr


@pytest.mark.skipif(cowmp.FALLBACK, reason=(
    "spawned workers import the main script again, as multiprocessing's spawn does: "
    "a __main__ function is sent by name and the script's own definition runs "
    "(documented); this test is about fork mode"))
@pytest.mark.timeout(120)
def test_a_main_function_redefined_after_the_executor_runs_its_new_definition():
    out = run_script("""
        import cowmp

        def redefined():
            return "old"

        if __name__ == "__main__":
            with cowmp.CowProcessPoolExecutor(max_workers=2) as ex:
                def redefined():
                    return "new"

                print(ex.submit(redefined).result(30))
                print(list(ex.map(lambda f: f(), [redefined])))
    """, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["new", "['new']"]


@pytest.mark.timeout(120)
def test_instances_and_exceptions_of_main_classes_are_the_parents_classes():
    out = run_script("""
        import cowmp

        class Point:
            def __init__(self, x):
                self.x = x

        class MainError(Exception):
            pass

        def make_point(x):
            return Point(x)

        def fail():
            raise MainError("from the worker")

        if __name__ == "__main__":
            with cowmp.CowProcessPoolExecutor(max_workers=2) as ex:
                p = ex.submit(make_point, 5).result(30)
                print("point", type(p) is Point, isinstance(p, Point), p.x)
                try:
                    ex.submit(fail).result(30)
                except MainError as error:
                    print("caught", error)
                except Exception as error:
                    print("not caught:", type(error), type(error) is MainError)
    """, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["point True True 5", "caught from the worker"]


@pytest.mark.timeout(60)
def test_an_argument_that_cannot_be_pickled_fails_that_future_alone():
    lock = threading.Lock()
    with CowProcessPoolExecutor(max_workers=2) as ex:
        error = ex.submit(_identity, lock).exception(timeout=30)
        assert isinstance(error, cowmp.TaskPicklingError)
        assert isinstance(error, pickle.PicklingError)
        assert "lock" in str(error) and "argument 0" in str(error)
        error = ex.submit(_add, 1, b=lock).exception(timeout=30)
        assert isinstance(error, cowmp.TaskPicklingError)
        assert "b=" in str(error) and "lock" in str(error)
        assert ex.submit(_square, 6).result(timeout=30) == 36
        # in a map, only that item fails, where the map reaches it
        results = ex.map(_identity, [1, lock, 3])
        assert next(results) == 1
        with pytest.raises(cowmp.TaskPicklingError, match="lock"):
            next(results)
        assert ex.submit(_square, 7).result(timeout=30) == 49


@pytest.mark.timeout(60)
def test_a_function_that_cannot_be_pickled_fails_that_future_alone():
    lock = threading.Lock()
    with CowProcessPoolExecutor(max_workers=2) as ex:
        error = ex.submit(lambda: lock.locked()).exception(timeout=30)
        assert isinstance(error, cowmp.TaskPicklingError)
        assert "function" in str(error) and "lock" in str(error)
        assert ex.submit(_square, 6).result(timeout=30) == 36


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
        assert ex.submit(_square, 6).result(timeout=30) == 36


# -- per-task timeouts ----------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_executor_task_timeout_fails_the_late_task_and_replaces_its_worker():
    with CowProcessPoolExecutor(max_workers=2, task_timeout=0.5) as ex:
        before = _two_worker_pids(ex)
        started = time.monotonic()
        late = ex.submit(_sleep_return, 20, "late")
        others = [ex.submit(_sleep_return, 0.05, i) for i in range(10)]
        error = late.exception(timeout=30)
        assert isinstance(error, TimeoutError), repr(error)
        assert "timeout" in str(error)
        assert time.monotonic() - started < 10
        assert [f.result(timeout=30) for f in others] == list(range(10))
        after = wait_for(lambda: len(ex.worker_pids) == 2 and set(ex.worker_pids) != before
                          and set(ex.worker_pids), timeout=10)
        assert after and len(after - before) == 1, (before, after)
        assert ex.submit(_square, 3).result(timeout=30) == 9


@pytest.mark.timeout(60)
def test_schedule_with_a_timeout():
    with CowProcessPoolExecutor(max_workers=2) as ex:
        late = ex.schedule(_sleep_return, (20, "late"), timeout=0.5)
        quick = ex.schedule(_add, (1,), {"b": 2}, timeout=5)
        untimed = ex.schedule(_sleep_return, (0.6, "untimed"))
        assert quick.result(timeout=30) == 3
        assert isinstance(late.exception(timeout=30), TimeoutError)
        assert untimed.result(timeout=30) == "untimed"
        # submit() has no timeout without the executor's task_timeout
        assert ex.submit(_sleep_return, 0.6, "slow").result(timeout=30) == "slow"


@pytest.mark.timeout(60)
def test_map_task_timeout():
    with CowProcessPoolExecutor(max_workers=2) as ex:
        results = ex.map(_sleep_return, [0.01, 20, 0.01], ["a", "b", "c"],
                         task_timeout=0.5)
        assert next(results) == "a"
        with pytest.raises(TimeoutError):
            next(results)
        assert list(ex.map(_square, range(10), task_timeout=5)) == [
            i * i for i in range(10)]


# -- crash recovery ------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("task,exitcode,text", [
    (_kill_self, -signal.SIGKILL, "SIGKILL"),
    (_exit_3, 3, "exit code 3"),
    (_segfault, -signal.SIGSEGV, "SIGSEGV"),
])
def test_a_dying_worker_fails_only_its_task(task, exitcode, text):
    with CowProcessPoolExecutor(max_workers=2) as ex:
        before = _two_worker_pids(ex)
        others = [ex.submit(_sleep_return, 0.02, i) for i in range(5)]
        doomed = ex.submit(task)
        more = [ex.submit(_sleep_return, 0.02, i) for i in range(5, 10)]
        error = doomed.exception(timeout=30)
        assert isinstance(error, cowmp.WorkerDiedError), repr(error)
        assert isinstance(error, BrokenProcessPool)
        assert text in str(error)
        assert error.exitcode == exitcode
        assert error.pid in before
        assert [f.result(timeout=30) for f in others + more] == list(range(10))
        assert ex.submit(_square, 8).result(timeout=30) == 64
        after = wait_for(lambda: len(ex.worker_pids) == 2 and set(ex.worker_pids))
        assert after and error.pid not in after


@pytest.mark.timeout(60)
def test_a_worker_killed_while_idle_is_replaced_and_nothing_fails():
    with CowProcessPoolExecutor(max_workers=2) as ex:
        before = _two_worker_pids(ex)
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        after = wait_for(lambda: len(ex.worker_pids) == 2 and victim not in ex.worker_pids
                          and set(ex.worker_pids))
        assert after, ex.worker_pids
        assert [f.result(timeout=30) for f in [ex.submit(_square, i) for i in range(20)]] \
            == [i * i for i in range(20)]


@pytest.mark.timeout(60)
def test_crash_in_the_middle_of_a_long_map_raises_at_that_item():
    with CowProcessPoolExecutor(max_workers=2) as ex:
        got = []
        with pytest.raises(cowmp.WorkerDiedError, match="SIGKILL") as info:
            for value in ex.map(_crash_at, range(2000), itertools.repeat(777)):
                got.append(value)
        assert got == [i * i for i in range(777)]
        assert "777" in str(info.value)
        assert list(ex.map(_square, range(100))) == [i * i for i in range(100)]


@pytest.mark.timeout(60)
def test_crash_among_many_submitted_tasks_fails_exactly_that_task():
    with CowProcessPoolExecutor(max_workers=2) as ex:
        futures = [ex.submit(_crash_at, i, 777) for i in range(2000)]
        done, not_done = cf.wait(futures, timeout=50)
        assert not not_done
        assert isinstance(futures[777].exception(), cowmp.WorkerDiedError)
        for i, f in enumerate(futures):
            if i != 777:
                assert f.result() == i * i, i


@pytest.mark.timeout(60)
def test_several_crashes_among_submitted_tasks_fail_exactly_those_tasks():
    # every task whose number is a multiple of 250 kills its worker
    with CowProcessPoolExecutor(max_workers=2) as ex:
        futures = [ex.submit(_crash_at, i, 250 * (i // 250)) for i in range(1, 1000)]
        cf.wait(futures, timeout=50)
        failed = [i + 1 for i, f in enumerate(futures) if f.exception() is not None]
        assert failed == [250, 500, 750]
        assert all(f.result() == (i + 1) ** 2 for i, f in enumerate(futures)
                   if i + 1 not in failed)


@pytest.mark.timeout(60)
def test_repeated_crashes_are_each_reported_promptly_and_leave_no_zombie():
    with CowProcessPoolExecutor(max_workers=2) as ex:
        for attempt in range(8):
            started = time.monotonic()
            error = ex.submit(_kill_self).exception(timeout=30)
            elapsed = time.monotonic() - started
            assert isinstance(error, cowmp.WorkerDiedError)
            assert "SIGKILL" in str(error), (attempt, str(error), f"{elapsed:.2f} s")
            assert elapsed < 3, (attempt, str(error), f"{elapsed:.2f} s")
            assert wait_for(lambda: not _zombies(), timeout=2), (attempt, _zombies())
        assert ex.submit(_square, 2).result(timeout=30) == 4


@pytest.mark.timeout(60)
def test_no_zombies_after_crashes_timeouts_and_retirements():
    with CowProcessPoolExecutor(max_workers=2, max_tasks_per_child=4) as ex:
        for task in (_kill_self, _exit_3, _segfault):
            assert isinstance(ex.submit(task).exception(timeout=30), cowmp.WorkerDiedError)
        late = ex.schedule(_sleep_return, (20,), timeout=0.3)
        assert isinstance(late.exception(timeout=30), TimeoutError)
        assert [f.result(timeout=30) for f in [ex.submit(_square, i) for i in range(10)]] \
            == [i * i for i in range(10)]
        assert wait_for(lambda: not _zombies(), timeout=3), _zombies()
        assert ex.submit(_square, 2).result(timeout=30) == 4


# -- max_tasks_per_child -------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_max_tasks_per_child_replaces_workers():
    with CowProcessPoolExecutor(max_workers=2, max_tasks_per_child=3) as ex:
        results = [f.result(timeout=30) for f in [ex.submit(_pid_square, i)
                                                  for i in range(12)]]
    assert [value for _, value in results] == [i * i for i in range(12)]
    per_pid = collections.Counter(pid for pid, _ in results)
    assert len(per_pid) >= 4, per_pid
    assert max(per_pid.values()) <= 3, per_pid


@pytest.mark.timeout(60)
def test_max_tasks_per_child_with_map_results_correct_and_pids_change():
    with CowProcessPoolExecutor(max_workers=2, max_tasks_per_child=10) as ex:
        results = list(ex.map(_pid_square, range(40)))
    assert [value for _, value in results] == [i * i for i in range(40)]
    assert len({pid for pid, _ in results}) >= 4


@pytest.mark.timeout(60)
def test_max_tasks_per_child_bounds_the_tasks_of_a_worker_in_a_map():
    # the executor counts a map chunk as its tasks (not as one task, as the stdlib does)
    with CowProcessPoolExecutor(max_workers=2, max_tasks_per_child=10) as ex:
        results = list(ex.map(_pid_square, range(40), chunksize=4))
    assert [value for _, value in results] == [i * i for i in range(40)]
    per_pid = collections.Counter(pid for pid, _ in results)
    assert max(per_pid.values()) <= 10, sorted(per_pid.values())


# -- the fork server -----------------------------------------------------------------------


@requires_fork
@pytest.mark.timeout(60)
def test_workers_are_children_of_the_fork_server_not_of_the_parent():
    with CowProcessPoolExecutor(max_workers=2, max_tasks_per_child=2) as ex:
        server = ex.fork_server_pid
        assert server is not None and server != os.getpid()
        assert psutil.Process(server).ppid() == os.getpid()
        assert {psutil.Process(pid).ppid() for pid in ex.worker_pids} == {server}
        assert isinstance(ex.submit(_kill_self).exception(timeout=30), cowmp.WorkerDiedError)
        ppids = {f.result(timeout=30) for f in [ex.submit(_ppid) for _ in range(10)]}
        assert ppids == {server}
        for pid in ex.worker_pids:
            try:
                assert psutil.Process(pid).ppid() == server
            except psutil.NoSuchProcess:
                pass  # a worker that just retired


@pytest.mark.skipif(not cowmp.FALLBACK, reason="only without fork")
def test_fallback_workers_are_processes_of_the_parent():
    with CowProcessPoolExecutor(max_workers=2) as ex:
        assert ex.fork_server_pid is None
        assert ex.submit(_ppid).result(timeout=60) == os.getpid()


@requires_fork
@pytest.mark.timeout(120)
# 3.12+ warns (DeprecationWarning) when os.fork() runs while threads exist; under "error"
# CPython clears that warning silently, so "always" is the filter that can show it
@pytest.mark.parametrize("filters", ["error::DeprecationWarning", "always::DeprecationWarning"])
def test_no_fork_with_threads_warning_even_with_replacements(filters):
    out = run_script("""
        import os, signal, time, warnings
        import cowmp

        def ppid(x):
            return os.getppid(), x * x

        def die():
            os.kill(os.getpid(), signal.SIGKILL)

        if __name__ == "__main__":
            warnings.simplefilter("error", cowmp.ForkWithThreadsWarning)
            with cowmp.CowProcessPoolExecutor(max_workers=2, max_tasks_per_child=2) as ex:
                server = ex.fork_server_pid
                results = [ex.submit(ppid, i) for i in range(10)]
                crashes = [ex.submit(die) for _ in range(3)]
                late = ex.schedule(time.sleep, (20,), timeout=0.3)
                results += [ex.submit(ppid, i) for i in range(10, 20)]
                mapped = list(ex.map(ppid, range(20, 60)))
                assert all(isinstance(c.exception(30), cowmp.WorkerDiedError)
                           for c in crashes)
                assert isinstance(late.exception(30), TimeoutError)
                values = [f.result(30) for f in results] + mapped
                assert [v for _, v in values] == [i * i for i in range(60)]
                assert {p for p, _ in values} == {server}, ({p for p, _ in values}, server)
                assert server != os.getpid()
            print("OK")
    """, env={"PYTHONWARNINGS": filters}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "OK"
    assert "Warning" not in out.stderr, out.stderr
    assert "multi-threaded" not in out.stderr, out.stderr


@pytest.mark.timeout(60)
def test_parent_death_ends_the_fork_server_and_the_workers():
    code = textwrap.dedent("""
        import json, os, sys, time
        import cowmp

        def sleepy():
            time.sleep(60)

        if __name__ == "__main__":
            ex = cowmp.CowProcessPoolExecutor(max_workers=2)
            futures = [ex.submit(sleepy) for _ in range(4)]
            while len(ex.worker_pids) < 2:
                time.sleep(0.01)
            time.sleep(0.3)
            print(json.dumps({"server": ex.fork_server_pid, "workers": ex.worker_pids}),
                  flush=True)
            time.sleep(60)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "script.py"
        script.write_text(code)
        proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env, cwd=tmp)
        pids = []
        try:
            ready, _, _ = select.select([proc.stdout], [], [], 40)
            assert ready, "the script printed nothing"
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            info = json.loads(line)
            pids = [p for p in [info["server"], *info["workers"]] if p is not None]
            assert len(info["workers"]) == 2
            assert all(not gone(pid) for pid in pids)
            proc.kill()
            proc.wait(10)
            killed = time.monotonic()
            assert wait_for(lambda: all(gone(pid) for pid in pids), timeout=5), [
                pid for pid in pids if not gone(pid)]
            assert time.monotonic() - killed < 5
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for pid in pids:
                if not gone(pid):
                    os.kill(pid, signal.SIGKILL)
            proc.stdout.close()
            proc.stderr.close()


# -- share() ---------------------------------------------------------------------------------


@requires_fork
@pytest.mark.timeout(60)
def test_shared_object_is_sent_by_reference():
    big = cowmp.share(list(range(2_000_000)))
    small = [1, 2, 3]
    with CowProcessPoolExecutor(max_workers=2) as ex:
        snapshot = ex._pool.encoder.snapshot

        def captures_big():
            return sum(big), len(big)

        payloads = {
            "argument": (_sum_len, [(big,)], None),
            "closure": (captures_big, [()], None),
            "small": (_sum_len, [(small,)], None),
        }
        sizes = {name: len(serialize.dumps(p, snapshot)) for name, p in payloads.items()}
        assert sizes["argument"] < 1024, sizes
        assert sizes["closure"] < 1024, sizes
        assert sizes["argument"] < sizes["small"] + 64, sizes
        # an equal list that was not shared goes by value
        assert len(serialize.dumps((_sum_len, [(list(big),)], None), snapshot)) > 1_000_000
        expected = (sum(big), len(big))
        assert ex.submit(_sum_len, big).result(timeout=30) == expected
        assert ex.submit(captures_big).result(timeout=30) == expected
        assert ex.submit(_is_shared, big).result(timeout=30) is True
        assert ex.submit(_sum_len, small).result(timeout=30) == (6, 3)


@pytest.mark.timeout(60)
def test_object_shared_after_the_executor_was_created_goes_by_value():
    with CowProcessPoolExecutor(max_workers=2) as ex:
        late = cowmp.share(list(range(100_000)))
        if not cowmp.FALLBACK:
            payload = (_sum_len, [(late,)], None)
            assert len(serialize.dumps(payload, ex._pool.encoder.snapshot)) > 100_000
        expected = (sum(late), len(late))
        assert ex.submit(_sum_len, late).result(timeout=30) == expected
        assert ex.submit(lambda: _sum_len(late)).result(timeout=30) == expected
        assert list(ex.map(_sum_len, [late, late])) == [expected, expected]


# -- progress bars -------------------------------------------------------------------------


# a script's head: squares in a main block (its body follows, indented as here)
_SQUARES_MAIN = """
        import threading, warnings
        import cowmp

        def square(x):
            return x * x

        if __name__ == "__main__":"""


@pytest.mark.timeout(120)
def test_progress_with_tqdm():
    # in a fresh interpreter: tqdm may leave its monitor thread behind (see below)
    pytest.importorskip("tqdm")
    out = run_script(_SQUARES_MAIN + """
            with cowmp.CowProcessPoolExecutor(max_workers=2) as ex:
                print(sum(ex.map(square, range(50), progress=True)))
                print(sum(ex.map(square, range(20), progress={"desc": "squares"})))
    """, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(sum(i * i for i in range(50))),
                                  str(sum(i * i for i in range(20)))]
    assert "cowmp" in out.stderr and "50/50" in out.stderr, out.stderr
    assert "squares" in out.stderr and "20/20" in out.stderr, out.stderr


@requires_fork
@pytest.mark.timeout(120)
def test_a_tqdm_progress_bar_leaves_no_thread_behind():
    pytest.importorskip("tqdm")
    out = run_script(_SQUARES_MAIN + """
            warnings.simplefilter("error", cowmp.ForkWithThreadsWarning)
            with cowmp.CowProcessPoolExecutor(max_workers=2) as ex:
                print(sum(ex.map(square, range(50), progress=True)))
            print(sorted(t.name for t in threading.enumerate()))
            with cowmp.CowProcessPoolExecutor(max_workers=2) as ex:
                print(ex.submit(square, 3).result(30))
    """, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines() == [
        str(sum(i * i for i in range(50))), "['MainThread']", "9"], out.stderr[-3000:]


@pytest.mark.timeout(60)
def test_progress_without_tqdm_prints_a_plain_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with CowProcessPoolExecutor(max_workers=2) as ex:
        assert list(ex.map(_square, range(50), progress=True)) == [
            i * i for i in range(50)]
        assert list(ex.map(_square, iter(range(30)), progress=True)) == [
            i * i for i in range(30)]
    err = capsys.readouterr().err
    assert "cowmp: 50/50 (100%)" in err, err
    assert "cowmp: 30 tasks" in err, err


@pytest.mark.timeout(120)
def test_progress_without_tqdm_in_a_fresh_interpreter():
    out = run_script("""
        import sys
        sys.modules["tqdm"] = None
        import cowmp

        def square(x):
            return x * x

        if __name__ == "__main__":
            with cowmp.CowProcessPoolExecutor(max_workers=2) as ex:
                print(sum(ex.map(square, range(40), progress=True)))
    """, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(sum(i * i for i in range(40)))
    assert "40/40 (100%)" in out.stderr, out.stderr
