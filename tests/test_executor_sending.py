"""What goes to the workers, and how: lambdas and closures, functions and classes of
``__main__`` (those defined after the executor included), and objects passed to
cowmp.share(), which go by reference to executors created after the share.

cowmp.share() makes its object immortal (3.12+) and freezes the garbage collector's
heap for the rest of the process: those tests run in a fresh interpreter."""

from __future__ import annotations

import json

import executor_support as support
import pytest
from conftest import requires_fork, run_script

import cowmp
from cowmp import CowProcessPoolExecutor

no_leftovers = support.no_leftovers


def test_lambdas_and_closures():
    offset = 1000

    def closure(x):
        return x + offset

    with CowProcessPoolExecutor(max_workers=2) as ex:
        assert ex.submit(lambda x: x * 3, 5).result(timeout=30) == 15
        assert ex.submit(closure, 1).result(timeout=30) == 1001
        assert list(ex.map(lambda x, y: x - y, [10, 20], [1, 2])) == [9, 18]
        assert list(ex.map(closure, range(5))) == [1000, 1001, 1002, 1003, 1004]


@pytest.mark.timeout(120)
def test_functions_and_classes_of_main_including_ones_defined_after_the_executor():
    out = run_script("""
        import cowmp

        def early(x):
            return ("early", x)

        class Point:
            def __init__(self, x):
                self.x = x

        def make_point(x):
            return Point(x)

        if __name__ == "__main__":
            with cowmp.CowProcessPoolExecutor(max_workers=2) as ex:
                SCALE = 10

                def late(x):
                    return ("late", x * SCALE)

                print(ex.submit(early, 1).result(30))
                print(ex.submit(late, 2).result(30))
                print(list(ex.map(late, range(3))))
                print(ex.submit(lambda: Point(7).x).result(30))
                p = ex.submit(make_point, 5).result(30)
                print(type(p).__name__, p.x)
            print("done")
    """, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "('early', 1)",
        "('late', 20)",
        "[('late', 0), ('late', 10), ('late', 20)]",
        "7",
        "Point 5",
        "done",
    ], out.stderr


@pytest.mark.skipif(cowmp.FALLBACK, reason=(
    "spawned workers import the main script again, as multiprocessing's spawn does: "
    "a __main__ function is sent by name and the script's own definition runs "
    "(documented); this test is about fork mode"))
@pytest.mark.timeout(120)
def test_a_main_function_redefined_after_the_executor_runs_its_new_definition():
    out = run_script("""
        import cowmp

        def redefined():
            return "old"

        if __name__ == "__main__":
            with cowmp.CowProcessPoolExecutor(max_workers=2) as ex:
                def redefined():
                    return "new"

                print(ex.submit(redefined).result(30))
                print(list(ex.map(lambda f: f(), [redefined])))
    """, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["new", "['new']"]


@pytest.mark.timeout(120)
def test_instances_and_exceptions_of_main_classes_are_the_parents_classes():
    out = run_script("""
        import cowmp

        class Point:
            def __init__(self, x):
                self.x = x

        class MainError(Exception):
            pass

        def make_point(x):
            return Point(x)

        def fail():
            raise MainError("from the worker")

        if __name__ == "__main__":
            with cowmp.CowProcessPoolExecutor(max_workers=2) as ex:
                p = ex.submit(make_point, 5).result(30)
                print("point", type(p) is Point, isinstance(p, Point), p.x)
                try:
                    ex.submit(fail).result(30)
                except MainError as error:
                    print("caught", error)
                except Exception as error:
                    print("not caught:", type(error), type(error) is MainError)
    """, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["point True True 5", "caught from the worker"]


# the head of the scripts below: task functions of __main__ (by reference in fork mode)
_SHARED_HEAD = """
    import json
    import cowmp
    from cowmp import serialize

    def sum_len(seq):
        return sum(seq), len(seq)

    def is_shared(obj):
        return cowmp.is_shared(obj)
"""


@requires_fork
@pytest.mark.timeout(120)
def test_a_shared_object_is_sent_by_reference():
    out = run_script(_SHARED_HEAD + """
    if __name__ == "__main__":
        big = cowmp.share(list(range(2_000_000)))
        small = [1, 2, 3]
        with cowmp.CowProcessPoolExecutor(max_workers=2) as ex:
            snapshot = ex._pool.encoder.snapshot

            def captures_big():
                return sum(big), len(big)

            payloads = {
                "argument": (sum_len, [(big,)], None),
                "closure": (captures_big, [()], None),
                "small": (sum_len, [(small,)], None),
                # an equal list that was not shared goes by value
                "copy": (sum_len, [(list(big),)], None),
            }
            sizes = {name: len(serialize.dumps(payload, snapshot))
                     for name, payload in payloads.items()}
            results = {
                "argument": ex.submit(sum_len, big).result(timeout=30),
                "closure": ex.submit(captures_big).result(timeout=30),
                "shared in the worker": ex.submit(is_shared, big).result(timeout=30),
                "small": ex.submit(sum_len, small).result(timeout=30),
            }
        print(json.dumps({"sizes": sizes, "results": results}))
    """, timeout=90)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    sizes, results = report["sizes"], report["results"]
    assert sizes["argument"] < 1024, sizes
    assert sizes["closure"] < 1024, sizes
    assert sizes["argument"] < sizes["small"] + 64, sizes
    assert sizes["copy"] > 1_000_000, sizes
    expected = [sum(range(2_000_000)), 2_000_000]
    assert results == {"argument": expected, "closure": expected,
                       "shared in the worker": True, "small": [6, 3]}, results


@pytest.mark.timeout(120)
def test_an_object_shared_after_the_executor_was_created_goes_by_value():
    out = run_script(_SHARED_HEAD + """
    if __name__ == "__main__":
        with cowmp.CowProcessPoolExecutor(max_workers=2) as ex:
            late = cowmp.share(list(range(100_000)))
            size = len(serialize.dumps((sum_len, [(late,)], None),
                                       ex._pool.encoder.snapshot))
            results = [ex.submit(sum_len, late).result(timeout=30),
                       ex.submit(lambda: sum_len(late)).result(timeout=30),
                       list(ex.map(sum_len, [late, late]))]
        print(json.dumps({"size": size, "results": results}))
    """, timeout=90)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["size"] > 100_000, report["size"]
    expected = [sum(range(100_000)), 100_000]
    assert report["results"] == [expected, expected, [expected, expected]], report
