"""A real uWSGI server on a Unix socket for bench_uwsgi.py and tests/test_host_uwsgi.py.

The application (written to a work directory, loaded once by the master) holds a dict of
``items`` strings and, for each request, reads every value and answers with its pid and
its own private memory (USS, read through psutil after the read).  With the recipe
(``recipe=True``) it ends its loading with ``cowmp.share(TABLE)`` and
``cowmp.install_fork_hooks()``, and uWSGI runs with ``--py-call-uwsgi-fork-hooks``;
without, it is plain uWSGI.  The socket is a file of the work directory: no port to
choose, none to collide.

Test switch: with ``MARKS`` set, each worker records its pid in ``atexit.PID`` when its
``atexit`` handlers run and in ``torn.PID`` when the interpreter's teardown frees an
object held in module-level data.

uWSGI is compiled against the Python that installs it: :func:`find_uwsgi` looks beside
this interpreter.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent

#: the README's command line, less its address and its number of processes
RECIPE_FLAGS = ("--master", "--py-call-uwsgi-fork-hooks")

APP = """
import atexit, json, os
import psutil
import cowmp

MARKS = os.environ.get("MARKS")


def mark(kind, _dir=MARKS, _open=os.open, _close=os.close, _getpid=os.getpid,
         _join=os.path.join, _str=str, _flags=os.O_CREAT | os.O_WRONLY):
    # all bound now: the teardown may have cleared this module's globals
    if _dir:
        _close(_open(_join(_dir, kind + "." + _str(_getpid())), _flags))


class TornDown:
    def __del__(self, _mark=mark):
        _mark("torn")


# inside module-level data, as the objects of a loaded model are: freed (and marked)
# only if the teardown walks that data
DATA = {"marker": TornDown()}
atexit.register(mark, "atexit")
TABLE = {f"key-{i}": f"value-{i}" * 4 for i in range(int(os.environ["ITEMS"]))}
if os.environ["RECIPE"] == "1":
    TABLE = cowmp.share(TABLE)
    cowmp.install_fork_hooks()


def application(environ, start_response):
    total = sum(len(value) for value in TABLE.values())
    body = json.dumps({"pid": os.getpid(), "total": total,
                       "uss": psutil.Process().memory_full_info().uss}).encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
"""


def find_uwsgi() -> Path | None:
    """The uWSGI installed beside this interpreter (built for it), or None."""
    path = Path(sys.executable).with_name("uwsgi")
    return path if path.exists() else None


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


class UwsgiServer:
    """A uWSGI master serving ``app`` (the application's source) on a Unix socket in
    ``directory``, with ``processes`` workers and the extra ``flags``; a context manager
    that returns once the server answers and stops it (SIGINT, uWSGI's shutdown)."""

    def __init__(self, directory: Path, app: str = APP, *flags: str, recipe: bool = True,
                 items: int = 1000, processes: int = 2, marks: bool = False) -> None:
        uwsgi = find_uwsgi()
        if uwsgi is None:
            raise FileNotFoundError(f"no uWSGI beside {sys.executable} (pip install uwsgi)")
        directory.mkdir(parents=True, exist_ok=True)
        self.marks = directory / "marks"
        self.marks.mkdir(exist_ok=True)
        (directory / "app.py").write_text(app)
        self.socket = directory / "http.sock"
        self.log = directory / "uwsgi.log"
        env = {**os.environ, "ITEMS": str(items), "RECIPE": "1" if recipe else "0",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                           os.environ.get("PYTHONPATH")]))}
        if marks:
            env["MARKS"] = str(self.marks)
        self.command = [str(uwsgi), *(RECIPE_FLAGS if recipe else ("--master",)),
                        "--processes", str(processes), "--http-socket", str(self.socket),
                        "--wsgi-file", str(directory / "app.py"), "--need-app",
                        "--chdir", str(directory), *flags]
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(self.command, env=env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def __enter__(self) -> UwsgiServer:
        deadline = time.monotonic() + 120
        while not self.answers():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()  # __exit__ is not called when __enter__ fails
                raise RuntimeError("uWSGI did not answer: " + self.log_text()[-3000:])
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> float:
        """SIGINT (uWSGI's shutdown); the seconds until the master has exited.

        uWSGI loses the shutdown signal it sends a worker that is still starting (a
        replacement forked just before), with or without cowmp, and then waits for that
        worker for good.  So the workers are first given a second to start, and a
        worker still there 5 s after the shutdown began gets SIGINT again."""
        if self.proc.poll() is None:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and self._starting(self.workers()):
                time.sleep(0.05)
        started = time.perf_counter()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                for pid in self._live(self.workers()):
                    os.kill(pid, signal.SIGINT)
                try:
                    self.proc.wait(25)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(10)
        return time.perf_counter() - started

    @staticmethod
    def _live(pids: list[int]) -> list[int]:
        return [pid for pid in pids if psutil.pid_exists(pid)]

    @staticmethod
    def _starting(pids: list[int]) -> bool:
        """Has any of ``pids`` been running for less than a second?"""
        for pid in pids:
            try:
                if time.time() - psutil.Process(pid).create_time() < 1:
                    return True
            except psutil.NoSuchProcess:
                pass
        return False

    def answers(self) -> bool:
        try:
            return self.get()[0] == 200
        except OSError:
            return False

    def get(self, path: str = "/", timeout: float = 60) -> tuple[int, bytes]:
        connection = _UnixHTTPConnection(self.socket, timeout)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def read(self) -> dict:
        """One request to :data:`APP`: its answer (pid, total, uss)."""
        status, body = self.get()
        if status != 200:
            raise OSError(f"status {status}: {body[:200]!r}")
        return json.loads(body)

    def workers(self) -> list[int]:
        try:
            return [child.pid for child in psutil.Process(self.proc.pid).children()]
        except psutil.NoSuchProcess:  # the master has exited
            return []

    def total_pss(self) -> int:
        """The master's and the workers' PSS together, in bytes."""
        pids = [self.proc.pid, *self.workers()]
        return sum(psutil.Process(pid).memory_full_info().pss for pid in pids)

    def marked(self, kind: str) -> set[int]:
        return {int(name.split(".")[1]) for name in os.listdir(self.marks)
                if name.startswith(kind + ".")}

    def log_text(self) -> str:
        return self.log.read_text()
