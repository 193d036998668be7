"""Every operator command through the registry, against an in-process master: no sockets."""

from __future__ import annotations

import pytest

from cloudq.commands import Context, dispatch
from cloudq.commands.history import since_time
from cloudq.errors import NotFoundError, ValidationError
from cloudq.master.core import Master, MasterConfig
from cloudq.model import TaskState

S = TaskState


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def master(clock):
    return Master(config=MasterConfig(lease_s=10.0), clock=clock)


def run(master, line: str):
    return dispatch(Context(master), line.split())


def worker(master, name, cores=4.0, max_tasks=4, **extra):
    facts = {"name": name, "cpu_cores": cores, "mem_gb": 16.0, "storage_gb": 100.0,
             "max_tasks": max_tasks, "capabilities": ["docker"], **extra}
    return master.register(facts, [])["session"]


def test_hold_keeps_a_task_off_workers_until_release(master):
    run(master, "task --noop")  # t1: nowhere to go yet
    held = run(master, "hold t1")
    assert held.status == "t1 held; `release t1` queues it again" and held.data["state"] == "held"
    worker(master, "w1")
    assert master.get("t1").state is S.HELD and not master.workers["w1"].ledger.bookings
    released = run(master, "release t1")
    assert released.status == "t1 released: assigned on w1" and master.get("t1").worker == "w1"
    assert [e.dst for e in master.story("t1")] == ["queued", "held", "queued", "assigned"]
    with pytest.raises(ValidationError, match="t1 is assigned; only a task that is queued, retrying"):
        run(master, "hold t1")


def test_release_of_a_worker_still_works_and_unknown_names_are_named(master):
    worker(master, "w1")
    assert run(master, "drain w1").status == "w1 is draining; `release w1` undoes it"
    assert run(master, "release w1").status == "w1 takes tasks again"
    with pytest.raises(NotFoundError, match="no task or worker 'w9'"):
        run(master, "release w9")
    run(master, "task --noop")
    with pytest.raises(ValidationError, match="t1 is assigned; only a task that is held"):
        run(master, "release t1")


def test_retry_queues_a_dead_task_as_a_new_attempt(master, clock):
    s = worker(master, "w1")
    run(master, "task --noop --retries 0")
    master.report("w1", s, [{"task": "t1", "attempt": 1, "state": "failed", "result": {"error": "boom"}}])
    assert master.get("t1").state is S.DEAD and master.get("t1").finished_at is not None
    reply = run(master, "retry t1")
    assert reply.status == "t1 retried: assigned on w1"
    task = master.get("t1")
    assert task.attempt == 2 and task.finished_at is None and task.state is S.ASSIGNED
    assert master.story("t1")[-2].reason == "retried by an operator"
    with pytest.raises(ValidationError, match="only a task that is failed, dead, cancelled"):
        run(master, "retry t1")


def test_retry_waits_for_a_cancelled_task_to_stop_on_its_worker(master):
    s = worker(master, "w1")
    run(master, "task --noop")
    run(master, "cancel t1")
    with pytest.raises(ValidationError, match="still being stopped on w1"):
        run(master, "retry t1")
    master.report("w1", s, [{"task": "t1", "attempt": 1, "state": "cancelled"}])
    assert run(master, "retry t1").data["attempt"] == 2


def test_priority_resorts_the_queue_and_is_journalled_as_an_event(master):
    for _ in range(3):
        run(master, "task --noop")
    assert master.listing_ids("queued") == ["t1", "t2", "t3"]
    reply = run(master, "priority t3 high --queue live")
    assert reply.status == "t3 is now live/high"
    assert master.listing_ids("queued") == ["t3", "t1", "t2"]
    assert master.story("t3")[-1].reason == "priority default/medium -> live/high by an operator"
    assert master.get("t3").request_json is None or '"live"' in master.get("t3").request_json
    with pytest.raises(ValidationError, match="invalid choice"):
        run(master, "priority t1 urgent")


def test_events_filter_by_task_worker_and_time(master, clock):
    worker(master, "w1")
    run(master, "task --noop")
    clock.now += 120
    run(master, "task --noop")
    everything = run(master, "events")
    assert [r[1:3] for r in everything.rows] == [["t1", "pending -> queued"], ["t1", "queued -> assigned"],
                                                 ["t2", "pending -> queued"], ["t2", "queued -> assigned"]]
    assert [e["task"] for e in run(master, "events t2").data] == ["t2", "t2"]
    recent = run(master, "events --since 1m")
    assert {e["task"] for e in recent.data} == {"t2"} and recent.title == "2 events since 1m"
    assert len(run(master, "events --worker w1").data) == 2  # the moves made on w1
    assert run(master, "events --limit 1").data[0]["dst"] == "assigned"
    with pytest.raises(NotFoundError):
        run(master, "events t9")


def test_since_accepts_ago_clock_and_unix_times():
    now = 1_800_000_000.0
    assert since_time("90", now) == now - 90 and since_time("5m", now) == now - 300
    assert since_time("1795354401", now) == 1795354401.0
    assert 0 < now - since_time("00:00", now) <= 86400
    with pytest.raises(ValidationError, match="give seconds ago"):
        since_time("yesterday", now)


def test_locks_show_holders_with_workers_and_waiters_in_order(master):
    worker(master, "w1")
    for _ in range(3):
        run(master, "task --noop --lock model:1")
    run(master, "priority t3 high")
    reply = run(master, "locks")
    assert reply.data == [{"name": "model", "limit": 1,
                           "holders": [{"task": "t1", "worker": "w1", "state": "assigned"}],
                           "waiters": ["t3", "t2"], "waiting": 2}]
    assert reply.rows == [["model", 1, "t1 on w1", 2, "t3, t2"]]


def test_workers_name_shows_one_worker_in_detail(master):
    worker(master, "gpu-1", cores=8.0, labels={"zone": "eu"},
           gpus=[{"index": 0, "name": "A100", "mem_gb": 40.0}])
    master.heartbeat("gpu-1", {"gpus": [{"index": 0, "util_percent": 93, "mem_used_gb": 12.5,
                                         "temperature_c": 61, "power_w": 250.0}]})
    run(master, "task --noop -cpu 2 --name enc")
    reply = run(master, "workers gpu-1")
    rows = dict(reply.rows)
    assert reply.title == "Worker gpu-1" and reply.vertical
    assert rows["cpu free/total"] == "6/8 cores" and rows["labels"] == "zone=eu"
    assert rows["gpu 0"] == "A100, free, 12.5/40 GB used, 93% busy, 61 C, 250 W"
    assert rows["task t1"].startswith("assigned noop attempt 1, 2 cores") and rows["task t1"].endswith("enc")
    assert reply.data["running_tasks"][0]["id"] == "t1" and reply.data["flags"] == []
    master.drain_worker("gpu-1")
    assert dict(run(master, "workers gpu-1").rows)["status"] == "draining (draining)"
    with pytest.raises(NotFoundError, match="no worker 'nope'"):
        run(master, "workers nope")
    assert [w["name"] for w in run(master, "workers").data] == ["gpu-1"]
