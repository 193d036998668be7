"""Tasks that wait for others (`--after`, `--after-any`), against an in-process master: queued
when what they wait for ends, cancelled with the reason when a task they needed did not
complete (in a cascade), refused at submit when they could never run, and the same after a
restart from the stored records."""

from __future__ import annotations

import pytest

from cloudq.commands import Context, dispatch, split_line
from cloudq.core.model import TaskState
from cloudq.errors import ValidationError
from cloudq.master.core import Master
from tests.unit.test_commands import worker

S = TaskState


@pytest.fixture
def master() -> Master:
    return Master()


def run(master: Master, line: str):
    return dispatch(Context(master), split_line(line))


def finish(master: Master, session: int, task_id: str, state: str = "completed") -> None:
    task = master.get(task_id)
    master.report(task.worker, session, [{"task": task_id, "attempt": task.attempt, "state": state,
                                          **({"error": "boom"} if state == "failed" else {})}])


def test_a_task_waits_for_another_to_complete_then_runs(master: Master) -> None:
    session = worker(master, "w1", cores=1.0, max_tasks=1)
    run(master, "task --noop -cpu 1 --name first")  # t1 runs
    waits = run(master, "task --noop -cpu 1 --after t1 --name second")
    assert waits.status.startswith("Task t2 pending: waiting for t1 (assigned on w1)"), waits.status
    assert master.why("t2")["summary"] == "waiting for t1 (assigned on w1)"
    assert master.get("t2").state is S.PENDING and len(master.backlog) == 0
    finish(master, session, "t1")
    assert master.get("t2").state is S.ASSIGNED
    assert [(e.src, e.dst, e.reason) for e in master.story("t2")][:2] == [
        (S.PENDING, S.PENDING, "submitted; waits for t1"),
        (S.PENDING, S.QUEUED, "dependencies ended: t1 completed")]


def test_a_failed_dependency_cancels_the_chain_after_it_but_not_after_any(master: Master) -> None:
    session = worker(master, "w1", max_tasks=4)
    run(master, "task --exec false --retries 0")  # t1
    run(master, "task --noop --after t1")  # t2: needs t1 completed
    run(master, "task --noop --after t2")  # t3: needs t2, so t1 too
    run(master, "task --noop --after-any t1")  # t4: runs however t1 ends
    finish(master, session, "t1", "failed")
    assert master.get("t1").state is S.DEAD
    assert (master.get("t2").state, master.get("t2").last_error) == (S.CANCELLED, "dependency t1 dead")
    assert (master.get("t3").state, master.get("t3").last_error) == (S.CANCELLED, "dependency t2 cancelled")
    assert master.get("t4").state is S.ASSIGNED
    assert master.counts()["pending"] == 0


def test_what_can_never_run_is_refused_at_submit(master: Master) -> None:
    session = worker(master, "w1")
    with pytest.raises(ValidationError, match="waits for t9, which is not a task here"):
        run(master, "task --noop --after t9")
    with pytest.raises(ValidationError, match="not a task id"):
        run(master, "task --noop --after 5")
    run(master, "task --noop")  # t1
    run(master, "cancel t1")
    with pytest.raises(ValidationError, match="waits for t1 cancelled: it can never run"):
        run(master, "task --noop --after t1")
    assert run(master, "task --noop --after-any t1").data["state"] == "assigned"  # t1 has ended
    assert sorted(master.tasks) == ["t1", "t2"] and session


def test_a_pending_task_can_be_cancelled_and_its_dependents_follow(master: Master) -> None:
    worker(master, "w1", cores=1.0, max_tasks=1)
    run(master, "task --noop -cpu 1")  # t1 runs
    run(master, "task --noop --after t1")  # t2
    run(master, "task --noop --after t2")  # t3
    assert run(master, "cancel t2").status == "t2 cancelled"
    assert master.get("t3").state is S.CANCELLED and master.get("t3").last_error == "dependency t2 cancelled"
    assert "t1" not in master.waits.waiting or not master.waits.waiting["t1"]


def test_waits_survive_a_restart(master: Master) -> None:
    session = worker(master, "w1", cores=1.0, max_tasks=1)
    run(master, "task --noop -cpu 1")  # t1
    run(master, "task --noop --after t1")  # t2
    records = [t.to_dict() for t in master.tasks.values()]
    events = [e.to_dict() for e in master.events.newest_first()][::-1]
    again = Master()
    again.restore(records, events, {"last_seq": 2})
    session = again.register({"name": "w1", "cpu_cores": 1.0, "mem_gb": 8.0, "max_tasks": 1},
                             [["t1", 1]])["session"]
    assert again.get("t2").state is S.PENDING
    finish(again, session, "t1")
    assert again.get("t2").state is S.ASSIGNED
