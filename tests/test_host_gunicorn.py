"""cowmp.gunicorn with a real gunicorn on 127.0.0.1 (benchmarks/gunicorn_harness.py):
a preloaded application holding a large dict, 2 workers, requests that read all of it,
workers replaced after ``max_requests`` and by a HUP reload while clients keep sending.

Shown: no request fails; every worker ends through cowmp (the configuration's own
``worker_exit`` ran, the inherited heap was not torn down) where plain gunicorn tears it
down; on 3.12+ a worker's private memory stays a small part of what plain gunicorn's
workers copy; the module works as ``-c python:cowmp.gunicorn`` and warns in the log
when the application is not preloaded; a worker that fails to boot keeps its status, so
the arbiter stops as gunicorn means it to.  The figures: benchmarks/bench_gunicorn.py.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import psutil
import pytest
from conftest import ROOT, requires_fork

if importlib.util.find_spec("gunicorn") is None:
    pytest.skip("gunicorn is not installed (pip install 'cowmp[gunicorn]')",
                allow_module_level=True)

sys.path.insert(0, str(ROOT / "benchmarks"))
from gunicorn_harness import Server, expected_total, run_phases  # noqa: E402

import cowmp.gunicorn  # noqa: E402

pytestmark = requires_fork

#: before gunicorn 25, gthread workers drop requests while they restart, with cowmp or
#: without it (measured with 22.0.0 and 23.0.0: connections reset or closed unanswered)
GTHREAD_DROPS = int(importlib.metadata.version("gunicorn").split(".")[0]) < 25
GTHREAD = pytest.param("gthread", 2, marks=pytest.mark.skipif(
    GTHREAD_DROPS, reason="gunicorn < 25 drops gthread requests across restarts"))

ITEMS = 200_000  # about 30 MiB that a plain worker copies by reading
MiB = 1 << 20


def _clean_log(server: Server) -> None:
    log = server.log_text()
    for trouble in ("Traceback", "exited with code", "was sent", "ForkWithThreadsWarning"):
        assert trouble not in log, log


def _exited_workers(server: Server, result: dict) -> set[int]:
    return set(result["first"]) | set(result["restarted"])


@pytest.mark.parametrize("worker_class, threads", [("sync", 1), GTHREAD])
def test_workers_end_through_cowmp_across_restarts_and_reload(tmp_path, worker_class,
                                                               threads):
    server = Server(tmp_path, cowmp=True, items=ITEMS, worker_class=worker_class,
                    threads=threads, max_requests=15, user_hook=True, teardown_marker=True)
    with server:
        result = run_phases(server, restarts=2)
    assert server.proc.returncode == 0
    assert result["failures"] == [] and result["requests"] >= 30
    assert len(result["restarted"]) >= 2 and len(result["after_hup"]) >= 2
    every_worker = _exited_workers(server, result) | set(result["after_hup"])
    assert every_worker <= server.marked("exits")  # the configuration's worker_exit ran
    assert not every_worker & server.marked("torn")  # and the heap was not torn down
    _clean_log(server)


@pytest.mark.parametrize("worker_class, threads", [("sync", 1), GTHREAD])
def test_a_reload_lets_a_slow_request_finish_before_its_worker_ends(tmp_path, worker_class,
                                                                   threads):
    server = Server(tmp_path, cowmp=True, items=1000, worker_class=worker_class,
                    threads=threads, user_hook=True)
    answer: dict = {}
    with server:
        before = server.worker_pids()
        slow = threading.Thread(target=lambda: answer.update(server.get("/sleep/2")))
        slow.start()
        time.sleep(0.5)  # the request is in a worker now
        server.proc.send_signal(signal.SIGHUP)
        slow.join(60)
        deadline = time.monotonic() + 60
        while server.worker_pids() & before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not server.worker_pids() & before  # every old worker ended...
        assert answer["pid"] in before  # ...the one serving the slow request after it
    assert answer["total"] == expected_total(1000)
    assert before <= server.marked("exits")
    _clean_log(server)


def test_ctrl_c_stops_the_server_and_every_worker_ends_through_cowmp(tmp_path):
    # SIGINT is gunicorn's quick shutdown: workers get SIGQUIT and sys.exit(0) at once
    server = Server(tmp_path, cowmp=True, items=1000, user_hook=True, teardown_marker=True)
    server.start()
    workers = server.worker_pids()
    assert server.get()["total"] == expected_total(1000)
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(60) == 0
    server.stop()
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status()
                   != psutil.STATUS_ZOMBIE for pid in workers)
    assert workers <= server.marked("exits") and not workers & server.marked("torn")


def test_a_timed_out_worker_is_aborted_and_replaced(tmp_path):
    # past gunicorn's timeout the arbiter sends SIGABRT, and the worker raises
    # SystemExit(1) from the request it is stuck in
    server = Server(tmp_path, cowmp=True, items=1000, workers=1, teardown_marker=True,
                    extra_config="\ntimeout = 1\n")
    with server:
        stuck = server.worker_pids()
        with pytest.raises(OSError):
            server.get("/sleep/30", timeout=30)
        deadline = time.monotonic() + 30
        while server.worker_pids() & stuck and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.get()["pid"] not in stuck  # a replacement serves
    log = server.log_text()
    assert "WORKER TIMEOUT" in log and "SystemExit: 1" in log, log
    assert not stuck & server.marked("torn")  # it still ended through cowmp


def test_plain_gunicorn_workers_tear_their_heap_down(tmp_path):
    # the control: the same marker does see a teardown when cowmp does not end the worker
    server = Server(tmp_path, cowmp=False, items=10_000, max_requests=10, user_hook=True,
                    teardown_marker=True)
    with server:
        result = run_phases(server, restarts=1)
    assert result["failures"] == []
    # (a worker that the arbiter's SIGTERM reaches while it tears down dies of it there)
    killed = {int(pid) for pid in re.findall(r"Worker \(pid:(\d+)\) was sent", server.log_text())}
    exited = _exited_workers(server, result)
    assert exited <= server.marked("exits") and exited - killed <= server.marked("torn")
    assert len(exited - killed) >= 2


@pytest.mark.quiet
@pytest.mark.skipif(sys.version_info < (3, 12), reason="objects are immortal from 3.12")
def test_workers_that_read_everything_keep_sharing_it(tmp_path):
    private = {}
    for name, hooks in (("plain", False), ("cowmp", True)):
        with Server(tmp_path / name, cowmp=hooks, items=ITEMS, max_requests=15) as server:
            result = run_phases(server, restarts=2)
        assert result["failures"] == []
        private[name] = [uss for phase in ("first", "restarted", "after_hup")
                         for uss in result[phase].values()]
    # a plain worker copies the dict it reads (about 30 MiB); a cowmp worker almost none
    assert min(private["plain"]) > 20 * MiB, private
    assert max(private["cowmp"]) < min(private["plain"]) / 3, private


def test_the_module_is_a_configuration_and_warns_without_preload(tmp_path):
    from gunicorn.config import KNOWN_SETTINGS

    args = ["--workers", "2"]
    if any(setting.name == "control_socket" for setting in KNOWN_SETTINGS):
        args += ["--control-socket", str(tmp_path / "ctl")]  # gunicorn 25+: one per test
    server = Server(tmp_path, cowmp=False, items=1000, config="python:cowmp.gunicorn",
                    args=tuple(args))
    with server:
        workers = server.worker_pids()
        answered = {server.get()["pid"] for _ in range(4)}
    assert answered and answered <= workers
    assert cowmp.gunicorn.NOT_PRELOADED in server.log_text()
    _clean_log(server)


def test_a_worker_that_fails_to_boot_keeps_its_status(tmp_path):
    # gunicorn stops the arbiter when a worker exits with WORKER_BOOT_ERROR (3), with
    # cowmp's hooks as without them.  (The arbiter's own status is 3, or 1 when its
    # HaltServer is raised again while it stops: a race of gunicorn's, either way.)
    failing = "\n\ndef post_worker_init(worker):\n    raise RuntimeError('no database')\n"
    for name, hooks in (("plain", False), ("cowmp", True)):
        server = Server(tmp_path / name, cowmp=hooks, items=1000, extra_config=failing)
        server.start(ready=False)
        assert server.proc.wait(60) in (1, 3)
        server.stop()
        log = server.log_text()
        assert re.search(r"exited with code 3\b", log) and "Worker failed to boot" in log, log


def _readme_block(marker: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    found = [block for block in blocks if marker in block]
    assert len(found) == 1, f"the README has {len(found)} blocks with {marker!r}"
    return found[0]


def test_the_readmes_configuration_and_application_serve(tmp_path):
    # the README's gunicorn.conf.py and app.py, as they are, under a real gunicorn
    from gunicorn.config import KNOWN_SETTINGS

    (tmp_path / "gunicorn.conf.py").write_text(_readme_block("# gunicorn.conf.py"))
    (tmp_path / "app.py").write_text(_readme_block("# app.py, imported once by the arbiter"))
    args = ["--workers", "2"]
    if any(setting.name == "control_socket" for setting in KNOWN_SETTINGS):
        args += ["--control-socket", str(tmp_path / "ctl")]
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(tmp_path)]))
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", *args,
             "--bind", f"fd://{listener.fileno()}", "app:app"],
            cwd=tmp_path, env=env, pass_fds=[listener.fileno()],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        body = None
        deadline = time.monotonic() + 60
        while body is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/key-42",
                                            timeout=10) as answer:
                    body = answer.read()
            except OSError:
                time.sleep(0.1)
        assert body == b"value-42"
    finally:
        proc.send_signal(signal.SIGTERM)
        log, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, log
    assert log.count(" done") >= 2, log  # the configuration's worker_exit, in each worker
