"""cowmp.share(): the walk, immortality (3.12+), cached hashes, what is left alone, the
C helper and the Python walk agreeing, safety in the parent and in children, preload()."""

from __future__ import annotations

import ctypes
import gc
import os
import sys
import warnings
import weakref

import pytest
from conftest import requires_fork, run_script

import cowmp
from cowmp import immortal

needs_immortality = pytest.mark.skipif(not immortal.CAN_IMMORTALIZE,
                                       reason="objects cannot be made immortal here")


@pytest.fixture(autouse=True)
def _quiet_before_312():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cowmp.SharingWarning)
        yield


def _text(i: int) -> str:
    return "".join(["text-", str(i)])  # made at run time: not interned, hash not cached


def _cached_hash(s: str) -> int:
    """The hash field of a str object (-1: not computed yet)."""
    return ctypes.c_ssize_t.from_address(id(s) + 3 * ctypes.sizeof(ctypes.c_ssize_t)).value


class Record:
    def __init__(self, i: int) -> None:
        self.name = _text(i)
        self.values = [i, i + 0.5]


class Slotted:
    __slots__ = ("a", "b")

    def __init__(self, i: int) -> None:
        self.a = _text(i)
        self.b = (i, [i])


class Finalized:
    def __init__(self) -> None:
        self.payload = [_text(1)]

    def __del__(self) -> None:
        pass


def _function_with_default(x=[1, 2, 3]):  # noqa: B006 - the default is the point
    return x


def _data():
    """Every kind of container and instance, and what must be left alone."""
    referenced = Record(7)
    data = {
        "records": [Record(i) for i in range(3)],
        "slotted": Slotted(1),
        "nested": ((1.5, _text(2), [{_text(3): b"".join([b"raw", b"bytes"])}]),),
        "sets": ({_text(4), (5, _text(5))}, frozenset({_text(6)})),
        "finalized": Finalized(),
        "referenced": referenced,
        "program": [_function_with_default, Record, os, lambda: None],
    }
    return data, weakref.ref(referenced)


def _parts(data):
    """(name, object, should be immortal) for each object of ``_data()`` checked."""
    record = data["records"][1]
    slotted = data["slotted"]
    inner = data["nested"][0][2][0]
    key = next(iter(inner))
    small_set = data["sets"][0]
    tuple_in_set = next(item for item in small_set if isinstance(item, tuple))
    return [
        ("the root dict", data, True),
        ("a list", data["records"], True),
        ("an instance", record, True),
        ("its attribute value", record.name, True),
        ("its list attribute", record.values, True),
        ("a float in it", record.values[1], True),
        ("a slotted instance", slotted, True),
        ("a slot value", slotted.a, True),
        ("a tuple in a slot", slotted.b, True),
        ("a nested tuple", data["nested"][0], True),
        ("a dict in a list", inner, True),
        ("a dict key", key, True),
        ("a bytes value", inner[key], True),
        ("a set", small_set, True),
        ("a tuple in a set", tuple_in_set, True),
        ("a frozenset", data["sets"][1], True),
        ("an instance with __del__", data["finalized"], False),
        ("what it holds", data["finalized"].payload, True),
        ("an instance with a weak reference", data["referenced"], False),
        ("what that one holds", data["referenced"].values, True),
        ("a function", _function_with_default, False),
        ("its default (not entered)", _function_with_default.__defaults__[0], False),
        ("a class", Record, False),
        ("a module", os, False),
        ("a lambda", data["program"][3], False),
    ]


def test_share_returns_the_object_and_registers_it():
    data = [_text(i) for i in range(10)]
    assert cowmp.share(data) is data
    assert cowmp.is_shared(data)
    assert cowmp.share(None) is None and cowmp.share(5) == 5


@needs_immortality
def test_everything_reachable_becomes_immortal_and_the_program_is_left_alone():
    data, alive = _data()
    assert not cowmp.is_immortal(data["records"])
    walked = immortal.prepare(data)
    wrong = [(name, expected) for name, obj, expected in _parts(data)
             if cowmp.is_immortal(obj) != expected]
    assert not wrong, wrong
    assert walked.immortal > 20 and walked.mortal >= 2  # the two instances at least
    assert alive() is data["referenced"]
    # walked again: what is immortal is not entered again
    again = immortal.prepare(data)
    assert again.immortal == 0 and again.objects == again.mortal < walked.mortal + 2


@needs_immortality
def test_immortal_representation_is_the_interpreters():
    obj = [_text(1)]
    immortal.prepare(obj)
    count = sys.getrefcount(obj)
    if sys.version_info >= (3, 14):
        assert count & 0xFFFFFFFF == 3 << 30  # _Py_IMMORTAL_INITIAL_REFCNT
    else:
        assert count == 0xFFFFFFFF  # _Py_IMMORTAL_REFCNT
    for _ in range(1000):  # reference counting leaves it alone
        copies = [obj] * 10
        del copies
    assert sys.getrefcount(obj) == count


def test_string_hashes_are_computed_on_every_version():
    texts = [_text(i) for i in range(5)]
    assert all(_cached_hash(s) == -1 for s in texts)
    cowmp.share({"texts": texts})
    assert all(_cached_hash(s) == hash(s) for s in texts)


@pytest.mark.skipif(immortal._immortal is None, reason="the C helper is not built")
def test_c_helper_and_python_walk_agree():
    by_c, alive_c = _data()
    by_python, alive_python = _data()
    immortalize = immortal.CAN_IMMORTALIZE
    from_c = immortal.prepare(by_c, immortalize)
    from_python = immortal._walk_in_python(by_python, immortalize)
    assert from_c == from_python
    assert [cowmp.is_immortal(obj) for _, obj, _ in _parts(by_c)] == [
        cowmp.is_immortal(obj) for _, obj, _ in _parts(by_python)]
    texts = [obj for _, obj, _ in _parts(by_python) if type(obj) is str]
    assert texts and all(_cached_hash(s) == hash(s) for s in texts)
    assert alive_c() is by_c["referenced"] and alive_python() is by_python["referenced"]


def test_the_c_helper_is_built_where_required():
    if os.environ.get("COWMP_REQUIRE_C_HELPER") != "1":
        pytest.skip("COWMP_REQUIRE_C_HELPER=1 is not set (the test sessions set it "
                    "when a C compiler is present)")
    assert immortal._immortal is not None, "cowmp/_immortal.c was not built"
    assert immortal._immortal.CAN_IMMORTALIZE == immortal.CAN_IMMORTALIZE


def test_cycles_and_shared_substructures_are_walked_once():
    inner = [_text(1)]
    cycle: list = [inner, inner]
    cycle.append(cycle)
    walked = immortal.prepare(cycle, immortal.CAN_IMMORTALIZE)
    assert walked.objects == 3  # cycle, inner, the string


@pytest.mark.skipif(immortal.CAN_IMMORTALIZE, reason="immortality works here")
def test_warns_once_naming_python_312():
    out = run_script("""
        import warnings
        import cowmp

        warnings.simplefilter("always")
        with warnings.catch_warnings(record=True) as caught:
            cowmp.share([1, 2])
            cowmp.share({"a": [3]})
        assert len(caught) == 1, caught
        warning = caught[0]
        assert warning.category is cowmp.SharingWarning
        assert "3.12" in str(warning.message), warning.message
        assert warning.filename.endswith("script.py"), warning.filename
        print("ok")
    """)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_immortalizing_where_impossible_is_an_error():
    if immortal.CAN_IMMORTALIZE:
        pytest.skip("immortality works here")
    with pytest.raises(ValueError, match="cannot make objects immortal"):
        immortal.prepare([1], immortalize=True)


@requires_fork
@pytest.mark.timeout(120)
def test_shared_data_stays_usable_in_the_parent_and_in_children():
    out = run_script("""
        import gc, sys, warnings, weakref
        import cowmp

        warnings.simplefilter("ignore", cowmp.SharingWarning)
        rows = cowmp.share([[i, str(i)] for i in range(1000)])
        table = cowmp.share({str(i): [i] for i in range(1000)})

        def mutate(tag):
            rows.append([tag])
            rows[3].append(tag)
            table["7"] = [tag]
            table[tag] = rows[-1]
            del table["8" if tag == "parent" else "9"]
            assert rows[-1] == [tag] and rows[3][-1] == tag and table["7"] == [tag]
            assert sum(row[0] for row in rows[:1000]) == sum(range(1000))
            # reference counting leaves immortal data alone, and counts the rest
            assert cowmp.is_immortal(rows) == cowmp.immortal.CAN_IMMORTALIZE
            before = sys.getrefcount(rows)
            more = [rows] * 3
            assert sys.getrefcount(rows) == before + (0 if cowmp.is_immortal(rows) else 3)
            del more
            # the collector finds new referrers of shared objects
            holder = [rows[5]]
            assert any(r is holder for r in gc.get_referrers(rows[5]))
            # the collector still finds new cycles, among shared data too
            found = []
            class Node: pass
            node = Node(); node.me = node; node.rows = rows
            weakref.finalize(node, found.append, True)
            del node
            gc.collect()
            assert found == [True], "a new cycle was not collected"

        def child():
            assert table["5"] == [5] and rows[10] == [10, "10"]
            mutate("child")

        mutate("parent")
        ctx = cowmp.get_context("cowfork")
        process = ctx.Process(target=child)
        process.start()
        process.join(60)
        assert process.exitcode == 0, process.exitcode
        assert "child" not in table  # the child's changes are its own
        with cowmp.CowProcessPoolExecutor(max_workers=2) as ex:
            assert list(ex.map(len, [rows, table])) == [len(rows), len(table)]
        print("ok")
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
    assert out.stderr == ""  # a clean exit: no error or warning at teardown


def test_preload_loads_with_the_collector_off_and_shares_at_the_end():
    assert gc.isenabled()
    with cowmp.preload() as loading:
        assert not gc.isenabled()
        table = loading.share({_text(i): [i] for i in range(100)})
        assert not cowmp.is_shared(table)
    assert gc.isenabled()
    assert cowmp.is_shared(table)
    assert cowmp.is_immortal(table) == immortal.CAN_IMMORTALIZE


def test_preload_shares_nothing_when_loading_fails_and_keeps_a_disabled_collector_off():
    with pytest.raises(KeyError), cowmp.preload() as loading:
        partial = loading.share([1, 2, 3])
        raise KeyError("missing")
    assert gc.isenabled()
    assert not cowmp.is_shared(partial)
    gc.disable()
    try:
        with cowmp.preload():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
