"""The GC freeze protocol and the parent's policy (DESIGN §2.1)."""

from __future__ import annotations

import pytest
from conftest import requires_fork, run_script

import cowmp


def test_policy_is_validated_and_switchable():
    assert cowmp.get_gc_policy() == "auto"
    with pytest.raises(ValueError, match="'sometimes' is not a cowmp GC policy"):
        cowmp.set_gc_policy("sometimes")
    for policy in cowmp.GC_POLICIES:
        cowmp.set_gc_policy(policy)
        assert cowmp.get_gc_policy() == policy
    cowmp.set_gc_policy("auto")


def test_bad_policy_in_environment_names_the_variable():
    out = run_script("import cowmp", env={"COWMP_GC_POLICY": "never"})
    assert out.returncode == 1
    assert "COWMP_GC_POLICY='never' is not a cowmp GC policy" in out.stderr


# shared by the scripts below: a cyclic object and a short-lived bare-fork child
PRELUDE = """
import gc, os, sys, cowmp

class Cycle:
    def __init__(self):
        self.me = self

def fork_and_reap():
    pid = cowmp.fork()
    if pid == 0:
        cowmp.exit(0)
    os.waitpid(pid, 0)
"""

POLICY_SCRIPT = PRELUDE + """
cowmp.set_gc_policy(sys.argv[1])
fork_and_reap()
frozen = gc.get_freeze_count()
garbage = [Cycle() for _ in range(5000)]
del garbage                      # 5000 unreachable cycles, younger than the last freeze
fork_and_reap()
grown = gc.get_freeze_count() - frozen
print(sys.argv[1], "frozen-garbage" if grown >= 5000 else "collected",
      "frozen-after" if gc.get_freeze_count() else "thawed")
"""


@requires_fork
@pytest.mark.parametrize("policy,expected", [
    ("auto", "auto collected frozen-after"),          # garbage freed, not frozen
    ("frozen", "frozen frozen-garbage frozen-after"),  # Instagram's recipe: garbage frozen
    ("unfreeze", "unfreeze collected thawed"),          # parent thaws right after each fork
])
def test_parent_policies(policy, expected):
    out = run_script(POLICY_SCRIPT, args=(policy,))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected


@requires_fork
def test_auto_policy_thaws_and_collects_when_no_child_shares_the_heap():
    # objects frozen alive that become cyclic garbage later are reclaimed once the
    # frozen set has grown by a quarter and no child is alive
    out = run_script(PRELUDE + """
fork_and_reap()
fork_and_reap()                       # idle: the first whole-heap collection
base = gc.get_freeze_count()
held = [Cycle() for _ in range(base)]  # alive at the next fork: frozen
fork_and_reap()                       # +100%, idle: collected (held survives)
assert gc.get_freeze_count() >= 1.9 * base
del held                              # frozen garbage now
more = [[] for _ in range(base)]      # another +50% of live objects
fork_and_reap()                       # idle, grown: thaw, collect, refreeze
print(gc.get_freeze_count() < 2.2 * base, len(more) == base)
""")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True True"


@requires_fork
def test_user_disabled_gc_is_never_collected_by_cowmp():
    out = run_script(PRELUDE + """
gc.disable()
garbage = [Cycle() for _ in range(3000)]
del garbage
before = gc.get_freeze_count()
fork_and_reap()
print(gc.get_freeze_count() - before >= 3000, gc.isenabled())
""")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True False"


MEMORY_SCRIPT = """
import gc, os, sys, psutil, cowmp
data = [(i, str(i), [i]) for i in range(300_000)]
heap = psutil.Process().memory_full_info().uss
def child(r, w):
    gc.collect(); gc.collect()
    os.write(w, b"x"); os.read(r, 1)
r1, w1 = os.pipe(); r2, w2 = os.pipe()
fork = cowmp.fork if sys.argv[1] == "cowmp" else os.fork
pid = fork()
if pid == 0:
    child(r2, w1); os._exit(0)
os.read(r1, 1)
uss = psutil.Process(pid).memory_full_info().uss
os.write(w2, b"x"); os.waitpid(pid, 0)
print(uss / heap)
"""


@requires_fork
def test_seed_002_gc_in_a_child_copies_little_with_cowmp_and_much_with_plain_fork():
    # seeds 001/002: a child that runs the collector over an inherited heap
    plain = float(run_script(MEMORY_SCRIPT, args=("os",)).stdout)
    cow = float(run_script(MEMORY_SCRIPT, args=("cowmp",)).stdout)
    assert cow < 0.10, cow
    assert plain > 0.30, plain
