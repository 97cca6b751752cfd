"""The GC freeze protocol and the parent's policy (DESIGN §2.1)."""

from __future__ import annotations

import pytest
from conftest import requires_fork, run_script

import cowmp


@pytest.fixture
def restore_gc_policy():
    """This process's policy, as it was before the test."""
    before = cowmp.get_gc_policy()
    yield before
    cowmp.set_gc_policy(before)


def test_policy_is_validated_and_switchable(restore_gc_policy):
    with pytest.raises(ValueError, match="'sometimes' is not a cowmp GC policy"):
        cowmp.set_gc_policy("sometimes")
    assert cowmp.get_gc_policy() == restore_gc_policy  # a bad policy changes nothing
    for policy in cowmp.GC_POLICIES:
        cowmp.set_gc_policy(policy)
        assert cowmp.get_gc_policy() == policy


@pytest.mark.parametrize(("value", "policy"), [("", "auto"), (" Frozen ", "frozen")])
def test_policy_comes_from_the_environment_and_defaults_to_auto(value, policy):
    out = run_script("import cowmp; print(cowmp.get_gc_policy())",
                     env={"COWMP_GC_POLICY": value})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == policy


def test_bad_policy_in_environment_names_the_variable():
    out = run_script("import cowmp", env={"COWMP_GC_POLICY": "never"})
    assert out.returncode == 1, out.stderr
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
at_start = gc.get_freeze_count()     # 3.12 starts with a few hundred frozen objects
fork_and_reap()
frozen = gc.get_freeze_count()
garbage = [Cycle() for _ in range(5000)]
del garbage                      # 5000 unreachable cycles, younger than the last freeze
fork_and_reap()
grown = gc.get_freeze_count() - frozen
print(sys.argv[1], "frozen-garbage" if grown >= 5000 else "collected",
      "frozen-after" if gc.get_freeze_count() > at_start else "thawed")
"""


@requires_fork
@pytest.mark.parametrize("policy,expected", [
    ("auto", "auto collected frozen-after"),          # garbage freed, not frozen
    ("frozen", "frozen frozen-garbage frozen-after"),  # Instagram's recipe: garbage frozen
    ("unfreeze", "unfreeze collected thawed"),          # parent keeps nothing frozen
])
def test_parent_policies(policy, expected):
    out = run_script(POLICY_SCRIPT, args=(policy,))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected


@requires_fork
def test_auto_policy_thaws_and_collects_when_no_child_shares_the_heap():
    # objects frozen alive that become cyclic garbage later are reclaimed once the
    # heap has grown by a quarter and no child is alive
    out = run_script(PRELUDE + """
fork_and_reap()
fork_and_reap()                       # idle: the first whole-heap collection
base = gc.get_freeze_count()
held = [Cycle() for _ in range(base)]  # alive at the next fork: frozen
fork_and_reap()                       # +100%, idle: collected (held survives)
assert gc.get_freeze_count() >= 1.9 * base
del held                              # frozen garbage now
more = [[] for _ in range(2 * base)]  # the heap grows by more than a quarter
fork_and_reap()                       # idle, grown: thaw, collect, refreeze
print(gc.get_freeze_count() < 3.5 * base, len(more) == 2 * base)  # held: 4 * base
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
import gc, os, sys, time, psutil, cowmp
if sys.argv[2] == "sibling":   # a child alive at the fork: the parent freezes nothing
    sibling = cowmp.fork()
    if sibling == 0:
        time.sleep(60); cowmp.exit(0)
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
if sys.argv[2] == "sibling":
    os.kill(sibling, 9); os.waitpid(sibling, 0)
print(uss / heap)
"""


def _private_to_heap_ratio(fork: str, siblings: str) -> float:
    out = run_script(MEMORY_SCRIPT, args=(fork, siblings))
    assert out.returncode == 0, out.stderr
    return float(out.stdout)


@requires_fork
@pytest.mark.quiet  # a ratio of memory sizes
@pytest.mark.parametrize("siblings", ["alone", "sibling"])
def test_gc_in_a_child_copies_little_of_its_heap_with_cowmp_and_much_with_os_fork(siblings):
    # a child that runs the collector over the heap it inherited: under os.fork every
    # object it visits is written, so its page copied.  With a sibling alive the parent
    # does not freeze the data: the child's own freeze (at its start) does.
    plain = _private_to_heap_ratio("os", siblings)
    cow = _private_to_heap_ratio("cowmp", siblings)
    assert cow < 0.10, cow
    assert plain > 0.30, plain


# a long-lived child (as a pool's worker is) keeps the parent's heap shared
SIBLING = PRELUDE + """
import time, weakref
sibling = cowmp.fork()
if sibling == 0:
    time.sleep(60); cowmp.exit(0)
"""
REAP_SIBLING = """
os.kill(sibling, 9); os.waitpid(sibling, 0)
"""


@requires_fork
@pytest.mark.parametrize("policy", ["auto", "unfreeze"])
def test_objects_made_while_children_live_are_collected_as_under_fork(policy):
    out = run_script(SIBLING + """
cowmp.set_gc_policy(sys.argv[1])
cycle = Cycle(); ref = weakref.ref(cycle)
fork_and_reap()                  # alive at this fork, made while a child lives
del cycle
gc.collect()
print("freed" if ref() is None else "leaked")
""" + REAP_SIBLING, args=(policy,))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "freed"


@requires_fork
def test_terminated_pools_do_not_leak_while_another_pool_runs():
    # A terminated Pool with pending tasks is a reference cycle holding pipes.
    out = run_script("""
import gc, os, time, cowmp
keep = cowmp.Pool(1)
def fds(): return len(os.listdir("/proc/self/fd"))
base = fds()
for _ in range(8):
    pool = cowmp.Pool(2)
    pending = pool.map_async(time.sleep, [10] * 8, chunksize=1)
    pool.terminate(); pool.join(); del pool, pending
gc.collect()
print(fds() - base)
keep.terminate(); keep.join()
""")
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) <= 2, out.stdout  # each leaked pool would hold 10


@requires_fork
def test_collect_reclaims_frozen_garbage_while_children_live():
    out = run_script(SIBLING + """
gc.collect(); gc.freeze()        # e.g. frozen at an earlier fork
cycle = Cycle(); ref = weakref.ref(cycle)
fork_and_reap()                  # a child is alive: "auto" collects nothing frozen
gc.freeze()
del cycle
gc.collect()
frozen_garbage = ref() is not None
found = cowmp.collect()
print(frozen_garbage, ref() is None, found >= 1, gc.get_freeze_count() > 0)
""" + REAP_SIBLING)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True True True True"


@requires_fork
@pytest.mark.parametrize("policy", cowmp.GC_POLICIES)
def test_every_child_freezes_what_it_inherits_and_the_gc_runs_again(policy):
    out = run_script(SIBLING + """
cowmp.set_gc_policy(sys.argv[1])
tracked = len(gc.get_objects())
r, w = os.pipe()
pid = cowmp.fork()
if pid == 0:
    os.write(w, f"{gc.get_freeze_count() >= tracked} {gc.isenabled()}".encode())
    cowmp.exit(0)
os.waitpid(pid, 0)
print(os.read(r, 100).decode(), gc.isenabled())
""" + REAP_SIBLING, args=(policy,))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True True True"


@requires_fork
def test_a_failed_fork_restores_the_parents_gc():
    out = run_script(PRELUDE + """
def no_fork():
    raise BlockingIOError(11, "Resource temporarily unavailable")
os.fork = no_fork
try:
    cowmp.fork()
except BlockingIOError:
    print("raised", gc.isenabled())
""")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "raised True"
