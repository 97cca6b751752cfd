"""The noxfile's search for the interpreters of its sessions, on fake trees of
interpreters (small scripts that answer its question the way a CPython would)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("nox")
pytestmark = pytest.mark.skipif(os.name == "nt", reason="the search is for POSIX systems")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def noxfile() -> Iterator[ModuleType]:
    # under a name of its own: it finds the interpreters at import only when nox loads it
    name = "noxfile_under_test"
    spec = importlib.util.spec_from_file_location(name, ROOT / "noxfile.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as nox does (for its dataclasses)
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[name]


def fake_python(path: Path, version: str, *, implementation: str = "CPython",
                free_threaded: bool = False) -> Path:
    """An executable at ``path`` that answers like CPython ``version`` (``3.10.2``)."""
    major, minor, micro = (int(n) for n in version.split("."))
    answer = json.dumps({"implementation": implementation,
                         "version": [major, minor, micro, "final", 0],
                         "free_threaded": free_threaded})
    return _script(path, f"echo '{answer}'")


def broken_python(path: Path, message: str, code: int = 127) -> Path:
    return _script(path, f"echo '{message}' >&2\nexit {code}")


def _script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> tuple[dict[str, str], list[str]]:
    """A machine: pyenv, one usual place and PATH, all fake.  Returns (env, places)."""
    pyenv = tmp_path / "pyenv"
    usr = tmp_path / "usr" / "bin"
    bin_ = tmp_path / "bin"
    env = {"HOME": str(tmp_path / "home"), "PYENV_ROOT": str(pyenv),
           "PATH": os.pathsep.join([str(pyenv / "shims"), str(bin_)])}
    return env, [str(usr)]


def real(path: Path) -> str:
    return os.path.realpath(path)


def test_newest_patch_wins_a_broken_one_is_reported_an_absent_one_too(noxfile, tmp_path,
                                                                        tree):
    env, places = tree
    pyenv = tmp_path / "pyenv" / "versions"
    usr = Path(places[0])
    # 3.10: four of them, the newest neither the first found nor the last nor the
    # greatest name ("3.10.11" sorts between "3.10.1" and "3.10.9")
    fake_python(pyenv / "3.10.1" / "bin" / "python3.10", "3.10.1")
    newest = fake_python(pyenv / "3.10.11" / "bin" / "python3.10", "3.10.11")
    fake_python(pyenv / "3.10.9" / "bin" / "python3.10", "3.10.9")
    fake_python(usr / "python3.10", "3.10.4")
    # 3.11: one that works in a usual place, one on PATH that does not (not mentioned)
    found = fake_python(usr / "python3.11", "3.11.4")
    broken_python(tmp_path / "bin" / "python3.11", "python3.11: cannot open shared object")
    # 3.12: only a broken one
    broken = broken_python(pyenv / "3.12.0" / "bin" / "python3.12",
                           "python3.12: error while loading shared libraries: libpython3.12")
    # 3.13: none; pyenv's shim for it answers only when the version is selected
    broken_python(tmp_path / "pyenv" / "shims" / "python3.13",
                  "pyenv: python3.13: command not found")

    findings = noxfile.find_interpreters(["3.10", "3.11", "3.12", "3.13"], env, places)

    assert findings["3.10"].interpreter == noxfile.Interpreter((3, 10, 11, "final", 0),
                                                               real(newest))
    assert findings["3.10"].line() == f"python3.10: 3.10.11 at {real(newest)}"
    assert findings["3.11"].interpreter.path == real(found)
    assert findings["3.11"].broken == []
    assert findings["3.12"].interpreter is None
    assert findings["3.12"].broken == [(str(broken), "exits with 127: python3.12: error "
                                        "while loading shared libraries: libpython3.12")]
    assert findings["3.12"].line().startswith(
        f"python3.12: skipped: found but broken: {broken}: exits with 127: ")
    assert findings["3.13"].interpreter is None and findings["3.13"].broken == []
    assert findings["3.13"].line() == ("python3.13: skipped: not installed (none in pyenv, "
                                       "uv, the usual places or PATH)")


def test_what_is_not_a_cpython_of_that_version_is_not_taken(noxfile, tmp_path, tree):
    env, places = tree
    usr = Path(places[0])
    fake_python(usr / "python3.12", "3.11.7")  # a wrong link
    fake_python(tmp_path / "bin" / "python3.12", "3.12.3", implementation="PyPy")
    fake_python(tmp_path / "uv" / "cpython-3.13.1+freethreaded-linux" / "bin" / "python3.13",
                "3.13.1", free_threaded=True)
    _script(tmp_path / "bin" / "python3.14", "echo 'Python 3.14.0'")
    env["UV_PYTHON_INSTALL_DIR"] = str(tmp_path / "uv")

    findings = noxfile.find_interpreters(["3.12", "3.13", "3.14"], env, places)

    assert sorted(why for _, why in findings["3.12"].broken) == [
        "is PyPy, not CPython", "is Python 3.11.7, not 3.12"]
    assert [why for _, why in findings["3.13"].broken] == [
        "is a free-threaded build (3.13.1t)"]
    assert [why for _, why in findings["3.14"].broken] == [
        "unexpected answer 'Python 3.14.0'"]


def test_the_probe_knows_the_running_interpreter(noxfile):
    if sysconfig_free_threaded():
        pytest.skip("a free-threaded build is left out on purpose")
    minor = "{}.{}".format(*sys.version_info)
    found = noxfile.probe(sys.executable, minor)
    assert isinstance(found, noxfile.Interpreter), found
    assert found.version == tuple(sys.version_info)
    assert os.path.samefile(found.path, os.path.realpath(sys.executable))


def sysconfig_free_threaded() -> bool:
    import sysconfig

    return bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


def test_nox_finds_each_interpreter_first_on_path(noxfile, tmp_path):
    ten = fake_python(tmp_path / "a" / "python3.10", "3.10.4")
    twelve = fake_python(tmp_path / "b" / "python3.12", "3.12.8")
    chosen = [("3.10", noxfile.Interpreter((3, 10, 4, "final", 0), str(ten))),
              ("3.12", noxfile.Interpreter((3, 12, 8, "final", 0), str(twelve)))]
    shadowing = broken_python(tmp_path / "shims" / "python3.10", "shim")
    env = {"PATH": str(shadowing.parent)}

    dirs = noxfile.put_first_on_path(chosen, tmp_path / "links", env)
    again = noxfile.put_first_on_path(chosen, tmp_path / "links", {"PATH": ""})

    assert dirs == again and len(set(dirs)) == 2
    assert env["PATH"].split(os.pathsep) == [*dirs, str(shadowing.parent)]
    for minor, interpreter in chosen:
        on_path = shutil.which(f"python{minor}", path=env["PATH"])
        assert on_path is not None and Path(on_path).parent == tmp_path / "links" / Path(
            on_path).parent.name
        assert os.path.samefile(on_path, interpreter.path)
        assert os.listdir(Path(on_path).parent) == [f"python{minor}"]


def test_nox_prints_what_it_found_before_the_sessions(tmp_path):
    # a copy of the noxfile, loaded by nox, on a machine whose pyenv has a 3.10 newer
    # than any real one; the other versions are whatever this machine has
    shutil.copy(ROOT / "noxfile.py", tmp_path / "noxfile.py")
    fake = fake_python(tmp_path / "pyenv" / "versions" / "3.10.99" / "bin" / "python3.10",
                       "3.10.99")
    env = {**os.environ, "HOME": str(tmp_path / "home"),
           "PYENV_ROOT": str(tmp_path / "pyenv")}
    env.pop("UV_PYTHON_INSTALL_DIR", None)
    env.pop("XDG_DATA_HOME", None)
    listed = subprocess.run([sys.executable, "-m", "nox", "-f", str(tmp_path / "noxfile.py"),
                             "--list"], capture_output=True, text=True, env=env, timeout=120)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stderr.splitlines()
    assert lines[0] == f"python3.10: 3.10.99 at {real(fake)}", listed.stderr
    assert [line.split(":")[0] for line in lines[:5]] == [
        "python3.10", "python3.11", "python3.12", "python3.13", "python3.14"]
    assert "tests-3.12" in listed.stdout  # the sessions keep their names
    links = list((tmp_path / ".nox" / "pythons").glob("3.10.99-*/python3.10"))
    assert len(links) == 1 and os.path.samefile(links[0], fake)


def test_started_with_sigint_ignored_the_test_runs_get_its_default(noxfile):
    ask = [sys.executable, "-c", "import signal; print(signal.getsignal(signal.SIGINT))"]
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        ignored = subprocess.run(ask, capture_output=True, text=True).stdout.strip()
        with noxfile.sigint_as_in_a_terminal():
            inside = subprocess.run(ask, capture_output=True, text=True).stdout.strip()
        after = signal.getsignal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert ignored in {"Handlers.SIG_IGN", "1"}  # what the child inherits, as a background job
    assert inside == "<built-in function default_int_handler>"
    assert after == signal.SIG_IGN
