"""The parts of loky that cowmp relies on beyond its public API.  If a new loky moves
one, this fails first, naming it (pyproject pins loky to the versions tested)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest

import cowmp


def test_loky_still_has_what_the_fallback_uses():
    from multiprocessing.reduction import ForkingPickler

    reduction = importlib.import_module("loky.backend.reduction")
    assert isinstance(getattr(reduction, "_dispatch_table", None), dict), (
        "loky.backend.reduction._dispatch_table is gone: cowmp.fallback.mirror_reducer "
        "cannot teach loky's pickler multiprocessing's reducers")
    popen_module = ("loky.backend.popen_loky_win32" if os.name == "nt"
                    else "loky.backend.popen_loky_posix")
    popen = importlib.import_module(popen_module).Popen
    # the child is started as ``python -m <Popen's module>``: cowmp's subclass names it
    assert cowmp.fallback.popen_class().__module__ == popen_module
    assert issubclass(cowmp.fallback.popen_class(), popen)
    queues = importlib.import_module("loky.backend.queues")
    assert {"Queue", "SimpleQueue"} <= set(dir(queues))
    context = importlib.import_module("loky.backend.context")
    assert context.ctx_loky.get_start_method() == "loky"
    # reducers registered with the standard pickler reach loky's once it is in use
    cowmp.fallback.loky_context()

    class Registered:
        pass

    def reduce(obj):  # pragma: no cover - only looked up
        return Registered, ()

    ForkingPickler.register(Registered, reduce)
    assert reduction._dispatch_table[Registered] is reduce

    def again(obj):  # pragma: no cover - only looked up
        return Registered, ()

    # a type registered twice (torch does so) keeps the latest reducer, as in
    # multiprocessing's own table; loky's own reducers are left alone
    ForkingPickler.register(Registered, again)
    assert reduction._dispatch_table[Registered] is again
    own = next(cls for cls in reduction._dispatch_table
               if cls not in ForkingPickler._extra_reducers)
    kept = reduction._dispatch_table[own]
    ForkingPickler.register(own, again)
    try:
        assert reduction._dispatch_table[own] is kept
    finally:
        ForkingPickler._extra_reducers.pop(own, None)


def test_importing_cowmp_does_not_import_loky_where_fork_exists():
    if not hasattr(os, "fork"):
        pytest.skip("without fork, cowfork is loky")
    code = ("import sys, cowmp; print(sorted(m for m in sys.modules if m.split('.')[0] "
            "== 'loky'))")
    env = {k: v for k, v in os.environ.items() if k != "COWMP_FORCE_FALLBACK"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True).stdout
    assert out.strip() == "[]"
    # asked for by name, loky's context is there
    code = "import cowmp; print(cowmp.get_context('loky').get_start_method())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True).stdout
    assert out.strip() == "loky"
