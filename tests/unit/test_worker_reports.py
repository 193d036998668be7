"""What a worker tells the master is checked at the boundary, and one bad item never stops the
safety net: driven directly, with a fake clock."""

from __future__ import annotations

import math

import pytest

from cloudq.core.model import TaskState
from cloudq.errors import LimitError, NotFoundError, ValidationError
from cloudq.master.core import Master, MasterConfig
from cloudq.master.reports import parse_report
from tests.unit.test_master_core import Clock, noop, worker

S = TaskState


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def master(clock):
    return Master(config=MasterConfig(lease_s=10.0, start_deadline_s=30.0, max_workers=3,
                                      forget_offline_s=100.0), clock=clock)


@pytest.mark.parametrize("started_at", ["yesterday", [1], {"t": 1}, math.inf, math.nan, True,
                                        1000.0 + 10 * 365 * 86400, -1e12])
def test_a_bad_start_time_is_refused_and_changes_nothing(master, started_at):
    s = worker(master, "w")
    (task,) = master.submit([noop(timeout_s=5)])
    report = {"task": task.id, "attempt": 1, "state": "running", "started_at": started_at}
    assert master.report("w", s, [report]) == [task.id]
    assert task.state is S.ASSIGNED and task.started_at is None


def test_reports_are_cut_to_size_and_unknown_result_fields_dropped(clock):
    report = parse_report({"task": "t1", "attempt": 1, "state": "failed", "log_tail": "x" * 100_000,
                           "result": {"error": "e" * 10_000, "exit_code": 3, "evil": "y" * 10**6,
                                      "fault": "task", "duration_s": 1.5}}, clock.now)
    assert len(report.log_tail) == 8192 and len(report.result["error"]) == 2000
    assert report.result == {**report.result, "exit_code": 3, "fault": "task", "duration_s": 1.5}
    assert "evil" not in report.result
    for bad in ({"exit_code": "0"}, {"duration_s": -1}, {"fault": "nobody"}, {"output": [1]},
                {"output": {"big": "z" * (1 << 17)}}, {"started_at": "x"}):
        with pytest.raises(ValidationError):
            parse_report({"task": "t1", "attempt": 1, "state": "failed", "result": bad}, clock.now)
    with pytest.raises(ValidationError, match="progress"):
        parse_report({"task": "t1", "attempt": 1, "state": "running",
                      "progress": {str(i): i for i in range(100)}}, clock.now)


def test_one_broken_task_does_not_stop_the_timers_for_the_others(master, clock):
    """A task carrying a value no report can bring any more (e.g. from an old journal): its
    timer fails, is logged, and every other deadline is still kept."""
    s = worker(master, "w", max_tasks=4)
    broken, healthy = master.submit([noop(timeout_s=5), noop(timeout_s=5)])
    for task in (broken, healthy):
        master.report("w", s, [{"task": task.id, "attempt": 1, "state": "running"}])
    broken.started_at = "not a time"  # as a hostile report once left it
    clock.now += 20
    master.report("w", s, [])  # the worker is alive
    master.timers()
    assert healthy.state in (S.RETRYING, S.QUEUED, S.ASSIGNED) and "timeout" in healthy.last_error
    assert broken.state is S.RUNNING and "internal error" in broken.last_error
    master.tick()  # the processor goes on too
    assert master.view(broken)["id"] == broken.id


def test_an_assignment_that_never_starts_goes_back_to_the_queue(master, clock):
    s_ghost = worker(master, "ghost", max_tasks=4)
    (task,) = master.submit([noop(retry_backoff_s=0, max_retries=10)])
    assert task.worker == "ghost" and task.attempt == 1
    clock.now += 31  # it heartbeats, never fetches, never starts anything
    master.heartbeat("ghost", {"cpu_percent": 1.0})
    master.timers()
    assert "ghost did not start it within 30s" in task.last_error and task.attempt == 2
    assert master.workers["ghost"].consecutive_failures == 1
    assert {"cancel": task.id, "attempt": 1} in master.fetch("ghost", s_ghost, wait_s=0)  # drop it
    for _ in range(4):  # it goes on sitting on its assignments: quarantined after 5
        clock.now += 31
        master.heartbeat("ghost", {"cpu_percent": 1.0})
        master.timers()
    assert master.workers["ghost"].quarantined and task.state is S.QUEUED
    worker(master, "good")
    assert task.state is S.ASSIGNED and task.worker == "good" and task.attempt == 6


def test_unstarted_attempts_do_not_use_up_retries(master, clock):
    for i in range(2):
        worker(master, f"ghost-{i}", max_tasks=1)
    (task,) = master.submit([noop(retry_backoff_s=0, max_retries=1)])
    for _ in range(4):  # the peers in turn take it and sit on it
        clock.now += 31
        for i in range(2):
            master.heartbeat(f"ghost-{i}", {"cpu_percent": 1.0})
        master.timers()
    assert task.state is S.ASSIGNED and task.unstarted == 4 and task.attempt == 5
    worker(master, "good")
    clock.now += 31
    master.heartbeat("good", {"cpu_percent": 1.0})
    master.timers()  # the fifth ghost turn ends; with max_retries 1 it would long be dead
    assert task.state is S.ASSIGNED and task.worker == "good" and task.attempt == 6


def test_worker_facts_and_samples_are_bounded(master):
    huge = "x" * (1 << 20)
    worker(master, "w", host=huge, junk={"a": huge}, tools={"encoders": [huge] * 10_000},
           gpus=[{"mem_gb": 8, "name": huge, "deep": {"deeper": {"deepest": huge}}}])
    master.heartbeat("w", {"cpu_percent": 1.0, "gpus": [{"name": huge}] * 1000, "junk": huge})
    view = master.worker_views()[0]
    size = len(str(view))
    print(f"\nworker view of a peer that sent ~20 MB of facts: {size} characters")
    assert size < 64_000 and "junk" not in view["facts"] and "junk" not in view["sample"]
    assert len(view["facts"]["tools"]["encoders"]) == 64
    with pytest.raises(ValidationError):
        master.heartbeat("w", "not an object")


def test_a_heartbeat_from_an_older_session_is_refused(master, clock):
    """A worker process replaced by a newer one (same name, same certificate) cannot keep the
    worker heard, nor show its own samples: it is told its session is stale, and registers
    again like after any other refused call."""
    old = worker(master, "w")
    new = worker(master, "w")
    master.heartbeat("w", {"cpu_percent": 1.0}, new)
    clock.now += 5
    for sample in ({"cpu_percent": 99.0}, None):
        with pytest.raises(NotFoundError, match=f"session {old} is stale"):
            master.heartbeat("w", sample, old)
    record = master.workers["w"]
    assert record.sample == {"cpu_percent": 1.0} and record.last_seen == 1000.0


def test_offline_workers_are_forgotten_and_the_total_is_capped(master, clock):
    for name in ("a", "b", "c"):
        worker(master, name)
    with pytest.raises(LimitError, match="worker limit reached: 3"):
        worker(master, "d")
    clock.now += 11
    master.timers()  # a, b, c miss their lease: offline, but remembered
    assert {w["status"] for w in master.worker_views()} == {"offline"}
    worker(master, "d")  # displaces the longest offline
    assert len(master.workers) == 3 and "d" in master.workers
    clock.now += 101
    master.heartbeat("d", {"cpu_percent": 1.0})  # d stays; b and c, offline 101s, are forgotten
    master.tick()
    assert set(master.workers) == {"d"}
