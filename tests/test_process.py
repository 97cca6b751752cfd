"""Starting cowfork processes: exit codes, lifetime rules, GC state, every factory."""

from __future__ import annotations

import gc
import os
import signal
import sys
import time

import pytest
from conftest import forks_next_to_threads, gone, requires_fork, run_script, wait_for

import cowmp


def _return():
    return "ignored"


def _sys_exit(code):
    sys.exit(code)


def _raise():
    raise KeyError("lost key")


def _sleep():
    time.sleep(60)


@pytest.mark.parametrize(
    "target,args,expected",
    [(_return, (), 0), (_sys_exit, (3,), 3), (_sys_exit, (None,), 0), (_raise, (), 1)],
)
def test_exit_codes_match_the_standard_library(ctx, target, args, expected, capfd):
    p = ctx.Process(target=target, args=args)
    p.start()
    p.join(30)
    assert p.exitcode == expected
    err = capfd.readouterr().err  # the child's stderr: the traceback of its exception only
    if target is _raise:
        assert "Traceback (most recent call last)" in err and "KeyError: 'lost key'" in err, err
    else:
        assert "Traceback" not in err, err


def test_killed_by_a_signal_reads_minus_signum(ctx):
    p = ctx.Process(target=_sleep)
    p.start()
    os.kill(p.pid, signal.SIGKILL)
    p.join(30)
    assert p.exitcode == -signal.SIGKILL
    q = ctx.Process(target=_sleep)
    q.start()
    q.terminate()
    q.join(30)
    assert q.exitcode == -signal.SIGTERM


def test_uncaught_exception_prints_the_traceback():
    out = run_script("""
        import cowmp
        def boom():
            raise ValueError("the child failed")
        if __name__ == "__main__":
            p = cowmp.Process(target=boom); p.start(); p.join(); print(p.exitcode)
    """)
    assert out.stdout.strip() == "1"
    assert "ValueError: the child failed" in out.stderr
    assert "Traceback" in out.stderr


def test_child_stdout_is_flushed_before_exit():
    # block-buffered stdout (a pipe): os._exit without a flush would lose this
    out = run_script("""
        import cowmp
        def speak():
            print("from the child", end="")
        if __name__ == "__main__":
            p = cowmp.Process(target=speak); p.start(); p.join()
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "from the child"


@requires_fork  # spawned children re-import the main module, which registers its own
def test_child_atexit_handlers_of_the_parent_do_not_run():
    out = run_script("""
        import atexit, os, cowmp
        atexit.register(lambda: print("atexit in", "parent" if os.getpid() == PARENT else "child"))
        PARENT = os.getpid()
        if __name__ == "__main__":
            p = cowmp.Process(target=print, args=("work",)); p.start(); p.join()
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["work", "atexit in parent"]


def test_non_daemon_children_are_joined_and_daemons_terminated_at_exit(tmp_path):
    joined = tmp_path / "joined.txt"
    out = run_script("""
        import time, cowmp
        def slow(path):
            time.sleep(1.0)
            open(path, "w").write("done")
        def forever():
            time.sleep(600)
        if __name__ == "__main__":
            import sys
            p = cowmp.Process(target=slow, args=(sys.argv[1],)); p.start()
            d = cowmp.Process(target=forever, daemon=True); d.start()
            print(d.pid, flush=True)
    """, args=(str(joined),))
    assert out.returncode == 0, out.stderr
    assert joined.read_text() == "done"  # written a second after the parent's last line
    daemon_pid = int(out.stdout.split()[0])
    assert wait_for(lambda: gone(daemon_pid), 10), f"daemon {daemon_pid} still runs"


def test_marker_file_written_by_joined_child(tmp_path):
    out = run_script(f"""
        import time, cowmp
        def slow():
            time.sleep(0.5)
            open({str(tmp_path / "m")!r}, "w").write("done")
        if __name__ == "__main__":
            cowmp.Process(target=slow).start()
    """)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "m").read_text() == "done"


def _gc_state(q):
    q.put((gc.isenabled(), gc.get_freeze_count()))


@requires_fork
def test_parent_freezes_before_fork_and_child_reenables_gc(ctx):
    q = ctx.Queue()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        p = ctx.Process(target=_gc_state, args=(q,))
        p.start()
        enabled, frozen = q.get(timeout=30)
        p.join(30)
    finally:
        if was_enabled:
            gc.enable()
    assert enabled is True
    assert frozen > 1000  # the whole inherited heap is in the permanent generation
    assert gc.get_freeze_count() > 1000


@requires_fork
def test_daemonic_process_cannot_have_children(ctx):
    def nested(q):
        try:
            ctx.Process(target=_return).start()
        except AssertionError as e:
            q.put(str(e))
    q = ctx.Queue()
    p = ctx.Process(target=nested, args=(q,), daemon=True)
    p.start()
    assert "daemonic processes are not allowed to have children" in q.get(timeout=30)
    p.join(30)


# --- every factory of the context makes objects that work in its children ---------------

def _use_primitives(lock, rlock, sem, bsem, cond, event, barrier, results):
    with lock:
        pass
    with rlock, rlock:
        pass
    sem.acquire()  # and kept: the parent finds it taken
    bsem.acquire()
    bsem.release()
    try:
        bsem.release()  # once more than acquired
    except ValueError:
        bounded = "bounded"
    else:
        bounded = "unbounded"
    with cond:
        cond.notify_all()
    event.set()
    barrier.wait(30)
    results.put(f"primitives ok, {bounded}")


def test_synchronization_factories_work_in_children(ctx):
    lock, rlock, sem, bsem = ctx.Lock(), ctx.RLock(), ctx.Semaphore(1), ctx.BoundedSemaphore(1)
    cond, event, barrier, results = ctx.Condition(), ctx.Event(), ctx.Barrier(2), ctx.Queue()
    p = ctx.Process(target=_use_primitives,
                    args=(lock, rlock, sem, bsem, cond, event, barrier, results))
    p.start()
    barrier.wait(30)
    assert event.wait(30)
    assert results.get(timeout=30) == "primitives ok, bounded"
    p.join(30)
    assert p.exitcode == 0
    if sys.platform != "darwin":  # where sem_getvalue() is not implemented
        assert sem.get_value() == 0
    assert sem.acquire(block=False) is False  # the child's acquire holds
    assert lock.acquire(block=False) and rlock.acquire(block=False)  # both released
    lock.release()
    rlock.release()


def _use_queues(q, jq, sq, conn, value, array, raw_value, raw_array):
    q.put(q.get() + 1)
    item = jq.get()
    jq.put(item * 10)
    jq.task_done()
    sq.put(sq.get() + "!")
    conn.send(conn.recv().upper())
    with value.get_lock():
        value.value += 1
    array[0] = 42.0
    raw_value.value = 7
    raw_array[1] = 9


@forks_next_to_threads  # the queues' feeder threads run (fork-safe: cowmp does not warn)
def test_queue_pipe_and_shared_memory_factories_work_in_children(ctx):
    q, jq, sq = ctx.Queue(), ctx.JoinableQueue(), ctx.SimpleQueue()
    here, there = ctx.Pipe()
    value, array = ctx.Value("i", 1), ctx.Array("d", 3)
    raw_value, raw_array = ctx.RawValue("i", 0), ctx.RawArray("i", 2)
    q.put(1)
    jq.put(5)
    sq.put("hi")
    here.send("hello")
    p = ctx.Process(target=_use_queues,
                    args=(q, jq, sq, there, value, array, raw_value, raw_array))
    p.start()
    assert here.recv() == "HELLO"
    p.join(30)
    assert p.exitcode == 0
    assert q.get(timeout=30) == 2
    assert jq.get(timeout=30) == 50
    assert sq.get() == "hi!"
    assert value.value == 2
    assert array[:] == [42.0, 0.0, 0.0]
    assert (raw_value.value, raw_array[:]) == (7, [0, 9])
    for queue in (q, jq):  # their feeder threads end here, not during a later test's fork
        queue.close()
        queue.join_thread()


def _use_manager_objects(d, lst, ns, lock):
    with lock:
        d["child"] = os.getpid()
        lst.append("child")
        ns.x = 3


def test_manager_works_with_cowfork_children(ctx):
    with ctx.Manager() as manager:
        d, lst, ns, lock = manager.dict(), manager.list(), manager.Namespace(), manager.Lock()
        p = ctx.Process(target=_use_manager_objects, args=(d, lst, ns, lock))
        p.start()
        p.join(30)
        assert p.exitcode == 0
        assert d["child"] == p.pid
        assert list(lst) == ["child"] and ns.x == 3


def _square(x):
    return x * x


def test_pool_factory(ctx):
    with ctx.Pool(2) as pool:
        assert pool.map(_square, range(50), chunksize=5) == [x * x for x in range(50)]
        assert sorted(pool.imap_unordered(_square, range(5))) == [0, 1, 4, 9, 16]


@forks_next_to_threads
def test_pool_replacing_workers_from_its_thread_warns_but_never_hangs(ctx, capfd):
    # Pool forks replacements from its worker-handler thread: a real fork-with-threads
    # case.  Even with the warning turned into an error (this suite's setting), the
    # handler thread must survive and the pool finish; the warning is then written to
    # stderr, naming the thread.
    with ctx.Pool(2, maxtasksperchild=2) as pool:
        assert sorted(pool.map(_square, range(10), chunksize=1)) == [x * x for x in range(10)]
    err = capfd.readouterr().err
    if cowmp.FALLBACK:  # nothing is forked
        assert "ForkWithThreadsWarning" not in err, err
    else:
        assert "ForkWithThreadsWarning (in thread 'Thread-" in err, err
        assert "_handle_workers)'): cowmp is forking process" in err, err


def test_no_leaked_semaphore_or_resource_warnings_at_exit():
    out = run_script("""
        import warnings, cowmp
        warnings.simplefilter("always")
        def use(*objs):
            pass
        if __name__ == "__main__":
            ctx = cowmp.get_context("cowfork")
            objs = [ctx.Lock(), ctx.RLock(), ctx.Semaphore(), ctx.BoundedSemaphore(),
                    ctx.Condition(), ctx.Event(), ctx.Barrier(1), ctx.Queue(),
                    ctx.JoinableQueue(), ctx.SimpleQueue(), ctx.Value("i"), ctx.Array("i", 2)]
            p = ctx.Process(target=use, args=objs); p.start(); p.join()
            assert p.exitcode == 0
            with ctx.Pool(2) as pool:
                pool.map(abs, range(4))
            with ctx.Manager() as m:
                m.list()
            print("ok")
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
    assert "leaked" not in out.stderr and "resource_tracker" not in out.stderr, out.stderr
    assert out.stderr == ""


@requires_fork
def test_child_registered_atexit_handlers_run_and_queue_feeders_flush(tmp_path):
    # 3.13 moved multiprocessing's exit function into the fork child's atexit pass
    marker = tmp_path / "atexit.txt"
    out = run_script(f"""
        import atexit, cowmp
        def work(q):
            atexit.register(lambda: open({str(marker)!r}, "w").write("child's own handler"))
            for i in range(1000):
                q.put(i)          # buffered in the feeder thread until the child leaves
        if __name__ == "__main__":
            ctx = cowmp.get_context("cowfork")
            q = ctx.Queue()
            p = ctx.Process(target=work, args=(q,)); p.start()
            print(sum(q.get(timeout=30) for _ in range(1000))); p.join()
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "499500"
    assert marker.read_text() == "child's own handler"


def _circular_del_into_queue(results):
    # the collector runs __del__, which puts into a queue.Queue, in the middle of another
    # put into it (a deadlock a blog post describes): fixed in CPython 3.7 and must stay so
    # in a child whose collector runs over a heap it inherited
    import queue

    q = queue.Queue()

    class Circular:
        def __init__(self):
            self.circular = self

        def __del__(self):
            q.put(1)

    for _ in range(20_000):
        Circular()
        q.put(2)
    results.put((q.qsize() > 20_000, gc.isenabled()))


def test_gc_running_a_del_that_puts_into_a_queue_during_a_put_does_not_deadlock(ctx):
    results = ctx.Queue()
    p = ctx.Process(target=_circular_del_into_queue, args=(results,))
    p.start()
    assert results.get(timeout=60) == (True, True)
    p.join(30)
    assert p.exitcode == 0
