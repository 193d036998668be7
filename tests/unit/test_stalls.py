"""Deadlines on running and queued tasks, against an in-process master with a fake clock: a
transcode whose progress stands still is killed and retried, a class's --max-run bounds tasks
without a timeout of their own, and --unschedulable-ttl fails what no worker could ever run."""

from __future__ import annotations

from cloudq import defaults
from cloudq.master.core import Master, MasterConfig
from tests.unit.test_commands import worker
from tests.unit.test_master_core import Clock

FFMPEG = {"kind": "ffmpeg", "spec": {"scenario": "360p30-h264", "duration_s": 600}}


def running(master: Master, session: int, request: dict) -> str:
    (task,) = master.submit([request])
    master.report("w1", session, [{"task": task.id, "attempt": 1, "state": "running",
                                   "progress": {"percent": 1.0, "out_time_s": 1.0}}])
    assert master.get(task.id).state.value == "running"
    return task.id


def test_a_transcode_whose_progress_stands_still_is_killed_and_retried() -> None:
    clock = Clock()
    master = Master(config=MasterConfig(stall_timeout_s=600, lease_s=10_000), clock=clock)
    session = worker(master, "w1", cores=16.0, capabilities=["docker", "ffmpeg", "encoder:libx264"])
    moving = running(master, session, FFMPEG)
    stuck = running(master, session, FFMPEG)
    plain = running(master, session, {"kind": "exec", "spec": {"argv": ["sleep", "9999"]}})
    for minute in range(1, 12):  # `moving` reports new progress every minute, `stuck` the same
        clock.now += 60
        master.report("w1", session, [
            {"task": moving, "attempt": 1, "state": "running", "progress": {"percent": minute, "out_time_s": minute}},
            {"task": stuck, "attempt": 1, "state": "running", "progress": {"percent": 1.0, "out_time_s": 1.0}}])
        master.timers()
    assert master.get(moving).state.value == "running" and master.get(plain).state.value == "running"
    task = master.get(stuck)
    assert task.state.value in ("retrying", "queued", "assigned")
    assert task.last_error == "stalled: no progress for 600 s"
    assert {"cancel": stuck, "attempt": 1} in master.workers["w1"].outbox


def test_a_class_max_run_bounds_tasks_without_their_own_timeout() -> None:
    clock = Clock()
    master = Master(config=MasterConfig(max_run_s={"batch": 60.0}, lease_s=10_000), clock=clock)
    session = worker(master, "w1")
    batch = running(master, session, {"kind": "noop", "queue": "batch"})
    own = running(master, session, {"kind": "noop", "queue": "batch", "timeout_s": 600})
    other = running(master, session, {"kind": "noop"})
    assigned = [i["assign"] for i in master.workers["w1"].outbox if "assign" in i]
    assert [a["timeout_s"] for a in assigned] == [60.0, 600, None]  # the worker enforces it
    clock.now += 61 + defaults.TIMEOUT_GRACE_S
    master.timers()
    assert master.get(batch).last_error == "ran past its batch class's --max-run of 60s"
    assert master.get(own).state.value == "running" and master.get(other).state.value == "running"


def test_a_task_no_worker_could_ever_run_fails_after_the_unschedulable_ttl() -> None:
    clock = Clock()
    master = Master(config=MasterConfig(unschedulable_ttl_s=30, lease_s=10_000), clock=clock)
    worker(master, "w1", cores=4.0, max_tasks=1)
    (too_big,) = master.submit([{"kind": "noop", "resources": {"cpu_cores": 64}}])
    (fits,) = master.submit([{"kind": "noop"}])
    (waits,) = master.submit([{"kind": "noop"}])  # fits, but w1 is full: it only waits
    clock.now += 31
    master.tick()
    assert too_big.state.value == "failed"
    assert too_big.last_error == "unschedulable for 30s: needs 64 cores; the largest worker has 4"
    assert fits.state.value == "assigned" and waits.state.value == "queued"
