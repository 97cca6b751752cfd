"""The cowfork context, cowmp's default context, and their registration in multiprocessing."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import sys

import pytest
from conftest import requires_fork, run_script

import cowmp
from cowmp.context import CowForkContext


def test_get_context_cowfork_is_registered_with_multiprocessing():
    ctx = cowmp.get_context("cowfork")
    assert isinstance(ctx, CowForkContext)
    assert ctx.get_start_method() == "cowfork"
    assert multiprocessing.get_context("cowfork") is ctx


def test_default_context_is_cowfork_first_in_start_methods():
    assert cowmp.get_context() is cowmp.get_context("cowfork")
    methods = cowmp.get_all_start_methods()
    assert methods[0] == "cowfork"
    assert "loky" in methods and "spawn" in methods
    assert len(methods) == len(set(methods))


def test_standard_names_return_standard_contexts():
    for name in multiprocessing.get_all_start_methods():
        assert cowmp.get_context(name) is multiprocessing.get_context(name)
    assert cowmp.get_context("loky").get_start_method() == "loky"


def test_unknown_method_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot find context for 'forky'"):
        cowmp.get_context("forky")


def test_every_multiprocessing_name_is_exported():
    missing = [n for n in multiprocessing.__all__ if not hasattr(cowmp, n)]
    assert missing == []
    assert set(multiprocessing.__all__) <= set(cowmp.__all__)
    # multiprocessing's submodules resolve too, for `import cowmp as multiprocessing`
    assert cowmp.pool.ThreadPool is multiprocessing.pool.ThreadPool
    assert cowmp.managers.SyncManager is multiprocessing.managers.SyncManager
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        cowmp.nonexistent  # noqa: B018


def test_cowmp_modules_do_not_hide_multiprocessing_submodules():
    """``import cowmp as multiprocessing``: ``multiprocessing.<submodule>.<name>`` works
    for every submodule, including those whose name a cowmp module has (it delegates)."""
    import importlib
    import pkgutil

    hidden = []
    for info in pkgutil.iter_modules(multiprocessing.__path__):
        try:
            standard = importlib.import_module(f"multiprocessing.{info.name}")
        except ImportError:  # a platform's own (popen_spawn_win32...)
            continue
        ours = getattr(cowmp, info.name)
        for name in getattr(standard, "__all__", []):
            if not hasattr(ours, name):
                hidden.append(f"{info.name}.{name}")
    assert hidden == []


def test_importing_cowmp_changes_no_standard_default():
    out = run_script("""
        import multiprocessing
        before = multiprocessing.get_start_method(allow_none=True)
        import cowmp
        assert multiprocessing.get_start_method(allow_none=True) == before, before
        assert cowmp.get_start_method() == "cowfork"
        print("ok")
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_set_and_get_start_method_as_in_multiprocessing():
    out = run_script("""
        import cowmp
        cowmp.set_start_method("spawn")
        assert cowmp.get_start_method() == "spawn"
        try:
            cowmp.set_start_method("cowfork")
        except RuntimeError as e:
            assert "already been set" in str(e)
        else:
            raise AssertionError("second set_start_method must fail without force")
        cowmp.set_start_method("cowfork", force=True)
        assert cowmp.get_start_method() == "cowfork"
        assert cowmp.get_all_start_methods()[0] == "cowfork"
        print("ok")
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def _double(x):
    return 2 * x


def test_drop_in_import_cowmp_as_multiprocessing():
    out = run_script("""
        import cowmp as multiprocessing

        def work(q, x):
            q.put((x, multiprocessing.current_process().name))

        if __name__ == "__main__":
            q = multiprocessing.Queue()
            ps = [multiprocessing.Process(target=work, args=(q, i), name=f"w{i}")
                  for i in range(3)]
            for p in ps: p.start()
            got = sorted(q.get(timeout=30) for _ in ps)
            for p in ps: p.join()
            assert got == [(0, "w0"), (1, "w1"), (2, "w2")], got
            assert [p.exitcode for p in ps] == [0, 0, 0]
            with multiprocessing.Pool(2) as pool:
                assert pool.map(abs, [-1, -2]) == [1, 2]
            print("ok")
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_multiprocessing_set_start_method_cowfork_after_import():
    out = run_script("""
        import multiprocessing, cowmp, gc

        def f(q):
            q.put((multiprocessing.get_start_method(), gc.isenabled()))

        if __name__ == "__main__":
            multiprocessing.set_start_method("cowfork")
            q = multiprocessing.Queue()
            p = multiprocessing.Process(target=f, args=(q,))
            p.start()
            print(q.get(timeout=30)); p.join()
            print(type(p._popen).__name__, getattr(p._popen, "cowmp_fallback", False))
    """)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "('cowfork', True)"
    assert lines[1] == f"Popen {cowmp.FALLBACK}"


def test_spawned_child_of_a_cowfork_default_parent_knows_cowfork():
    # spawn tells its child the parent's default method before importing anything
    out = run_script("""
        import multiprocessing, cowmp

        def f(q):
            q.put(multiprocessing.get_start_method())

        if __name__ == "__main__":
            multiprocessing.set_start_method("cowfork")
            for method in ("spawn", "forkserver"):
                ctx = multiprocessing.get_context(method)
                q = ctx.Queue()
                p = ctx.Process(target=f, args=(q,))
                p.start()
                print(method, q.get(timeout=60)); p.join()
                assert p.exitcode == 0
    """, timeout=180)
    assert out.returncode == 0, out.stderr
    # the child started (it fails in spawn.prepare without cowmp's fix) and, as the
    # standard library does, reports its own start method
    assert out.stdout.split() == ["spawn", "spawn", "forkserver", "forkserver"]


@requires_fork
def test_process_pool_executor_treats_cowfork_like_fork(ctx):
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        # workers are forked up front, never from the executor's manager thread
        assert ex._safe_to_dynamically_spawn_children is False
        assert list(ex.map(_double, range(10))) == [2 * i for i in range(10)]
        assert len(ex._processes) == 2
    if sys.version_info >= (3, 11):
        with pytest.raises(ValueError, match="max_tasks_per_child.*'cowfork'"):
            concurrent.futures.ProcessPoolExecutor(
                2, mp_context=ctx, max_tasks_per_child=3)


def test_process_pool_executor_keeps_other_contexts_unchanged():
    spawn = multiprocessing.get_context("spawn")
    ex = concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn)
    try:
        assert ex._safe_to_dynamically_spawn_children is True
    finally:
        ex.shutdown()


def test_multiprocessing_pool_with_cowfork_context(ctx):
    with multiprocessing.pool.Pool(2, context=ctx) as pool:
        assert pool.map(_double, range(20)) == [2 * i for i in range(20)]
        assert pool.apply_async(_double, (21,)).get(30) == 42
