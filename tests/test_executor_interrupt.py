"""Stopping an executor at once: Ctrl-C or another exception leaving the with block (workers
that ignore SIGTERM included), terminate_workers() and kill_workers().  "At once": well
before the running tasks (30 s) end, and before the fork server's grace for workers that
leave on their own (5 s)."""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import signal
import subprocess
import time
from concurrent.futures.process import BrokenProcessPool

import executor_support as support
import psutil
import pytest
from conftest import wait_for
from executor_support import (
    alive,
    all_gone,
    append_line,
    error_of,
    lines,
    mark_and_sleep,
    pids_of,
    read_line,
    ready_workers,
    start_script,
    stop_script,
)

from cowmp import CowProcessPoolExecutor

no_leftovers = support.no_leftovers
make_executor = support.make_executor

#: seconds within which "at once" must have happened
AT_ONCE = 4.0


def _ignore_sigterm_and_sleep(path, seconds):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    append_line(path, os.getpid())
    time.sleep(seconds)


@pytest.mark.timeout(90)
def test_ctrl_c_in_a_with_block_stops_the_workers_at_once(tmp_path):
    marks = tmp_path / "marks.txt"
    proc = start_script(tmp_path, """
        import signal

        if __name__ == "__main__":
            # Ctrl-C raises KeyboardInterrupt, as in a terminal, even if whatever runs the
            # tests ignores SIGINT (a background job does, and its children inherit that)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            with cowmp.CowProcessPoolExecutor(2) as ex:
                print_pids(ex)
                list(ex.map(mark_and_sleep, [sys.argv[1]] * 8, [30] * 8, chunksize=1))
    """, marks)
    pids = []
    try:
        line = read_line(proc, 60)
        assert line, (tmp_path / "stderr.txt").read_text()
        pids = pids_of(line)
        assert wait_for(lambda: len(lines(marks)) >= 2, timeout=30), (
            "no task started: " + (tmp_path / "stderr.txt").read_text()[-2000:])
        assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()
        proc.send_signal(signal.SIGINT)
        interrupted = time.monotonic()
        try:
            proc.wait(timeout=AT_ONCE)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the script did not exit within {AT_ONCE} s of SIGINT: "
                        + (tmp_path / "stderr.txt").read_text()[-2000:])
        assert time.monotonic() - interrupted < AT_ONCE + 0.5
        stderr = (tmp_path / "stderr.txt").read_text()
        assert "KeyboardInterrupt" in stderr, stderr
        assert all_gone(pids, timeout=5), alive(pids)
    finally:
        stop_script(proc, pids)


@pytest.mark.timeout(90)
def test_an_exception_in_a_with_block_stops_the_workers_at_once(tmp_path):
    proc = start_script(tmp_path, """
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
        line = read_line(proc, 60)
        assert line, (tmp_path / "stderr.txt").read_text()
        pids = pids_of(line)
        line = read_line(proc, 10 + AT_ONCE)
        assert line, "__exit__ did not return within 10 s: " + (
            tmp_path / "stderr.txt").read_text()[-2000:]
        assert json.loads(line)["exit_seconds"] < AT_ONCE, line
        assert all_gone(pids, timeout=5), alive(pids)
        assert proc.wait(timeout=30) == 0, (tmp_path / "stderr.txt").read_text()
    finally:
        stop_script(proc, pids)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["terminate_workers", "kill_workers"])
def test_terminate_and_kill_workers_stop_running_tasks_at_once(make_executor, tmp_path,
                                                               method):
    ex = make_executor(max_workers=2)
    pids = ready_workers(ex)
    marks = tmp_path / "started.txt"
    futures = [ex.submit(mark_and_sleep, str(marks), 30, i) for i in range(6)]
    assert wait_for(lambda: len(lines(marks)) >= 2, timeout=30), "no task started"
    started = time.monotonic()
    getattr(ex, method)()
    done, not_done = cf.wait(futures, timeout=AT_ONCE)
    assert not not_done, f"{len(not_done)} futures not done {AT_ONCE} s after {method}()"
    assert time.monotonic() - started < AT_ONCE + 0.5
    for future in futures:
        assert future.cancelled() or future.exception() is not None
    assert all_gone(pids, timeout=5), alive(pids)
    assert wait_for(lambda: not alive(ex.worker_pids), timeout=5), ex.worker_pids


@pytest.mark.timeout(60)
def test_an_exception_leaving_with_ends_even_workers_that_ignore_sigterm(tmp_path):
    marks = tmp_path / "marks.txt"
    ex = CowProcessPoolExecutor(2)
    pids = ready_workers(ex)
    futures = []
    left = None
    with pytest.raises(KeyboardInterrupt):
        with ex:
            futures = [ex.submit(_ignore_sigterm_and_sleep, str(marks), 30)
                       for _ in range(4)]
            assert wait_for(lambda: len(lines(marks)) >= 2, timeout=30), "no task started"
            left = time.monotonic()
            raise KeyboardInterrupt
    assert time.monotonic() - left < AT_ONCE, "the with block was left late"
    assert all_gone(pids, timeout=5), alive(pids)
    # and reaped: no zombie is left
    assert wait_for(lambda: not any(psutil.pid_exists(pid) for pid in pids), timeout=5), [
        pid for pid in pids if psutil.pid_exists(pid)]
    for future in futures:
        assert future.done()
        assert future.cancelled() or isinstance(error_of(future, 1), BrokenProcessPool)
