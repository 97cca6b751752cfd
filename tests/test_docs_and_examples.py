"""Every example and every Python code block of the README runs."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import ROOT, requires_fork, run_script

import cowmp

EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
README_BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_there_is_something_to_run():
    assert len(EXAMPLES) >= 3 and len(README_BLOCKS) >= 5


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(path):
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
    if cowmp.FALLBACK and _fork_only(block):
        pytest.skip("shows a fork-only error; cowfork spawns through loky here")
    if "def on_starting(server)" in block:       # a gunicorn configuration file
        block += "\non_starting(None)\nprint('hooks installed')\n"
    out = run_script(block, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()


@requires_fork
def test_readme_blocks_print_what_they_claim():
    outputs = [run_script(b).stdout for b in README_BLOCKS if _fork_only(b)]
    assert outputs and "'cowfork' context" in outputs[0] and "'spawn' context" in outputs[0]


def test_demo_quick_shows_fork_and_cowfork_side_by_side():
    out = subprocess.run([sys.executable, "-m", "cowmp", "demo", "--quick"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("heap: 200,000 tuples")
    methods = [line.split()[0] for line in lines[2:]]
    assert "cowfork" in methods
    if "fork" in methods:   # not in the fallback mode
        assert "cowfork workers copied" in lines[-1]


def test_demo_rejects_bad_arguments():
    out = subprocess.run([sys.executable, "-m", "cowmp", "demo", "--workers", "0"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "--objects and --workers must be positive" in out.stderr
