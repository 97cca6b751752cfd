"""cowmp.gunicorn's hooks without gunicorn: how a worker ends (status, atexit handlers,
no teardown), where the hook stands aside, and how apply() composes them with a
configuration's own hooks.  The real server: tests/test_host_gunicorn.py."""

from __future__ import annotations

import types

import pytest
from conftest import requires_fork, run_script

import cowmp.gunicorn as hooks

WORKER_EXIT = """
import atexit
import os
import sys

import cowmp.gunicorn


class TornDown:
    def __del__(self, _write=os.write):
        _write(1, b"torn down\\n")


MARKER = TornDown()
atexit.register(lambda: print("atexit ran", flush=True))


class Worker:
    pid = {pid}


def leave():
    {leave}


try:
    leave()
finally:
    cowmp.gunicorn.worker_exit(None, Worker())
    print("hook returned", flush=True)
"""


def _worker_exit(leave: str, pid: str = "os.getpid()"):
    return run_script(WORKER_EXIT.format(leave=leave, pid=pid))


@requires_fork
@pytest.mark.parametrize("leave, status", [
    ("sys.exit(0)", 0), ("sys.exit()", 0), ("sys.exit(3)", 3), ("sys.exit(-1)", 255)])
def test_a_worker_ends_with_its_status_after_atexit_without_teardown(leave, status):
    run = _worker_exit(leave)
    assert run.returncode == status, run.stderr
    assert "atexit ran" in run.stdout
    assert "torn down" not in run.stdout and "hook returned" not in run.stdout


@requires_fork
def test_a_message_as_exit_code_is_printed_and_gives_status_1():
    run = _worker_exit("sys.exit('no configuration')")
    assert run.returncode == 1 and "no configuration" in run.stderr
    assert "torn down" not in run.stdout


@requires_fork
def test_in_the_arbiter_the_hook_stands_aside():
    # gunicorn calls worker_exit in the arbiter for a worker found dead: not ours to end
    run = _worker_exit("sys.exit(5)", pid="os.getpid() + 1")
    assert run.returncode == 5
    assert "hook returned" in run.stdout and "torn down" in run.stdout


@requires_fork
def test_a_worker_failing_with_another_exception_leaves_the_usual_way():
    run = _worker_exit("raise ValueError('boom')")
    assert run.returncode == 1 and "ValueError: boom" in run.stderr
    assert "hook returned" in run.stdout and "torn down" in run.stdout


@pytest.fixture(autouse=True)
def installed(monkeypatch):
    """on_starting's install_fork_hooks() calls, kept out of this test process
    (os.register_at_fork cannot be undone)."""
    calls: list[int] = []
    monkeypatch.setattr(hooks.forking, "install_fork_hooks", lambda: calls.append(1))
    return calls


class _Server:
    def __init__(self, preload: bool) -> None:
        self.cfg = types.SimpleNamespace(preload_app=preload)
        self.warnings: list[str] = []
        self.log = types.SimpleNamespace(warning=self.warnings.append)


def test_on_starting_installs_the_fork_hooks_and_warns_when_the_app_is_not_preloaded(
        installed):
    server = _Server(preload=False)
    hooks.on_starting(server)
    assert server.warnings == [hooks.NOT_PRELOADED] and "--preload" in hooks.NOT_PRELOADED
    preloaded = _Server(preload=True)
    hooks.on_starting(preloaded)
    assert preloaded.warnings == [] and installed == [1, 1]


def test_apply_sets_cowmps_hooks_where_the_configuration_has_none():
    config: dict = {"workers": 4}
    hooks.apply(config)
    assert config == {"workers": 4, "on_starting": hooks.on_starting,
                      "worker_exit": hooks.worker_exit}


def test_apply_keeps_the_configurations_own_hooks_in_order():
    calls = []
    config = {"on_starting": lambda server: calls.append(("own start", server)),
              "worker_exit": lambda server, worker: calls.append(("own exit", worker))}
    hooks.apply(config)
    hooks.apply(config)  # a second apply changes nothing
    server = _Server(preload=True)
    config["on_starting"](server)
    assert calls == [("own start", server)]
    worker = types.SimpleNamespace(pid=-1)  # not this process: cowmp's part stands aside
    config["worker_exit"](server, worker)
    assert calls[-1] == ("own exit", worker) and len(calls) == 2


def test_apply_runs_cowmps_exit_even_when_the_own_hook_raises(monkeypatch):
    ended = []
    monkeypatch.setattr(hooks, "worker_exit", lambda server, worker: ended.append(worker))

    def failing(server, worker):
        raise RuntimeError("the configuration's hook failed")

    config = {"worker_exit": failing}
    hooks.apply(config)
    with pytest.raises(RuntimeError, match="hook failed"):
        config["worker_exit"](None, "w")
    assert ended == ["w"]


def test_apply_rejects_a_hook_that_is_not_a_function():
    with pytest.raises(TypeError, match="worker_exit is str, not a function"):
        hooks.apply({"worker_exit": "cleanup"})


def test_neither_cowmp_nor_its_hooks_import_gunicorn():
    run = run_script("""
        import sys
        import cowmp
        import cowmp.gunicorn
        print(sorted(name for name in sys.modules if name.split(".")[0] == "gunicorn"))
        """)
    assert run.returncode == 0 and run.stdout.strip() == "[]", run.stderr
