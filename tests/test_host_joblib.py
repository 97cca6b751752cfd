"""joblib's "cowfork" backend (cowmp.joblib_backend): registration whichever of joblib
and cowmp is imported first, parallel_config / parallel_backend, n_jobs=-1, nesting,
generators, errors with their remote traceback, cancellation, arguments shared by
reference, and scikit-learn giving the same scores as under joblib's default backend.

Every case runs in a fresh interpreter (conftest.run_script), and this module never
imports joblib itself: importing joblib imports numpy, whose OpenBLAS starts threads, and
every later fork of this test session would then warn (ForkWithThreadsWarning, an error
under this project's pytest settings).  For the same reason the module is skipped through
``importlib.util.find_spec`` rather than ``pytest.importorskip``, which imports.
``import cowmp`` installs the import hook (``cowmp.stdlib_patches.install()``); the
scripts also call ``cowmp.joblib_backend.install_import_hook()`` themselves, which is
idempotent, so that each case states the registration it relies on.
"""

from __future__ import annotations

import importlib.util
import textwrap

import pytest
from conftest import run_script

if importlib.util.find_spec("joblib") is None:
    pytest.skip("joblib is not installed (pip install 'cowmp[joblib]')",
                allow_module_level=True)

needs_sklearn = pytest.mark.skipif(importlib.util.find_spec("sklearn") is None,
                                   reason="scikit-learn is not installed")

HOOK = "joblib_backend.install_import_hook()  # as cowmp.stdlib_patches.install() did"
PRELUDE = """
import os
import sys
import threading
import time
import warnings

import psutil

import cowmp
from cowmp import joblib_backend

joblib_backend.install_import_hook()  # what cowmp.stdlib_patches.install() does

warnings.simplefilter("ignore", cowmp.ForkWithThreadsWarning)  # numpy's OpenBLAS threads
warnings.simplefilter("ignore", cowmp.SharingWarning)  # share() before 3.12


def children():
    \"\"\"Live descendants, loky's resource tracker (the fallback's) left out.\"\"\"
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in " ".join(
                    proc.cmdline()):
                found.append(proc.pid)
        except psutil.NoSuchProcess:
            pass
    return found


def no_children_within(seconds, besides=()):
    \"\"\"True once no child process is left (but those of ``besides``).\"\"\"
    deadline = time.monotonic() + seconds
    while set(children()) - set(besides):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def where(i):
    import multiprocessing

    return i * i, os.getpid(), multiprocessing.current_process().name


def check_runs_on_workers():
    from joblib import Parallel, delayed, parallel_config

    with parallel_config(backend="cowfork", n_jobs=2):
        out = Parallel()(delayed(where)(i) for i in range(8))
    assert [value for value, _, _ in out] == [i * i for i in range(8)], out
    assert all(pid != os.getpid() for _, pid, _ in out), out
    assert all(name.startswith("CowPoolWorker-") for _, _, name in out), out
    assert len({pid for _, pid, _ in out}) <= 2, out
    assert no_children_within(5), "the executor outlived its Parallel call"
"""


def run(body: str, *, before: str = "", hook: bool = True, timeout: float = 180):
    """Run ``before``, ``PRELUDE`` (without the import hook if not ``hook``) and ``body``
    (each dedented) in a fresh interpreter; fail with its output unless it exits 0 and
    prints OK last."""
    prelude = PRELUDE if hook else PRELUDE.replace(HOOK, "")
    code = "\n".join((textwrap.dedent(before), prelude, textwrap.dedent(body)))
    out = run_script(code, timeout=timeout)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip().splitlines()[-1] == "OK", out.stdout + out.stderr
    return out


# -- registration ---------------------------------------------------------------------------


def test_importing_the_module_imports_no_joblib():
    run("""
        assert "joblib" not in sys.modules, "cowmp imported joblib"
        assert not any(name == "numpy" for name in sys.modules)
        print("OK")
    """)


def test_cowmp_first_then_joblib_registers_when_joblib_loads():
    run("""
        joblib_backend.install_import_hook()  # twice: idempotent
        finders = [f for f in sys.meta_path if type(f).__name__ == "_JoblibFinder"]
        assert len(finders) == 1, sys.meta_path
        assert "joblib" not in sys.modules

        import inspect

        import joblib
        from joblib.parallel import BACKENDS

        assert BACKENDS["cowfork"] is joblib_backend.CowforkBackend
        assert not any(type(f).__name__ == "_JoblibFinder" for f in sys.meta_path)
        # joblib.parallel is otherwise untouched: its own loader, its source found
        for loader in (joblib.parallel.__loader__, joblib.parallel.__spec__.loader):
            assert type(loader) is type(joblib.__loader__), loader
        assert "def register_parallel_backend" in inspect.getsource(joblib.parallel)

        if __name__ == "__main__":
            check_runs_on_workers()
            print("OK")
    """)


def test_joblib_first_then_cowmp_registers_at_once():
    run(before="""
        import sys

        import joblib
        from joblib.parallel import BACKENDS

        assert "cowfork" not in BACKENDS
    """, body="""
        assert BACKENDS["cowfork"] is joblib_backend.CowforkBackend
        assert not any(type(f).__name__ == "_JoblibFinder" for f in sys.meta_path)

        if __name__ == "__main__":
            check_runs_on_workers()
            print("OK")
    """)


def test_explicit_registration_is_idempotent():
    run(hook=False, before="""
        import joblib
        from joblib.parallel import BACKENDS

        from cowmp.joblib_backend import register

        cls = register()
        assert register() is cls and BACKENDS["cowfork"] is cls
        assert cls.__module__ == "cowmp.joblib_backend" and cls.__name__ == "CowforkBackend"
        import pickle

        copy = pickle.loads(pickle.dumps(cls(nesting_level=1, task_timeout=5)))
        assert type(copy) is cls and copy.nesting_level == 1
    """, body="""
        if __name__ == "__main__":
            check_runs_on_workers()
            print("OK")
    """)


def test_import_cowmp_alone_registers_once_stdlib_patches_installs_the_hook():
    out = run_script("""
        import sys

        import cowmp

        if "cowmp.joblib_backend" not in sys.modules:
            print("NOT WIRED")
            raise SystemExit(0)
        import joblib
        from joblib.parallel import BACKENDS

        assert BACKENDS["cowfork"].__name__ == "CowforkBackend"
        print("OK")
    """)
    assert out.returncode == 0, out.stdout + out.stderr
    if out.stdout.strip() == "NOT WIRED":
        pytest.skip("cowmp.stdlib_patches.install() does not call "
                    "joblib_backend.install_import_hook() yet")
    assert out.stdout.strip() == "OK"


def test_register_without_joblib_names_the_extra():
    run("""
        import importlib.abc

        class NoJoblib(importlib.abc.MetaPathFinder):
            def find_spec(self, fullname, path, target=None):
                if fullname == "joblib" or fullname.startswith("joblib."):
                    raise ModuleNotFoundError(f"No module named {fullname!r}")
                return None

        sys.meta_path.insert(0, NoJoblib())
        try:
            joblib_backend.register()
        except ImportError as error:
            assert "cowmp[joblib]" in str(error), error
        else:
            raise AssertionError("register() without joblib did not fail")
        print("OK")
    """)


# -- the backend ----------------------------------------------------------------------------


def test_parallel_config_parallel_backend_and_n_jobs():
    run("""
        import joblib
        from joblib import Parallel, delayed, parallel_backend, parallel_config

        if __name__ == "__main__":
            cpus = joblib.cpu_count()
            with parallel_backend("cowfork"):  # n_jobs=-1 by default
                assert joblib.effective_n_jobs() == cpus
                out = Parallel()(delayed(where)(i) for i in range(4))
                assert [v for v, _, _ in out] == [0, 1, 4, 9]
                assert all(pid != os.getpid() for _, pid, _ in out)
            with parallel_config(backend="cowfork", n_jobs=-1):
                assert joblib.effective_n_jobs() == cpus
                assert joblib.effective_n_jobs(-2) == max(cpus - 1, 1)
                out = Parallel()(delayed(where)(i) for i in range(4))
                assert all(pid != os.getpid() for _, pid, _ in out)
            with parallel_config(backend="cowfork"):  # n_jobs unset: 1, in this process
                out = Parallel()(delayed(where)(i) for i in range(3))
                assert all(pid == os.getpid() for _, pid, _ in out)
            out = Parallel(n_jobs=-1, backend="cowfork")(delayed(where)(i) for i in range(3))
            assert [v for v, _, _ in out] == [0, 1, 4]
            assert no_children_within(5)
            # joblib's own report names the backend
            with parallel_config(backend="cowfork", n_jobs=2, verbose=5):
                Parallel()(delayed(where)(i) for i in range(2))
            print("OK")
    """)


def test_backend_options_reach_the_executor():
    run("""
        from joblib import Parallel, delayed, parallel_config

        def pid(i):
            return os.getpid()

        if __name__ == "__main__":
            with parallel_config(backend="cowfork", n_jobs=2, max_tasks_per_child=1):
                pids = Parallel(batch_size=1)(delayed(pid)(i) for i in range(6))
            assert len(set(pids)) == 6, pids  # a worker per task
            with parallel_config(backend="cowfork", n_jobs=2, task_timeout=0.5):
                try:
                    Parallel()(delayed(time.sleep)(s) for s in (0.0, 5.0))
                except cowmp.TaskTimeoutError:
                    pass
                else:
                    raise AssertionError("task_timeout was not applied")
            try:  # Parallel takes backend options since joblib 1.4
                parallel = Parallel(n_jobs=2, backend="cowfork", batch_size=1,
                                    max_tasks_per_child=1)
            except TypeError as error:
                assert "max_tasks_per_child" in str(error), error
            else:
                pids = parallel(delayed(pid)(i) for i in range(4))
                assert len(set(pids)) == 4, pids
            try:
                parallel_config(backend="cowfork", max_nbyte=3)
            except TypeError as error:
                assert "max_nbyte" in str(error)
            else:
                raise AssertionError("an unknown option was accepted")
            print("OK")
    """)


def test_nested_calls_fall_back_to_threads_then_sequential_as_under_loky():
    run("""
        from joblib import Parallel, delayed, parallel_config
        from joblib.parallel import get_active_backend

        def leaf(i):
            backend, _ = get_active_backend()
            return os.getpid(), type(backend).__name__, backend.nesting_level

        def middle(i):
            backend, _ = get_active_backend()
            inner = Parallel(n_jobs=2)(delayed(leaf)(j) for j in range(3))
            return os.getpid(), type(backend).__name__, backend.nesting_level, inner

        def outer(i):
            backend, _ = get_active_backend()
            inner = Parallel(n_jobs=2)(delayed(middle)(j) for j in range(2))
            return os.getpid(), type(backend).__name__, backend.nesting_level, inner

        def shape(result):
            _, name, level, inner = result
            return name, level, [(n, lv, [(x[1], x[2]) for x in sub]) for _, n, lv, sub in inner]

        def explicit(i):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                inner = Parallel(n_jobs=2, backend="cowfork")(delayed(leaf)(j) for j in range(3))
            return os.getpid(), inner, [str(w.message) for w in caught]

        if __name__ == "__main__":
            shapes = {}
            for backend in ("loky", "cowfork"):
                with parallel_config(backend=backend, n_jobs=2):
                    out = Parallel()(delayed(outer)(i) for i in range(2))
                for pid, _, _, inner in out:
                    assert pid != os.getpid()
                    # the nested levels ran in the worker (threads, then sequential)
                    assert all(p == pid for p, _, _, _ in inner), out
                shapes[backend] = [shape(result) for result in out]
            assert shapes["cowfork"] == shapes["loky"], shapes
            # in a task: threads; in those threads' tasks: sequential
            assert shapes["cowfork"][0][:2] == ("ThreadingBackend", 1), shapes
            assert shapes["cowfork"][0][2][0][:2] == ("SequentialBackend", 2), shapes
            # an explicit cowfork call inside a worker runs there, sequentially, and says so
            out = Parallel(n_jobs=2, backend="cowfork")(delayed(explicit)(i) for i in range(2))
            for pid, inner, messages in out:
                assert [p for p, _, _ in inner] == [pid] * 3, out
                assert any("daemonic" in m for m in messages), messages
            print("OK")
    """)


def test_return_as_generator_and_generator_unordered():
    run("""
        import types

        from joblib import Parallel, delayed

        def slow(i, seconds):
            time.sleep(seconds)
            return i

        if __name__ == "__main__":
            gen = Parallel(n_jobs=2, backend="cowfork", return_as="generator")(
                delayed(slow)(i, 0.02) for i in range(10))
            assert isinstance(gen, types.GeneratorType)
            assert next(gen) == 0
            assert list(gen) == list(range(1, 10))
            assert no_children_within(5)
            try:
                unordered = Parallel(n_jobs=2, backend="cowfork", batch_size=1,
                                     return_as="generator_unordered")
            except ValueError:  # joblib before 1.4
                print("generator_unordered: not in this joblib")
            else:
                out = list(unordered(delayed(slow)(i, s) for i, s in enumerate((1.0, 0, 0))))
                assert sorted(out) == [0, 1, 2] and out[-1] == 0, out
            print("OK")
    """)


def test_an_error_is_raised_with_its_remote_traceback():
    run("""
        import traceback

        from joblib import Parallel, delayed

        def boom(i):
            if i == 3:
                raise ValueError(f"task {i} failed")
            return i

        if __name__ == "__main__":
            try:
                Parallel(n_jobs=2, backend="cowfork")(delayed(boom)(i) for i in range(8))
            except ValueError as error:
                assert str(error) == "task 3 failed"
                cause = error.__cause__
                assert type(cause).__name__ == "RemoteTraceback", repr(cause)
                assert "in boom" in str(cause), str(cause)
                assert 'raise ValueError(f"task {i} failed")' in str(cause), str(cause)
                shown = "".join(traceback.format_exception(error))
                assert "in boom" in shown and "ValueError: task 3 failed" in shown
            else:
                raise AssertionError("no error")
            assert no_children_within(5)
            print("OK")
    """)


def test_first_error_cancels_the_rest_and_the_backend_stays_usable():
    run("""
        from joblib import Parallel, delayed

        def task(i, path):
            with open(path, "a") as file:
                file.write(f"{i}\\n")
            if i == 1:
                raise RuntimeError("stop")
            time.sleep(0.3)
            return i

        def started(path):
            try:
                with open(path) as file:
                    return len(file.read().split())
            except FileNotFoundError:
                return 0

        if __name__ == "__main__":
            import tempfile

            tmp = tempfile.mkdtemp()
            path = os.path.join(tmp, "a")
            try:
                Parallel(n_jobs=2, backend="cowfork")(delayed(task)(i, path) for i in range(40))
            except RuntimeError as error:
                assert str(error) == "stop"
            else:
                raise AssertionError("no error")
            assert started(path) < 20, started(path)  # the rest never started
            assert no_children_within(5), "the workers were not terminated"

            # a generator dropped early: its tasks are cancelled, its workers end
            path = os.path.join(tmp, "b")
            gen = Parallel(n_jobs=2, backend="cowfork", return_as="generator")(
                delayed(task)(i, path) for i in range(2, 42))
            assert next(gen) == 2
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                gen.close()
            assert any("cancelled" in str(w.message) for w in caught), caught
            assert started(path) < 20, started(path)
            assert no_children_within(5), "the workers of a closed generator go on"

            # a managed backend (with Parallel(...)) is ready again after an error
            path = os.path.join(tmp, "c")
            with Parallel(n_jobs=2, backend="cowfork") as parallel:
                try:
                    parallel(delayed(task)(i, path) for i in range(40))
                except RuntimeError:
                    pass
                assert parallel(delayed(abs)(-i) for i in range(4)) == [0, 1, 2, 3]
            assert started(path) < 20, started(path)
            assert no_children_within(5)

            # a timeout aborts the call
            try:
                Parallel(n_jobs=2, backend="cowfork", timeout=0.5)(
                    delayed(time.sleep)(s) for s in (5, 5, 5))
            except Exception as error:
                assert "Timeout" in type(error).__name__, repr(error)
            else:
                raise AssertionError("no timeout")
            assert no_children_within(5)

            # and a later call works
            assert Parallel(n_jobs=2, backend="cowfork")(
                delayed(abs)(-i) for i in range(3)) == [0, 1, 2]
            print("OK")
    """)


@pytest.mark.quiet
def test_an_error_stops_the_call_promptly():
    run("""
        from joblib import Parallel, delayed

        def task(i):
            if i == 1:
                raise RuntimeError("stop")
            time.sleep(0.5)
            return i

        if __name__ == "__main__":
            start = time.perf_counter()
            try:
                Parallel(n_jobs=2, backend="cowfork")(delayed(task)(i) for i in range(40))
            except RuntimeError:
                pass
            aborted = time.perf_counter() - start  # 10 s if every task ran
            assert aborted < 3.0, aborted
            gen = Parallel(n_jobs=2, backend="cowfork", return_as="generator")(
                delayed(time.sleep)(5) for i in range(10))
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                gen.close()  # tasks of 5 s were running: the workers are terminated
            closed = time.perf_counter() - start
            assert closed < 2.0, closed
            print(f"aborted in {aborted:.2f} s, closed in {closed:.2f} s")
            print("OK")
    """)


def test_a_dead_worker_fails_the_call_and_the_next_call_works():
    run("""
        from joblib import Parallel, delayed

        def die(i):
            if i == 0:
                os._exit(3)
            return i

        if __name__ == "__main__":
            try:
                Parallel(n_jobs=2, backend="cowfork")(delayed(die)(i) for i in range(4))
            except cowmp.WorkerDiedError as error:
                assert "exit code 3" in str(error), error
            else:
                raise AssertionError("no error")
            assert Parallel(n_jobs=2, backend="cowfork")(
                delayed(die)(i) for i in range(1, 4)) == [1, 2, 3]
            print("OK")
    """)


# -- sharing ----------------------------------------------------------------------------------

SHARING = """
import numpy as np
from joblib import Parallel, delayed


def written():
    \"\"\"Bytes this process has passed to write() and its kin (every thread).\"\"\"
    with open("/proc/self/io") as file:
        for line in file:
            if line.startswith("wchar:"):
                return int(line.split()[1])


def probe(x, box):
    import cowmp

    inside = box["x"]
    return (x.__array_interface__["data"][0], cowmp.is_shared(x), inside is x,
            float(x[-1]))
"""


def test_shared_arguments_travel_by_reference():
    run(before=SHARING, body="""
        if __name__ == "__main__":
            big = cowmp.share(np.arange(4_000_000, dtype=float))  # 30.5 MiB
            plain = np.arange(4_000_000, dtype=float)
            address = big.__array_interface__["data"][0]
            sizes = {}
            for name, x in (("shared", big), ("plain", plain)):
                before = written()
                out = Parallel(n_jobs=2, backend="cowfork")(
                    delayed(probe)(x, {"x": x}) for _ in range(6))
                sizes[name] = written() - before
                assert all(last == 3_999_999.0 for *_, last in out)
                if name == "plain" or cowmp.FALLBACK:  # by value: a copy in each worker
                    assert not any(shared for _, shared, _, _ in out), out
                    assert all(addr != x.__array_interface__["data"][0]
                               for addr, *_ in out), out
                else:  # the very array the fork server inherited, also inside a dict
                    assert all(addr == address and shared and same
                               for addr, shared, same, _ in out), out
            print(sizes)
            if cowmp.FALLBACK:  # spawned workers: nothing is shared
                assert sizes["shared"] > 6 * big.nbytes, sizes
            else:
                assert sizes["shared"] < 2**20, sizes  # a few bytes per task
                assert sizes["plain"] > 6 * plain.nbytes, sizes
            print("OK")
    """)


def test_a_large_argument_pickled_per_task_gets_one_warning():
    run(before=SHARING, body="""
        if __name__ == "__main__":
            size = joblib_backend.LARGE_ARGUMENT_BYTES // 8
            cases = {"plain": np.zeros(size), "shared": cowmp.share(np.zeros(size))}
            for name, x in cases.items():
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    Parallel(n_jobs=2, backend="cowfork")(
                        delayed(probe)(x, {"x": 1}) for _ in range(3))
                hints = [w for w in caught
                         if issubclass(w.category, joblib_backend.LargeArgumentWarning)]
                if name == "plain" and not cowmp.FALLBACK:
                    assert len(hints) == 1, [str(w.message) for w in caught]
                    assert "cowmp.share()" in str(hints[0].message)
                    assert "64 MiB (numpy.ndarray)" in str(hints[0].message)
                else:
                    assert hints == [], [str(w.message) for w in hints]
            print("OK")
    """)


# -- scikit-learn -----------------------------------------------------------------------------


@needs_sklearn
def test_sklearn_gives_the_same_scores_as_the_default_backend():
    run("""
        import numpy as np
        from joblib import parallel_config
        from sklearn.datasets import make_classification
        from sklearn.ensemble import RandomForestClassifier
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import GridSearchCV, cross_validate
        from sklearn.tree import DecisionTreeClassifier

        backend = joblib_backend.CowforkBackend
        calls = []
        configure = backend.configure

        def counting(self, *args, **kwargs):
            calls.append(kwargs.get("n_jobs"))
            return configure(self, *args, **kwargs)

        backend.configure = counting

        def run_all():
            X, y = make_classification(n_samples=400, n_features=12, random_state=0)
            cv = cross_validate(LogisticRegression(max_iter=500), X, y, cv=5, n_jobs=2)
            grid = GridSearchCV(DecisionTreeClassifier(random_state=0),
                                {"max_depth": [2, 4, 8]}, cv=3, n_jobs=2).fit(X, y)
            forest = RandomForestClassifier(n_estimators=16, n_jobs=2, random_state=0)
            probabilities = forest.fit(X, y).predict_proba(X)
            return (cv["test_score"], grid.best_params_,
                    grid.cv_results_["mean_test_score"], probabilities)

        if __name__ == "__main__":
            default = run_all()
            assert calls == []
            lokys = children()  # loky's workers, kept for its next call
            with parallel_config(backend="cowfork"):
                mine = run_all()
            assert len(calls) >= 3, calls  # cross_validate, GridSearchCV, the forest
            assert np.array_equal(mine[0], default[0]), (mine[0], default[0])
            assert mine[1] == default[1]
            assert np.array_equal(mine[2], default[2])
            assert np.array_equal(mine[3], default[3])
            assert no_children_within(5, besides=lokys)
            print("OK")
    """, timeout=300)


@needs_sklearn
def test_cross_validate_sends_a_shared_x_by_reference():
    run(before=SHARING, body="""
        from joblib import parallel_config
        from sklearn.linear_model import Ridge
        from sklearn.model_selection import cross_validate

        if __name__ == "__main__":
            rng = np.random.RandomState(0)
            X = rng.rand(80_000, 50)  # 30.5 MiB
            y = X @ rng.rand(50)
            reference = cross_validate(Ridge(), X, y, cv=5)["test_score"]  # in this process
            sizes = {}
            for name in ("plain", "shared"):
                if name == "shared":
                    cowmp.share(X)
                before = written()
                with parallel_config(backend="cowfork", n_jobs=2):
                    scores = cross_validate(Ridge(), X, y, cv=5)["test_score"]
                sizes[name] = written() - before
                assert np.array_equal(scores, reference), (scores, reference)
            print(sizes)
            if cowmp.FALLBACK:
                assert sizes["shared"] > 5 * X.nbytes, sizes
            else:
                assert sizes["plain"] > 5 * X.nbytes, sizes  # X pickled for each fold
                assert sizes["shared"] < X.nbytes / 4, sizes  # y and the results only
            print("OK")
    """, timeout=300)


@needs_sklearn
def test_openmp_in_workers_after_the_parent_used_it_does_not_hang():
    # GNU OpenMP keeps its pool across fork(): a forked child whose parent used it hangs in
    # its next parallel region with more than one thread.  The backend limits OpenMP to one
    # thread in its workers when the parent runs native threads.
    run("""
        import numpy as np
        from joblib import Parallel, delayed, parallel_config
        from sklearn.cluster import KMeans
        from sklearn.model_selection import cross_validate
        from threadpoolctl import threadpool_info

        def limits(i):
            return {(lib["user_api"], lib["num_threads"]) for lib in threadpool_info()}

        if __name__ == "__main__":
            import joblib

            X = np.random.RandomState(0).rand(20_000, 8)
            KMeans(4, n_init=2, random_state=0).fit(X)  # OpenMP threads in this process
            mine = limits(0)
            # two threads allowed, which OpenMP must not take after a fork
            with parallel_config(backend="cowfork", n_jobs=2, inner_max_num_threads=2):
                scores = cross_validate(KMeans(4, n_init=2, random_state=0), X, cv=3)
                seen = set().union(*Parallel()(delayed(limits)(i) for i in range(2)))
            assert len(scores["test_score"]) == 3
            assert limits(0) == mine, (limits(0), mine)  # this process's pools as they were
            if not cowmp.FALLBACK:
                assert ("openmp", 1) in seen, seen
            assert all(count <= 2 for api, count in seen if api == "blas"), seen
            with parallel_config(backend="cowfork", n_jobs=2):  # as loky's workers get
                seen = set().union(*Parallel()(delayed(limits)(i) for i in range(2)))
            blas = max(joblib.cpu_count() // 2, 1)
            assert all(count <= blas for api, count in seen if api == "blas"), seen
            print("OK")
    """, timeout=120)
