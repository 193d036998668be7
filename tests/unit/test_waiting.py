"""The waiting line: queued tasks by class in wait order, and by priority."""

from __future__ import annotations

from cloudq.core.model import Priority, QueueClass, new_task
from cloudq.core.waiting import WaitingLine


def _task(seq: int, queue: str = "default", priority: str = "medium"):
    return new_task({"kind": "noop", "queue": queue, "priority": priority}, task_id=f"t{seq}",
                    seq=seq, now=0.0)


def test_the_oldest_wait_of_each_class_and_the_counts_follow_enter_and_leave():
    line = WaitingLine()
    first, second, live = _task(1), _task(2, priority="high"), _task(3, queue="live")
    line.enter(first, 10.0)
    line.enter(second, 20.0)
    line.enter(live, 30.0)
    assert line.oldest(now=40.0) == {"default": 30.0, "live": 10.0}
    assert line.by_class() == {"live": 1, "default": 2, "batch": 0}
    assert line.by_priority() == {"high": 1, "medium": 2, "low": 0}
    line.leave(first)
    assert line.oldest(now=40.0) == {"default": 20.0, "live": 10.0}
    line.leave(first)  # leaving twice changes nothing
    assert line.by_priority()["medium"] == 1 and line.by_class()["default"] == 1


def test_a_task_moved_to_another_class_keeps_its_place_there_by_time():
    line = WaitingLine()
    newer, older = _task(2, queue="batch"), _task(1)
    line.enter(newer, 50.0)
    line.enter(older, 10.0)
    line.leave(older)
    older.queue, older.priority = QueueClass.BATCH, Priority.LOW
    line.enter(older, 10.0)  # older than every task already in batch: it leads the class
    assert line.oldest(now=60.0) == {"batch": 50.0}
    assert line.by_class() == {"live": 0, "default": 0, "batch": 2}
    assert line.by_priority() == {"high": 0, "medium": 1, "low": 1}
