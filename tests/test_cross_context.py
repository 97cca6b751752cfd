"""Synchronization objects and contexts: one context for everything, clear errors otherwise."""

from __future__ import annotations

import multiprocessing

import pytest
from conftest import requires_fork, run_script

import cowmp

# A blog post's program: an Event of one context passed to a Process of another.  On
# Python 3.10 with the standard library alone, the child dies of a segmentation fault.
MIXED_CONTEXTS = """
import multiprocessing as mp
import cowmp
from time import sleep


def wait_for_event(event):
    while not event.is_set():
        sleep(0.1)


def trigger_segment_fault():
    event = {make_event}
    p = {make_process}(target=wait_for_event, args=(event,))
    p.start()  # with mixed contexts, the child dies of a segfault on 3.10
    sleep(0.5)
    print(p)
    event.set()
    p.join(30)
    print("exitcode", p.exitcode)


if __name__ == "__main__":
    trigger_segment_fault()
"""


def _default_start_method_of_a_fresh_interpreter() -> str:
    """Asked in a fresh interpreter: here, asking would fix this process's default."""
    out = run_script("import multiprocessing; print(multiprocessing.get_start_method())")
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_event_of_the_default_fork_context_in_a_spawn_process_is_a_clear_error():
    default = _default_start_method_of_a_fresh_interpreter()
    if default != "fork":
        pytest.skip(f"the program's Event needs 'fork' as the default start method, "
                    f"not {default!r}")
    out = run_script(MIXED_CONTEXTS.format(make_event="mp.Event()",
                                           make_process='mp.get_context("spawn").Process'))
    assert out.returncode == 1, out.stdout + out.stderr
    assert "exitcode=-SIGSEGV" not in out.stdout and "Segmentation" not in out.stderr
    assert "ContextMismatchError" in out.stderr
    assert "created by the 'fork' context" in out.stderr
    assert "started by the 'spawn' context" in out.stderr


@pytest.mark.parametrize("method", ["spawn", "cowfork"])
def test_event_and_process_of_one_context_work_together(method):
    out = run_script(MIXED_CONTEXTS.format(
        make_event=f'cowmp.get_context("{method}").Event()',
        make_process=f'cowmp.get_context("{method}").Process'))
    assert out.returncode == 0, out.stderr
    assert "exitcode 0" in out.stdout


def _nothing(*args):
    pass


@requires_fork
@pytest.mark.parametrize("target", ["spawn", "forkserver", "loky"])
@pytest.mark.parametrize("factory", ["Lock", "RLock", "Semaphore", "BoundedSemaphore",
                                     "Condition", "Event", "Queue", "Barrier"])
def test_cowfork_objects_sent_to_a_spawning_context_fail_in_the_parent(ctx, target, factory):
    obj = getattr(ctx, factory)(2) if factory == "Barrier" else getattr(ctx, factory)()
    p = cowmp.get_context(target).Process(target=_nothing, args=(obj,))
    with pytest.raises(cowmp.ContextMismatchError) as info:
        p.start()
    assert "'cowfork' context" in str(info.value)
    assert f"'{target}' context" in str(info.value)
    assert isinstance(info.value, RuntimeError)  # what 3.11+ raise for 'fork'
    assert cowmp.active_children() == []


def test_fork_context_objects_sent_to_loky_fail_clearly():
    lock = multiprocessing.get_context("fork").Lock()
    p = cowmp.get_context("loky").Process(target=_nothing, args=(lock,))
    with pytest.raises(cowmp.ContextMismatchError, match="'fork' context.*'loky' context"):
        p.start()


def _use_lock(lock, q):
    with lock:
        q.put("locked")


@requires_fork
@pytest.mark.parametrize("lock_method", ["fork", "spawn", "forkserver", "cowfork"])
def test_cowfork_children_inherit_objects_of_every_context(ctx, lock_method):
    lock = cowmp.get_context(lock_method).Lock()
    q = ctx.Queue()
    p = ctx.Process(target=_use_lock, args=(lock, q))
    p.start()
    assert q.get(timeout=30) == "locked"
    p.join(30)
    assert p.exitcode == 0


@requires_fork
def test_cowfork_objects_work_in_standard_fork_children(ctx):
    lock, q = ctx.Lock(), ctx.Queue()
    p = multiprocessing.get_context("fork").Process(target=_use_lock, args=(lock, q))
    p.start()
    assert q.get(timeout=30) == "locked"
    p.join(30)
    assert p.exitcode == 0


FALLBACK_SCRIPT = """
import multiprocessing, os, cowmp

def work(q, ev, lock, x):
    with lock:
        q.put((x, os.getpid() != PARENT))
    ev.set()

PARENT = os.getppid() if multiprocessing.parent_process() else os.getpid()

if __name__ == "__main__":
    assert cowmp.FALLBACK
    ctx = cowmp.get_context("cowfork")
    assert ctx.get_start_method() == "cowfork" and not ctx.forks
    q, ev, lock = ctx.Queue(), ctx.Event(), ctx.Lock()
    p = ctx.Process(target=work, args=(q, ev, lock, 5)); p.start()
    print(q.get(timeout=60), ev.wait(60)); p.join(); print("exit", p.exitcode)
    square = lambda v: v * v          # a lambda of __main__: cloudpickle carries it
    p = ctx.Process(target=square, args=(3,)); p.start(); p.join(); print("lambda", p.exitcode)
    try:
        bad = ctx.Process(target=work, args=(q, ev, multiprocessing.get_context("fork").Lock(), 1))
        bad.start()
    except cowmp.ContextMismatchError as e:
        print("mismatch", "'fork' context" in str(e), "started by the 'cowfork'" in str(e))
"""


@pytest.mark.skipif(not hasattr(multiprocessing.context, "ForkContext"), reason="needs fork")
def test_forced_fallback_runs_on_loky_with_one_context():
    out = run_script(FALLBACK_SCRIPT, env={"COWMP_FORCE_FALLBACK": "1"}, timeout=180)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "(5, True) True", "exit 0", "lambda 0", "mismatch True True"]
