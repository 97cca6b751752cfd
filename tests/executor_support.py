"""What the tests of CowProcessPoolExecutor share (tests/test_executor_*.py): task functions,
fixtures, waits, and scripts run in a fresh interpreter.

Task functions are module-level functions: workers unpickle them by reference (spawned
workers of the fallback import this module).  Importing this module starts nothing.

A test module takes the fixtures by binding them to its own names::

    no_leftovers = support.no_leftovers    # autouse: every test of the module
    make_executor = support.make_executor  # for the tests that ask for it
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import multiprocessing
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest
from conftest import gone, is_helper, wait_for

from cowmp import CowProcessPoolExecutor

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20

linux_only = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"),
                                reason="reads /proc/<pid>/fd")


# -- task functions (module level: pickled by reference) --------------------------------


def in_worker():
    """Is this process a pool worker, not the test process?  Told by its name, which
    forked and spawned workers both have (a value whose unpickling must fail only in a
    worker asks; the pid would not do: spawned workers import this module afresh)."""
    return multiprocessing.current_process().name.startswith("CowPoolWorker-")


def square(x):
    return x * x


def add(a, b=0):
    return a + b


def identity(x):
    return x


def raise_value_error_when_loaded():
    raise ValueError("this result cannot be rebuilt on purpose")


class FailsToLoad:
    """Pickles anywhere; its unpickling raises ValueError (a result that reaches the
    parent and cannot be rebuilt there)."""

    def __reduce__(self):
        return raise_value_error_when_loaded, ()


def sleep_return(seconds, value=None):
    time.sleep(seconds)
    return value


def kill_self():
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(10)


def append_line(path, text):
    with open(path, "a") as f:
        f.write(f"{text}\n")


def mark_and_sleep(path, seconds, value=None):
    """Record (a line in ``path``: the worker's pid) that the task started, then sleep."""
    append_line(path, os.getpid())
    time.sleep(seconds)
    return value


def lines(path):
    try:
        return Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []


# -- waits and checks -------------------------------------------------------------------


def all_ready(ex):
    """Has ``ex`` all its workers started, with their pids known?"""
    workers = list(ex._pool.workers.values())
    return len(workers) == ex._max_workers and all(w.ready and w.pid for w in workers)


def ready_workers(ex, count=2, timeout=30):
    """Run a task, then wait until the executor's ``count`` workers are ready; their pids."""
    assert ex.submit(pow, 2, 5).result(timeout=timeout) == 32
    assert wait_for(lambda: all_ready(ex) and len(ex.worker_pids) == count,
                    timeout=timeout), ex.worker_pids
    pids = set(ex.worker_pids)
    assert len(pids) == count, pids
    return pids


def idle(ex):
    """Has no worker of ``ex`` any work in flight?"""
    return not any(w.inflight for w in ex._pool.workers.values())


def check_works(ex):
    assert ex.submit(pow, 2, 5).result(timeout=30) == 32


def all_gone(pids, timeout):
    return wait_for(lambda: all(gone(pid) for pid in pids), timeout=timeout)


def alive(pids):
    return [pid for pid in pids if not gone(pid)]


def zombies():
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


def error_of(future, timeout):
    """The future's exception (None if it has a result); fails the test if the future
    is not done within ``timeout`` seconds."""
    try:
        return future.exception(timeout=timeout)
    except cf.TimeoutError:
        pytest.fail(f"the future was not done within {timeout} s")


def outcome_of(future, timeout):
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


def blocked_in_wait(thread):
    """Is ``thread`` blocked in ``threading.Condition.wait`` (waiting for a result)?"""
    frame = sys._current_frames().get(thread.ident)
    return (frame is not None and frame.f_code.co_name == "wait"
            and frame.f_code.co_filename == threading.__file__)


def fd_count(pid="self"):
    return len(os.listdir(f"/proc/{pid}/fd"))


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_leftovers():
    """After each test: the threads and processes it started end (within 10 s), and every
    child it forked is reaped (no zombie); if not, its processes are killed (a manager
    thread then sees its fork server or workers die and ends) and the test errors at
    teardown, naming what it left.  A leftover manager thread would also make the next
    fork warn."""
    me = psutil.Process()
    threads_before = set(threading.enumerate())
    children_before = {p.pid for p in me.children(recursive=True)}
    yield

    def threads_left():
        return [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]

    def children_left():  # zombies included: nobody reaped them
        return [p for p in me.children(recursive=True)
                if p.pid not in children_before and not is_helper(p)]

    if wait_for(lambda: not threads_left() and not children_left(), timeout=10):
        return
    left = ([t.name for t in threads_left()], [p.pid for p in children_left()])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        running = [p for p in children_left() if not gone(p.pid)]
        if not threads_left() and not running:
            break
        for p in running:
            with contextlib.suppress(psutil.Error):
                p.kill()
        time.sleep(0.2)
    still = [t.name for t in threads_left()]
    pytest.fail(f"the test left threads {left[0]} and processes {left[1]} (zombies "
                f"{zombies()}); processes killed"
                f"{'; threads still running: ' if still else ''}{still if still else ''}")


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


# -- scripts that run an executor in a fresh interpreter, watched from the test --------


def script_env():
    return dict(os.environ, PYTHONFAULTHANDLER="1", PYTHONPATH=os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))


#: the head of the scripts of :func:`start_script`: ``print_pids(ex)`` prints the fork
#: server's and the workers' pids as a JSON line, once both workers are there;
#: ``mark_and_sleep(path, seconds)`` records its start (a line in ``path``), then sleeps
PRINT_PIDS = """
    import json, os, sys, time
    import cowmp

    def print_pids(ex):
        assert ex.submit(pow, 2, 5).result(timeout=30) == 32
        deadline = time.monotonic() + 30
        while len(ex.worker_pids) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        print(json.dumps({"server": ex.fork_server_pid, "workers": ex.worker_pids}),
              flush=True)

    def mark_and_sleep(path, seconds):
        with open(path, "a") as f:
            f.write(f"{os.getpid()}\\n")
        time.sleep(seconds)
"""


def start_script(tmp_path, code, *args):
    """Start ``code`` (after :data:`PRINT_PIDS`) as a script; stdout unbuffered (read
    with :func:`read_line`), stderr to a file (``tmp_path / "stderr.txt"``)."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(PRINT_PIDS) + textwrap.dedent(code))
    with open(tmp_path / "stderr.txt", "wb") as stderr:
        return subprocess.Popen([sys.executable, str(script), *map(str, args)],
                                stdout=subprocess.PIPE, stderr=stderr, bufsize=0,
                                env=script_env(), cwd=tmp_path)


def read_line(proc, timeout):
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


def pids_of(line):
    """The fork server's (if any) and the workers' pids, from ``print_pids``' line."""
    info = json.loads(line)
    assert len(info["workers"]) == 2, info
    return [pid for pid in [info["server"], *info["workers"]] if pid is not None]


def stop_script(proc, pids):
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    for pid in pids:
        if not gone(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    proc.stdout.close()
