"""cowmp's warnings point at the user's line, whichever way the fork (or share) is reached.

Each case runs in a fresh interpreter: a script whose line marked ``# warns here`` is the
user's call; the script records every warning and prints where each was reported.
"""

from __future__ import annotations

import json
import os
import textwrap

import pytest
from conftest import requires_fork, run_script

from cowmp import immortal

MARK = "# warns here"

# A thread waits on an event while the body runs: each fork in the body is a fork with
# another thread running.  The body is indented into the ``with`` block.
TEMPLATE = """
import concurrent.futures
import json
import multiprocessing
import os
import threading
import warnings

import cowmp


def work(x=None):
    return x


def start_a_process():
    p = cowmp.Process(target=work)
    p.start()  {mark}
    return p


if __name__ == "__main__":
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, name="user-thread")
    thread.start()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
{body}
    stop.set()
    thread.join()
    print(json.dumps({{"file": __file__, "warnings": [
        [w.category.__name__, w.filename, w.lineno, str(w.message)] for w in caught]}}))
"""

JOIN = """
p.join(60)
assert p.exitcode == 0, p.exitcode
"""

BODIES = {
    "cowmp.fork": """
pid = cowmp.fork()  {mark}
if pid == 0:
    cowmp.exit(0)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
""",
    "cowmp.Process": """
p = cowmp.Process(target=work)
p.start()  {mark}
""" + JOIN,
    "cowmp.get_context.Process": """
p = cowmp.get_context("cowfork").Process(target=work)
p.start()  {mark}
""" + JOIN,
    "multiprocessing.get_context.Process": """
p = multiprocessing.get_context("cowfork").Process(target=work)
p.start()  {mark}
""" + JOIN,
    "a user function": """
p = start_a_process()
""" + JOIN,
    "cowmp.get_context.Pool": """
pool = cowmp.get_context("cowfork").Pool(2)  {mark}
assert pool.map(work, [1, 2]) == [1, 2]
pool.close()
pool.join()
""",
    "cowmp.Pool": """
pool = cowmp.Pool(2)  {mark}
assert pool.map(work, [1, 2]) == [1, 2]
pool.close()
pool.join()
""",
    "CowProcessPoolExecutor": """
executor = cowmp.CowProcessPoolExecutor(2)  {mark}
assert executor.submit(work, 3).result(timeout=60) == 3
executor.shutdown()
""",
    # the standard executor forks its workers (all at once: cowfork is fork-like) in the
    # first submit, not when it is created
    "ProcessPoolExecutor": """
executor = concurrent.futures.ProcessPoolExecutor(
    2, mp_context=cowmp.get_context("cowfork"))
future = executor.submit(work, 3)  {mark}
assert future.result(timeout=60) == 3
executor.shutdown()
""",
}


def _script(path: str) -> tuple[str, int | None]:
    """The script for ``path`` and the line number of the user's call that warns (None
    if the marked line is not in the body: it is in a function of the template)."""
    body = textwrap.indent(BODIES[path].format(mark=MARK).strip("\n"), " " * 8)
    code = TEMPLATE.format(body=body, mark=MARK if path == "a user function" else "")
    lines = code.splitlines()
    marked = [number for number, line in enumerate(lines, 1) if line.endswith(MARK)]
    assert len(marked) == 1, marked
    return code, marked[0]


def _run(path: str) -> tuple[str, list[list]]:
    """Run the script of ``path``: (its file name, the warnings it recorded)."""
    code, _ = _script(path)
    out = run_script(code, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout.splitlines()[-1])
    return report["file"], report["warnings"]


FORKING_PATHS = [path for path in BODIES if path != "cowmp.fork"]


@pytest.mark.parametrize("path", [
    pytest.param("cowmp.fork", marks=pytest.mark.skipif(
        not hasattr(os, "fork"), reason="needs os.fork")),
    *[pytest.param(path, marks=requires_fork) for path in FORKING_PATHS],
])
def test_fork_with_threads_warning_points_at_the_users_line(path):
    filename, caught = _run(path)
    _, line = _script(path)
    fork_warnings = [w for w in caught if w[0] == "ForkWithThreadsWarning"]
    assert fork_warnings, caught
    for _, warned_file, warned_line, message in fork_warnings:
        assert (warned_file, warned_line) == (filename, line), (fork_warnings, line)
        assert "'user-thread'" in message, message
    if path.endswith("Pool"):  # a warning for each worker forked with the thread running
        assert len(fork_warnings) == 2, fork_warnings


def test_the_marked_line_is_the_users_call():
    """The line numbers the test above expects are those of the calls themselves."""
    for path in BODIES:
        code, line = _script(path)
        call = code.splitlines()[line - 1]
        assert any(name in call for name in (
            "fork()", "start()", "Pool(2)", "Executor(2)", "submit(")), (path, call)


SHARE_SCRIPT = """
import json
import warnings

import cowmp

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    data = [[1, 2], {"a": 3}]
    cowmp.share(data)  # warns here
    cowmp.share({"b": [4]})  # warned once already: not again
print(json.dumps({"file": __file__, "warnings": [
    [w.category.__name__, w.filename, w.lineno, str(w.message)] for w in caught]}))
"""


def _share_report() -> tuple[str, list[list]]:
    out = run_script(SHARE_SCRIPT)
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout.splitlines()[-1])
    return report["file"], report["warnings"]


@pytest.mark.skipif(immortal.CAN_IMMORTALIZE,
                    reason="share() makes the data immortal here and does not warn")
def test_sharing_warning_points_at_the_users_share_call():
    filename, caught = _share_report()
    line = next(number for number, text in enumerate(SHARE_SCRIPT.splitlines(), 1)
                if text.endswith(MARK))
    assert [w[:3] for w in caught] == [["SharingWarning", filename, line]], caught
    assert "3.12" in caught[0][3]


@pytest.mark.skipif(not immortal.CAN_IMMORTALIZE,
                    reason="share() cannot make the data immortal here: it warns")
def test_share_does_not_warn_where_it_makes_data_immortal():
    _, caught = _share_report()
    assert caught == []
