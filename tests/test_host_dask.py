"""Dask's distributed (cowmp.dask): the worker plugin gives each Dask worker a cowmp
executor whose fork server loads the data once; annotated tasks run in its processes,
the others on Dask's threads; a killed process heals without Dask losing the task;
nothing is left running when the plugin is removed or the cluster closes.

Every cluster runs in a fresh interpreter (conftest.run_script): a Dask client and
cluster start threads, and this project's pytest settings make a fork beside them
(cowmp.ForkWithThreadsWarning) an error.  The scripts make that warning an error too, in
the client and, since the module is imported again by spawned Dask workers and by the
executors' fork servers, there as well.  The module is skipped through
``importlib.util.find_spec``, which imports nothing.  Argument checks and
:class:`cowmp.dask.RetryingExecutor` are tested in this process; importing distributed
imports NumPy where it is installed, whose OpenBLAS starts threads, so the pools made
here start their fork server as a new interpreter (``loader=``), never forking this one.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import signal
import textwrap
import time

import pytest
from conftest import run_script, wait_for
from executor_support import FailsToLoad, alive, all_gone

if importlib.util.find_spec("distributed") is None:
    pytest.skip("distributed is not installed (pip install 'cowmp[dask]')",
                allow_module_level=True)

import cowmp  # noqa: E402 - after the skip

PRELUDE = '''
import os
import signal
import sys
import threading
import time
import warnings

import psutil

import cowmp

warnings.simplefilter("error", cowmp.ForkWithThreadsWarning)


def start_cluster():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=2, processes=True,
                           host="127.0.0.1", dashboard_address=None)
    return cluster, Client(cluster)


def load(path, size):
    """The loader: records where it ran, returns the shared table."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\\n")
    return {str(i): str(i * 2) for i in range(size)}


def loads(path):
    with open(path) as f:
        return [int(line) for line in f.read().split()]


def where(_=None):
    """(pid, parent pid, thread name, multiprocessing name) of the running task."""
    import multiprocessing

    return (os.getpid(), os.getppid(), threading.current_thread().name,
            multiprocessing.current_process().name)


def children(dask_worker=None):
    """This process's live descendants (run on each Dask worker by client.run)."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except psutil.NoSuchProcess:
            pass
    return found


def executor_names(dask_worker):
    return tuple(sorted(dask_worker.executors))


def retried(dask_worker, name):
    return dask_worker.executors[name].retried


def rebuilt(dask_worker, name):
    return dask_worker.executors[name].rebuilt


def wait_until(predicate, seconds, what):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def wait_to_be_killed(marker):
    """First run: say where it runs and wait; later runs: return at once."""
    if not os.path.exists(marker):
        with open(marker + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(marker + ".tmp", marker)
        time.sleep(60)
    return "done", os.getpid()


def read_pid(marker):
    deadline = time.monotonic() + 30
    while not os.path.exists(marker):
        assert time.monotonic() < deadline, "the task never started"
        time.sleep(0.02)
    with open(marker) as f:
        return int(f.read())


def double(x):
    return 2 * x + len(cowmp.loaded())


def gone_within(pids, seconds):
    """True once none of ``pids`` exists, not even as a zombie."""
    deadline = time.monotonic() + seconds
    while True:
        left = [pid for pid in pids if psutil.pid_exists(pid)]
        if not left:
            return True
        if time.monotonic() > deadline:
            print("still there:", [(pid, psutil.Process(pid).status()) for pid in left
                                   if psutil.pid_exists(pid)])
            return False
        time.sleep(0.05)
'''


def run(body: str, tmp_path, timeout: float = 120):
    """``PRELUDE`` and ``body`` (which defines ``main()``) in a fresh interpreter, run as
    a script whose argument is ``tmp_path``; fail with its output unless it exits 0 and
    prints OK last, and unless any process warned of a fork beside threads."""
    code = "\n".join((PRELUDE, textwrap.dedent(body),
                      'if __name__ == "__main__":\n    main()\n    print("OK")\n'))
    out = run_script(code, timeout=timeout, args=(str(tmp_path),))
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip().splitlines()[-1] == "OK", out.stdout + out.stderr
    assert "ForkWithThreadsWarning" not in out.stderr, out.stderr
    return out


# -- imports --------------------------------------------------------------------------------


def test_importing_cowmp_imports_no_distributed():
    out = run_script("""
        import sys
        import cowmp

        assert "distributed" not in sys.modules and "dask" not in sys.modules
        assert "cowmp.dask" not in sys.modules
        print("OK")
    """)
    assert out.returncode == 0 and out.stdout.strip() == "OK", out.stdout + out.stderr


def test_without_distributed_the_module_says_what_to_install():
    out = run_script("""
        import sys
        sys.modules["distributed"] = None  # as if it were not installed

        try:
            import cowmp.dask
        except ImportError as error:
            print(error)
        else:
            print("imported")
    """)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "pip install 'cowmp[dask]'" in out.stdout, out.stdout


# -- on a cluster ---------------------------------------------------------------------------


def test_annotated_tasks_run_in_cowmp_processes_that_share_data_loaded_once(tmp_path):
    run("""
        def lookup(key):
            return cowmp.loaded()[key], where()


        def fails(key):
            raise KeyError(f"no {key}")


        def main():
            import dask
            from cowmp.dask import CowExecutorPlugin

            log = os.path.join(sys.argv[1], "loads")
            cluster, client = start_cluster()
            with cluster, client:
                client.register_plugin(CowExecutorPlugin(loader=load, loader_args=(log, 1000)))
                dask_pids = set(client.run(os.getpid).values())
                assert len(dask_pids) == 2
                assert len(loads(log)) == 2  # loaded when register_plugin returns
                # max_workers defaults to the worker's nthreads: 2 processes under a server
                wait_until(lambda: all(len(pids) == 3 for pids in client.run(children).values()),
                           10, "not 3 processes under each Dask worker")
                trees = client.run(children)

                with dask.annotate(executor="cowmp"):
                    one = client.submit(lookup, "21")
                    many = client.map(lookup, [str(i) for i in range(200)])
                    bad = client.submit(fails, "key")
                value, (pid, ppid, thread, name) = one.result(timeout=60)
                assert value == "42"
                results = client.gather(many)
                assert [value for value, _ in results] == [str(i * 2) for i in range(200)]

                servers = set(loads(log))
                runners = {pid, *(w[0] for _, w in results)}
                for pid, ppid, thread, name in [w for _, w in results]:
                    assert pid not in dask_pids and ppid in servers, (pid, ppid, servers)
                    assert name.startswith("CowPoolWorker-") and thread == "MainThread"
                    chain = [p.pid for p in psutil.Process(pid).parents()]
                    assert chain[0] in servers and chain[1] in dask_pids, chain
                assert {psutil.Process(s).ppid() for s in servers} == dask_pids
                assert runners <= {p for pids in trees.values() for p in pids}

                # the loader ran once per Dask worker however many tasks ran
                assert sorted(loads(log)) == sorted(servers) and len(servers) == 2

                # the error reaches the client with its type
                try:
                    bad.result(timeout=60)
                except KeyError as error:
                    assert error.args == ("no key",), error.args
                else:
                    raise AssertionError("no error")

                # not annotated: Dask's own threads, in the Dask worker process
                plain = client.gather(client.map(where, range(8), pure=False))
                assert all(pid in dask_pids for pid, _, _, _ in plain), plain
                assert all("Dask-Default-Threads" in thread for _, _, thread, _ in plain)
    """, tmp_path)


def test_a_killed_process_heals_and_dask_still_gets_the_result(tmp_path):
    run("""
        def main():
            import dask
            from cowmp.dask import CowExecutorPlugin

            tmp = sys.argv[1]
            log = os.path.join(tmp, "loads")
            cluster, client = start_cluster()
            with cluster, client:
                client.register_plugin(CowExecutorPlugin(loader=load, loader_args=(log, 10)))
                client.register_plugin(CowExecutorPlugin(name="strict", retries=0))
                dask_pids = client.run(os.getpid)
                processes = {pid for pids in client.run(children).values() for pid in pids}

                marker = os.path.join(tmp, "healed")
                with dask.annotate(executor="cowmp"):
                    future = client.submit(wait_to_be_killed, marker)
                victim = read_pid(marker)
                assert victim in processes and victim not in dask_pids.values()
                started = time.monotonic()
                os.kill(victim, signal.SIGKILL)
                status, runner = future.result(timeout=60)
                assert status == "done" and runner != victim, (status, runner, victim)
                assert time.monotonic() - started < 30
                assert not psutil.pid_exists(victim) or psutil.Process(
                    victim).status() == psutil.STATUS_ZOMBIE

                # the Dask workers were not restarted; exactly one task was run again
                assert client.run(os.getpid) == dask_pids
                assert sum(client.run(retried, name="cowmp").values()) == 1
                # the pool healed: 2 processes again (and the 3 of "strict"), the data
                # not loaded again
                wait_until(lambda: all(len(pids) == 6 for pids in client.run(children).values()),
                           10, "the pool did not heal")
                assert len(loads(log)) == 2
                with dask.annotate(executor="cowmp"):
                    assert client.gather(client.map(double, range(20))) == [
                        2 * x + 10 for x in range(20)]

                # retries=0: the death reaches the client as cowmp.WorkerDiedError
                marker = os.path.join(tmp, "strict")
                with dask.annotate(executor="strict"):
                    future = client.submit(wait_to_be_killed, marker)
                os.kill(read_pid(marker), signal.SIGKILL)
                try:
                    future.result(timeout=60)
                except cowmp.WorkerDiedError as error:
                    assert "SIGKILL" in str(error), error
                else:
                    raise AssertionError("no WorkerDiedError")
                assert sum(client.run(retried, name="strict").values()) == 0
                assert client.run(os.getpid) == dask_pids
    """, tmp_path)


def test_a_killed_fork_server_is_rebuilt_and_dask_still_gets_the_result(tmp_path):
    run("""
        def main():
            import dask
            from cowmp.dask import CowExecutorPlugin

            tmp = sys.argv[1]
            log = os.path.join(tmp, "loads")
            cluster, client = start_cluster()
            with cluster:
                with client:
                    client.register_plugin(CowExecutorPlugin(loader=load,
                                                             loader_args=(log, 10)))
                    dask_pids = client.run(os.getpid)
                    marker = os.path.join(tmp, "rebuilt")
                    with dask.annotate(executor="cowmp"):
                        future = client.submit(wait_to_be_killed, marker)
                    victim = read_pid(marker)
                    server = psutil.Process(victim).ppid()
                    assert server not in dask_pids.values() and server in loads(log)
                    os.kill(server, signal.SIGKILL)
                    status, runner = future.result(timeout=60)
                    assert status == "done" and runner != victim, (status, runner, victim)
                    assert gone_within([server, victim], 10)

                    # the Dask workers were not restarted; one pool was built again,
                    # and its fork server loaded the data
                    assert client.run(os.getpid) == dask_pids
                    assert sorted(client.run(rebuilt, name="cowmp").values()) == [0, 1]
                    assert len(loads(log)) == 3
                    assert psutil.Process(runner).ppid() == loads(log)[-1]
                    with dask.annotate(executor="cowmp"):
                        assert client.gather(client.map(double, range(20))) == [
                            2 * x + 10 for x in range(20)]
                    ours = [pid for pids in client.run(children).values() for pid in pids]
                    assert len(ours) == 6, ours  # a fork server and 2 processes each
            assert gone_within(ours + list(dask_pids.values()), 15)
    """, tmp_path)


def test_a_cluster_of_threads_in_the_client_process_runs_the_plugin_too(tmp_path):
    # processes=False: the Dask workers are threads of this process, which no nanny
    # started; the fork servers still get the nanny's thread counts, so that NumPy's
    # BLAS starts no thread in them before they fork (a ForkWithThreadsWarning, an error
    # in this script)
    run("""
        def task(x):
            return (x + len(cowmp.loaded()), os.getpid(),
                    os.environ.get("OPENBLAS_NUM_THREADS"), threading.active_count())


        def main():
            import dask
            from distributed import Client, LocalCluster
            from cowmp.dask import CowExecutorPlugin

            os.environ.pop("OPENBLAS_NUM_THREADS", None)
            log = os.path.join(sys.argv[1], "loads")
            with LocalCluster(n_workers=2, threads_per_worker=2, processes=False,
                              dashboard_address=None) as cluster, Client(cluster) as client:
                client.register_plugin(CowExecutorPlugin(loader=load, loader_args=(log, 7)))
                with dask.annotate(executor="cowmp"):
                    out = client.gather(client.map(task, range(12)))
                assert [x for x, _, _, _ in out] == [x + 7 for x in range(12)], out
                pids = {pid for _, pid, _, _ in out}
                assert os.getpid() not in pids and pids <= set(children()), out
                assert {blas for _, _, blas, _ in out} == {"1"}, out
                assert len(loads(log)) == 2 and "OPENBLAS_NUM_THREADS" not in os.environ
                ours = children()
            assert gone_within(ours, 15), "a process outlived the cluster"
    """, tmp_path)


def test_no_cowmp_process_is_left_after_the_cluster_closes(tmp_path):
    out = run("""
        def sleep(marker_dir, i):
            open(os.path.join(marker_dir, str(i)), "w").close()
            time.sleep(60)
            return i


        def main():
            import dask
            from cowmp.dask import CowExecutorPlugin

            cluster, client = start_cluster()
            client.register_plugin(CowExecutorPlugin())
            with dask.annotate(executor="cowmp"):
                running = client.map(sleep, [sys.argv[1]] * 4, range(4))
            wait_until(lambda: len(os.listdir(sys.argv[1])) == 4, 30, "tasks not started")
            dask_pids = list(client.run(os.getpid).values())
            ours = [pid for pids in client.run(children).values() for pid in pids]
            assert len(ours) == 6, ours  # a fork server and 2 processes per Dask worker
            started = time.monotonic()
            client.close()
            cluster.close()
            print(f"closed in {time.monotonic() - started:.2f} s")
            assert gone_within(ours + dask_pids, 15), "a process outlived the cluster"
            assert not any(future.status == "finished" for future in running)
            left = [" ".join(psutil.Process(pid).cmdline()) for pid in children()]
            assert all("resource_tracker" in command for command in left), left
    """, tmp_path)
    # the plugin ended its processes at once: the nanny did not have to kill the worker
    assert "still alive after" not in out.stderr, out.stderr


def test_removing_the_plugin_or_losing_a_dask_worker_leaves_no_process(tmp_path):
    run("""
        def count(key):
            return len(cowmp.loaded())


        def main():
            import dask
            from cowmp.dask import CowExecutorPlugin

            log = os.path.join(sys.argv[1], "loads")
            cluster, client = start_cluster()
            with cluster, client:
                plugin = CowExecutorPlugin(loader=load, loader_args=(log, 5))
                client.register_plugin(plugin)
                assert set(client.run(executor_names).values()) == {
                    ("actor", "cowmp", "default", "offload")}
                wait_until(lambda: sum(map(len, client.run(children).values())) == 6, 10,
                           "not 6 processes")
                ours = [pid for pids in client.run(children).values() for pid in pids]
                client.unregister_worker_plugin("cowmp")
                assert gone_within(ours, 10)
                assert set(client.run(executor_names).values()) == {
                    ("actor", "default", "offload")}
                assert all(not pids for pids in client.run(children).values())

                # again, then a Dask worker dies: its cowmp processes follow it
                client.register_plugin(plugin)
                assert len(loads(log)) == 4
                trees = client.run(children)
                victim_address, victim_tree = sorted(trees.items())[0]
                victim = client.run(os.getpid)[victim_address]
                os.kill(victim, signal.SIGKILL)
                assert gone_within([victim, *victim_tree], 15)
                # the nanny starts a new Dask worker, which sets the plugin up again
                deadline = time.monotonic() + 60
                while len(loads(log)) < 5 or len(client.run(os.getpid)) < 2:
                    assert time.monotonic() < deadline, loads(log)
                    time.sleep(0.1)
                with dask.annotate(executor="cowmp"):
                    assert client.gather(client.map(count, range(10))) == [5] * 10
    """, tmp_path)


def test_a_failing_loader_fails_the_registration(tmp_path):
    run("""
        def broken_loader():
            raise OSError("no data here")


        def main():
            from cowmp.dask import CowExecutorPlugin

            cluster, client = start_cluster()
            with cluster, client:
                try:
                    client.register_plugin(CowExecutorPlugin(loader=broken_loader))
                except Exception as error:
                    text = str(error)
                    assert "broken_loader" in text and "no data here" in text, text
                else:
                    raise AssertionError("registered")
                assert set(client.run(executor_names).values()) == {
                    ("actor", "default", "offload")}
                deadline = time.monotonic() + 10
                while any(client.run(children).values()):
                    assert time.monotonic() < deadline, client.run(children)
                    time.sleep(0.05)
    """, tmp_path)


# -- in this process: arguments and the retrying executor ------------------------------------


def _loader():
    return {"a": 1}


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"name": ""}, ValueError, "non-empty"),
    ({"name": 3}, TypeError, "name must be a str"),
    ({"name": "default"}, ValueError, "Dask's own executors"),
    ({"name": "offload"}, ValueError, "Dask's own executors"),
    ({"retries": -1}, ValueError, "retries must be >= 0"),
    ({"retries": 1.5}, TypeError, "retries must be an int"),
    ({"retries": True}, TypeError, "retries must be an int"),
    ({"max_workers": 0}, ValueError, "max_workers must be >= 1"),
    ({"max_workers": "2"}, TypeError, "max_workers must be an int"),
    ({"loader": "table.pkl"}, TypeError, "loader must be a callable"),
    ({"loader": _loader, "loader_args": 5}, TypeError, "loader_args must be a tuple"),
    ({"loader_args": (1,)}, ValueError, "without a loader"),
    ({"mp_context": None}, TypeError, "no mp_context"),
    ({"max_task_per_child": 3}, TypeError, "unexpected keyword argument"),
    ({"max_tasks_per_child": 0}, ValueError, "max_tasks_per_child must be >= 1"),
    ({"task_timeout": -1}, ValueError, "task_timeout must be a positive number"),
    ({"max_private_memory_per_child": "lots"}, ValueError, "cannot read 'lots'"),
    ({"initializer": 42}, TypeError, "initializer must be a callable"),
])
def test_the_plugin_checks_its_arguments(kwargs, error, match):
    from cowmp.dask import CowExecutorPlugin

    with pytest.raises(error, match=match):
        CowExecutorPlugin(**kwargs)


def test_the_plugin_pickles_without_its_executor():
    import cloudpickle

    from cowmp.dask import CowExecutorPlugin

    plugin = CowExecutorPlugin(name="tables", max_workers=3, loader=_loader, retries=2,
                               task_timeout=30, initargs=[1])
    assert plugin.name == "tables" and plugin.executor is None
    assert plugin.executor_options == {"task_timeout": 30, "initargs": (1,)}
    plugin._executor = object()  # as on a worker after setup: never sent
    for dumps, loads in ((pickle.dumps, pickle.loads),
                         (cloudpickle.dumps, cloudpickle.loads)):
        copy = loads(dumps(plugin))
        assert copy.executor is None and plugin.executor is not None
        assert (copy.name, copy.max_workers, copy.retries) == ("tables", 3, 2)
        assert copy.loader is _loader and copy.executor_options == plugin.executor_options


def _pool(workers, loader=None):
    """A pool whose fork server is a new interpreter, as the plugin's: importing
    distributed here may have imported NumPy, whose OpenBLAS threads make a fork of this
    process unsafe (and an error under this project's pytest settings)."""
    return cowmp.CowProcessPoolExecutor(workers, loader=loader or _no_data)


def _no_data():
    return None


def _die_first(marker_dir, name, value):
    """Kill this process the first time ``name`` runs; return ``value`` afterwards."""
    runs = _runs(marker_dir, name)
    with open(os.path.join(marker_dir, f"{name}.{runs}"), "w"):
        pass
    if runs == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    return value


def _raise(marker_dir):
    with open(os.path.join(marker_dir, f"raised.{time.monotonic_ns()}"), "w"):
        pass
    raise ValueError("the task's own error")


def _runs(marker_dir, name):
    return sum(entry.startswith(f"{name}.") for entry in os.listdir(marker_dir))


def test_retrying_executor_runs_a_task_again_after_its_process_died(tmp_path):
    from cowmp.dask import RetryingExecutor

    with _pool(2) as pool:
        ex = RetryingExecutor(pool, retries=1)
        assert ex.submit(_die_first, str(tmp_path), "a", 7).result(timeout=60) == 7
        assert _runs(tmp_path, "a") == 2 and ex.retried == 1
        # retries=0: the death passes through
        strict = RetryingExecutor(pool, retries=0)
        with pytest.raises(cowmp.WorkerDiedError):
            strict.submit(_die_first, str(tmp_path), "b", 8).result(timeout=60)
        assert _runs(tmp_path, "b") == 1 and strict.retried == 0
        # the task's own error is not retried
        with pytest.raises(ValueError, match="the task's own error"):
            ex.submit(_raise, str(tmp_path)).result(timeout=60)
        assert _runs(tmp_path, "raised") == 1 and ex.retried == 1
        assert list(ex.map(abs, [-1, -2, 3])) == [1, 2, 3]
        assert len(pool.worker_pids) == 2  # healed
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(abs, 1)


def test_retrying_executor_gives_up_after_its_retries(tmp_path):
    from cowmp.dask import RetryingExecutor

    def always_dies():
        os.kill(os.getpid(), signal.SIGKILL)

    with _pool(1) as pool:
        ex = RetryingExecutor(pool, retries=2)
        with pytest.raises(cowmp.WorkerDiedError):
            ex.submit(always_dies).result(timeout=60)
        assert ex.retried == 2


def _rebuilding(workers, built, loader=None):
    """A rebuild function: a new pool of ``workers`` each call, kept in ``built``."""
    def rebuild():
        built.append(_pool(workers, loader))
        return built[-1]
    return rebuild


def _processes_of(pool):
    return [pool.fork_server_pid, *pool.worker_pids]


def _kill_fork_server(pool):
    """SIGKILL the pool's fork server; return once its workers are gone too."""
    pids = _processes_of(pool)
    os.kill(pool.fork_server_pid, signal.SIGKILL)
    assert all_gone(pids, timeout=10), alive(pids)


def _fail_to_load():
    raise OSError("the data is gone")


def test_retrying_executor_rebuilds_a_pool_whose_fork_server_died(tmp_path):
    from executor_support import lines, mark_and_sleep, sleep_return

    from cowmp.dask import RetryingExecutor

    built = []
    first = _pool(2)
    ex = RetryingExecutor(first, retries=1, rebuild=_rebuilding(2, built))
    try:
        assert ex.submit(abs, -1).result(timeout=60) == 1
        old = _processes_of(first)
        # a task running when the server dies runs again on the new pool
        marks = tmp_path / "marks"
        running = ex.submit(mark_and_sleep, str(marks), 1.0, "slept")
        queued = [ex.submit(sleep_return, 0.1, i) for i in range(10)]
        assert wait_for(lambda: lines(marks), timeout=30), "the task never started"
        os.kill(first.fork_server_pid, signal.SIGKILL)
        assert running.result(timeout=60) == "slept"
        assert [f.result(timeout=60) for f in queued] == list(range(10))
        assert ex.rebuilt == 1 and ex.executor is built[0]
        assert len(lines(marks)) == 2 and ex.retried >= 1
        assert all_gone(old, timeout=10), alive(old)
        # killed while idle: the next task is submitted to the new pool
        _kill_fork_server(built[0])
        assert ex.submit(abs, -5).result(timeout=60) == 5
        assert ex.rebuilt == 2 and ex.executor is built[1]
        assert list(ex.map(abs, [-1, -2])) == [1, 2]
    finally:
        ex.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(abs, 1)
    assert all(all_gone(_processes_of(p), 10) for p in built if p.fork_server_pid)


def test_retrying_executor_does_not_rebuild_a_pool_that_never_worked():
    from concurrent.futures.process import BrokenProcessPool

    from cowmp.dask import RetryingExecutor

    # no rebuild: the broken pool's error passes, whatever the retries
    pool = _pool(1)
    ex = RetryingExecutor(pool, retries=3)
    assert ex.submit(abs, -1).result(timeout=60) == 1
    _kill_fork_server(pool)
    with pytest.raises(BrokenProcessPool):
        ex.submit(time.sleep, 0.5).result(timeout=60)
    assert ex.rebuilt == 0
    ex.shutdown()

    # the rebuilt pool cannot load its data: it is not built a third time
    built = []
    pool = _pool(1)
    ex = RetryingExecutor(pool, retries=3, rebuild=_rebuilding(1, built, _fail_to_load))
    assert ex.submit(abs, -1).result(timeout=60) == 1
    _kill_fork_server(pool)
    with pytest.raises(BrokenProcessPool) as failed:
        ex.submit(abs, -2).result(timeout=60)
    with pytest.raises(BrokenProcessPool, match="before it completed any task"):
        ex.submit(abs, -3).result(timeout=60)
    assert ex.rebuilt == 1 and len(built) == 1, failed.value
    ex.shutdown()


def _unloadable_result():
    return FailsToLoad()  # pickles in the worker, fails to unpickle here


def test_retrying_executor_does_not_rebuild_for_a_result_that_cannot_be_rebuilt():
    from cowmp.dask import RetryingExecutor

    built = []
    with _pool(1) as pool:
        ex = RetryingExecutor(pool, retries=2, rebuild=_rebuilding(1, built))
        assert ex.submit(abs, -1).result(timeout=60) == 1
        # a TaskUnpicklingError is a BrokenProcessPool too, yet the pool works on
        with pytest.raises(cowmp.TaskUnpicklingError):
            ex.submit(_unloadable_result).result(timeout=60)
        assert ex.submit(abs, -2).result(timeout=60) == 2
        assert (ex.rebuilt, ex.retried, built) == (0, 0, [])
        assert ex.executor is pool


def test_retrying_executor_rebuilding_while_threads_submit_and_shut_down(tmp_path):
    """The fork server dies while four threads submit, and a fifth shuts down once the
    new pool is built: every future completes (a result, or an error saying the
    executor was shut down), one pool is built, and none is left running."""
    import threading
    from concurrent.futures import BrokenExecutor

    from cowmp.dask import RetryingExecutor

    built = []
    first = _pool(2)
    ex = RetryingExecutor(first, retries=2, rebuild=_rebuilding(2, built))
    assert ex.submit(abs, -1).result(timeout=60) == 1
    futures, refused, lock = [], [], threading.Lock()

    def submit_many(start):
        for i in range(start, start + 200):
            try:
                future = ex.submit(abs, -i)
            except RuntimeError as error:
                with lock:
                    refused.append(str(error))
                return
            with lock:
                futures.append((i, future))
            time.sleep(0.002)

    threads = [threading.Thread(target=submit_many, args=(n * 1000,)) for n in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.1)
    os.kill(first.fork_server_pid, signal.SIGKILL)
    assert wait_for(lambda: ex.rebuilt, timeout=30), "no pool was rebuilt"
    closer = threading.Thread(target=ex.shutdown)
    closer.start()
    for thread in [*threads, closer]:
        thread.join(60)
        assert not thread.is_alive()
    done = 0
    for i, future in futures:
        error = future.exception(timeout=60)
        if error is None:
            assert future.result() == i
            done += 1
        else:
            assert isinstance(error, (RuntimeError, BrokenExecutor)), repr(error)
    assert done > 0 and ex.rebuilt == 1 and len(built) == 1
    assert all("after shutdown" in text for text in refused), refused
    pids = _processes_of(first) + [pid for p in built for pid in _processes_of(p)]
    assert all_gone([pid for pid in pids if pid], timeout=10), alive(pids)


def test_retrying_executor_checks_its_arguments():
    from concurrent.futures import ThreadPoolExecutor

    from cowmp.dask import RetryingExecutor

    with pytest.raises(TypeError, match="cowmp.CowProcessPoolExecutor"):
        RetryingExecutor(object())
    with _pool(1) as pool, pytest.raises(TypeError, match="rebuild must be a callable"):
        RetryingExecutor(pool, rebuild=pool)
    with ThreadPoolExecutor(1) as threads, pytest.raises(TypeError, match="not Thread"):
        RetryingExecutor(threads)
    with _pool(1) as pool:
        with pytest.raises(ValueError, match="retries must be >= 0"):
            RetryingExecutor(pool, retries=-2)
