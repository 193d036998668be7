"""The master's rules, driven directly: no sockets, no threads, a fake clock."""

from __future__ import annotations

import pytest

from cloudq.core.model import TaskState
from cloudq.errors import NotFoundError, QueueFullError, ValidationError
from cloudq.master.core import Master, MasterConfig
from cloudq.master.journal import NullJournal

S = TaskState


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def master(clock):
    return Master(config=MasterConfig(lease_s=10.0, quarantine_after=3), clock=clock)


def worker(master, name, cores=4.0, max_tasks=4, running=(), **extra):
    facts = {"name": name, "cpu_cores": cores, "mem_gb": 16.0, "storage_gb": 100.0,
             "max_tasks": max_tasks, **extra}
    return master.register(facts, list(running))["session"]


def noop(**fields):
    return {"kind": "noop", **fields}


def fetch(master, name, session):
    return master.fetch(name, session, wait_s=0)


def test_big_task_waits_with_reason_and_starts_when_a_big_worker_joins(master):
    s1 = worker(master, "worker-1", cores=4.0)
    (big,) = master.submit([noop(resources={"cpu_cores": 8})])
    assert big.state is S.QUEUED
    view = master.view(big)
    assert "worker-1: Insufficient CPU: worker has 4.00 available, task requires 8.00" in view["reason"]
    why = master.why(big.id)
    assert why["workers"] == {"worker-1": "Insufficient CPU: worker has 4.00 available, task requires 8.00"}
    assert fetch(master, "worker-1", s1) == []
    s2 = worker(master, "worker-2", cores=16.0)  # no tick: registration triggers placement
    assert big.state is S.ASSIGNED and big.worker == "worker-2" and big.attempt == 1
    (assignment,) = fetch(master, "worker-2", s2)
    assert assignment["assign"]["id"] == big.id and assignment["assign"]["attempt"] == 1


def test_full_lifecycle_releases_the_reservation(master):
    s = worker(master, "w", cores=2.0, max_tasks=1)
    a, b = master.submit([noop(), noop()])
    assert (a.state, b.state) == (S.ASSIGNED, S.QUEUED)
    assert master.report("w", s, [{"task": a.id, "attempt": 1, "state": "running"}]) == []
    assert a.state is S.RUNNING
    master.report("w", s, [{"task": a.id, "attempt": 1, "state": "completed", "result": {"exit_code": 0}}])
    assert a.state is S.COMPLETED and a.result == {"exit_code": 0}
    assert b.state is S.ASSIGNED  # completion triggers placement at once
    assert [e.dst for e in master.story(a.id)] == ["queued", "assigned", "running", "completed"]


def test_outcomes_sent_with_fetch_are_applied_and_the_freed_room_comes_back_in_the_reply(master):
    s = worker(master, "w", cores=2.0, max_tasks=1)
    a, b = master.submit([noop(), noop()])
    (first,) = fetch(master, "w", s)
    assert first["assign"]["id"] == a.id
    done = {"task": a.id, "attempt": 1, "state": "completed", "result": {"exit_code": 0}}
    stale = {"task": b.id, "attempt": 7, "state": "completed"}  # refused, and nothing to tell
    (second,) = master.fetch("w", s, wait_s=0, reports=[done, stale])
    assert a.state is S.COMPLETED and [e.dst for e in master.story(a.id)][-2:] == ["running", "completed"]
    assert second["assign"]["id"] == b.id and b.state is S.ASSIGNED and b.attempt == 1


def test_hostile_report_items_are_refused_without_error(master):
    s = worker(master, "w", cores=2.0, max_tasks=1)
    (task,) = master.submit([noop()])
    hostile = [{"task": [task.id], "attempt": 1, "state": "completed"},
               {"task": task.id, "attempt": {"a": 1}, "state": "completed"},
               {"task": task.id, "attempt": 1, "state": ["completed"], "progress": [1], "log_tail": 5},
               {"task": task.id, "attempt": 1, "state": {"x": 1}, "result": "not an object"}]
    assert master.report("w", s, hostile[:2]) == ["?", task.id]  # a list is no task id
    master.fetch("w", s, wait_s=0, reports=hostile[2:])
    assert task.state is S.ASSIGNED and task.attempt == 1 and task.result is None


def test_live_samples_arrive_with_reports_and_alone(master, clock):
    s = worker(master, "w", max_tasks=1)
    (task,) = master.submit([noop()])
    clock.now += 3
    master.report("w", s, [{"task": task.id, "attempt": 1, "state": "running"}], {"cpu_percent": 0.5})
    (view,) = master.worker_views()
    assert view["sample"] == {"cpu_percent": 0.5} and master.workers["w"].last_seen == clock.now
    clock.now += 3
    master.heartbeat("w", {"cpu_percent": 0.25})
    assert master.worker_views()[0]["sample"] == {"cpu_percent": 0.25}
    assert master.workers["w"].last_seen == clock.now


def test_stale_attempt_is_refused(master, clock):
    s = worker(master, "w1")
    (task,) = master.submit([noop(retry_backoff_s=0)])
    clock.now += 11  # w1 misses its lease
    master.tick()
    assert task.state is S.QUEUED and task.attempt == 1
    s2 = worker(master, "w2")
    assert task.worker == "w2" and task.attempt == 2
    with pytest.raises(NotFoundError):  # w1's session is over
        master.report("w1", s, [{"task": task.id, "attempt": 1, "state": "completed"}])
    s1 = worker(master, "w1", running=[(task.id, 1)])
    assert master.report("w1", s1, [{"task": task.id, "attempt": 1, "state": "completed"}]) == [task.id]
    assert task.state is S.ASSIGNED
    assert master.report("w2", s2, [{"task": task.id, "attempt": 2, "state": "completed"}]) == []
    assert task.state is S.COMPLETED


def test_lost_worker_requeues_with_backoff_then_dead(master, clock):
    worker(master, "w1")
    (task,) = master.submit([noop(max_retries=1, retry_backoff_s=5)])
    clock.now += 11
    master.tick()
    assert task.state is S.RETRYING and task.tried_workers == ("w1",)
    assert 4.0 <= task.not_before - clock.now <= 6.0  # 5 s +/- 20 % jitter
    assert master.workers["w1"].to_dict()["status"] == "offline"
    clock.now += 6
    worker(master, "w2")
    master.tick()
    assert task.state is S.ASSIGNED and task.attempt == 2 and task.worker == "w2"
    clock.now += 11
    master.tick()
    assert task.state is S.DEAD and "no retries left after 2 attempts" in master.story(task.id)[-1].reason


def test_readoption_after_master_restart(clock):
    first = Master(config=MasterConfig(lease_s=10.0), clock=clock)
    s = worker(first, "w1")
    a, b = first.submit([noop(), noop()])
    first.report("w1", s, [{"task": a.id, "attempt": 1, "state": "running"}])
    records = [t.to_dict() for t in first.tasks.values()]
    second = Master(config=MasterConfig(lease_s=10.0), clock=clock)
    second.restore(records, [])
    reply = second.register({"name": "w1", "cpu_cores": 4.0, "mem_gb": 16.0, "max_tasks": 4},
                            [(a.id, 1), ("t999", 1)])
    assert reply["stop"] == ["t999"]
    a2, b2 = second.tasks[a.id], second.tasks[b.id]
    assert a2.state is S.RUNNING and a2.attempt == 1  # re-adopted, not run twice
    assert b2.state is S.RETRYING or b2.state is S.ASSIGNED  # w1 did not report it: lost, retried
    assert b2.attempt >= 1 and b2.last_error and "restarted without it" in b2.last_error
    assert set(second.workers["w1"].ledger.bookings) >= {a.id}


def test_cancel_running_keeps_reservation_until_worker_confirms(master):
    s = worker(master, "w", max_tasks=1)
    a, b = master.submit([noop(), noop()])
    master.cancel(a.id)
    assert a.state is S.CANCELLED and b.state is S.QUEUED
    assert fetch(master, "w", s)[-1] == {"cancel": a.id, "attempt": 1}
    master.report("w", s, [{"task": a.id, "attempt": 1, "state": "cancelled"}])
    assert b.state is S.ASSIGNED
    with pytest.raises(ValidationError, match="already cancelled"):
        master.cancel(a.id)


def test_quarantine_after_consecutive_worker_failures(master):
    s = worker(master, "w", max_tasks=1)
    tasks = master.submit([noop(max_retries=0) for _ in range(4)])
    for t in tasks[:3]:
        master.report("w", s, [{"task": t.id, "attempt": 1, "state": "failed",
                                "result": {"error": "boom", "fault": "worker"}}])
        assert t.state is S.DEAD and t.last_error == "boom"
    assert master.workers["w"].to_dict()["status"] == "quarantined"
    assert "3 worker failures in a row, the last: boom" in master.workers["w"].quarantine_reason
    assert tasks[3].state is S.QUEUED
    why = master.why(tasks[3].id)
    assert why["summary"].startswith("No workers available: w quarantined (3 worker failures")
    assert "release w" in why["workers"]["w"]


def test_the_tasks_own_failures_never_quarantine_a_worker(master):
    s = worker(master, "w", max_tasks=1)
    tasks = master.submit([noop(max_retries=0) for _ in range(6)])
    for t in tasks[:5]:
        master.report("w", s, [{"task": t.id, "attempt": 1, "state": "failed",
                                "result": {"error": "input outside the allowed roots", "fault": "task"}}])
        assert t.state is S.DEAD
    assert master.workers["w"].status.value == "busy" and tasks[5].state is S.ASSIGNED  # took the next


def test_named_lock_serialises_across_workers(master):
    s1, s2 = worker(master, "w1"), worker(master, "w2")
    a, b = master.submit([noop(locks=["model"]), noop(locks=["model"])])
    assert a.state is S.ASSIGNED and b.state is S.QUEUED
    assert "Lock model is held by " + a.id in master.view(b)["reason"]
    session = {"w1": s1, "w2": s2}[a.worker]
    master.report(a.worker, session, [{"task": a.id, "attempt": 1, "state": "completed"}])
    assert b.state is S.ASSIGNED


def test_batch_submit_is_all_or_nothing(master):
    with pytest.raises(ValidationError, match="task 2 of 2: unknown task kind"):
        master.submit([noop(), {"kind": "bogus"}])
    assert master.tasks == {}


def test_queue_limit(clock):
    small = Master(config=MasterConfig(max_queued=2), clock=clock)
    small.submit([noop(), noop()])
    with pytest.raises(QueueFullError, match="queue is full: 2 queued, limit 2"):
        small.submit([noop()])


def test_ttl_expiry_and_timeout(master, clock):
    s = worker(master, "w", max_tasks=1)
    running, waiting = master.submit([noop(timeout_s=30, max_retries=0), noop(ttl_s=5)])
    master.report("w", s, [{"task": running.id, "attempt": 1, "state": "running"}])
    clock.now += 6
    master.heartbeat("w", {})
    master.tick()
    assert waiting.state is S.FAILED and "expired after waiting 5s" in waiting.last_error
    clock.now += 30
    master.heartbeat("w", {})
    master.tick()
    assert running.state is S.DEAD and "ran past its timeout of 30s" in running.last_error
    assert fetch(master, "w", s)[-1] == {"cancel": running.id, "attempt": 1}


def test_nvenc_tasks_go_only_to_workers_with_the_encoder_and_a_gpu(master):
    worker(master, "a-cpu", capabilities=["ffmpeg", "encoder:libx264", "encoder:h264_nvenc"])
    worker(master, "b-gpu", capabilities=["ffmpeg", "encoder:libx264", "encoder:h264_nvenc", "gpu"],
           gpus=[{"index": 0, "mem_gb": 16.0}])
    (nvenc,) = master.submit([{"kind": "ffmpeg", "spec": {"scenario": "720p30-h264-nvenc"},
                               "resources": {"gpus": 1}}])
    (cpu,) = master.submit([{"kind": "ffmpeg", "spec": {"scenario": "720p30-h264"}}])
    assert nvenc.worker == "b-gpu" and cpu.worker == "a-cpu"
    (second,) = master.submit([{"kind": "ffmpeg", "spec": {"scenario": "720p30-h264-nvenc"},
                                "resources": {"gpus": 1}}])
    why = master.why(second.id)["workers"]
    assert why["a-cpu"] == "Missing capability: worker lacks gpu"
    assert why["b-gpu"].startswith("Insufficient GPUs: worker has 0 available")


def test_drain_and_release(master):
    s = worker(master, "w", max_tasks=1)
    (a,) = master.submit([noop()])
    master.drain_worker("w")
    (b,) = master.submit([noop()])
    assert master.workers["w"].to_dict()["status"] == "draining" and b.state is S.QUEUED
    master.report("w", s, [{"task": a.id, "attempt": 1, "state": "completed"}])
    assert b.state is S.QUEUED  # draining: nothing new
    master.release_worker("w")
    assert b.state is S.ASSIGNED
    with pytest.raises(ValidationError, match="neither quarantined nor draining"):
        master.release_worker("w")
    with pytest.raises(NotFoundError):
        master.drain_worker("nope")


def test_quarantine_and_drain_survive_a_master_restart(clock, tmp_path):
    from cloudq.master.journal import StoreJournal
    from cloudq.store import Store

    def restarted() -> tuple[Master, Store]:
        store = Store(tmp_path)
        state = store.load()
        master = Master(StoreJournal(store), MasterConfig(quarantine_after=2), clock=clock)
        master.restore(state.records.values(), state.events, state.meta)
        return master, store

    first, store = restarted()
    s = worker(first, "bad", max_tasks=1)
    worker(first, "old")
    for task in first.submit([noop(max_retries=0, target_worker="bad") for _ in range(2)]):
        first.report("bad", s, [{"task": task.id, "attempt": 1, "state": "failed",
                                 "result": {"fault": "worker"}}])
    first.drain_worker("old")
    store.close()

    second, store = restarted()
    worker(second, "bad")
    worker(second, "old")
    statuses = {w["name"]: w["status"] for w in second.worker_views()}
    assert statuses == {"bad": "quarantined", "old": "draining"}
    second.release_worker("bad")
    store.close()

    third, store = restarted()
    worker(third, "bad")
    worker(third, "old")
    assert {w["name"]: w["status"] for w in third.worker_views()} == {"bad": "available", "old": "draining"}
    store.close()


def test_counts_follow_every_move(master, clock):
    s = worker(master, "w", max_tasks=1)
    a, b, c = master.submit([noop(), noop(), noop(max_retries=0)])
    master.cancel(b.id)
    master.report("w", s, [{"task": a.id, "attempt": 1, "state": "completed"}])
    expected: dict[str, int] = {}
    for task in master.tasks.values():
        expected[task.state.value] = expected.get(task.state.value, 0) + 1
    assert {k: v for k, v in master.counts().items() if v} == expected
    clock.now += 11
    master.tick()
    assert sum(master.counts().values()) == 3 and master.counts()["dead"] == 1


def test_progress_shows_in_the_listing(master):
    s = worker(master, "w")
    (task,) = master.submit([noop()])
    master.report("w", s, [{"task": task.id, "attempt": 1, "state": "running",
                            "progress": {"percent": 42.0, "fps": 118.2, "speed": 2.1}}])
    (row,) = master.listing()
    assert row["reason"] == "Running: 42.0%, at 118 fps, 2.10x"


def test_summary_reports_every_worker_status_even_at_zero(master, clock):
    worker(master, "w")
    assert master.summary()["workers"] == {"available": 1, "busy": 0, "draining": 0,
                                           "quarantined": 0, "offline": 0}
    clock.now += 11
    master.tick()
    assert master.summary()["workers"]["available"] == 0 and master.summary()["workers"]["offline"] == 1


def test_container_tasks_never_go_to_a_worker_without_docker(master):
    worker(master, "no-engine", capabilities=["ffmpeg"])
    (task,) = master.submit([{"kind": "container", "spec": {"image": "cloudq-busybox:latest"}}])
    assert task.state is S.QUEUED
    assert master.why(task.id)["workers"] == {"no-engine": "Missing capability: worker lacks docker"}
    worker(master, "engine", capabilities=["docker"])
    assert task.worker == "engine"


def test_finished_tasks_are_forgotten_after_keep_finished_and_ids_never_reused(clock):
    journal_changes: list[tuple] = []

    class Recording(NullJournal):
        def enqueue(self, changes):
            journal_changes.extend(changes)
            return len(journal_changes)

        def wait(self, ticket):
            return None

        def last_ticket(self):
            return len(journal_changes)

    master = Master(Recording(), MasterConfig(keep_finished_s=60.0, lease_s=1e9), clock=clock)
    s = worker(master, "w", max_tasks=4)
    done, running = master.submit([noop(), noop()])
    master.report("w", s, [{"task": done.id, "attempt": 1, "state": "completed"}])
    clock.now += 61
    master.tick()
    assert done.id not in master.tasks and running.id in master.tasks
    assert ("del", done.id) in journal_changes and ("meta", "last_seq", 2) in journal_changes
    assert master.counts()["completed"] == 0 and master.story(running.id)
    # After a restart that only sees the surviving task, new ids continue after the pruned ones.
    again = Master(config=MasterConfig(), clock=clock)
    again.restore([running.to_dict()], [], {"last_seq": 2})
    (fresh,) = again.submit([noop()])
    assert fresh.id == "t3"


def test_a_cancelled_task_is_finished_and_prunable_once_its_worker_confirms(clock):
    master = Master(config=MasterConfig(keep_finished_s=60.0, lease_s=1e9), clock=clock)
    s = worker(master, "w", max_tasks=1)
    (task,) = master.submit([noop()])
    master.cancel(task.id)
    assert task.finished_at is None and master.workers["w"].ledger.bookings  # still held
    clock.now += 5
    master.report("w", s, [{"task": task.id, "attempt": 1, "state": "cancelled"}])
    assert task.finished_at == clock.now and not master.workers["w"].ledger.bookings
    clock.now += 61
    master.tick()
    assert task.id not in master.tasks


def test_a_failed_attempt_that_will_retry_is_not_marked_finished(master):
    s = worker(master, "w", max_tasks=1)
    (task,) = master.submit([noop(retry_backoff_s=60)])
    master.report("w", s, [{"task": task.id, "attempt": 1, "state": "failed", "result": {"error": "x"}}])
    assert task.state is S.RETRYING and task.finished_at is None
    assert not master.workers["w"].ledger.bookings


def test_a_leaving_worker_is_answered_at_once_and_takes_nothing_new(master):
    import threading
    import time

    session = worker(master, "worker-1")
    answered: list[tuple[float, list]] = []
    started = time.monotonic()
    poll = threading.Thread(target=lambda: answered.append(
        (time.monotonic() - started, master.fetch("worker-1", session, wait_s=30))))
    poll.start()
    master.leave("worker-1", session)
    poll.join(timeout=10)
    assert answered and answered[0][1] == [] and answered[0][0] < 5  # not the 30 s long-poll
    assert fetch(master, "worker-1", session) == []  # and every later fetch too
    (task,) = master.submit([noop()])
    assert task.state is S.QUEUED
    assert master.why(task.id)["workers"]["worker-1"] == "stopping: its worker process is shutting down"
    assert [e.dst for e in master.events.recent(5) if e.worker == "worker-1"][-1] == "stopping"
    again = worker(master, "worker-1")  # the restarted process registers: it takes work again
    assert task.state is S.ASSIGNED and fetch(master, "worker-1", again)[0]["assign"]["id"] == task.id


def test_an_idle_worker_waiting_in_fetch_is_heard_and_one_with_tasks_is_not(master, clock):
    import threading
    import time

    idle = worker(master, "idle-1")
    busy = worker(master, "busy-1")
    (task,) = master.submit([noop(target_worker="busy-1")])
    assert fetch(master, "busy-1", busy)[0]["assign"]["id"] == task.id
    sample = {"cpu_percent": 7.0, "load1": 0.5, "mem_free_gb": 3.0, "disk_free_gb": 9.0, "gpus": []}
    polls = [threading.Thread(target=master.fetch, args=("idle-1", idle, 20.0, [], sample)),
             threading.Thread(target=master.fetch, args=("busy-1", busy, 20.0))]
    for poll in polls:
        poll.start()
    deadline = time.monotonic() + 10
    while not all(master.workers[name].polling for name in ("idle-1", "busy-1")):
        assert time.monotonic() < deadline, "both fetches should be waiting"
        time.sleep(0.01)
    assert master.workers["idle-1"].sample["cpu_percent"] == 7.0  # the idle heartbeat rode along
    clock.now += 30  # three leases of silence
    master.timers()
    assert master.workers["idle-1"].connected  # its waiting fetch is its heartbeat
    assert not master.workers["busy-1"].connected and task.state is not S.ASSIGNED  # lost: retried
    master.leave("idle-1", idle)
    for poll in polls:
        poll.join(timeout=10)
        assert not poll.is_alive()
