"""uWSGI with the README's recipe: the application calls ``cowmp.share()`` and
``cowmp.install_fork_hooks()`` when its master loads it, and uWSGI runs Python's fork
hooks around each worker fork (``--py-call-uwsgi-fork-hooks``; it forks from C).

A real uWSGI master with 2 workers on a Unix socket in the test's directory: requests
through ``max-requests`` replacements and a HUP reload all succeed, with nothing printed
of a hook's failure; every worker runs its ``atexit`` handlers at exit, and with the
recipe no worker tears the heap it inherited down (plain uWSGI's workers do); on 3.12+
a worker that reads the whole table stays a small part of what a plain worker copies.

uWSGI is compiled against the Python that installs it: the test uses the ``uwsgi``
beside this interpreter, and skips where there is none (``pip install uwsgi``).
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from conftest import ROOT, requires_fork, wait_for

UWSGI = Path(sys.executable).with_name("uwsgi")
if not UWSGI.exists():
    pytest.skip(f"no uWSGI beside {sys.executable} (pip install uwsgi; it compiles)",
                allow_module_level=True)

pytestmark = requires_fork

#: the README's command line, less its address
RECIPE_FLAGS = ("--master", "--py-call-uwsgi-fork-hooks")
README = (ROOT / "README.md").read_text()
MiB = 1 << 20

APP = """
import atexit, os
import cowmp

MARKS = os.environ["MARKS"]


def mark(kind, _dir=MARKS, _open=os.open, _close=os.close, _getpid=os.getpid,
         _join=os.path.join, _str=str, _flags=os.O_CREAT | os.O_WRONLY):
    # all bound now: the teardown may have cleared this module's globals
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
    body = f"{os.getpid()} {total}".encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
"""


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=30)
        self.socket_path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(self.socket_path)


class UwsgiServer:
    """A uWSGI master serving ``app`` (a file) on a Unix socket, 2 workers."""

    def __init__(self, tmp_path: Path, app: str, *flags: str, recipe: bool = True,
                 items: int = 1000) -> None:
        self.dir = tmp_path
        self.marks = tmp_path / "marks"
        self.marks.mkdir()
        (tmp_path / "app.py").write_text(app)
        self.socket = tmp_path / "http.sock"
        self.log = tmp_path / "uwsgi.log"
        env = {**os.environ, "MARKS": str(self.marks), "ITEMS": str(items),
               "RECIPE": "1" if recipe else "0",
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        hooks = RECIPE_FLAGS if recipe else ("--master",)
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [str(UWSGI), *hooks, "--processes", "2", "--http-socket", str(self.socket),
                 "--wsgi-file", str(tmp_path / "app.py"), "--need-app",
                 "--chdir", str(tmp_path), *flags],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def __enter__(self) -> UwsgiServer:
        if not wait_for(self._answers, timeout=60):
            self.__exit__()  # __exit__ is not called when __enter__ fails
            pytest.fail("uWSGI did not answer: " + self.log.read_text()[-3000:])
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # uWSGI's shutdown
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def _answers(self) -> bool:
        try:
            return self.get()[0] == 200
        except OSError:
            return False

    def get(self, path: str = "/") -> tuple[int, bytes]:
        connection = _UnixHTTPConnection(self.socket)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def workers(self) -> list[int]:
        return [child.pid for child in psutil.Process(self.proc.pid).children()]

    def marked(self, kind: str) -> set[int]:
        return {int(name.split(".")[1]) for name in os.listdir(self.marks)
                if name.startswith(kind + ".")}

    def log_text(self) -> str:
        return self.log.read_text()


def _clean(log: str) -> None:
    for trouble in ("Traceback", "Exception ignored", "Fatal Python error",
                    "ForkWithThreadsWarning"):
        assert trouble not in log, log


def _readme_app() -> str:
    (block,) = [block for block in re.findall(r"```python\n(.*?)```", README, re.S)
                if "def application(environ, start_response)" in block]
    return block


def test_the_readme_recipe_serves_through_replacements_and_a_reload(tmp_path):
    command = next(line for line in README.splitlines() if line.startswith("uwsgi "))
    assert all(flag in command.split() for flag in RECIPE_FLAGS), command
    with UwsgiServer(tmp_path, _readme_app(), "--max-requests", "4",
                     "--min-worker-lifetime", "0") as server:
        first = set(server.workers())
        answers = [server.get("/key-42") for _ in range(20)]
        assert answers == [(200, b"value-42")] * 20
        assert wait_for(lambda: len(set(server.workers()) - first) >= 2, timeout=30)
        server.proc.send_signal(signal.SIGHUP)  # a graceful reload of the whole stack
        before = set(server.workers())
        assert wait_for(lambda: not before & set(server.workers())
                        and len(server.workers()) == 2, timeout=60), server.log_text()
        assert wait_for(lambda: server._answers(), timeout=30), server.log_text()
        assert [server.get("/key-7") for _ in range(6)] == [(200, b"value-7")] * 6
    assert server.proc.returncode == 0, server.log_text()[-3000:]
    _clean(server.log_text())


@pytest.mark.parametrize("recipe", [True, False], ids=["recipe", "plain"])
def test_workers_run_atexit_and_with_the_recipe_keep_their_heap_at_exit(tmp_path, recipe):
    with UwsgiServer(tmp_path, APP, "--max-requests", "3", "--min-worker-lifetime", "0",
                     recipe=recipe) as server:
        first = set(server.workers())
        for _ in range(16):
            assert server.get()[0] == 200
        # the first workers were replaced after 3 requests each: each ran atexit
        assert wait_for(lambda: first <= server.marked("atexit"), timeout=30), (
            first, server.marked("atexit"))
        exited = server.marked("atexit")
        torn = server.marked("torn")
    if recipe:
        assert not torn & exited, (torn, exited)
    else:  # the marker works: plain uWSGI's workers tear their inherited heap down
        assert first <= torn, (torn, exited)
    _clean(server.log_text())


@pytest.mark.quiet
@pytest.mark.skipif(sys.version_info < (3, 12),
                    reason="before 3.12, reading an object writes its reference count")
def test_a_worker_that_reads_everything_stays_small_with_the_recipe(tmp_path):
    private = {}
    for recipe in (True, False):
        where = tmp_path / str(recipe)
        where.mkdir()
        with UwsgiServer(where, APP, recipe=recipe, items=200_000) as server:
            for _ in range(8):
                assert server.get()[0] == 200
            private[recipe] = max(psutil.Process(pid).memory_full_info().uss
                                  for pid in server.workers())
    assert private[False] > 10 * MiB, private
    assert private[True] < private[False] / 3, private
