"""Every example and every Python code block of the README runs."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys

import pytest
from conftest import ROOT, requires_fork, run_script

import cowmp

EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
README_BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
#: optional hosts a README block or an example may import, and where they are tested
HOSTS = {"torch": "tests/test_host_pytorch.py", "joblib": "tests/test_host_joblib.py",
         "sklearn": "tests/test_host_joblib.py", "numpy": "tests/test_host_joblib.py",
         "dask": "tests/test_host_dask.py", "distributed": "tests/test_host_dask.py"}


def _skip_without_hosts(code: str) -> None:
    """Skip, with the reason, code that imports an optional host that is absent."""
    for module, tested in HOSTS.items():
        imported = re.search(rf"^\s*(import|from) {module}\b", code, re.M)
        if imported and importlib.util.find_spec(module) is None:
            pytest.skip(f"needs {module}, which is not in the test extra ({tested})")


def test_there_is_something_to_run():
    assert len(EXAMPLES) >= 3 and len(README_BLOCKS) >= 5


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(path):
    _skip_without_hosts(path.read_text())
    out = subprocess.run([sys.executable, str(path)], capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()


def _fork_only(block: str) -> bool:
    # the README's mismatch example: in the loky fallback cowfork's semaphores are named
    # and spawn-compatible, so there is no mismatch to show
    return "ContextMismatchError" in block


@pytest.mark.parametrize("index", range(len(README_BLOCKS)))
def test_readme_block_runs(index):
    block = README_BLOCKS[index]
    _skip_without_hosts(block)
    if cowmp.FALLBACK and _fork_only(block):
        pytest.skip("shows a fork-only error; cowfork spawns through loky here")
    # gunicorn's configuration file and application, and uWSGI's application (run by a
    # real server in tests/test_host_gunicorn.py and test_host_uwsgi.py): here, what
    # they define
    if "cowmp.gunicorn.apply(globals())" in block:
        block += "\nassert worker_exit.__cowmp_hook__\nprint(sorted(cowmp.gunicorn.HOOKS))\n"
    for name in ("app", "application"):  # a WSGI application: one request
        if f"def {name}(environ, start_response)" in block:
            block += (f"\nprint({name}({{'PATH_INFO': '/key-42'}}, "
                      "lambda status, headers: None))\n")
    out = run_script(block, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()


@requires_fork
def test_readme_blocks_print_what_they_claim():
    outputs = [run_script(b).stdout for b in README_BLOCKS if _fork_only(b)]
    assert outputs and "'cowfork' context" in outputs[0] and "'spawn' context" in outputs[0]
