from __future__ import annotations

import pytest

from cloudq.core.model import Task, TaskState
from cloudq.core.transitions import ALLOWED, EventLog, can_move, move
from cloudq.errors import TransitionError

S = TaskState


def make_task() -> Task:
    return Task(id="t1", kind="noop", spec={})


def test_happy_path_writes_one_event_per_move():
    task, log = make_task(), EventLog(100)
    for dst, now in ((S.QUEUED, 1.0), (S.ASSIGNED, 2.0), (S.RUNNING, 3.0), (S.COMPLETED, 4.0)):
        log.add(move(task, dst, now=now))
    assert task.state is S.COMPLETED and task.updated_at == 4.0
    story = log.story("t1")
    assert [(e.src, e.dst) for e in story] == [
        ("pending", "queued"), ("queued", "assigned"), ("assigned", "running"), ("running", "completed"),
    ]
    assert story[-1].reason == "finished successfully" and story[-1].time == 4.0


def test_illegal_move_names_task_and_history():
    task, log = make_task(), EventLog(100)
    log.add(move(task, S.QUEUED, now=1.0, reason="submitted"))
    with pytest.raises(TransitionError) as err:
        move(task, S.COMPLETED, now=2.0, history=log.story("t1"))
    assert "task t1 cannot move from queued to completed" in str(err.value)
    assert "pending -> queued" in str(err.value) and "submitted" in str(err.value)
    assert task.state is S.QUEUED  # unchanged


def test_final_states_have_no_way_out_but_operator_retry():
    for final in (S.COMPLETED, S.FAILED, S.CANCELLED, S.DEAD):
        exits = {dst for (src, dst) in ALLOWED if src is final}
        assert exits <= {S.QUEUED}
    assert not any(src is S.COMPLETED for (src, _) in ALLOWED)


@pytest.mark.parametrize("src", list(S))
@pytest.mark.parametrize("dst", list(S))
def test_every_pair_is_either_allowed_or_refused(src, dst):
    task = make_task()
    task.state = src
    if can_move(src, dst):
        assert move(task, dst, now=1.0).dst == dst.value
    else:
        with pytest.raises(TransitionError):
            move(task, dst, now=1.0)


def test_event_log_is_bounded():
    log, task = EventLog(retention=3, per_task=2), make_task()
    for i in range(5):
        task.state = S.QUEUED
        log.add(move(task, S.HELD, now=float(i)))
    assert len(log) == 3 and len(log.story("t1")) == 2


def test_effects_follow_from_the_states_a_move_leaves_and_enters():
    from cloudq.core.transitions import EFFECTS

    assert set(EFFECTS) == set(ALLOWED)
    for (src, dst), fx in EFFECTS.items():
        assert fx.enqueue == (dst is S.QUEUED) and fx.dequeue == (src is S.QUEUED)
        if src.is_active and dst is S.CANCELLED:  # kept until the worker confirms the kill
            assert not fx.release and not fx.finish
        else:
            assert fx.release == (src.is_active and not dst.is_active)
            assert fx.finish == dst.is_final


def test_no_move_is_allowed_that_nothing_makes():
    unused = {(S.PENDING, S.HELD), (S.ASSIGNED, S.QUEUED), (S.ASSIGNED, S.FAILED),
              (S.RUNNING, S.FAILED), (S.RUNNING, S.QUEUED)}
    assert not unused & set(ALLOWED)
