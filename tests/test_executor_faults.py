"""CowProcessPoolExecutor under faults: results and exceptions that kill their worker or
cannot be rebuilt, shutdown racing with map, executors created next to each other, leaks
of memory and descriptors, Ctrl-C, worker identity, fork server death, and a soak.

Every test is bounded (future timeouts, joins with a timeout, subprocess timeouts, and
pytest-timeout); the fixtures below stop what a failing test leaves running, so that one
failure does not hang or break the tests after it.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import functools
import gc
import io
import itertools
import json
import logging
import multiprocessing
import os
import pickle
import random
import re
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
import weakref
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import psutil
import pytest
from conftest import gone, is_helper, requires_fork, run_script, wait_for

import cowmp
from cowmp import CowProcessPoolExecutor

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20

# The test process's pid, also in spawned workers (the fallback re-imports this module
# there): a value whose unpickling must fail only in a worker compares with it.
PARENT_PID = int(os.environ.setdefault("COWMP_FAULTS_PARENT_PID", str(os.getpid())))

linux_only = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"),
                                reason="reads /proc/<pid>/fd")


# -- task functions and classes (module level: pickled by reference) -----------------------


def _square(x):
    return x * x


def _identity(x):
    return x


def _sleep_return(seconds, value=None):
    time.sleep(seconds)
    return value


def _append_line(path, text):
    with open(path, "a") as f:
        f.write(f"{text}\n")


def _mark_and_sleep(path, seconds, value=None):
    """Record (a line in ``path``) that the task started, then sleep."""
    _append_line(path, os.getpid())
    time.sleep(seconds)
    return value


def _lines(path):
    try:
        return Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []


class _DiesWhenPickled:
    """A result that kills the worker pickling it: ``os._exit(1)`` or SIGKILL."""

    def __init__(self, how):
        self.how = how

    def __reduce__(self):
        if os.getpid() == PARENT_PID:
            raise RuntimeError("refusing to kill the test process")
        if self.how == "exit":
            os._exit(1)
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)
        raise RuntimeError("still alive after SIGKILL")


def _deadly_result(path, how):
    _append_line(path, "run")
    return _DiesWhenPickled(how)


def _square_or_deadly_result(x, bad, how):
    return _DiesWhenPickled(how) if x == bad else x * x


def _record_and_die(path):
    _append_line(path, "run")
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(10)


class TwoArgError(Exception):
    """Pickles (its args are one message) but cannot be rebuilt: two arguments needed."""

    def __init__(self, code, detail):
        super().__init__(f"error {code}: {detail}")
        self.code = code
        self.detail = detail


def _raise_two_arg_error():
    raise TwoArgError(7, "needs two arguments to be rebuilt")


def _raise_value_error_when_loaded():
    raise ValueError("this result cannot be rebuilt on purpose")


class _FailsToLoad:
    """Pickles anywhere; its unpickling raises ValueError."""

    def __reduce__(self):
        return _raise_value_error_when_loaded, ()


def _exit_when_loaded():
    sys.exit(1)


class _ExitsWhenLoaded:
    """Pickles anywhere; its unpickling calls ``sys.exit(1)``."""

    def __reduce__(self):
        return _exit_when_loaded, ()


def _bad_result(kind):
    return _FailsToLoad() if kind == "value" else _ExitsWhenLoaded()


def _square_or_bad_result(x, bad):
    return _FailsToLoad() if x == bad else x * x


def _raise_in_child():
    if os.getpid() != PARENT_PID:
        raise ValueError("argument refused in the worker on purpose")
    return _FailsInWorker()


class _FailsInWorker:
    """An argument whose unpickling raises ValueError in a worker (not in the parent)."""

    def __reduce__(self):
        return _raise_in_child, ()


def _exit_in_child():
    if os.getpid() != PARENT_PID:
        sys.exit(3)
    return _ExitsInWorker()


class _ExitsInWorker:
    """An argument whose unpickling calls ``sys.exit(3)`` in a worker."""

    def __reduce__(self):
        return _exit_in_child, ()


def _square_int(x):
    return x * x if isinstance(x, int) else f"got {type(x).__name__}"


def _worker_identity():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(processName)s"))
    logger = logging.getLogger("cowmp.tests.faults.identity")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        logger.info("hello")
    finally:
        logger.removeHandler(handler)
    parent = multiprocessing.parent_process()
    return {
        "name": multiprocessing.current_process().name,
        "logged": stream.getvalue().strip(),
        "parent": None if parent is None else parent.pid,
        "pid": os.getpid(),
    }


def _start_method():
    return multiprocessing.get_start_method(allow_none=True)


class _Dummy:
    pass


def _make_dummy(i):
    return _Dummy()


def _soak_value(task_id):
    return task_id * 7 + 3


def _soak_task(task_id, seconds):
    time.sleep(seconds)
    return _soak_value(task_id)


# -- helpers -------------------------------------------------------------------------------


def _all_gone(pids, timeout):
    return wait_for(lambda: all(gone(pid) for pid in pids), timeout=timeout)


def _alive(pids):
    return [pid for pid in pids if not gone(pid)]


def _error_of(future, timeout):
    """The future's exception (None if it has a result); fails the test if the future
    is not done within ``timeout`` seconds."""
    try:
        return future.exception(timeout=timeout)
    except cf.TimeoutError:
        pytest.fail(f"the future was not done within {timeout} s")


def _outcome_of(future, timeout):
    """``("result", value)`` or ``("error", exception)``, any BaseException caught (a
    SystemExit that reaches the caller must not end the test run)."""
    try:
        return "result", future.result(timeout=timeout)
    except cf.TimeoutError:
        if not future.done():
            pytest.fail(f"the future was not done within {timeout} s")
        return "error", future.exception()
    except BaseException as error:  # noqa: BLE001 - SystemExit included, on purpose
        return "error", error


def _ready_workers(ex, count=2, timeout=30):
    """Run a task, then wait until the executor has ``count`` workers; their pids."""
    assert ex.submit(pow, 2, 5).result(timeout=timeout) == 32
    assert wait_for(lambda: len(ex.worker_pids) == count, timeout=timeout), ex.worker_pids
    return set(ex.worker_pids)


def _blocked_in_wait(thread):
    """Is ``thread`` blocked in ``threading.Condition.wait`` (waiting for a result)?"""
    frame = sys._current_frames().get(thread.ident)
    return (frame is not None and frame.f_code.co_name == "wait"
            and frame.f_code.co_filename == threading.__file__)


def _fd_count(pid="self"):
    return len(os.listdir(f"/proc/{pid}/fd"))


def _check_works(ex):
    assert ex.submit(pow, 2, 5).result(timeout=30) == 32


@contextlib.contextmanager
def _warnings_only_about(*threads):
    """Executors created inside may warn (ForkWithThreadsWarning) about ``threads``, the
    test's own threads, foreign to cowmp; about no other thread (not cowmp's own)."""
    allowed = {t.name for t in threads}
    alive_before = {t.name for t in threading.enumerate()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", cowmp.ForkWithThreadsWarning)
        yield
    others = (alive_before | {t.name for t in threading.enumerate()}) - allowed - {
        threading.current_thread().name}
    for w in caught:
        if not issubclass(w.category, cowmp.ForkWithThreadsWarning):
            continue
        message = str(w.message)
        assert not [name for name in others if repr(name) in message], message
        assert not re.search(r"'cowmp[^']*'", message), message  # a thread of cowmp's
        assert "not started through threading" not in message, message


@pytest.fixture(autouse=True)
def _bounded_cleanup():
    """After each test: the threads and processes it started end (within 10 s); if not,
    its processes are killed (a manager thread then sees its fork server or workers die
    and ends) and the test errors at teardown, naming what it left."""
    me = psutil.Process()
    threads_before = set(threading.enumerate())
    children_before = {p.pid for p in me.children(recursive=True)}
    yield

    def threads_left():
        return [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]

    def children_left():
        left = []
        for p in me.children(recursive=True):
            if p.pid not in children_before and not is_helper(p) and not gone(p.pid):
                left.append(p)
        return left

    if wait_for(lambda: not threads_left() and not children_left(), timeout=10):
        return
    left = ([t.name for t in threads_left()], [p.pid for p in children_left()])
    deadline = time.monotonic() + 20
    while (threads_left() or children_left()) and time.monotonic() < deadline:
        for p in children_left():
            with contextlib.suppress(psutil.Error):
                p.kill()
        time.sleep(0.2)
    still = [t.name for t in threads_left()]
    pytest.fail(f"the test left threads {left[0]} and processes {left[1]} running; "
                f"processes killed{'; threads still running: ' if still else ''}"
                f"{still if still else ''}")


@pytest.fixture
def make_executor():
    """CowProcessPoolExecutor(...) that is shut down (wait=False, cancel_futures) after
    the test, whatever happened."""
    made = []

    def make(*args, **kwargs):
        ex = CowProcessPoolExecutor(*args, **kwargs)
        made.append(ex)
        return ex

    yield make
    for ex in made:
        with contextlib.suppress(BaseException):
            ex.shutdown(wait=False, cancel_futures=True)


def _script_env():
    return dict(os.environ, PYTHONFAULTHANDLER="1", PYTHONPATH=os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))


# the head of the scripts of _start_script: print_pids(ex) prints the fork server's and
# the workers' pids as a JSON line, once both workers are there
_PRINT_PIDS = """
    import json, os, sys, time
    import cowmp

    def print_pids(ex):
        assert ex.submit(pow, 2, 5).result(timeout=30) == 32
        deadline = time.monotonic() + 30
        while len(ex.worker_pids) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        print(json.dumps({"server": ex.fork_server_pid, "workers": ex.worker_pids}),
              flush=True)
"""


def _start_script(tmp_path, code, *args):
    """Start ``code`` (after :data:`_PRINT_PIDS`) as a script; stdout unbuffered (read
    with :func:`_read_line`), stderr to a file (``tmp_path / "stderr.txt"``)."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(_PRINT_PIDS) + textwrap.dedent(code))
    with open(tmp_path / "stderr.txt", "wb") as stderr:
        return subprocess.Popen([sys.executable, str(script), *map(str, args)],
                                stdout=subprocess.PIPE, stderr=stderr, bufsize=0,
                                env=_script_env(), cwd=tmp_path)


def _read_line(proc, timeout):
    """A line of the script's stdout, or None if none came within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        ready, _, _ = select.select([proc.stdout], [], [], remaining)
        if not ready:
            return None
        byte = proc.stdout.read(1)
        if not byte:
            return data.decode() or None
        data += byte
    return data.decode()


def _stop_script(proc, pids):
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    for pid in pids:
        if not gone(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    proc.stdout.close()


# -- 1. a result that kills its worker is not re-run endlessly ------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_a_result_that_kills_its_worker_when_pickled_fails_and_runs_at_most_twice(
        make_executor, tmp_path, how):
    ex = make_executor(max_workers=2)
    runs = tmp_path / "runs.txt"
    started = time.monotonic()
    error = _error_of(ex.submit(_deadly_result, str(runs), how), timeout=30)
    assert isinstance(error, cowmp.WorkerDiedError), repr(error)
    assert isinstance(error, BrokenProcessPool)
    assert time.monotonic() - started < 30
    _check_works(ex)
    assert [f.result(timeout=30) for f in [ex.submit(_square, i) for i in range(10)]] == [
        i * i for i in range(10)]
    # a task in flight at two worker deaths fails instead of running a third time
    assert 1 <= len(_lines(runs)) <= 2, _lines(runs)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_a_deadly_result_in_a_map_chunk_fails_that_item_after_the_others(make_executor, how):
    ex = make_executor(max_workers=2)
    got = []
    results = ex.map(_square_or_deadly_result, range(10), [9] * 10, [how] * 10,
                     chunksize=10, timeout=30)
    with pytest.raises(cowmp.WorkerDiedError):
        for value in results:
            got.append(value)
    assert got == [i * i for i in range(9)]
    _check_works(ex)


@pytest.mark.timeout(60)
def test_a_task_that_kills_its_worker_while_running_fails_at_its_first_death(
        make_executor, tmp_path):
    ex = make_executor(max_workers=2)
    _ready_workers(ex)
    runs = tmp_path / "runs.txt"
    started = time.monotonic()
    error = _error_of(ex.submit(_record_and_die, str(runs)), timeout=30)
    assert isinstance(error, cowmp.WorkerDiedError), repr(error)
    assert time.monotonic() - started < 10
    _check_works(ex)
    assert _lines(runs) == ["run"]


# -- 2. one bad result or exception does not break the pool ---------------------------------


@pytest.mark.timeout(60)
def test_task_unpickling_error_class():
    error_class = cowmp.TaskUnpicklingError
    assert issubclass(error_class, cowmp.TaskPicklingError)
    assert issubclass(error_class, pickle.PicklingError)
    assert issubclass(error_class, BrokenProcessPool)


@pytest.mark.timeout(60)
def test_an_exception_that_cannot_be_rebuilt_fails_its_task_alone(make_executor):
    ex = make_executor(max_workers=2)
    before = [ex.submit(_sleep_return, 0.05, i) for i in range(5)]
    bad = ex.submit(_raise_two_arg_error)
    after = [ex.submit(_sleep_return, 0.05, i) for i in range(5, 10)]
    error = _error_of(bad, timeout=30)
    assert isinstance(error, cowmp.TaskUnpicklingError), repr(error)
    assert isinstance(error, cowmp.TaskPicklingError)
    assert isinstance(error, BrokenProcessPool)
    assert "TwoArgError" in str(error), str(error)
    assert isinstance(error.__cause__, TypeError), repr(error.__cause__)
    assert [f.result(timeout=30) for f in before + after] == list(range(10))
    _check_works(ex)
    assert list(ex.map(_square, range(20))) == [i * i for i in range(20)]


@pytest.mark.timeout(60)
def test_a_result_that_cannot_be_rebuilt_fails_its_task_alone(make_executor):
    ex = make_executor(max_workers=2)
    others = [ex.submit(_sleep_return, 0.05, i) for i in range(5)]
    bad = ex.submit(_bad_result, "value")
    more = [ex.submit(_sleep_return, 0.05, i) for i in range(5, 10)]
    error = _error_of(bad, timeout=30)
    assert isinstance(error, cowmp.TaskUnpicklingError), repr(error)
    assert isinstance(error.__cause__, ValueError), repr(error.__cause__)
    assert [f.result(timeout=30) for f in others + more] == list(range(10))
    _check_works(ex)


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
    _check_works(ex)


@pytest.mark.timeout(60)
def test_a_result_whose_unpickling_calls_sys_exit_fails_its_task_alone(make_executor):
    ex = make_executor(max_workers=2)
    kind, error = _outcome_of(ex.submit(_bad_result, "exit"), timeout=30)
    assert kind == "error", error
    assert not isinstance(error, SystemExit), repr(error)
    assert isinstance(error, cowmp.TaskUnpicklingError), repr(error)
    _check_works(ex)


class _BrokenPipeStream:
    """A stderr whose reader is gone."""

    encoding = "utf-8"
    errors = "strict"

    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        raise BrokenPipeError(32, "Broken pipe")

    def isatty(self):
        return False

    def fileno(self):
        raise io.UnsupportedOperation("no file descriptor")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("bar", ["tqdm", "plain"])
def test_progress_to_a_broken_stderr_neither_fails_the_map_nor_breaks_the_pool(
        make_executor, monkeypatch, bar):
    if bar == "tqdm":
        pytest.importorskip("tqdm")
    else:
        monkeypatch.setitem(sys.modules, "tqdm", None)
        monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    ex = make_executor(max_workers=2)
    _check_works(ex)
    monkeypatch.setattr(sys, "stderr", _BrokenPipeStream())
    try:
        results = list(ex.map(_square, range(50), progress=True, timeout=30))
        more = list(ex.map(_sleep_return, [0.25] * 4, range(4), progress=True, timeout=30))
    finally:
        monkeypatch.undo()
    assert results == [i * i for i in range(50)]
    assert more == [0, 1, 2, 3]
    _check_works(ex)


# -- 3. shutdown(cancel_futures=True) while another thread iterates a map -------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("chunksize", [None, 1])
@pytest.mark.parametrize("when", ["at_once", "while_running", "workers_busy"])
def test_shutdown_cancelling_futures_ends_a_map_iterated_in_another_thread(
        make_executor, tmp_path, when, chunksize):
    """The map's input that no worker has started (not yet read included) is cancelled:
    its consumer gets the results of what ran, then CancelledError."""
    ex = make_executor(max_workers=2)
    _ready_workers(ex)
    marks = tmp_path / "started.txt"
    outcome = {"got": []}
    mapping = threading.Event()
    busy = []
    if when == "workers_busy":  # the map's first chunks wait in the queue, and so does
        # its consumer: for a chunk that the shutdown cancels
        busy_marks = tmp_path / "busy.txt"
        busy = [ex.submit(_mark_and_sleep, str(busy_marks), 1.0, i) for i in range(2)]
        assert wait_for(lambda: len(_lines(busy_marks)) == 2, timeout=30), "not busy"

    def consume():
        try:
            # bounded (20 s): a consumer left hanging would be a foreign thread for the
            # executors of the tests that follow (the teardown waits for it to end)
            results = ex.map(_mark_and_sleep, [str(marks)] * 20, [0.5] * 20, range(20),
                             chunksize=chunksize, timeout=20)
            mapping.set()
            for value in results:
                outcome["got"].append(value)
            outcome["end"] = "finished"
        except BaseException as error:  # noqa: BLE001 - examined by the test
            outcome["end"] = error

    consumer = threading.Thread(target=consume, name="map-consumer", daemon=True)
    consumer.start()
    assert mapping.wait(30), "map() did not return"
    if when == "while_running":
        assert wait_for(lambda: len(_lines(marks)) >= 2, timeout=30), "no task started"
    elif when == "workers_busy":
        wait_for(lambda: _blocked_in_wait(consumer), timeout=5)
    ex.shutdown(wait=False, cancel_futures=True)
    stopped = time.monotonic()
    consumer.join(10)
    assert not consumer.is_alive(), "the map's consumer hangs after the shutdown"
    assert time.monotonic() - stopped < 10
    assert isinstance(outcome.get("end"), cf.CancelledError), (
        repr(outcome.get("end")), outcome["got"])
    got = outcome["got"]
    assert got == list(range(len(got))) and len(got) < 20, got
    assert len(_lines(marks)) < 20
    if when == "workers_busy":
        assert outcome["got"] == []
        assert [f.result(timeout=30) for f in busy] == [0, 1]
    pids = set(ex.worker_pids)
    assert _all_gone(pids, timeout=15), _alive(pids)  # the executor stopped its workers


# -- 4, 5. executors created next to others -------------------------------------------------

ROUNDS = 8 if cowmp.FALLBACK else 34


@pytest.mark.timeout(180)
@pytest.mark.parametrize("previous", ["shutdown_wait_false", "dropped", "rebound"])
def test_a_new_executor_works_right_after_the_previous_one(previous):
    executors = []  # those shut down: kept, to stop them at the end
    ex = None
    try:
        for _ in range(ROUNDS):
            # "rebound": the previous one, still bound to ex, is dropped by this assignment
            ex = CowProcessPoolExecutor(max_workers=2)
            _check_works(ex)
            if previous == "shutdown_wait_false":
                ex.shutdown(wait=False)
                executors.append(ex)
            elif previous == "dropped":
                del ex
                gc.collect()
                ex = None
    finally:
        if ex is not None:
            ex.shutdown(wait=False)
        del ex
        for old in executors:
            old.shutdown(wait=False)
        executors.clear()
        gc.collect()


@contextlib.contextmanager
def _kept_busy(ex):
    """A thread keeps ``ex`` busy with squares (a few in flight at a time) while the block
    runs; afterwards every one of its futures has the right result."""
    stop = threading.Event()
    submitted = []
    errors = []

    def stream():
        try:
            for i in itertools.count():
                if stop.is_set():
                    return
                future = ex.submit(_square, i)
                submitted.append((i, future))
                if i % 4 == 3:
                    future.result(timeout=30)
        except BaseException as error:  # noqa: BLE001 - examined by the test
            errors.append(error)

    submitter = threading.Thread(target=stream, name="fault-submitter", daemon=True)
    submitter.start()
    try:
        yield submitter
    finally:
        stop.set()
        submitter.join(60)
    assert not submitter.is_alive(), "the submitting thread hangs"
    assert not errors, errors
    assert submitted, "nothing was submitted"
    for i, future in submitted:
        assert future.result(timeout=30) == i * i, i


@pytest.mark.timeout(180)
def test_a_new_executor_works_while_another_replaces_its_workers(make_executor):
    busy = make_executor(max_workers=2, max_tasks_per_child=1)
    _check_works(busy)
    with _kept_busy(busy) as submitter:
        for _ in range(ROUNDS):
            with _warnings_only_about(submitter):
                ex = make_executor(max_workers=2)
            _check_works(ex)
            ex.shutdown(wait=False)
            del ex


@pytest.mark.timeout(180)
def test_an_executor_created_and_shut_down_in_a_loop_next_to_a_busy_one(make_executor):
    rounds = 10 if cowmp.FALLBACK else 100
    a = make_executor(max_workers=2, max_tasks_per_child=1)
    _check_works(a)
    with _kept_busy(a) as submitter:
        for r in range(rounds):
            with _warnings_only_about(submitter):
                b = make_executor(max_workers=2)
            futures = [b.submit(_square, r * 10 + k) for k in range(3)]
            assert [f.result(timeout=30) for f in futures] == [
                (r * 10 + k) ** 2 for k in range(3)]
            b.shutdown(wait=True)
            del b


# -- 6. leaks --------------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_executors_shut_down_in_a_loop_keep_no_memory_alive():
    out = run_script("""
        import psutil
        import cowmp

        MiB = 1 << 20

        def square(x):
            return x * x

        if __name__ == "__main__":  # module level: buf and ex are globals of __main__
            for i in range(8):
                buf = bytearray(b"\\x01") * (50 * MiB)  # touched: counted in the USS
                ex = cowmp.CowProcessPoolExecutor(2)
                assert ex.submit(square, i).result(timeout=60) == i * i
                ex.shutdown()
            print(psutil.Process().memory_full_info().uss)
    """, timeout=150)
    assert out.returncode == 0, out.stderr
    uss = int(out.stdout.split()[-1])
    assert uss < 3 * 50 * MiB, f"USS {uss / MiB:.0f} MiB after 8 executors"


@linux_only
@pytest.mark.timeout(120)
def test_executors_shut_down_in_a_loop_leave_no_descriptor_open():
    with CowProcessPoolExecutor(max_workers=2) as warm_up:  # one-time allocations
        _check_works(warm_up)
    del warm_up
    gc.collect()
    baseline = _fd_count()
    for _ in range(20):
        with CowProcessPoolExecutor(max_workers=2) as ex:
            _check_works(ex)
    del ex
    counts = []

    def back_to_baseline():
        gc.collect()
        counts.append(_fd_count())
        return counts[-1] <= baseline + 2

    assert wait_for(back_to_baseline, timeout=5), (baseline, counts[-1])


@requires_fork
@linux_only
@pytest.mark.timeout(120)
def test_a_worker_does_not_inherit_the_descriptors_of_other_executors(make_executor):
    def fds_of(ex):
        futures = [ex.submit(_sleep_return, 0.3, i) for i in range(4)]  # both workers run
        assert [f.result(timeout=30) for f in futures] == list(range(4))
        assert wait_for(lambda: len(ex.worker_pids) == 2, timeout=30), ex.worker_pids
        workers = max(_fd_count(pid) for pid in ex.worker_pids)
        return workers, _fd_count(ex.fork_server_pid)

    lone = make_executor(max_workers=2)
    lone_worker, lone_server = fds_of(lone)
    lone.shutdown(wait=True)
    others = [make_executor(max_workers=2) for _ in range(2)]
    for other in others:
        _check_works(other)  # their manager threads run, their epoll sets are in use
    ex = make_executor(max_workers=2)
    worker, server = fds_of(ex)
    for other in others:
        _check_works(other)
    assert worker <= lone_worker, (worker, lone_worker)
    assert server <= lone_server, (server, lone_server)


@requires_fork
@linux_only
@pytest.mark.timeout(60)
def test_a_constructor_that_fails_leaves_no_descriptor_open(monkeypatch):
    with CowProcessPoolExecutor(max_workers=2) as warm_up:
        _check_works(warm_up)
    del warm_up
    gc.collect()
    baseline = _fd_count()

    def failing_fork():
        raise OSError("fork refused by the test")

    with monkeypatch.context() as patch:
        patch.setattr(os, "fork", failing_fork)
        with pytest.raises(OSError, match="fork refused"):
            CowProcessPoolExecutor(max_workers=2)
    counts = []

    def back_to_baseline():
        gc.collect()
        counts.append(_fd_count())
        return counts[-1] <= baseline

    assert wait_for(back_to_baseline, timeout=2), (baseline, counts[-1])
    with CowProcessPoolExecutor(max_workers=2) as ex:  # and nothing else is broken
        _check_works(ex)


# -- 7. map's results read after the with block ---------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["generator", "list", "range"])
def test_map_results_read_after_the_with_block_are_all_there(kind):
    inputs = {"generator": lambda: (i for i in range(50)),
              "list": lambda: list(range(50)),
              "range": lambda: range(50)}
    with CowProcessPoolExecutor(max_workers=2) as ex:
        results = ex.map(_square, inputs[kind](), timeout=30)
    assert list(results) == [i * i for i in range(50)]


# -- 8. one argument that cannot be rebuilt in the worker fails its task alone --------------


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
    _check_works(ex)


@pytest.mark.timeout(60)
def test_an_argument_whose_unpickling_calls_sys_exit_gives_task_pickling_error(
        make_executor):
    ex = make_executor(max_workers=2)
    kind, error = _outcome_of(ex.submit(_square_int, _ExitsInWorker()), timeout=30)
    assert kind == "error", error
    assert not isinstance(error, SystemExit), repr(error)
    assert isinstance(error, cowmp.TaskPicklingError), repr(error)
    _check_works(ex)


# -- 9. Ctrl-C, an exception in the with block, terminate_workers / kill_workers ------------

def _pids_of(line):
    info = json.loads(line)
    assert len(info["workers"]) == 2, info
    return [pid for pid in [info["server"], *info["workers"]] if pid is not None]


@pytest.mark.timeout(90)
def test_ctrl_c_in_a_with_block_stops_the_workers_at_once(tmp_path):
    proc = _start_script(tmp_path, """
        import signal

        if __name__ == "__main__":
            # Ctrl-C raises KeyboardInterrupt, as in a terminal, even if whatever runs the
            # tests ignores SIGINT (a background job does, and its children inherit that)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            with cowmp.CowProcessPoolExecutor(2) as ex:
                print_pids(ex)
                list(ex.map(time.sleep, [30] * 8))
    """)
    pids = []
    try:
        line = _read_line(proc, 60)
        assert line, (tmp_path / "stderr.txt").read_text()
        pids = _pids_of(line)
        time.sleep(1.5)  # the tasks are running (the contract: 1-2 s after the pids)
        assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()
        proc.send_signal(signal.SIGINT)
        interrupted = time.monotonic()
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            pytest.fail("the script did not exit within 3 s of SIGINT: "
                        + (tmp_path / "stderr.txt").read_text()[-2000:])
        assert time.monotonic() - interrupted < 3.5
        stderr = (tmp_path / "stderr.txt").read_text()
        assert "KeyboardInterrupt" in stderr, stderr
        assert _all_gone(pids, timeout=5), _alive(pids)
    finally:
        _stop_script(proc, pids)


@pytest.mark.timeout(90)
def test_an_exception_in_a_with_block_stops_the_workers_at_once(tmp_path):
    proc = _start_script(tmp_path, """
        def mark_and_sleep(path, seconds):
            with open(path, "a") as f:
                f.write(f"{os.getpid()}\\n")
            time.sleep(seconds)

        def started(path):
            try:
                with open(path) as f:
                    return len(f.read().splitlines())
            except FileNotFoundError:
                return 0

        if __name__ == "__main__":
            marks = sys.argv[1]
            raised = None
            try:
                with cowmp.CowProcessPoolExecutor(2) as ex:
                    print_pids(ex)
                    futures = [ex.submit(mark_and_sleep, marks, 30) for _ in range(8)]
                    deadline = time.monotonic() + 30
                    while started(marks) < 2 and time.monotonic() < deadline:
                        time.sleep(0.01)
                    raised = time.monotonic()
                    raise ValueError("boom inside the with block")
            except ValueError:
                print(json.dumps({"exit_seconds": time.monotonic() - raised}), flush=True)
    """, tmp_path / "marks.txt")
    pids = []
    try:
        line = _read_line(proc, 60)
        assert line, (tmp_path / "stderr.txt").read_text()
        pids = _pids_of(line)
        line = _read_line(proc, 10)
        assert line, "__exit__ did not return within 10 s: " + (
            tmp_path / "stderr.txt").read_text()[-2000:]
        assert json.loads(line)["exit_seconds"] < 1.5, line
        assert _all_gone(pids, timeout=5), _alive(pids)
        assert proc.wait(timeout=30) == 0, (tmp_path / "stderr.txt").read_text()
    finally:
        _stop_script(proc, pids)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["terminate_workers", "kill_workers"])
def test_terminate_and_kill_workers_stop_running_tasks_at_once(make_executor, tmp_path,
                                                               method):
    ex = make_executor(max_workers=2)
    pids = _ready_workers(ex)
    marks = tmp_path / "started.txt"
    futures = [ex.submit(_mark_and_sleep, str(marks), 30, i) for i in range(6)]
    assert wait_for(lambda: len(_lines(marks)) >= 2, timeout=30), "no task started"
    started = time.monotonic()
    getattr(ex, method)()
    done, not_done = cf.wait(futures, timeout=2)
    assert not not_done, f"{len(not_done)} futures not done 2 s after {method}()"
    assert time.monotonic() - started < 2.5
    for future in futures:
        assert future.cancelled() or future.exception() is not None
    assert _all_gone(pids, timeout=5), _alive(pids)
    assert wait_for(lambda: not _alive(ex.worker_pids), timeout=5), ex.worker_pids


# -- 10. who a worker is ---------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_worker_is_named_as_a_pool_worker_with_the_test_process_as_parent(make_executor):
    ex = make_executor(max_workers=2)
    _ready_workers(ex)
    futures = [ex.submit(_worker_identity) for _ in range(6)]
    identities = [f.result(timeout=30) for f in futures]
    for identity in identities:
        assert re.fullmatch(r"CowPoolWorker-\d+", identity["name"]), identity
        assert identity["logged"] == identity["name"], identity
        assert identity["parent"] == os.getpid(), identity
        assert identity["pid"] != os.getpid()


@requires_fork
@pytest.mark.timeout(60)
def test_a_worker_reports_the_cowfork_start_method(make_executor):
    ex = make_executor(max_workers=2)
    assert ex.submit(_start_method).result(timeout=30) == "cowfork"


# -- 11. the executor's own threads are not foreign threads ---------------------------------


@pytest.mark.timeout(120)
def test_an_executor_created_next_to_a_running_one_does_not_warn(make_executor):
    for _ in range(5):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            first = make_executor(max_workers=2)
            _check_works(first)  # its manager thread runs
            second = make_executor(max_workers=2)
            _check_works(second)
            first.shutdown(wait=True)
            second.shutdown(wait=True)


@requires_fork
@pytest.mark.timeout(60)
def test_an_executor_created_next_to_a_foreign_thread_warns_naming_it(make_executor):
    release = threading.Event()
    sleeper = threading.Thread(target=release.wait, name="foreign-sleeper", daemon=True)
    sleeper.start()
    try:
        with pytest.warns(cowmp.ForkWithThreadsWarning, match="foreign-sleeper"):
            ex = make_executor(max_workers=2)
    finally:
        release.set()
        sleeper.join(10)
    assert not sleeper.is_alive()
    _check_works(ex)


# -- 12. smaller ones ------------------------------------------------------------------------


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


@pytest.mark.timeout(60)
def test_map_keeps_no_reference_to_the_results_it_yielded(make_executor):
    ex = make_executor(max_workers=2)
    for obj in ex.map(_make_dummy, range(10), timeout=30):
        ref = weakref.ref(obj)
        del obj

        def freed(ref=ref):
            gc.collect()
            return ref() is None

        assert wait_for(freed, timeout=2), "map still holds a result it yielded"


@pytest.mark.timeout(120)
def test_sigchld_ignored_runs_and_shuts_down_quietly():
    out = run_script("""
        import signal
        import cowmp

        def square(x):
            return x * x

        if __name__ == "__main__":
            signal.signal(signal.SIGCHLD, signal.SIG_IGN)
            with cowmp.CowProcessPoolExecutor(2) as ex:
                print(sum(ex.map(square, range(100))))
                print(ex.submit(square, 7).result(timeout=30))
            print("done")
    """, timeout=90)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(sum(i * i for i in range(100))), "49", "done"], (
        out.stdout, out.stderr)
    assert out.stderr == "", out.stderr


@pytest.mark.timeout(120)
def test_a_child_forked_by_the_user_exits_cleanly_next_to_a_live_executor(tmp_path):
    child_stderr = tmp_path / "child_stderr.txt"
    out = run_script("""
        import os, sys
        import cowmp

        def square(x):
            return x * x

        if __name__ == "__main__":
            ex = cowmp.CowProcessPoolExecutor(2)
            print(ex.submit(square, 3).result(timeout=30), flush=True)
            pid = os.fork()
            if pid == 0:  # the child leaves through the normal interpreter exit
                fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                os.dup2(fd, 2)
                sys.exit(0)
            _, status = os.waitpid(pid, 0)
            print("child", os.waitstatus_to_exitcode(status), flush=True)
            print(ex.submit(square, 4).result(timeout=30), flush=True)
            ex.shutdown()
            print("done")
    """, args=(str(child_stderr),), timeout=45)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["9", "child", "0", "16", "done"], (out.stdout, out.stderr)
    text = child_stderr.read_text()
    assert "Exception ignored" not in text, text
    assert "ChildProcessError" not in text, text
    assert "Exception ignored" not in out.stderr, out.stderr


# -- 13. the fork server dies ----------------------------------------------------------------


@requires_fork
@pytest.mark.timeout(60)
def test_the_fork_server_killed_fails_every_pending_future_and_breaks_the_pool(
        make_executor, tmp_path):
    ex = make_executor(max_workers=2)
    pids = _ready_workers(ex)
    marks = tmp_path / "started.txt"
    futures = [ex.submit(_mark_and_sleep, str(marks), 2, i) for i in range(8)]
    assert wait_for(lambda: len(_lines(marks)) >= 2, timeout=30), "no task started"
    os.kill(ex.fork_server_pid, signal.SIGKILL)
    done, not_done = cf.wait(futures, timeout=10)
    assert not not_done, f"{len(not_done)} futures still pending 10 s after the kill"
    for future in futures:
        assert isinstance(future.exception(), BrokenProcessPool), repr(future.exception())
    with pytest.raises(BrokenProcessPool):
        ex.submit(pow, 2, 5)
    assert _all_gone(pids, timeout=5), _alive(pids)


# -- 14. soak --------------------------------------------------------------------------------

SOAK_SECONDS = 20.0
SOAK_SHUTDOWN_AT = 14.0


@pytest.mark.timeout(150)
def test_soak_two_executors_threads_killed_workers_and_a_shutdown(make_executor):
    executors = {"A": make_executor(max_workers=2), "B": make_executor(max_workers=2)}
    for ex in executors.values():
        _ready_workers(ex)
    servers = [ex.fork_server_pid for ex in executors.values() if ex.fork_server_pid]
    lock = threading.Lock()
    ids = itertools.count()
    submitted = []  # (id, executor name, future)
    outcomes = collections.defaultdict(list)  # id -> outcomes recorded by callbacks
    maps = []  # {"name", "ids", "values", "error"}
    refused = collections.Counter()
    unexpected = []  # errors of submit/map calls, stuck waits
    seen_pids = set()
    kills = []
    b_shutdown = threading.Event()
    stop = threading.Event()

    def record(task_id, future):
        if future.cancelled():
            outcome = ("cancelled", None)
        elif future.exception() is not None:
            outcome = ("error", future.exception())
        else:
            outcome = ("result", future.result())
        with lock:
            outcomes[task_id].append(outcome)

    def refusal(name, error):
        """Is ``error``, raised by submit or map, a refusal after B's shutdown?"""
        return (name == "B" and b_shutdown.is_set() and isinstance(error, RuntimeError)
                and not isinstance(error, BrokenProcessPool))

    def run_map(r, name, ex):
        task_ids = [next(ids) for _ in range(r.randint(3, 15))]
        delays = [r.uniform(0, 0.02) for _ in task_ids]
        entry = {"name": name, "ids": task_ids, "values": [], "error": None}
        began = time.monotonic()
        try:
            # at most 15 tasks of at most 20 ms: a map that takes 10 s hangs
            results = ex.map(_soak_task, task_ids, delays, chunksize=r.choice([1, 3, None]),
                             timeout=15)
        except BaseException as error:  # noqa: BLE001 - classified
            with lock:
                if refusal(name, error):
                    refused[name] += 1
                else:
                    unexpected.append(("map", name, repr(error)))
            return
        try:
            for value in results:
                entry["values"].append(value)
        except BaseException as error:  # noqa: BLE001 - examined at the end
            entry["error"] = error
        entry["seconds"] = time.monotonic() - began
        with lock:
            maps.append(entry)

    def submitter(seed):
        r = random.Random(seed)
        mine = []
        try:
            while not stop.is_set():
                name = r.choice("AB")
                ex = executors[name]
                if r.random() < 0.08:
                    run_map(r, name, ex)
                    continue
                task_id = next(ids)
                try:
                    future = ex.submit(_soak_task, task_id, r.uniform(0, 0.02))
                except BaseException as error:  # noqa: BLE001 - classified
                    with lock:
                        if refusal(name, error):
                            refused[name] += 1
                        else:
                            unexpected.append(("submit", name, repr(error)))
                    time.sleep(0.001)
                    continue
                with lock:
                    submitted.append((task_id, name, future))
                future.add_done_callback(functools.partial(record, task_id))
                mine.append(future)
                if len(mine) >= 16:  # a few in flight: wait for one (cf.wait does not
                    # see a future cancelled by cancel_futures as done: done() does)
                    deadline = time.monotonic() + 15
                    while not any(f.done() for f in mine):
                        if time.monotonic() > deadline:
                            unexpected.append(("stuck", name, "no future done in 15 s"))
                            return
                        cf.wait(mine, timeout=0.05, return_when=cf.FIRST_COMPLETED)
                    mine = [f for f in mine if not f.done()]
        except BaseException as error:  # noqa: BLE001
            unexpected.append(("thread", seed, repr(error)))

    min_age = 2.0 if cowmp.FALLBACK else 0.3  # kill workers that have started

    def killer():
        r = random.Random(99)
        first_seen = {}
        while not stop.is_set():
            now = time.monotonic()
            candidates = []
            for ex in executors.values():
                for pid in ex.worker_pids:
                    first_seen.setdefault(pid, now)
                    seen_pids.add(pid)
                    if now - first_seen[pid] >= min_age:
                        candidates.append(pid)
            if candidates:
                pid = r.choice(candidates)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    kills.append(pid)
            stop.wait(r.uniform(0.1, 0.2))

    threads = [threading.Thread(target=submitter, args=(k,), name=f"soak-submitter-{k}",
                                daemon=True) for k in range(8)]
    threads.append(threading.Thread(target=killer, name="soak-killer", daemon=True))
    started = time.monotonic()
    for t in threads:
        t.start()
    try:
        stop.wait(SOAK_SHUTDOWN_AT)
        b_shutdown.set()
        executors["B"].shutdown(wait=False, cancel_futures=True)
        stop.wait(max(0.0, started + SOAK_SECONDS - time.monotonic()))
    finally:
        stop.set()
        ended = time.monotonic()
        for t in threads:
            t.join(max(0.1, ended + 20 - time.monotonic()))
    assert not [t.name for t in threads if t.is_alive()], "soak threads hang"
    slow = [entry for entry in maps if entry["seconds"] > 10]
    assert not slow, slow[:3]
    assert not unexpected, unexpected[:10]
    futures = [future for _, _, future in submitted]
    assert wait_for(lambda: all(f.done() for f in futures), timeout=30), (
        f"{sum(not f.done() for f in futures)} of {len(futures)} futures never completed")
    for ex in executors.values():
        seen_pids.update(ex.worker_pids)
    executors["A"].shutdown(wait=True)

    assert len(kills) >= 10, kills
    assert refused["B"] > 0 and refused["A"] == 0, refused
    results = 0
    for task_id, name, future in submitted:
        assert len(outcomes[task_id]) == 1, (task_id, outcomes[task_id])
        if future.cancelled():
            assert name == "B", (task_id, name)
            continue
        error = future.exception()
        if error is None:
            assert future.result() == _soak_value(task_id), task_id
            results += 1
        else:
            assert isinstance(error, BrokenProcessPool), (task_id, name, repr(error))
    assert results > 200, results
    for entry in maps:
        values, task_ids = entry["values"], entry["ids"]
        assert values == [_soak_value(i) for i in task_ids[:len(values)]], entry
        error = entry["error"]
        if error is None:
            assert len(values) == len(task_ids), entry
        elif isinstance(error, cf.CancelledError):
            assert entry["name"] == "B", entry
        else:
            assert isinstance(error, BrokenProcessPool), entry
    pids = seen_pids | set(servers)
    assert _all_gone(pids, timeout=15), _alive(pids)


# -- more deaths: SIGTERM ignored, a deadly argument in a chunk, grandchildren -------------


def _ignore_sigterm_and_sleep(path, seconds):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _append_line(path, os.getpid())
    time.sleep(seconds)


@pytest.mark.timeout(60)
def test_an_exception_leaving_with_ends_even_workers_that_ignore_sigterm(tmp_path):
    marks = tmp_path / "marks.txt"
    ex = CowProcessPoolExecutor(2)
    pids = _ready_workers(ex)
    futures = []
    left = None
    with pytest.raises(KeyboardInterrupt):
        with ex:
            futures = [ex.submit(_ignore_sigterm_and_sleep, str(marks), 30) for _ in range(4)]
            assert wait_for(lambda: len(_lines(marks)) >= 2, timeout=30), "no task started"
            left = time.monotonic()
            raise KeyboardInterrupt
    assert time.monotonic() - left < 1.5, "the with block was left late"
    assert _all_gone(pids, timeout=5), _alive(pids)
    # and reaped: no zombie is left
    assert wait_for(lambda: not any(psutil.pid_exists(pid) for pid in pids), timeout=5), [
        pid for pid in pids if psutil.pid_exists(pid)]
    for future in futures:
        assert future.done()
        assert future.cancelled() or isinstance(_error_of(future, 1), BrokenProcessPool)


class _KillsWorkerWhenLoaded:
    """An argument whose unpickling kills the worker (never the test process)."""

    def __reduce__(self):
        return _die_in_child, ()


def _die_in_child():
    if os.getpid() != PARENT_PID:
        os._exit(7)
    return "loaded in the parent"


@requires_fork
@pytest.mark.timeout(60)
def test_an_argument_that_kills_its_worker_when_unpickled_fails_after_two_deaths_alone(
        make_executor):
    ex = make_executor(max_workers=2)
    items = [1, 2, _KillsWorkerWhenLoaded(), 4, 5]
    got = []
    with pytest.raises(cowmp.WorkerDiedError, match="exit code 7") as info:
        for value in ex.map(_identity, items, chunksize=5):
            got.append(value)
    assert got == [1, 2]
    assert "reading" in str(info.value)
    # the others of the chunk ran again and succeed; the pool still works
    assert [f.result(timeout=30) for f in [ex.submit(_identity, i) for i in (4, 5)]] == [4, 5]
    futures = [ex.submit(_identity, v) for v in items]
    outcomes = [_outcome_of(f, 30) for f in futures]
    assert [o[1] for o in outcomes if o[0] == "result"] == [1, 2, 4, 5]
    assert isinstance(outcomes[2][1], cowmp.WorkerDiedError)


def _fork_a_sleeper_then_die(path):
    pid = os.fork()
    if pid == 0:  # a grandchild of the worker that outlives it
        time.sleep(30)
        os._exit(0)
    _append_line(path, pid)
    os._exit(3)


@requires_fork
@pytest.mark.timeout(60)
def test_a_process_forked_by_a_task_does_not_keep_its_dead_worker_alive(make_executor,
                                                                       tmp_path):
    """The worker's connection is closed in processes its tasks fork: its death is seen
    when it dies, not when the grandchild ends."""
    ex = make_executor(max_workers=2)
    _ready_workers(ex)
    marks = tmp_path / "grandchild.txt"
    started = time.monotonic()
    future = ex.submit(_fork_a_sleeper_then_die, str(marks))
    try:
        error = _error_of(future, 20)
        assert isinstance(error, cowmp.WorkerDiedError), error
        assert time.monotonic() - started < 10
        assert ex.submit(_square, 3).result(timeout=30) == 9
    finally:
        for line in _lines(marks):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(line), signal.SIGKILL)


@pytest.mark.timeout(60)
def test_a_failure_of_the_manager_thread_breaks_the_pool_with_its_cause_and_logs_it(
        monkeypatch, caplog, tmp_path):
    """A bug in the manager thread must still end every future: BrokenProcessPool with
    the original error as __cause__, and the traceback logged."""
    from cowmp import pool_manager

    armed = threading.Event()
    check_memory = pool_manager.Pool.check_memory

    def broken(self):
        if armed.is_set():
            raise ZeroDivisionError("a bug in the manager")
        check_memory(self)

    monkeypatch.setattr(pool_manager.Pool, "check_memory", broken)
    ex = CowProcessPoolExecutor(2)
    pids = _ready_workers(ex)
    marks = tmp_path / "started.txt"
    with caplog.at_level(logging.CRITICAL, logger="concurrent.futures"):
        futures = [ex.submit(_mark_and_sleep, str(marks), 30, i) for i in range(4)]
        assert wait_for(lambda: len(_lines(marks)) >= 2, timeout=30), "no task started"
        armed.set()
        futures.append(ex.submit(_square, 2))  # wakes the manager: its round fails
        errors = [_error_of(f, 20) for f in futures]
    assert all(isinstance(e, BrokenProcessPool) for e in errors), errors
    assert _all_gone(pids, timeout=5), _alive(pids)  # their tasks had failed already
    assert isinstance(errors[0].__cause__, ZeroDivisionError), errors[0].__cause__
    assert "a bug in the manager" in caplog.text
    assert "Traceback" in caplog.text or caplog.records[0].exc_info
    with pytest.raises(BrokenProcessPool):
        ex.submit(_square, 1)
    ex.shutdown()


@requires_fork
@pytest.mark.timeout(60)
def test_a_done_callback_that_blocks_does_not_deadlock_the_next_executor(make_executor,
                                                                        monkeypatch):
    """A done-callback runs in the manager thread.  If it waits for the thread that is
    creating another executor, the fork cannot wait for the manager to be at a safe
    point: after a bounded wait it forks all the same, and warns naming the thread."""
    from cowmp import forking

    monkeypatch.setattr(forking, "QUIESCE_TIMEOUT", 0.5)
    ex = make_executor(max_workers=2)
    in_callback = threading.Event()
    release = threading.Event()

    def blocking_callback(_future):
        in_callback.set()
        release.wait(30)

    future = ex.submit(_square, 3)
    future.add_done_callback(blocking_callback)
    try:
        assert in_callback.wait(30), "the callback never ran"
        started = time.monotonic()
        with pytest.warns(cowmp.ForkWithThreadsWarning, match="cowmp-executor"):
            other = make_executor(max_workers=2)
        assert time.monotonic() - started < 10
        assert other.submit(_square, 4).result(timeout=30) == 16
    finally:
        release.set()
    assert future.result(timeout=30) == 9
    assert ex.submit(_square, 5).result(timeout=30) == 25


@pytest.mark.timeout(60)
def test_an_endless_map_left_open_at_shutdown_does_not_hang_it(monkeypatch):
    """At shutdown a map reads the rest of its input, but not without end: past
    MAX_READ_AT_SHUTDOWN tasks the shutdown goes on, and the consumer gets the results
    read, then RuntimeError."""
    from cowmp import mapping, tuning

    monkeypatch.setattr(mapping, "MAX_READ_AT_SHUTDOWN", 500)
    started = time.monotonic()
    with CowProcessPoolExecutor(max_workers=2) as ex:
        results = ex.map(_square, itertools.count())
        assert next(results) == 0
    assert time.monotonic() - started < 30, "the shutdown read an endless input"
    got = [0]
    with pytest.raises(RuntimeError, match="input goes on"):
        for value in results:
            got.append(value)
    assert got == [i * i for i in range(len(got))]
    # what was read ahead before the shutdown, then at most 500 more (and a chunk)
    assert 500 <= len(got) < 500 + 2 * tuning.MAX_READ_AHEAD_TASKS


@pytest.mark.timeout(60)
def test_a_long_finite_map_read_at_shutdown_loses_nothing_up_to_the_limit(monkeypatch):
    from cowmp import mapping

    monkeypatch.setattr(mapping, "MAX_READ_AT_SHUTDOWN", 3000)
    with CowProcessPoolExecutor(max_workers=2) as ex:
        results = ex.map(_square, (i for i in range(2500)))
        assert next(results) == 0
    assert [0, *results] == [i * i for i in range(2500)]
