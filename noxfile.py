"""Test sessions on every installed CPython among 3.10–3.14; absent interpreters are skipped.

    python -m nox                 # everything CI runs
    python -m nox -s tests-3.12   # one session

Which interpreter each version's sessions use, or why they are skipped, is printed first.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import glob
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nox

PYTHONS = ["3.10", "3.11", "3.12", "3.13", "3.14"]

nox.options.error_on_missing_interpreters = False  # a machine with one Python still passes
nox.options.sessions = ["lint", "tests", "fallback", "oldest_loky", "hosts", "servers",
                        "cpython"]
nox.options.reuse_existing_virtualenvs = True

# where a C compiler is present, the C helper of cowmp.share() must have been built
HELPER = {"COWMP_REQUIRE_C_HELPER": "1"} if shutil.which("cc") or shutil.which("gcc") else {}


# -- finding the interpreters ------------------------------------------------------------
#
# They are found here, not left to what PATH happens to offer (a pyenv shim answers only
# for the versions that pyenv has selected): for each of 3.10–3.14, the newest patch
# release among pyenv's versions, uv's Pythons, the usual install places and PATH, each
# candidate asked what it is (a CPython of that minor version, not a free-threaded build).
# Nox then finds each one as ``python3.X`` in a directory put first on PATH, so that the
# sessions keep their names (``tests-3.12``, ``nox -p 3.12``).

#: where interpreters are installed besides pyenv, uv and PATH ("{minor}" is "3.12" etc.)
PLACES = [
    "/usr/bin", "/usr/local/bin", "/opt/python*/bin", "~/.local/bin",
    "/opt/homebrew/bin", "/opt/homebrew/opt/python@{minor}/bin",  # Homebrew (macOS)
    "/usr/local/opt/python@{minor}/bin",
    "/Library/Frameworks/Python.framework/Versions/{minor}/bin",  # python.org (macOS)
]

#: what a candidate is asked (run isolated from PYTHON* variables and the user's site)
PROBE = (
    "import json, os, platform, sys, sysconfig; print(json.dumps({"
    "'implementation': platform.python_implementation(), "
    "'version': list(sys.version_info), "
    "'free_threaded': bool(sysconfig.get_config_var('Py_GIL_DISABLED')), "
    "'executable': os.path.realpath(sys.executable)}))"
)
PROBE_TIMEOUT = 30.0


@dataclass(frozen=True)
class Interpreter:
    """A CPython found to work: its ``sys.version_info`` and the real path of its binary."""

    version: tuple[int, int, int, str, int]
    path: str

    @property
    def release(self) -> str:
        """``3.12.1``, ``3.14.0rc1``."""
        major, minor, micro, level, serial = self.version
        suffix = {"alpha": "a", "beta": "b", "candidate": "rc"}.get(level)
        return f"{major}.{minor}.{micro}" + (f"{suffix}{serial}" if suffix else "")


@dataclass
class Finding:
    """What was found for one minor version: the interpreter, or nothing and the
    candidates that were there but did not work (path, why)."""

    minor: str
    interpreter: Interpreter | None = None
    broken: list[tuple[str, str]] = field(default_factory=list)

    def line(self) -> str:
        if self.interpreter is not None:
            return f"python{self.minor}: {self.interpreter.release} at {self.interpreter.path}"
        if not self.broken:
            return (f"python{self.minor}: skipped: not installed "
                    "(none in pyenv, uv, the usual places or PATH)")
        path, why = self.broken[0]
        more = f" (and {len(self.broken) - 1} more)" if len(self.broken) > 1 else ""
        return f"python{self.minor}: skipped: found but broken: {path}: {why}{more}"


def _uv_python_dirs(env: Mapping[str, str], home: Path) -> list[str]:
    dirs = [env.get("UV_PYTHON_INSTALL_DIR")
            or os.path.join(env.get("XDG_DATA_HOME") or home / ".local" / "share", "uv",
                            "python")]
    uv = shutil.which("uv", path=env.get("PATH", ""))
    if uv:  # uv knows its own place best
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            answer = subprocess.run([uv, "python", "dir"], capture_output=True, text=True,
                                    timeout=PROBE_TIMEOUT, stdin=subprocess.DEVNULL, env=env)
            if answer.returncode == 0 and answer.stdout.strip():
                dirs.append(answer.stdout.strip())
    return dirs


def candidates(minors: Sequence[str], env: Mapping[str, str],
               places: Sequence[str]) -> dict[str, list[str]]:
    """For each of ``minors``, every file ``python3.X`` where an interpreter of it may be,
    in this order: pyenv's versions, uv's Pythons, ``places``, PATH (each file once)."""
    home = Path(env.get("HOME") or Path.home())
    pyenv_root = env.get("PYENV_ROOT") or str(home / ".pyenv")
    uv_dirs = _uv_python_dirs(env, home)
    # pyenv's shims answer only for the versions that it has selected; its versions are
    # searched one by one instead
    shims = os.path.normpath(os.path.join(pyenv_root, "shims"))
    path_dirs = [d for d in env.get("PATH", "").split(os.pathsep)
                 if d and os.path.normpath(d) != shims]
    found: dict[str, list[str]] = {}
    for minor in minors:
        name = f"python{minor}"
        patterns = [os.path.join(glob.escape(pyenv_root), "versions", "*", "bin", name)]
        patterns += [os.path.join(glob.escape(d), f"cpython-{minor}.*", "bin", name)
                     for d in uv_dirs]
        for place in places:
            place = place.format(minor=minor)
            if place.startswith("~/"):
                place = os.path.join(glob.escape(str(home)), place[2:])
            patterns.append(os.path.join(place, name))
        patterns += [os.path.join(glob.escape(d), name) for d in path_dirs]
        files: dict[str, str] = {}  # real path -> the first path found to it
        for pattern in patterns:
            for path in sorted(glob.glob(pattern)):
                if os.path.isfile(path) and os.access(path, os.X_OK):
                    files.setdefault(os.path.realpath(path), os.path.abspath(path))
        found[minor] = list(files.values())
    return found


def _why(completed: subprocess.CompletedProcess[str]) -> str:
    lines = [line.strip() for line in completed.stderr.splitlines() if line.strip()]
    if not lines:
        return f"exits with {completed.returncode}"
    message = lines[-1] if lines[0].startswith("Traceback") else lines[0]
    return f"exits with {completed.returncode}: {message[:120]}"


def probe(path: str, minor: str, env: Mapping[str, str] | None = None) -> Interpreter | str:
    """Run ``path`` and return the Interpreter it is, or why it is not a working
    CPython ``minor``."""
    try:
        completed = subprocess.run([path, "-I", "-c", PROBE], capture_output=True, text=True,
                                   timeout=PROBE_TIMEOUT, stdin=subprocess.DEVNULL,
                                   env=None if env is None else dict(env))
    except subprocess.TimeoutExpired:
        return f"no answer within {PROBE_TIMEOUT:g} s"
    except OSError as error:
        return f"cannot run: {error.strerror or error}"
    if completed.returncode != 0:
        return _why(completed)
    try:
        info = json.loads(completed.stdout.strip().splitlines()[-1])
        version = tuple(info["version"])
        found = Interpreter((int(version[0]), int(version[1]), int(version[2]),
                             str(version[3]), int(version[4])),
                            info.get("executable") or os.path.realpath(path))
        implementation = info["implementation"]
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        return f"unexpected answer {completed.stdout.strip()[:60]!r}"
    if implementation != "CPython":
        return f"is {implementation}, not CPython"
    if found.version[:2] != tuple(int(n) for n in minor.split(".")):
        return f"is Python {found.release}, not {minor}"
    if info.get("free_threaded"):
        return f"is a free-threaded build ({found.release}t)"
    return found


def find_interpreters(minors: Sequence[str] = PYTHONS, env: Mapping[str, str] | None = None,
                      places: Sequence[str] = PLACES) -> dict[str, Finding]:
    """For each of ``minors``, the newest patch release that works among its
    candidates(), or the candidates that do not work (none if there is none)."""
    env = os.environ if env is None else env
    paths = candidates(minors, env, places)
    jobs = [(minor, path) for minor in minors for path in paths[minor]]
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda job: probe(job[1], job[0], env), jobs))
    findings = {minor: Finding(minor) for minor in minors}
    working: dict[str, list[Interpreter]] = {minor: [] for minor in minors}
    for (minor, path), answer in zip(jobs, answers, strict=True):
        if isinstance(answer, Interpreter):
            working[minor].append(answer)
        else:
            findings[minor].broken.append((path, answer))
    for minor, interpreters in working.items():
        if interpreters:  # the newest; of equals, the first found
            findings[minor].interpreter = max(interpreters, key=lambda i: i.version)
            findings[minor].broken = []
    return findings


def put_first_on_path(interpreters: Sequence[tuple[str, Interpreter]], links: Path,
                      env: MutableMapping[str, str]) -> list[str]:
    """Make each ``(minor, interpreter)`` the ``python3.X`` that a PATH search finds.

    Each gets a directory of its own under ``links`` (named after its release and path,
    never changed, so that concurrent runs do not disturb each other and virtual
    environments that remember it stay valid) holding only a ``python3.X`` link to it;
    those directories go first on ``env["PATH"]``.  Returns them."""
    dirs = []
    for minor, interpreter in interpreters:
        key = hashlib.sha256(interpreter.path.encode()).hexdigest()[:12]
        folder = links / f"{interpreter.release}-{key}"
        link = folder / f"python{minor}"
        if not (link.is_symlink() and os.readlink(link) == interpreter.path):
            folder.mkdir(parents=True, exist_ok=True)
            temporary = folder / f".{link.name}.{os.getpid()}"
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
            temporary.symlink_to(interpreter.path)
            temporary.replace(link)
        dirs.append(str(folder))
    env["PATH"] = os.pathsep.join([*dirs, env.get("PATH", "")])
    return dirs


def use_found_interpreters() -> None:
    """Find 3.10–3.14, say what was found, and let nox find it (on POSIX systems; on
    Windows nox's own search, which asks the ``py`` launcher, is left as it is)."""
    if os.name == "nt":
        return
    findings = find_interpreters()
    for finding in findings.values():
        print(finding.line(), file=sys.stderr)
    found = [(f.minor, f.interpreter) for f in findings.values() if f.interpreter]
    links = Path(__file__).resolve().parent / ".nox" / "pythons"
    try:
        put_first_on_path(found, links, os.environ)
    except OSError:  # a read-only checkout
        put_first_on_path(found, Path(tempfile.mkdtemp(prefix="nox-pythons-")), os.environ)


# -- SIGINT ---------------------------------------------------------------------------------

# A background job (``cmd &``) of a non-interactive shell starts with SIGINT ignored, and
# so does every process it starts, unless one of them sets a handler.
SIGINT_NOTE = (
    "SIGINT is ignored here (nox started in the background?): the test runs get its "
    "default back, as CPython's multiprocessing tests send themselves SIGINT and expect "
    "KeyboardInterrupt"
)


@contextlib.contextmanager
def sigint_as_in_a_terminal() -> Iterator[None]:
    """Within the block, the processes that nox starts get SIGINT's default disposition
    (then Python raises KeyboardInterrupt on it), even if nox was started with SIGINT
    ignored: a handler, unlike SIG_IGN, is reset to the default by exec."""
    if signal.getsignal(signal.SIGINT) != signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


if __name__ == "user_nox_module":  # loaded by nox (tests/test_noxfile.py imports it too)
    use_found_interpreters()


# -- the sessions ---------------------------------------------------------------------------


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
    """gunicorn, uWSGI and Dask on 3.12, where shared objects are immortal: the memory
    that their workers keep sharing is checked there.  uWSGI is compiled for this
    Python as it installs (15 s here); it is not an extra of cowmp's."""
    session.install("-e", ".[test,gunicorn,dask]", "uwsgi")
    session.run("pytest", "tests/test_host_gunicorn.py", "tests/test_host_uwsgi.py",
                "tests/test_host_dask.py", *session.posargs, env=HELPER)


@nox.session(python=PYTHONS)
def cpython(session: nox.Session) -> None:
    """CPython's own test suites against cowmp: multiprocessing's with the cowfork start
    method (cpython_cowfork), concurrent.futures' process-pool tests with
    CowProcessPoolExecutor (cpython_futures; skipped where the Python lacks them).

    Arguments naming a harness or its tests (``cpython_futures.ProcessPoolCowforkWaitTest``)
    run only those; the others (``-v``, ``-k PATTERN``) go to every unittest run.

    Two of multiprocessing's tests send SIGINT to the test process and expect
    KeyboardInterrupt: where nox was started with SIGINT ignored (in the background), the
    runs get SIGINT's default back, saying so, rather than fail on it.
    """
    session.install("-e", ".")
    session.chdir("tests/cpython")
    names = [arg for arg in session.posargs if arg.startswith("cpython_")]
    options = [arg for arg in session.posargs if not arg.startswith("cpython_")]
    harnesses = dict.fromkeys(name.split(".")[0] for name in names) or dict.fromkeys(
        ["cpython_cowfork", "cpython_futures"])
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        session.log(SIGINT_NOTE)
    for harness in harnesses:  # one interpreter each
        tests = [name for name in names if name.split(".")[0] == harness] or [harness]
        with sigint_as_in_a_terminal():
            session.run("python", "-m", "unittest", *options, *tests)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "cowmp", "tests", "benchmarks", "examples", "noxfile.py")
