"""uWSGI with the README's recipe: the application calls ``cowmp.share()`` and
``cowmp.install_fork_hooks()`` when its master loads it, and uWSGI runs Python's fork
hooks around each worker fork (``--py-call-uwsgi-fork-hooks``; it forks from C).

A real uWSGI master with 2 workers on a Unix socket in the test's directory
(benchmarks/uwsgi_harness.py; the figures: benchmarks/bench_uwsgi.py): requests
through ``max-requests`` replacements and a HUP reload all succeed, with nothing printed
of a hook's failure; every worker runs its ``atexit`` handlers at exit, and with the
recipe no worker tears the heap it inherited down (plain uWSGI's workers do); on 3.12+
a worker that reads the whole table stays a small part of what a plain worker copies.

uWSGI is compiled against the Python that installs it: the test uses the ``uwsgi``
beside this interpreter, and skips where there is none (``pip install uwsgi``).
"""

from __future__ import annotations

import re
import signal
import sys

import pytest
from conftest import ROOT, requires_fork, wait_for

sys.path.insert(0, str(ROOT / "benchmarks"))
from uwsgi_harness import APP, RECIPE_FLAGS, UwsgiServer, find_uwsgi  # noqa: E402

if find_uwsgi() is None:
    pytest.skip(f"no uWSGI beside {sys.executable} (pip install uwsgi; it compiles)",
                allow_module_level=True)

pytestmark = requires_fork

README = (ROOT / "README.md").read_text()
MiB = 1 << 20
#: workers replaced after this many requests each (uWSGI waits 10 s by default first)
REPLACE = ("--max-requests", "3", "--min-worker-lifetime", "0")


def _clean(log: str) -> None:
    for trouble in ("Traceback", "Exception ignored", "Fatal Python error",
                    "ForkWithThreadsWarning"):
        assert trouble not in log, log


def _readme_app() -> str:
    """The README's uWSGI application, as printed."""
    (block,) = [block for block in re.findall(r"```python\n(.*?)```", README, re.S)
                if "def application(environ, start_response)" in block]
    return block


def test_the_readme_recipe_serves_through_replacements_and_a_reload(tmp_path):
    command = next(line for line in README.splitlines() if line.startswith("uwsgi "))
    assert all(flag in command.split() for flag in RECIPE_FLAGS), command
    with UwsgiServer(tmp_path, _readme_app(), *REPLACE) as server:
        first = set(server.workers())
        answers = [server.get("/key-42") for _ in range(20)]
        assert answers == [(200, b"value-42")] * 20
        assert wait_for(lambda: len(set(server.workers()) - first) >= 2, timeout=30)
        server.proc.send_signal(signal.SIGHUP)  # a graceful reload of the whole stack
        before = set(server.workers())
        assert wait_for(lambda: not before & set(server.workers())
                        and len(server.workers()) == 2, timeout=60), server.log_text()
        assert wait_for(server.answers, timeout=30), server.log_text()
        assert [server.get("/key-7") for _ in range(6)] == [(200, b"value-7")] * 6
    assert server.proc.returncode == 0, server.log_text()[-3000:]
    _clean(server.log_text())


@pytest.mark.parametrize("recipe", [True, False], ids=["recipe", "plain"])
def test_workers_run_atexit_and_with_the_recipe_keep_their_heap_at_exit(tmp_path, recipe):
    with UwsgiServer(tmp_path, APP, *REPLACE, recipe=recipe, marks=True) as server:
        first = set(server.workers())
        for _ in range(16):
            assert server.read()["total"] > 0
        # the first workers were replaced after 3 requests each: each ran atexit
        assert wait_for(lambda: first <= server.marked("atexit"), timeout=30), (
            first, server.marked("atexit"))
        exited, torn = server.marked("atexit"), server.marked("torn")
    if recipe:
        assert not torn & exited, (torn, exited)
    else:  # the marker works: plain uWSGI's workers tear their inherited data down
        assert first <= torn, (torn, exited)
    _clean(server.log_text())


@pytest.mark.quiet
@pytest.mark.skipif(sys.version_info < (3, 12),
                    reason="before 3.12, reading an object writes its reference count")
def test_a_worker_that_reads_everything_stays_small_with_the_recipe(tmp_path):
    private = {}
    for recipe in (True, False):
        with UwsgiServer(tmp_path / str(recipe), recipe=recipe, items=200_000) as server:
            private[recipe] = max(server.read()["uss"] for _ in range(8))
    assert private[False] > 10 * MiB, private
    assert private[True] < private[False] / 3, private
