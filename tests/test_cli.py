"""The command line as a new user meets it: the ``cowmp`` script and ``python -m cowmp``
(versions, help, the program's name, the defaults the help states, a closed pipe).
Each command's own errors are tested with it, in test_demo.py and test_memory.py."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import threading

import pytest

import cowmp
from cowmp import __main__ as cli
from cowmp import demo

SCRIPT = shutil.which("cowmp", path=os.path.dirname(sys.executable))
#: plain output whatever the terminal (Python 3.14's argparse colours its help)
ENV = {**os.environ, "PYTHON_COLORS": "0", "NO_COLOR": "1"}


def run(how: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``cowmp ARGS`` (how="script") or ``python -m cowmp ARGS`` (how="module")."""
    if how == "script":
        if SCRIPT is None:
            pytest.skip("the cowmp script is not installed next to this Python "
                        "(pip install -e .)")
        command = [SCRIPT, *args]
    else:
        command = [sys.executable, "-m", "cowmp", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=ENV)


PROGS = {"script": "cowmp", "module": "python -m cowmp"}


@pytest.mark.parametrize("how", PROGS)
def test_version_names_cowmp_and_python(how):
    out = run(how, "--version")
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    assert out.stdout.startswith(
        f"cowmp {cowmp.__version__} (Python {platform.python_version()}, ")
    assert out.stdout.count("\n") == 1


@pytest.mark.parametrize("how", PROGS)
def test_usage_and_errors_name_the_program_as_invoked(how):
    prog = PROGS[how]
    for args, usage in [((), prog), (("demo",), f"{prog} demo"), (("mem",), f"{prog} mem")]:
        out = run(how, *args, "--help")
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith(f"usage: {usage} [-h]"), out.stdout
    out = run(how)  # no command
    assert out.returncode == 2
    assert out.stderr.startswith(f"usage: {prog} [-h]")
    assert f"\n{prog}: error: the following arguments are required: COMMAND" in out.stderr
    examples = run(how, "--help").stdout.split("examples:")[1]
    assert f"  {prog} demo --quick" in examples and f"  {prog} mem 1234" in examples


def test_main_names_the_script_cowmp_by_default(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["mem", "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: cowmp mem [-h]")


_MARKUP = re.compile(r"``|`[^`\s]+`|:(func|class|meth|mod|attr|data):|\*\*|\.\. ")


@pytest.mark.parametrize("args", [(), ("demo",), ("mem",)], ids=["top", "demo", "mem"])
def test_help_is_plain_text(args):
    out = run("module", *args, "--help")
    assert out.returncode == 0, out.stderr
    assert _MARKUP.search(out.stdout) is None, _MARKUP.search(out.stdout)
    assert "\x1b[" not in out.stdout


def test_top_level_help_says_what_cowmp_and_each_command_do():
    text = " ".join(run("module", "--help").stdout.split())
    assert "Forked worker processes that keep sharing their parent's memory." in text
    assert "demo the same workload under fork" in text
    assert "mem the memory of a process and its descendants" in text
    assert "--version print the versions of cowmp and Python, and exit" in text


def _help(*args: str) -> str:
    """A command's help, its lines joined."""
    return " ".join(run("module", *args, "--help").stdout.split())


def test_methods_help_states_the_methods_that_run_by_default():
    text = _help("demo")
    default = demo.available_methods()
    assert "all that this system has" not in text
    if "spawn" in default:
        assert f"(default on this system: {', '.join(default)})" in text
    else:  # the old help said that spawn ran here by default
        assert f"(default on this system: {', '.join(default)}; spawn only if named)" in text


@pytest.fixture
def demo_runs(monkeypatch):
    """The arguments each ``demo`` command line would run the demo with."""
    calls: list[dict] = []
    monkeypatch.setattr(demo, "main", lambda **kwargs: calls.append(kwargs))
    return calls


def test_demo_help_states_the_defaults_that_run(demo_runs):
    text = _help("demo")
    assert cli.main(["demo"]) == 0 and cli.main(["demo", "--quick"]) == 0
    plain, quick = demo_runs
    assert plain["methods"] is None  # demo.main then runs available_methods()
    assert f"(default {plain['objects']:,}, about 400 MiB; with --quick: " \
           f"{quick['objects']:,})" in text
    assert f"(default {plain['workers']}; with --quick: {quick['workers']})" in text
    assert f"--quick {quick['objects']:,} objects and {quick['workers']} workers" in text
    assert plain["share"] and quick["share"] and plain["plot"] is None
    assert cli.main(["demo", "--quick", "--objects", "7", "--workers", "3",
                     "--no-share"]) == 0
    assert demo_runs[-1]["objects"] == 7 and demo_runs[-1]["workers"] == 3
    assert not demo_runs[-1]["share"]


def test_mem_help_states_the_watch_default(monkeypatch):
    text = _help("mem")
    runs: list[tuple] = []
    monkeypatch.setattr(cli, "mem", lambda *args, **kwargs: runs.append(args) or 0)
    assert cli.main(["mem", str(os.getpid()), "--watch"]) == 0
    assert cli.main(["mem", str(os.getpid())]) == 0
    (_, _, watch), (_, _, once) = runs
    assert f"--watch [SECONDS] read again every SECONDS ({watch:g} if not given)" in text
    assert once is None


def test_mem_help_explains_every_role_a_process_can_get():
    from cowmp import memory

    text = _help("mem")
    guessed = {role for _, role in memory._ROLE_BY_COMMAND} | {
        "parent", "fork server", "worker", "process"}  # what _guess_roles gives besides
    assert guessed <= set(memory.ROLES)
    for role, meaning in memory.ROLES.items():
        assert f" {role} " in text and meaning.split(":")[0][:30] in text, role


# -- a closed pipe ---------------------------------------------------------------------------


@pytest.mark.parametrize("how", PROGS)
def test_a_reader_that_closes_the_pipe_ends_the_watch_quietly(how):
    if how == "script" and SCRIPT is None:
        pytest.skip("the cowmp script is not installed next to this Python")
    watched = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    command = ([SCRIPT] if how == "script" else [sys.executable, "-m", "cowmp"])
    # no PYTHONUNBUFFERED: each reading must reach the pipe by itself
    watcher = subprocess.Popen([*command, "mem", str(watched.pid), "--watch", "0.05"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    guard = threading.Timer(60, watcher.kill)  # a test that fails, not one that hangs
    guard.start()
    try:
        lines = [watcher.stdout.readline() for _ in range(3)]  # as `| head -3` does
        watcher.stdout.close()
        status = watcher.wait(60)
        err = watcher.stderr.read().decode()
    finally:
        guard.cancel()
        for proc in (watcher, watched):
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        watcher.stderr.close()
    assert lines[0].split()[:3] == [b"PID", b"PPID", b"ROLE"]
    assert err == ""  # no traceback, no "Exception ignored"
    assert status == cli.BROKEN_PIPE_STATUS


def test_ctrl_c_during_a_reading_ends_a_watch():
    def interrupted(line: str) -> None:
        raise KeyboardInterrupt

    try:
        status = cli.mem(os.getpid(), True, 0.05, out=interrupted)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C during a reading ended the watch with a traceback")
    assert status == 0
    with pytest.raises(KeyboardInterrupt):  # a single reading is not a watch
        cli.mem(os.getpid(), True, None, out=interrupted)
