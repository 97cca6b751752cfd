"""CowProcessPoolExecutor.map: results in order over every kind of input (lists, tuples and
ranges sliced as they are sent, iterators, several iterables, endless ones), chunk sizes,
read-ahead bounded by buffersize, closing its result, an error at the failing item."""

from __future__ import annotations

import itertools

import executor_support as support
import pytest
from conftest import wait_for
from executor_support import add, identity, square

import cowmp
from cowmp import CowProcessPoolExecutor

no_leftovers = support.no_leftovers


def _fail_at(x, bad):
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x * x


def _counting(consumed):
    """itertools.count(), recording how far it was read."""
    for i in itertools.count():
        consumed.append(i)
        yield i


@pytest.mark.timeout(60)
def test_map_many_tiny_tasks_in_order():
    with CowProcessPoolExecutor(max_workers=2) as ex:
        assert list(ex.map(square, range(20_000))) == [i * i for i in range(20_000)]
        assert list(ex.map(square, iter(range(5000)))) == [i * i for i in range(5000)]
        assert list(ex.map(square, [])) == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("chunksize", [1, 7, 1000])
def test_map_with_explicit_chunksize(chunksize):
    with CowProcessPoolExecutor(max_workers=2) as ex:
        assert list(ex.map(square, range(500), chunksize=chunksize)) == [
            i * i for i in range(500)]


@pytest.mark.timeout(60)
def test_map_over_multiple_iterables_stops_at_the_shortest():
    with CowProcessPoolExecutor(max_workers=2) as ex:
        assert list(ex.map(add, range(100), range(100, 300))) == [
            a + b for a, b in zip(range(100), range(100, 200), strict=True)]
        assert list(ex.map(add, range(10), itertools.count(1000))) == [
            1000 + 2 * i for i in range(10)]


@pytest.mark.timeout(60)
def test_map_over_lists_tuples_and_ranges_which_are_sliced_as_they_are_sent():
    data = list(range(30_000))
    with CowProcessPoolExecutor(max_workers=2) as ex:
        assert list(ex.map(square, data)) == [i * i for i in data]
        assert list(ex.map(square, tuple(data))) == [i * i for i in data]
        assert list(ex.map(square, range(5, 30_000, 3))) == [
            i * i for i in range(5, 30_000, 3)]
        assert list(ex.map(add, data, range(1000))) == [2 * i for i in range(1000)]
        assert list(ex.map(add, (1, 2, 3), [10, 20, 30, 40])) == [11, 22, 33]
        assert list(ex.map(square, data, chunksize=512)) == [i * i for i in data]
        assert list(ex.map(square, data[:3], chunksize=1)) == [0, 1, 4]


@pytest.mark.timeout(60)
def test_map_over_a_list_that_shrinks_meanwhile_stops_where_it_ends():
    data = list(range(200_000))
    with CowProcessPoolExecutor(max_workers=2) as ex:
        results = ex.map(identity, data, chunksize=1000)
        assert next(results) == 0
        del data[50_000:]  # what was not read yet is gone, as for a list iterator
        rest = list(results)
        assert len(rest) < 200_000 - 1
        assert rest == list(range(1, len(rest) + 1))
        assert ex.submit(square, 3).result(timeout=30) == 9


@pytest.mark.timeout(60)
def test_map_is_lazy_on_an_infinite_iterable():
    consumed = []
    with CowProcessPoolExecutor(max_workers=2) as ex:
        results = ex.map(square, _counting(consumed))
        first = list(itertools.islice(results, 200))
        assert first == [i * i for i in range(200)]
        assert len(consumed) < 1_000_000  # read ahead, but not without bound
        del results  # abandoned: its pending chunks are dropped
        assert list(ex.map(add, range(10), itertools.count(1000))) == [
            1000 + 2 * i for i in range(10)]
        assert ex.submit(square, 3).result(timeout=30) == 9


@pytest.mark.timeout(60)
def test_map_result_is_a_generator_that_can_be_closed():
    with CowProcessPoolExecutor(max_workers=2) as ex:
        results = ex.map(square, itertools.count())
        assert list(itertools.islice(results, 100)) == [i * i for i in range(100)]
        results.close()
        with pytest.raises(StopIteration):
            next(results)
        assert ex.submit(square, 3).result(timeout=30) == 9


@pytest.mark.timeout(60)
def test_map_buffersize_bounds_how_far_the_input_is_read_ahead():
    consumed = []
    with CowProcessPoolExecutor(max_workers=2) as ex:
        results = ex.map(identity, _counting(consumed), buffersize=10)
        assert next(results) == 0
        # every task read so far has run: nothing is left that could read on
        run = results._run
        assert wait_for(lambda: run.completed >= len(consumed), timeout=30), (
            run.completed, len(consumed))
        # one result yielded: at most 10 more tasks read (+1 of slack)
        assert len(consumed) <= 1 + 10 + 1, len(consumed)
        del results


@pytest.mark.timeout(60)
def test_map_raises_at_the_failing_item_like_the_stdlib():
    with CowProcessPoolExecutor(max_workers=2) as ex:
        got = []
        with pytest.raises(ValueError, match="bad item 37") as info:
            for value in ex.map(_fail_at, range(100), itertools.repeat(37)):
                got.append(value)
        assert got == [i * i for i in range(37)]
        assert isinstance(info.value.__cause__, cowmp.RemoteTraceback)
        assert "_fail_at" in str(info.value.__cause__)
