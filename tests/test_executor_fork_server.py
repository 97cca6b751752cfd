"""The fork server and the process tree: workers (replacements included) are children of
the fork server, never forked from the parent's threads (no fork-with-threads warning);
the parent's death ends the server and the workers; the server's death breaks the pool;
a child the user forks, and SIGCHLD ignored, leave everything working.  Without fork the
workers are the parent's own processes."""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
from concurrent.futures.process import BrokenProcessPool

import executor_support as support
import psutil
import pytest
from conftest import requires_fork, run_script, wait_for
from executor_support import (
    alive,
    all_gone,
    kill_self,
    lines,
    mark_and_sleep,
    pids_of,
    read_line,
    ready_workers,
    start_script,
    stop_script,
)

import cowmp
from cowmp import CowProcessPoolExecutor

no_leftovers = support.no_leftovers
make_executor = support.make_executor


def _ppid():
    return os.getppid()


@requires_fork
@pytest.mark.timeout(60)
def test_workers_are_children_of_the_fork_server_not_of_the_parent():
    with CowProcessPoolExecutor(max_workers=2, max_tasks_per_child=2) as ex:
        server = ex.fork_server_pid
        assert server is not None and server != os.getpid()
        assert psutil.Process(server).ppid() == os.getpid()
        assert {psutil.Process(pid).ppid() for pid in ex.worker_pids} == {server}
        assert isinstance(ex.submit(kill_self).exception(timeout=30), cowmp.WorkerDiedError)
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


@pytest.mark.timeout(90)
def test_parent_death_ends_the_fork_server_and_the_workers(tmp_path):
    marks = tmp_path / "marks.txt"
    proc = start_script(tmp_path, """
        if __name__ == "__main__":
            ex = cowmp.CowProcessPoolExecutor(max_workers=2)
            print_pids(ex)
            futures = [ex.submit(mark_and_sleep, sys.argv[1], 60) for _ in range(4)]
            time.sleep(60)
    """, marks)
    pids = []
    try:
        line = read_line(proc, 60)
        assert line, (tmp_path / "stderr.txt").read_text()
        pids = pids_of(line)
        assert alive(pids) == pids  # the server and both workers run
        # both workers run a task when the parent dies
        assert wait_for(lambda: len(lines(marks)) >= 2, timeout=30), (
            "no task started: " + (tmp_path / "stderr.txt").read_text()[-2000:])
        proc.kill()
        proc.wait(10)
        assert all_gone(pids, timeout=5), alive(pids)
    finally:
        stop_script(proc, pids)


@requires_fork
@pytest.mark.timeout(60)
def test_the_fork_server_killed_fails_every_pending_future_and_breaks_the_pool(
        make_executor, tmp_path):
    ex = make_executor(max_workers=2)
    pids = ready_workers(ex)
    marks = tmp_path / "started.txt"
    futures = [ex.submit(mark_and_sleep, str(marks), 2, i) for i in range(8)]
    assert wait_for(lambda: len(lines(marks)) >= 2, timeout=30), "no task started"
    os.kill(ex.fork_server_pid, signal.SIGKILL)
    done, not_done = cf.wait(futures, timeout=10)
    assert not not_done, f"{len(not_done)} futures still pending 10 s after the kill"
    for future in futures:
        assert isinstance(future.exception(), BrokenProcessPool), repr(future.exception())
    with pytest.raises(BrokenProcessPool):
        ex.submit(pow, 2, 5)
    assert all_gone(pids, timeout=5), alive(pids)


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
