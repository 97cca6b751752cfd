"""A real gunicorn server on 127.0.0.1 for bench_gunicorn.py and tests/test_host_gunicorn.py.

The application (written to a work directory, preloaded by the arbiter) holds a dict of
``items`` strings and, for each request, reads every value and answers with its pid,
its own private memory (USS, read from /proc through psutil after the read) and the
number of requests it has served (``/sleep/S``: after sleeping S seconds).  With
``cowmp=True`` the configuration file adds cowmp's hooks
(``cowmp.gunicorn.apply(globals())``) and the application shares its dict with
``cowmp.share()`` (unless ``share=False``); without, it is plain gunicorn with
``--preload``.  The listening socket is bound here on an ephemeral port and handed to
gunicorn as ``fd://N``.

Test switches: ``user_hook`` adds a ``worker_exit`` of the configuration's own, which
records each exiting worker's pid in ``exits/``; ``teardown_marker`` gives the
application a module-level object whose ``__del__`` (run only by the interpreter's
teardown) records the pid in ``torn/``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent

APP = '''
import json
import os
import time

import psutil

DATA = {f"key-{i}": f"value-{i}" * 4 for i in range(int(os.environ["COWAPP_ITEMS"]))}
if os.environ.get("COWAPP_SHARE") == "1":
    import cowmp

    cowmp.share(DATA)

if os.environ.get("COWAPP_TORN") == "1":
    class TornDown:
        # what __del__ needs is bound now: the teardown may have cleared the module
        # (os.open: the teardown may be too late for open()'s encoding lookup)
        def __del__(self, _open=os.open, _close=os.close, _getpid=os.getpid,
                    _flags=os.O_CREAT | os.O_WRONLY,
                    _dir=os.path.join(os.environ["COWAPP_MARK"], "torn")):
            _close(_open(_dir + "/" + str(_getpid()), _flags))

    TEARDOWN_MARKER = TornDown()

served = 0


def app(environ, start_response):
    global served
    served += 1
    if environ["PATH_INFO"].startswith("/sleep/"):  # a slow request
        time.sleep(float(environ["PATH_INFO"][len("/sleep/"):]))
    total = sum(len(value) for value in DATA.values())
    body = json.dumps({"pid": os.getpid(), "uss": psutil.Process().memory_full_info().uss,
                       "served": served, "total": total}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
'''

CONFIG = '''
import os

preload_app = True
workers = {workers}
worker_class = {worker_class!r}
threads = {threads}
max_requests = {max_requests}
max_requests_jitter = 0
graceful_timeout = 20
timeout = 60
control_socket = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gunicorn.ctl")
'''

USER_HOOK = '''

def worker_exit(server, worker):
    if worker.pid == os.getpid():
        open(os.path.join(os.environ["COWAPP_MARK"], "exits", str(worker.pid)), "w").close()
'''

COWMP = '''
import cowmp.gunicorn

cowmp.gunicorn.apply(globals())
'''


def expected_total(items: int) -> int:
    """What the application answers as ``total``."""
    return sum(len(f"value-{i}") * 4 for i in range(items))


class Server:
    """One gunicorn arbiter with its workers, and a client for it."""

    def __init__(self, workdir: Path, *, cowmp: bool, items: int, share: bool | None = None,
                 workers: int = 2,
                 worker_class: str = "sync", threads: int = 1, max_requests: int = 0,
                 user_hook: bool = False, teardown_marker: bool = False,
                 extra_config: str = "", config: str = "gunicorn.conf.py",
                 args: tuple[str, ...] = ()) -> None:
        self.workdir = Path(workdir)
        self.items = items
        self.workers = workers
        self.workdir.mkdir(parents=True, exist_ok=True)
        for sub in ("exits", "torn"):
            (self.workdir / sub).mkdir(exist_ok=True)
        (self.workdir / "cowapp.py").write_text(textwrap.dedent(APP))
        config_text = CONFIG.format(workers=workers, worker_class=worker_class, threads=threads,
                               max_requests=max_requests)
        config_text += extra_config + (USER_HOOK if user_hook else "")
        config_text += COWMP if cowmp else ""
        (self.workdir / "gunicorn.conf.py").write_text(config_text)
        self.command = [sys.executable, "-m", "gunicorn", "-c", config, *args]
        self.env = dict(os.environ, COWAPP_ITEMS=str(items),
                        COWAPP_SHARE="1" if (cowmp if share is None else share) else "0",
                        PYTHONPATH=os.pathsep.join([str(ROOT), str(self.workdir)]))
        self.env.update(COWAPP_MARK=str(self.workdir),
                        COWAPP_TORN="1" if teardown_marker else "0")
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.failures: list[str] = []

    # life cycle ---------------------------------------------------------------------
    def start(self, timeout: float = 120, *, ready: bool = True) -> Server:
        """Start the arbiter; with ``ready``, wait until every worker is up and a request
        is answered."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        self.log = open(self.workdir / "gunicorn.log", "wb")
        try:
            self.proc = subprocess.Popen(
                [*self.command, "--bind", f"fd://{listener.fileno()}", "cowapp:app"],
                cwd=self.workdir, env=self.env, pass_fds=[listener.fileno()],
                stdout=self.log, stderr=subprocess.STDOUT)
        finally:
            listener.close()
        deadline = time.monotonic() + timeout
        while ready and (len(self.worker_pids()) < self.workers or not self._answers()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"gunicorn did not start:\n{self.log_text()}")
            time.sleep(0.1)
        return self

    def _answers(self) -> bool:
        try:
            self.get()
            return True
        except OSError:
            return False

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM the arbiter (a graceful stop) and wait; its exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                for child in psutil.Process(self.proc.pid).children(recursive=True):
                    child.kill()
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_text(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return (self.workdir / "gunicorn.log").read_text(errors="replace")

    # observation ----------------------------------------------------------------------
    def worker_pids(self) -> set[int]:
        """The arbiter's live children."""
        assert self.proc is not None
        pids = set()
        try:
            children = psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return pids
        for child in children:
            try:
                if child.status() != psutil.STATUS_ZOMBIE:
                    pids.add(child.pid)
            except psutil.NoSuchProcess:
                pass
        return pids

    def total_pss(self) -> int:
        """PSS of the arbiter and its workers, in bytes."""
        assert self.proc is not None
        total = 0
        for proc in [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children()]:
            try:
                total += proc.memory_full_info().pss
            except psutil.NoSuchProcess:
                pass
        return total

    def marked(self, kind: str) -> set[int]:
        """Pids recorded in ``exits/`` or ``torn/``."""
        return {int(path.name) for path in (self.workdir / kind).iterdir()}

    # requests -------------------------------------------------------------------------
    def get(self, path: str = "/", timeout: float = 60) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}",
                                    timeout=timeout) as r:
            if r.status != 200:
                raise OSError(f"status {r.status}")
            return json.loads(r.read())

    def request(self) -> dict | None:
        """One request; a failure is recorded in ``failures``, not raised."""
        try:
            answer = self.get()
        except (OSError, ValueError) as error:  # urllib's errors are OSErrors
            self.failures.append(repr(error))
            return None
        if answer["total"] != expected_total(self.items):
            self.failures.append(f"wrong total from {answer['pid']}: {answer['total']}")
        return answer


class Load:
    """Clients sending requests one after the other until stopped; every answer kept."""

    def __init__(self, server: Server, clients: int = 2) -> None:
        self.server = server
        self.answers: list[dict] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True)
                         for _ in range(clients)]

    def _run(self) -> None:
        while not self._stop.is_set():
            answer = self.server.request()
            if answer is not None:
                self.answers.append(answer)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(120)

    def wait_for(self, predicate, timeout: float = 120) -> None:
        """Until ``predicate(answers)`` holds (or TimeoutError)."""
        deadline = time.monotonic() + timeout
        while not predicate(list(self.answers)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"gave up waiting; {len(self.answers)} answers, "
                                   f"failures {self.server.failures[:3]}")
            time.sleep(0.05)


def private_by_worker(answers: list[dict], pids: set[int] | None = None) -> dict[int, int]:
    """Each worker's largest reported USS (after reading the whole dict), in bytes."""
    found: dict[int, int] = {}
    for answer in answers:
        if pids is None or answer["pid"] in pids:
            found[answer["pid"]] = max(found.get(answer["pid"], 0), answer["uss"])
    return found


def run_phases(server: Server, *, restarts: int, wait: float = 180) -> dict:
    """Requests from two clients throughout: the first workers, ``restarts`` workers
    replaced after ``max_requests``, then a HUP reload.  Returns each phase's workers'
    private memory (bytes, by pid), the server's total PSS at the end (its arbiter and
    the workers after the reload), the number of requests and the failures."""
    first = server.worker_pids()
    with Load(server) as load:
        load.wait_for(lambda got: first <= {a["pid"] for a in got}, wait)
        load.wait_for(lambda got: len({a["pid"] for a in got} - first) >= restarts, wait)
        before_hup = {a["pid"] for a in load.answers} | server.worker_pids()
        assert server.proc is not None
        server.proc.send_signal(signal.SIGHUP)
        load.wait_for(lambda got: len({a["pid"] for a in got} - before_hup) >= server.workers,
                      wait)
        total_pss = server.total_pss()
    answers = load.answers
    seen = {a["pid"] for a in answers}
    return {
        "first": private_by_worker(answers, first),
        "restarted": private_by_worker(answers, (seen - first) & before_hup),
        "after_hup": private_by_worker(answers, seen - before_hup),
        "requests": len(answers),
        "total_pss": total_pss,
        "failures": list(server.failures),
    }
