"""The slot protocol (cowmp.slots) without processes: the parent's reader gives up on a
slot being written, the worker's writer writes its fields in the documented order, and
the encodings and parent-side writes round-trip."""

from __future__ import annotations

import time
from multiprocessing import sharedctypes

import pytest

from cowmp import slots
from cowmp.slots import ID, INDEX, READING, SLOT_FIELDS, START, UNTRACKED, YIELD


class _Changing:
    """A slot array whose fields read differently each time: ``values[offset]`` is the
    list of what successive reads of that offset return (the last one repeats)."""

    def __init__(self, values):
        self.values = {offset: list(seen) for offset, seen in values.items()}
        self.reads = []

    def __getitem__(self, offset):
        self.reads.append(offset)
        seen = self.values[offset]
        return seen.pop(0) if len(seen) > 1 else seen[0]


class _Recording:
    """A slot array that records its writes, in order: ``(offset, value)``."""

    def __init__(self, size):
        self.data = [0.0] * size
        self.writes = []

    def __setitem__(self, offset, value):
        self.writes.append((offset, value))
        self.data[offset] = value

    def __getitem__(self, offset):
        return self.data[offset]


def _fields(slot, piece_id, index, start):
    base = slot * SLOT_FIELDS
    return {base + ID: piece_id, base + INDEX: index, base + START: start}


def test_read_returns_the_slot_when_nothing_changes_between_the_reads():
    array = _Changing(_fields(1, [7.0], [3.0], [12.5]))
    assert slots.read(array, 1) == (7, 3, 12.5)
    base = SLOT_FIELDS
    # ID and INDEX read twice, around START
    assert array.reads == [base + ID, base + INDEX, base + START, base + ID, base + INDEX]
    piece_id, index, _ = slots.read(array, 1)
    assert type(piece_id) is int and type(index) is int


@pytest.mark.parametrize("changing", ["id", "index", "both"])
def test_read_returns_none_when_the_worker_writes_the_slot_meanwhile(changing):
    ids = [7.0, 8.0] if changing in ("id", "both") else [7.0]
    indices = [3.0, float(READING)] if changing in ("index", "both") else [3.0]
    array = _Changing(_fields(0, ids, indices, [12.5]))
    assert slots.read(array, 0) is None
    # read again later, the slot is whole
    assert slots.read(array, 0) == (int(ids[-1]), int(indices[-1]), 12.5)


def test_read_does_not_check_the_start_time_again():
    # START is written first by the worker: an ID and INDEX unchanged since before it
    # was read mean that it belongs to them
    array = _Changing(_fields(0, [7.0], [3.0], [12.5, 99.0]))
    assert slots.read(array, 0) == (7, 3, 12.5)


def test_begin_writes_start_then_index_then_id():
    array = _Recording(3 * SLOT_FIELDS)
    writer = slots.Writer(array, 2)
    before = time.monotonic()
    writer.begin(41)
    after = time.monotonic()
    base = 2 * SLOT_FIELDS
    assert [offset for offset, _ in array.writes] == [base + START, base + INDEX, base + ID]
    (_, start), (_, index), (_, piece_id) = array.writes
    assert before <= start <= after
    assert index == READING
    assert piece_id == 41
    # and the reader sees it
    assert slots.read(array, 2) == (41, READING, start)


def test_record_writes_the_index_alone():
    array = _Recording(2 * SLOT_FIELDS)
    writer = slots.Writer(array, 1)
    writer.record(5)
    writer.record(UNTRACKED)
    assert array.writes == [(SLOT_FIELDS + INDEX, 5), (SLOT_FIELDS + INDEX, UNTRACKED)]


def test_sending_index_round_trips():
    for count in (0, 1, 7, 1 << 20):
        index = slots.sending(count)
        assert index < 0 and index not in (UNTRACKED, READING)
        assert slots.sent_count(index) == count
    for index in (UNTRACKED, READING, 0, 5):
        assert slots.sent_count(index) is None
    # distinct counts are distinct indices
    assert len({slots.sending(count) for count in range(100)}) == 100


def test_sending_index_survives_the_shared_array_of_doubles():
    array = sharedctypes.RawArray("d", SLOT_FIELDS)
    writer = slots.Writer(memoryview(array).cast("B").cast("d"), 0)
    writer.begin(9)
    writer.record(slots.sending(123_456))
    piece_id, index, _ = slots.read(array, 0)
    assert piece_id == 9 and slots.sent_count(index) == 123_456


def test_clear_zeroes_one_slot_and_no_other():
    array = sharedctypes.RawArray("d", 3 * SLOT_FIELDS)
    for offset in range(3 * SLOT_FIELDS):
        array[offset] = offset + 1.0
    slots.clear(array, 1)
    assert list(array) == [
        *(offset + 1.0 for offset in range(SLOT_FIELDS)),
        *[0.0] * SLOT_FIELDS,
        *(offset + 1.0 for offset in range(2 * SLOT_FIELDS, 3 * SLOT_FIELDS)),
    ]
    assert slots.read(array, 1) == (0, 0, 0.0)


def test_request_yield_is_seen_by_that_workers_writer_only():
    array = sharedctypes.RawArray("d", 2 * SLOT_FIELDS)
    mine = slots.Writer(memoryview(array).cast("B").cast("d"), 1)
    other = slots.Writer(memoryview(array).cast("B").cast("d"), 0)
    assert not mine.wanted_back(42)
    slots.request_yield(array, 1, 42)
    assert array[SLOT_FIELDS + YIELD] == 42
    assert mine.wanted_back(42)
    assert not mine.wanted_back(41)
    assert not other.wanted_back(42)
    # the worker's fields are untouched
    assert slots.read(array, 1) == (0, 0, 0.0)
    slots.request_yield(array, 1, 0)  # asks nothing
    assert not mine.wanted_back(42)
