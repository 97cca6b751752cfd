"""cowmp.fork(), cowmp.exit() and install_fork_hooks(): the protocol for other process managers."""

from __future__ import annotations

import os
import sys

import pytest
from conftest import run_script

import cowmp

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _wait(pid):
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_fork_returns_pid_and_exit_code_reaches_parent():
    pid = cowmp.fork()
    if pid == 0:  # never back into pytest, whatever happens
        try:
            cowmp.exit(17)
        finally:
            os._exit(99)
    assert pid > 0
    assert _wait(pid) == 17


def test_exit_rejects_a_non_int_code_before_doing_anything():
    with pytest.raises(TypeError, match="int exit code, not str"):
        cowmp.exit("bye")
    with pytest.raises(TypeError, match="not float"):
        cowmp.exit(1.5)


def test_exit_flushes_stdio_runs_mp_finalizers_and_skips_atexit():
    out = run_script("""
        import atexit, cowmp, os
        from multiprocessing import util
        atexit.register(print, "parent's atexit handler")
        pid = cowmp.fork()
        if pid == 0:
            util.Finalize(None, print, args=("child finalizer",), exitpriority=1)
            print("child output", end=" ")
            cowmp.exit(0)
        _, status = os.waitpid(pid, 0)
        print("|", os.waitstatus_to_exitcode(status))
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "child output child finalizer", "| 0", "parent's atexit handler"]


def test_bare_fork_child_gets_its_own_multiprocessing_state():
    out = run_script("""
        import cowmp, os, time
        from multiprocessing import util
        PARENT = os.getpid()
        def sleeper():
            time.sleep(3)
        def finalizer():
            print("parent's finalizer ran in", "parent" if os.getpid() == PARENT else "child")
        if __name__ == "__main__":
            p = cowmp.Process(target=sleeper); p.start()
            util.Finalize(None, finalizer, exitpriority=1)
            pid = cowmp.fork()
            if pid == 0:
                # the parent's child is not ours to join, its finalizers not ours to run
                assert cowmp.active_children() == [], cowmp.active_children()
                c = cowmp.Process(target=print, args=("grandchild",)); c.start(); c.join()
                cowmp.exit(c.exitcode)
            _, status = os.waitpid(pid, 0)
            print("child exit", os.waitstatus_to_exitcode(status))
            p.terminate(); p.join()
    """)
    assert out.returncode == 0, out.stderr
    # the parent's finalizer runs once, in the parent, at its exit
    assert out.stdout.splitlines() == [
        "grandchild", "child exit 0", "parent's finalizer ran in parent"]


def test_normal_exit_of_a_bare_fork_child_keeps_its_exit_code():
    # without cowmp.exit, the inherited module data is pinned: the exit code is unchanged
    out = run_script("""
        import cowmp, os, sys
        data = {i: [i] for i in range(1000)}
        for code in (0, 5):
            pid = cowmp.fork()
            if pid == 0:
                print("bye", flush=True)
                sys.exit(code)
            _, status = os.waitpid(pid, 0)
            print(os.waitstatus_to_exitcode(status))
        pid = cowmp.fork()
        if pid == 0:
            raise RuntimeError("uncaught in child")
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status))
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["bye", "0", "bye", "5", "1"]
    assert "RuntimeError: uncaught in child" in out.stderr


def test_install_fork_hooks_applies_the_protocol_to_every_os_fork():
    out = run_script("""
        import gc, os, cowmp
        cowmp.install_fork_hooks()
        cowmp.install_fork_hooks()  # idempotent
        gc.disable()
        frozen_before = gc.get_freeze_count()
        r, w = os.pipe()
        pid = os.fork()              # a third-party fork: no cowmp call
        if pid == 0:
            os.write(w, f"{gc.isenabled()} {gc.get_freeze_count() > 1000}".encode())
            os._exit(0)
        os.waitpid(pid, 0)
        print(os.read(r, 100).decode(), gc.get_freeze_count() > frozen_before)
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "True"]


def test_sigterm_handler_of_bare_fork_children_leaves_through_cowmp_exit():
    # bare-fork children that inherit a big dict and are stopped with SIGTERM: their
    # handler leaves through cowmp.exit() and the parent reaps each with its exit status
    out = run_script("""
        import os, signal, time, cowmp

        def child(i, ready):
            def on_term(sig, frame):
                cowmp.exit(10 + i)
            signal.signal(signal.SIGTERM, on_term)
            os.write(ready, b"x")
            while True:
                time.sleep(1)

        if __name__ == "__main__":
            d = {i: i for i in range(100_000)}
            r, w = os.pipe()
            workers = []
            for i in range(3):
                pid = cowmp.fork()
                if pid == 0:
                    child(i, w)
                workers.append(pid)
            got = b""
            while len(got) < 3:          # every handler installed
                got += os.read(r, 3)
            for pid in workers:
                os.kill(pid, signal.SIGTERM)
            codes = sorted(os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in workers)
            print(codes)
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[10, 11, 12]"


@pytest.mark.skipif(not hasattr(os, "register_at_fork"), reason="needs os.register_at_fork")
@pytest.mark.parametrize("hooks", [
    # --py-call-uwsgi-fork-hooks: PyOS_BeforeFork, then PyOS_AfterFork_Parent or _Child
    "both",
    # --py-call-osafterfork: PyOS_AfterFork_Child alone, which CPython 3.13+ itself
    # cannot survive (it releases an import lock that was never taken: a fatal error)
    pytest.param("after", marks=pytest.mark.skipif(
        sys.version_info >= (3, 13), reason="CPython 3.13+ aborts without PyOS_BeforeFork")),
])
def test_a_fork_from_c_that_runs_pythons_fork_hooks_works(hooks):
    # uWSGI forks its workers from C and runs Python's fork hooks around the fork only
    # if told to, perhaps only the after-fork half: cowmp's hooks must work either way
    out = run_script("""
        import ctypes, os, sys
        import cowmp
        from cowmp import handles

        def square(x):
            return x * x

        if __name__ == "__main__":
            both = sys.argv[1] == "both"
            cowmp.install_fork_hooks()
            with cowmp.CowProcessPoolExecutor(1) as ex:  # descriptors to close in a child
                assert ex.submit(square, 3).result(timeout=60) == 9
                api, libc = ctypes.pythonapi, ctypes.PyDLL(None)  # the GIL held, as in C
                if both:
                    api.PyOS_BeforeFork()
                pid = libc.fork()
                if pid == 0:
                    try:
                        api.PyOS_AfterFork_Child()
                        with handles.lock:  # usable, and free
                            pass
                        with cowmp.CowProcessPoolExecutor(1) as mine:
                            assert mine.submit(square, 4).result(timeout=60) == 16
                        sys.stdout.flush()
                    finally:
                        os._exit(0 if sys.exc_info()[0] is None else 1)
                if both:
                    api.PyOS_AfterFork_Parent()
                _, status = os.waitpid(pid, 0)
                assert os.waitstatus_to_exitcode(status) == 0, status
                assert ex.submit(square, 5).result(timeout=60) == 25
            print("OK")
    """, args=(hooks,), timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "OK"
    assert "Exception ignored" not in out.stderr and "Traceback" not in out.stderr, out.stderr
