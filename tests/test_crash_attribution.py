"""Crash attribution (cowmp.crashes) as the pure function it is: for every phase a dead
worker's slot can show, which tasks fail, which run again (alone or together, with a
strike), and the exception each failed future gets."""

from __future__ import annotations

import concurrent.futures as cf
import signal
from concurrent.futures.process import BrokenProcessPool

import pytest

from cowmp import slots
from cowmp.crashes import (
    MAX_STRIKES,
    Failure,
    TaskTimeoutError,
    WorkerDiedError,
    attribute,
    death_error,
    describe_exit,
    strike,
)
from cowmp.jobs import Job, Piece

STARTED = 100.0  # the start time a slot records (unused by attribute)


def _task(x):
    return x


def _job(size=6):
    return Job(cf.Future(), _task, [(i,) for i in range(size)], None, single=False,
               timeout=None)


def _piece(job, indices, tracked=True, strikes=0):
    piece = Piece(job, list(indices), strikes=strikes)
    piece.tracked = tracked  # as its pickling decided
    return piece


def _describe(piece, index):
    return piece.job.describe(index)


def _shape(pieces):
    """Pieces to run again, as what matters of them: (job, indices, track, strikes)."""
    return [(piece.job, list(piece.indices), piece.track, piece.strikes) for piece in pieces]


# -- no piece begun -------------------------------------------------------------------------


@pytest.mark.parametrize("slot", ["empty", "unreadable", "another piece"])
def test_a_ready_worker_that_began_no_piece_was_reading_the_first(slot):
    job = _job()
    first, second = _piece(job, [0, 1, 2]), _piece(job, [3, 4])
    seen = {"empty": (0, 0, 0.0), "unreadable": None,
            "another piece": (second.id + 1000, 2, STARTED)}[slot]
    failures, requeue = attribute([first, second], seen, ready=True)
    assert failures == []
    # each task of the first runs again alone, recorded, with a strike; the next as it was
    assert _shape(requeue) == [(job, [0], True, 1), (job, [1], True, 1), (job, [2], True, 1),
                               (job, [3, 4], False, 0)]
    assert requeue[-1] is second
    assert all(piece.id != first.id for piece in requeue[:3])  # new ids


def test_a_worker_that_died_before_it_was_ready_began_nothing():
    job = _job()
    pieces = [_piece(job, [0, 1, 2]), _piece(job, [3, 4])]
    failures, requeue = attribute(pieces, (0, 0, 0.0), ready=False)
    assert failures == []
    assert requeue == pieces  # as they were: no strike


def test_a_worker_that_held_nothing_settles_nothing():
    assert attribute([], (0, 0, 0.0), ready=True) == ([], [])


# -- the piece it ran -----------------------------------------------------------------------


def test_reading_a_piece_strikes_each_of_its_tasks_alone():
    job = _job()
    done, reading, behind = _piece(job, [0]), _piece(job, [1, 2, 3]), _piece(job, [4, 5])
    failures, requeue = attribute([done, reading, behind],
                                  (reading.id, slots.READING, STARTED), ready=True)
    assert failures == []
    # the piece before: finished, its outcomes lost; the one behind: not begun
    assert requeue[0] is done and requeue[-1] is behind
    assert _shape(requeue[1:-1]) == [(job, [1], True, 1), (job, [2], True, 1),
                                     (job, [3], True, 1)]


@pytest.mark.parametrize("phase", ["untracked", "not tracked"])
def test_tasks_run_unrecorded_run_again_together_recorded_with_a_strike(phase):
    job = _job()
    # UNTRACKED says so whatever the piece; an index of a piece not recorded one by one
    # says nothing of which task ran
    untracked = phase == "untracked"
    piece = _piece(job, [1, 2, 3], tracked=untracked)
    index = slots.UNTRACKED if untracked else 1
    failures, requeue = attribute([piece], (piece.id, index, STARTED), ready=True)
    assert failures == []
    assert _shape(requeue) == [(job, [1, 2, 3], True, 1)]
    assert requeue[0].id != piece.id


@pytest.mark.parametrize("index,before,after", [
    (0, [], [11, 12, 13]),
    (2, [10, 11], [13]),
    (3, [10, 11, 12], []),
])
def test_the_task_recorded_as_running_fails_alone_and_its_neighbours_run_again(
        index, before, after):
    job = _job(20)
    piece = _piece(job, [10, 11, 12, 13])
    failures, requeue = attribute([piece], (piece.id, index, STARTED), ready=True)
    assert failures == [Failure(piece, 10 + index, None)]
    assert _shape(requeue) == [(job, part, False, 0) for part in (before, after) if part]
    assert all(again.id != piece.id for again in requeue)


def test_a_worker_killed_for_a_task_that_had_ended_fails_nothing_it_ran_next():
    """The parent killed the worker for task 1's timeout, but task 1 ended while the kill
    was on its way and the worker died running task 2: task 2 did not cause the death,
    so nothing fails and the piece runs again, with no strike."""
    job = _job(20)
    piece = _piece(job, [10, 11, 12, 13])
    failures, requeue = attribute([piece], (piece.id, 2, STARTED), ready=True,
                                  killed_for=(piece.id, 1, 0.5))
    assert failures == []
    assert _shape(requeue) == [(job, [10, 11, 12, 13], False, 0)]
    assert requeue[0].id != piece.id
    # killed for the task it still ran: that task fails, as any task running at a death
    failures, _ = attribute([piece], (piece.id, 2, STARTED), ready=True,
                            killed_for=(piece.id, 2, 0.5))
    assert failures == [Failure(piece, 12, None)]


def test_pieces_before_and_after_the_running_one_run_again_as_they_are():
    job = _job(10)
    first, second = _piece(job, [0, 1]), _piece(job, [2, 3])
    running, third, fourth = _piece(job, [4, 5, 6]), _piece(job, [7]), _piece(job, [8, 9])
    failures, requeue = attribute([first, second, running, third, fourth],
                                  (running.id, 1, STARTED), ready=True)
    assert failures == [Failure(running, 5, None)]
    assert requeue[:2] == [first, second] and requeue[-2:] == [third, fourth]
    assert _shape(requeue[2:-2]) == [(job, [4], False, 0), (job, [6], False, 0)]


@pytest.mark.parametrize("tracked", [True, False])
@pytest.mark.parametrize("count", [1, 2, 4])
def test_sending_the_outcomes_of_some_tasks_strikes_those_and_gives_back_the_rest(
        count, tracked):
    job = _job()
    indices = [0, 1, 2, 3, 4]
    piece = _piece(job, indices, tracked=tracked)
    failures, requeue = attribute([piece], (piece.id, slots.sending(count), STARTED),
                                  ready=True)
    assert failures == []
    # those that ran: their outcomes were lost; alone if they were recorded one by one
    ran = indices[:count]
    struck = [(job, [i], True, 1) for i in ran] if tracked else [(job, ran, True, 1)]
    # the rest never began: as they were, no strike
    assert _shape(requeue) == [*struck, (job, indices[count:], False, 0)]


def test_sending_the_outcomes_of_every_task_strikes_them_all():
    job = _job()
    piece = _piece(job, [0, 1, 2])
    failures, requeue = attribute([piece], (piece.id, slots.sending(3), STARTED), ready=True)
    assert failures == []
    assert _shape(requeue) == [(job, [0], True, 1), (job, [1], True, 1), (job, [2], True, 1)]


def test_a_piece_given_back_before_any_task_ran_runs_again_whole():
    job = _job()
    piece = _piece(job, [0, 1, 2])
    failures, requeue = attribute([piece], (piece.id, slots.sending(0), STARTED), ready=True)
    assert failures == []
    assert _shape(requeue) == [(job, [0, 1, 2], False, 0)]


# -- strikes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("slot_index,phase", [
    (slots.READING, "reading"),
    (slots.UNTRACKED, "running"),
    (slots.sending(2), "sending the results of"),
])
def test_a_task_in_flight_at_a_second_death_fails_instead_of_running_again(slot_index,
                                                                          phase):
    assert MAX_STRIKES == 2
    job = _job()
    piece = _piece(job, [3, 4], strikes=MAX_STRIKES - 1)
    failures, requeue = attribute([piece], (piece.id, slot_index, STARTED), ready=True)
    assert failures == [Failure(piece, 3, phase), Failure(piece, 4, phase)]
    assert requeue == []


def test_a_first_piece_being_received_at_a_second_death_fails():
    job = _job()
    piece = _piece(job, [2], strikes=1)
    failures, requeue = attribute([piece], None, ready=True)
    assert failures == [Failure(piece, 2, "reading")]
    assert requeue == []


def test_strike_adds_to_failures_only_at_max_strikes():
    job = _job()
    failures = []
    again = strike(_piece(job, [0, 1]), [0, 1], "running", False, failures)
    assert failures == [] and _shape(again) == [(job, [0, 1], True, 1)]
    again = strike(again[0], [0, 1], "running", True, failures)
    assert again == []
    assert [(f.index, f.phase) for f in failures] == [(0, "running"), (1, "running")]


# -- the exception a failed task gets ------------------------------------------------------------


def test_a_task_that_was_running_gets_worker_died_error():
    job = _job()
    piece = _piece(job, [0, 1, 2])
    error = death_error(Failure(piece, 1, None), 4321, -signal.SIGKILL, None, _describe)
    assert type(error) is WorkerDiedError and isinstance(error, BrokenProcessPool)
    assert error.pid == 4321 and error.exitcode == -signal.SIGKILL
    assert "pid 4321" in str(error) and "_task(1)" in str(error)
    assert "killed by SIGKILL" in str(error) and "replaced" in str(error)


def test_a_task_that_struck_out_gets_worker_died_error_naming_the_phase():
    job = _job()
    piece = _piece(job, [0, 1, 2], strikes=1)
    error = death_error(Failure(piece, 2, "sending the results of"), 99, 3, None, _describe)
    assert type(error) is WorkerDiedError
    assert error.pid == 99 and error.exitcode == 3
    assert "sending the results of task _task(2)" in str(error)
    assert "with exit code 3" in str(error) and "not run again" in str(error)


def test_the_task_its_worker_was_killed_for_gets_task_timeout_error():
    job = _job()
    piece = _piece(job, [4, 5, 6])
    kill_reason = (piece.id, 1, 0.5)  # the task at position 1 of the piece: task 5
    error = death_error(Failure(piece, 5, None), 77, -signal.SIGKILL, kill_reason,
                        _describe)
    assert type(error) is TaskTimeoutError
    assert isinstance(error, TimeoutError) and isinstance(error, cf.TimeoutError)
    assert "_task(5)" in str(error) and "0.5 s" in str(error) and "pid 77" in str(error)
    # another task of that worker, or of another piece, died with it: not a timeout
    for failure, reason in [(Failure(piece, 4, None), kill_reason),
                            (Failure(piece, 5, None), (piece.id + 1, 1, 0.5))]:
        error = death_error(failure, 77, -signal.SIGKILL, reason, _describe)
        assert type(error) is WorkerDiedError, (failure, reason)


def test_a_struck_out_task_is_not_a_timeout_even_if_its_worker_was_killed_for_it():
    job = _job()
    piece = _piece(job, [0], strikes=1)
    error = death_error(Failure(piece, 0, "running"), 5, -signal.SIGKILL, (piece.id, 0, 1.0),
                        _describe)
    assert type(error) is WorkerDiedError


@pytest.mark.parametrize("exitcode,text", [
    (None, "with an unknown status"),
    (0, "with exit code 0"),
    (3, "with exit code 3"),
    (-signal.SIGSEGV, "killed by SIGSEGV"),
    (-200, "killed by signal 200"),
])
def test_describe_exit(exitcode, text):
    assert describe_exit(exitcode) == text
