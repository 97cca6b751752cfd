"""Test sessions on every installed CPython among 3.10–3.14; absent interpreters are skipped.

    python -m nox                 # everything CI runs
    python -m nox -s tests-3.12   # one session
"""

from __future__ import annotations

import shutil

import nox

PYTHONS = ["3.10", "3.11", "3.12", "3.13", "3.14"]

nox.options.error_on_missing_interpreters = False  # a machine with one Python still passes
nox.options.sessions = ["lint", "tests", "fallback", "oldest_loky", "hosts", "servers",
                        "cpython"]
nox.options.reuse_existing_virtualenvs = True

# where a C compiler is present, the C helper of cowmp.share() must have been built
HELPER = {"COWMP_REQUIRE_C_HELPER": "1"} if shutil.which("cc") or shutil.which("gcc") else {}


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The pytest suite (examples and README code blocks included)."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs, env=HELPER)


@nox.session(python=PYTHONS)
def fallback(session: nox.Session) -> None:
    """The same suite with cowfork forced onto loky's spawn-based processes."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs, env={"COWMP_FORCE_FALLBACK": "1", **HELPER})


#: the oldest loky of pyproject's range (loky 3.4 hands a spawned worker a closed pipe)
OLDEST_LOKY = "loky==3.5.0"


@nox.session(python="3.11")
def oldest_loky(session: nox.Session) -> None:
    """The fallback suite with the oldest loky that pyproject allows (the newest is what
    the other sessions install)."""
    session.install("-e", ".[test]")
    session.install(OLDEST_LOKY)
    session.run("pytest", *session.posargs, env={"COWMP_FORCE_FALLBACK": "1", **HELPER})


HOST_TESTS = ["tests/test_host_joblib.py", "tests/test_host_jupyter.py",
              "tests/test_host_pytorch.py", "tests/test_host_gunicorn.py",
              "tests/test_host_dask.py", "tests/test_docs_and_examples.py"]


@nox.session(python="3.11")
def hosts(session: nox.Session) -> None:
    """The optional hosts: joblib and scikit-learn (the "cowfork" backend), a Jupyter
    notebook run headless, gunicorn (a real server on 127.0.0.1), Dask (a LocalCluster),
    and the README blocks and examples that use them.  PyTorch (about 3 GB) is left to
    machines that have it: its tests skip here, saying so."""
    session.install("-e", ".[test,joblib,jupyter,gunicorn,dask]")
    session.run("pytest", *HOST_TESTS, *session.posargs, env=HELPER)


@nox.session(python="3.12")
def servers(session: nox.Session) -> None:
    """gunicorn and Dask again on 3.12, where shared objects are immortal: the memory
    that their workers keep sharing is checked there."""
    session.install("-e", ".[test,gunicorn,dask]")
    session.run("pytest", "tests/test_host_gunicorn.py", "tests/test_host_dask.py",
                *session.posargs, env=HELPER)


@nox.session(python=PYTHONS)
def cpython(session: nox.Session) -> None:
    """CPython's own test suites against cowmp: multiprocessing's with the cowfork start
    method (cpython_cowfork), concurrent.futures' process-pool tests with
    CowProcessPoolExecutor (cpython_futures; skipped where the Python lacks them).

    Arguments naming a harness or its tests (``cpython_futures.ProcessPoolCowforkWaitTest``)
    run only those; the others (``-v``, ``-k PATTERN``) go to every unittest run.
    """
    session.install("-e", ".")
    session.chdir("tests/cpython")
    names = [arg for arg in session.posargs if arg.startswith("cpython_")]
    options = [arg for arg in session.posargs if not arg.startswith("cpython_")]
    harnesses = dict.fromkeys(name.split(".")[0] for name in names) or dict.fromkeys(
        ["cpython_cowfork", "cpython_futures"])
    for harness in harnesses:  # one interpreter each
        tests = [name for name in names if name.split(".")[0] == harness] or [harness]
        session.run("python", "-m", "unittest", *options, *tests)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "cowmp", "tests", "benchmarks", "examples", "noxfile.py")
