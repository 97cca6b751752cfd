"""CowProcessPoolExecutor(loader=...): the fork server starts as a new interpreter, loads
the data once, and forks every worker from that state.  Safe in a threaded parent (no
fork of the parent, no warning), the parent keeps none of the data, and the workers'
healing, timeouts and recycling work as with the snapshot fork server."""

from __future__ import annotations

import concurrent.futures as cf
import os
import threading
import warnings

import executor_support as support
import pytest
from conftest import requires_fork, wait_for
from executor_support import all_gone, kill_self, lines, ready_workers

import cowmp
from cowmp import CowProcessPoolExecutor

no_leftovers = support.no_leftovers


def load_table(size, log=None):
    """The loader: a table of ``size`` rows; each call is logged (one line per load)."""
    if log is not None:
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
    return {"rows": [(i, str(i)) for i in range(size)], "loader": os.getpid()}


def row(i):
    table = cowmp.loaded()
    return table["rows"][i], table["loader"], os.getpid()


def failing_loader():
    raise ValueError("no such table")


def sleep_then_row(seconds, i):
    import time

    time.sleep(seconds)
    return row(i)


@pytest.fixture
def threads_running():
    """A thread runs in this process meanwhile, as in a Jupyter kernel or a server."""
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, name="host-thread")
    thread.start()
    yield thread
    stop.set()
    thread.join()


@pytest.mark.timeout(120)
def test_workers_read_what_the_loader_returned_and_the_parent_keeps_none(tmp_path):
    log = tmp_path / "loads.txt"
    with CowProcessPoolExecutor(2, loader=load_table, loader_args=(1000, str(log))) as ex:
        results = list(ex.map(row, range(0, 1000, 7)))
        assert [value for value, _, _ in results] == [(i, str(i)) for i in range(0, 1000, 7)]
        loaders = {loader for _, loader, _ in results}
        workers = {pid for _, _, pid in results}
        assert os.getpid() not in workers
        pids = set(ex.worker_pids)
    assert workers <= pids
    if cowmp.FALLBACK:  # no fork server: each worker loaded its own
        assert loaders == workers
    else:  # loaded once, by the fork server, for every worker
        assert loaders == {int(line) for line in lines(log)} and len(lines(log)) == 1
        assert loaders.isdisjoint(workers) and os.getpid() not in loaders
    with pytest.raises(LookupError, match="no loaded data"):
        cowmp.loaded()


@requires_fork
@pytest.mark.timeout(120)
def test_a_threaded_parent_gets_no_fork_warning_and_its_threads_are_not_in_the_server(
        threads_running):
    with warnings.catch_warnings():
        warnings.simplefilter("error", cowmp.ForkWithThreadsWarning)
        with CowProcessPoolExecutor(2, loader=load_table, loader_args=(10,)) as ex:
            assert ex.submit(row, 3).result(timeout=60)[0] == (3, "3")
            server = ex.fork_server_pid
            import psutil

            assert psutil.Process(server).num_threads() == 1
            roles = {row.pid: row.role for row in ex.memory()}  # accounting as usual
            assert roles[server] == "fork server" and roles[os.getpid()] == "parent"
            assert sorted(pid for pid, role in roles.items() if role == "worker") == sorted(
                ex.worker_pids)


@requires_fork
@pytest.mark.timeout(120)
def test_a_replacement_worker_has_the_data_without_loading_it_again(tmp_path):
    log = tmp_path / "loads.txt"
    with CowProcessPoolExecutor(2, loader=load_table, loader_args=(100, str(log))) as ex:
        ready_workers(ex)
        before = set(ex.worker_pids)
        with pytest.raises(cowmp.WorkerDiedError):
            ex.submit(kill_self).result(timeout=60)
        assert wait_for(lambda: len(set(ex.worker_pids) - before) >= 1, timeout=30)
        results = [f.result(timeout=60) for f in [ex.submit(row, i) for i in range(20)]]
        assert [value for value, _, _ in results] == [(i, str(i)) for i in range(20)]
    assert len(lines(log)) == 1


@requires_fork
@pytest.mark.timeout(120)
def test_timeouts_and_recycling_work_with_a_loader():
    with CowProcessPoolExecutor(2, loader=load_table, loader_args=(10,),
                                max_tasks_per_child=2) as ex:
        late = ex.schedule(sleep_then_row, (30, 1), timeout=0.5)
        with pytest.raises(TimeoutError):
            late.result(timeout=60)
        pids = [f.result(timeout=60)[2] for f in [ex.submit(row, i) for i in range(8)]]
        assert len(set(pids)) >= 3  # workers replaced every two tasks, data still there


@pytest.mark.timeout(120)
def test_a_failing_loader_breaks_the_pool_with_a_message_that_names_it(capfd):
    ex = CowProcessPoolExecutor(2, loader=failing_loader)
    try:
        future = ex.submit(os.getpid)
        with pytest.raises(cf.process.BrokenProcessPool) as broken:
            future.result(timeout=60)
        message = str(broken.value)
        assert "failing_loader" in message or "initializer" in message
        if not cowmp.FALLBACK:
            assert "no such table" in message
    finally:
        pids = ex.worker_pids
        ex.shutdown(wait=True)
    assert all_gone(pids, 30)
    # and the loader's traceback is on stderr
    assert "ValueError: no such table" in capfd.readouterr().err


def test_the_loader_must_be_callable():
    with pytest.raises(TypeError, match="loader must be a callable"):
        CowProcessPoolExecutor(1, loader=42)


@requires_fork
def test_the_fork_server_runs_the_cowmp_that_the_parent_imported(tmp_path):
    # a copy of cowmp found only through the parent's own sys.path: the new interpreter
    # must import that one (not an installed one, and not fail)
    import shutil

    from conftest import run_script

    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(os.path.dirname(cowmp.__file__), elsewhere / "cowmp",
                    ignore=shutil.ignore_patterns("__pycache__"))
    run = run_script(f"""
        import sys
        sys.path.insert(0, {str(elsewhere)!r})
        import cowmp

        def where():
            import cowmp
            return cowmp.__file__

        def loaded(_):
            return cowmp.loaded()

        if __name__ == "__main__":
            with cowmp.CowProcessPoolExecutor(1, loader=where) as ex:
                print(cowmp.__file__ == ex.submit(loaded, 0).result(timeout=60))
        """, cwd=tmp_path)
    assert run.returncode == 0 and run.stdout.split() == ["True"], run.stderr


class EnvironLoader:
    """A loader whose fork server starts with defaults for its environment."""

    environ_defaults = {"COWMP_TEST_DEFAULT": "from the loader",
                        "COWMP_TEST_SET": "from the loader"}

    def __call__(self):
        return {key: os.environ.get(key) for key in self.environ_defaults}


def _environ_seen(_):
    return cowmp.loaded(), {key: os.environ.get(key) for key in EnvironLoader.environ_defaults}


@requires_fork  # without fork there is no fork server: the loader runs in each worker
@pytest.mark.timeout(120)
def test_a_loader_can_give_the_fork_server_defaults_for_its_environment(monkeypatch):
    monkeypatch.setenv("COWMP_TEST_SET", "from the parent")
    monkeypatch.delenv("COWMP_TEST_DEFAULT", raising=False)
    expected = {"COWMP_TEST_DEFAULT": "from the loader", "COWMP_TEST_SET": "from the parent"}
    with CowProcessPoolExecutor(2, loader=EnvironLoader()) as ex:
        # what the loader saw, and what the workers forked from it see
        assert ex.submit(_environ_seen, 0).result(timeout=60) == (expected, expected)
    assert "COWMP_TEST_DEFAULT" not in os.environ  # the parent's is untouched
