"""What an executor keeps after it is done: no memory (executors shut down in a loop), no
descriptor (shut down, or failed in the constructor; nor any other executor's in a
worker), no result that map has yielded."""

from __future__ import annotations

import gc
import os
import weakref

import executor_support as support
import pytest
from conftest import requires_fork, run_script, wait_for
from executor_support import MiB, check_works, fd_count, linux_only, sleep_return

from cowmp import CowProcessPoolExecutor

no_leftovers = support.no_leftovers
make_executor = support.make_executor


class _Dummy:
    pass


def _make_dummy(i):
    return _Dummy()


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
        check_works(warm_up)
    del warm_up
    gc.collect()
    baseline = fd_count()
    for _ in range(20):
        with CowProcessPoolExecutor(max_workers=2) as ex:
            check_works(ex)
    del ex
    counts = []

    def back_to_baseline():
        gc.collect()
        counts.append(fd_count())
        return counts[-1] <= baseline + 2

    assert wait_for(back_to_baseline, timeout=5), (baseline, counts[-1])


@requires_fork
@linux_only
@pytest.mark.timeout(120)
def test_a_worker_does_not_inherit_the_descriptors_of_other_executors(make_executor):
    def fds_of(ex):
        futures = [ex.submit(sleep_return, 0.3, i) for i in range(4)]  # both workers run
        assert [f.result(timeout=30) for f in futures] == list(range(4))
        assert wait_for(lambda: len(ex.worker_pids) == 2, timeout=30), ex.worker_pids
        workers = max(fd_count(pid) for pid in ex.worker_pids)
        return workers, fd_count(ex.fork_server_pid)

    lone = make_executor(max_workers=2)
    lone_worker, lone_server = fds_of(lone)
    lone.shutdown(wait=True)
    others = [make_executor(max_workers=2) for _ in range(2)]
    for other in others:
        check_works(other)  # their manager threads run, their epoll sets are in use
    ex = make_executor(max_workers=2)
    worker, server = fds_of(ex)
    for other in others:
        check_works(other)
    assert worker <= lone_worker, (worker, lone_worker)
    assert server <= lone_server, (server, lone_server)


@requires_fork
@linux_only
@pytest.mark.timeout(60)
def test_a_constructor_that_fails_leaves_no_descriptor_open(monkeypatch):
    with CowProcessPoolExecutor(max_workers=2) as warm_up:
        check_works(warm_up)
    del warm_up
    gc.collect()
    baseline = fd_count()

    def failing_fork():
        raise OSError("fork refused by the test")

    with monkeypatch.context() as patch:
        patch.setattr(os, "fork", failing_fork)
        with pytest.raises(OSError, match="fork refused"):
            CowProcessPoolExecutor(max_workers=2)
    counts = []

    def back_to_baseline():
        gc.collect()
        counts.append(fd_count())
        return counts[-1] <= baseline

    assert wait_for(back_to_baseline, timeout=2), (baseline, counts[-1])
    with CowProcessPoolExecutor(max_workers=2) as ex:  # and nothing else is broken
        check_works(ex)


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
