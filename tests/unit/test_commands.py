"""Every operator command through the registry, against an in-process master: no sockets."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from cloudq.commands import Context, dispatch, split_line
from cloudq.commands.history import since_time
from cloudq.core.model import TaskState
from cloudq.errors import NotFoundError, ValidationError
from cloudq.master.core import Master, MasterConfig
from tests.unit.test_master_core import Clock

S = TaskState


@pytest.fixture
def clock():
    clock = Clock()
    clock.now = 1_800_000_000.0  # a real date: `events --since 12:01:33` reads it
    return clock


@pytest.fixture
def master(clock):
    return Master(config=MasterConfig(lease_s=10.0), clock=clock)


def run(master, line: str):
    return dispatch(Context(master), split_line(line))


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
    with pytest.raises(ValidationError, match="t1 is assigned; only a task that is queued or retrying can be held"):
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
    with pytest.raises(ValidationError, match="only a task that is failed, dead or cancelled can be retried"):
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
    assert [r[1:3] for r in everything.rows] == [["", "joined"],
                                                 ["t1", "pending -> queued"], ["t1", "queued -> assigned"],
                                                 ["t2", "pending -> queued"], ["t2", "queued -> assigned"]]
    assert [e["task"] for e in run(master, "events t2").data] == ["t2", "t2"]
    recent = run(master, "events --since 1m")
    assert {e["task"] for e in recent.data} == {"t2"} and recent.title == "2 events since 1m"
    assert len(run(master, "events --worker w1").data) == 3  # it joined, and the two moves on it
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


def test_the_seed_line_replies_in_the_operators_words(master):
    worker(master, "worker-1", cores=4.0)
    reply = run(master, "task worker-1 docker.io/user/task:latest -cpu_cores 8.0")
    first, warning = reply.status.split("\n")
    assert first == ("Task t1 queued: Insufficient CPU: worker has 4.00 available, task requires 8.00. "
                     "Will be assigned when resources become available.")
    assert warning.startswith("Warning: no registered worker can ever run it as asked: "
                              "needs 8 cores; worker-1 has 4.")
    assert reply.title == "" and reply.data["never_fits"] == "needs 8 cores; worker-1 has 4"
    fits = run(master, "task worker-1 alpine:latest -cpu_cores 2.0")
    assert fits.status == "Task t2 assigned to worker-1." and fits.data["never_fits"] is None


def test_a_task_waiting_for_room_is_told_apart_from_one_that_never_fits(master):
    worker(master, "w1", cores=4.0, max_tasks=1)
    worker(master, "w2", cores=2.0, max_tasks=1)
    run(master, "task --noop -cpu 4")  # t1 fills w1
    waiting = run(master, "task --noop -cpu 3").data
    assert waiting["state"] == "queued" and waiting["never_fits"] is None
    never = run(master, "task --noop -cpu 8 -mem 64").data
    assert never["never_fits"] == "needs 8 cores; the largest worker has 4; needs 64 GB memory; the largest worker has 16 GB"
    assert master.why(never["id"])["never_fits"] == never["never_fits"]
    assert run(master, f"why {never['id']}").status.endswith(
        "\nNo registered worker can ever run it as asked: " + never["never_fits"])


def test_every_short_resource_is_listed_not_only_the_first(master):
    worker(master, "w1", cores=2.0)
    data = run(master, "task w1 --noop -cpu 3 -mem 20 -storage 500").data
    assert data["reason"] == ("Insufficient CPU: worker has 2.00 available, task requires 3.00; "
                              "Insufficient memory: worker has 16.00 GB available, task requires 20.00 GB; "
                              "Insufficient storage: worker has 100.00 GB available, task requires 500.00 GB")


def test_an_absent_target_is_named(master, clock):
    reply = run(master, "task worker-9 --noop")
    assert reply.status == ("Task t1 queued: worker-9 has not registered. "
                            "Will be assigned when worker-9 registers.")
    assert master.why("t1")["summary"] == "worker-9 has not registered"
    worker(master, "worker-2")
    clock.now += 11
    master.tick()  # worker-2 missed its lease
    offline = run(master, "task worker-2 --noop")
    assert offline.data["reason"].startswith("worker-2 is offline since ")
    assert offline.status.endswith("Will be assigned when worker-2 takes tasks again.")
    assert master.why(offline.data["id"])["workers"] == {"worker-2": offline.data["reason"][9:]}


def test_dry_run_says_where_and_why_not_for_every_worker_and_submits_nothing(master, clock):
    worker(master, "small", cores=2.0)
    worker(master, "big", cores=8.0)
    worker(master, "gone", cores=32.0)
    clock.now += 6
    master.heartbeat("small", {})
    master.heartbeat("big", {})
    clock.now += 5
    master.tick()  # gone missed its lease
    reply = run(master, "task --noop -cpu 4 --dry-run")
    assert dict((r[0], r[2]) for r in reply.rows) == {
        "big": "fits now",
        "gone": reply.data["workers"]["gone"],
        "small": "Insufficient CPU: worker has 2.00 available, task requires 4.00"}
    assert reply.data["workers"]["gone"].startswith("offline since")
    assert [r[0] for r in reply.rows if r[1] == "->"] == ["big"]
    assert reply.status == "It would be assigned to big." and reply.title.startswith("Dry run")
    assert master.tasks == {}
    huge = run(master, "task --noop -cpu 64 --dry-run")
    assert huge.status.startswith("It would wait: needs 64 cores; the largest worker has 32")
    with pytest.raises(ValidationError, match="unknown queue class"):
        run(master, "task --noop --queue urgent --dry-run")


def test_queue_shows_the_operators_columns_in_serving_order(master, clock):
    s = worker(master, "w1", cores=4.0, max_tasks=1, capabilities=["docker", "ffmpeg", "encoder:libx264"])
    run(master, "task w1 --exec 'sleep 5' -cpu 2 --owner ann --name enc-1")  # runs on w1
    master.report("w1", s, [{"task": "t1", "attempt": 1, "state": "running"}])
    master.submit([{"kind": "container", "spec": {"image": "alpine:latest"}, "owner": "bob",
                    "resources": {"cpu_cores": 1, "mem_gb": 2, "gpus": 0}, "name": "img"},
                   {"kind": "ffmpeg", "spec": {"scenario": "720p30-h264"}, "queue": "live",
                    "priority": "high", "name": "enc-2", "owner": "ann"},
                   {"kind": "noop", "resources": {"cpu_cores": 64}, "queue": "batch"}])
    clock.now += 64
    master.heartbeat("w1", {})
    master.tick()  # counts a placement attempt for each blocked shape's head
    reply = run(master, "queue")
    assert reply.headers == ["id", "kind", "target", "image", "owner", "needs", "state", "class",
                             "wait", "passes", "reason"]
    rows = {r[0]: r for r in reply.rows}
    assert [r[0] for r in reply.rows] == ["t1", "t3", "t2", "t4"]  # running, then serving order
    assert rows["t1"][:8] == ["t1", "exec", "w1", "sleep 5", "ann", "2c", "running", "def/med"]
    assert rows["t3"][1:9] == ["ffmpeg", "any", "720p30-h264", "ann", "1c", "queued", "live/hi", "1m04s"]
    assert rows["t2"][3] == "alpine:latest" and rows["t2"][5] == "1c 2G"
    assert rows["t4"][7] == "batch/med"
    assert rows["t4"][9] == "1" and rows["t4"][10] == "Never fits: needs 64 cores; the largest worker has 4"
    view = {v["id"]: v for v in reply.data}["t3"]
    assert view["in_queue_s"] == 64.0 and view["never_fits"] is None and view["priority"] == "high"


def test_queue_filters_by_state_worker_queue_owner_and_name(master):
    worker(master, "w1", cores=4.0, max_tasks=1)
    run(master, "task --noop --sleep 9 --owner ann --name enc-1")  # t1 on w1
    run(master, "task w1 --noop --owner bob --name enc-2")  # t2 pinned to w1
    run(master, "task --noop --queue live --owner ann --name img-1")  # t3
    ids = lambda line: [v["id"] for v in run(master, line).data]  # noqa: E731
    assert ids("queue --worker w1") == ["t1", "t2"]
    assert ids("queue --owner ann") == ["t1", "t3"]
    assert ids("queue --name enc-*") == ["t1", "t2"]
    assert ids("queue --queue live") == ["t3"]
    assert ids("queue --state queued --owner bob") == ["t2"]
    assert ids("queue --state queued") == ["t3", "t2"]
    assert run(master, "queue --owner ann --name img-*").title == "1 unfinished tasks matching owner ann name img-*"


def test_hold_and_priority_survive_a_master_restart(clock, tmp_path):
    from cloudq.master.journal import StoreJournal
    from cloudq.store import Store

    def restarted() -> tuple[Master, Store]:
        store = Store(tmp_path)
        state = store.load()
        master = Master(StoreJournal(store), MasterConfig(), clock=clock)
        master.restore(state.records.values(), state.events, state.meta)
        return master, store

    first, store = restarted()
    for _ in range(3):
        run(first, "task --noop")
    run(first, "hold t1")
    run(first, "priority t3 high --queue live")
    store.close()

    second, store = restarted()
    assert second.get("t1").state is S.HELD and second.listing_ids("queued") == ["t3", "t2"]
    assert (second.get("t3").queue, second.get("t3").priority) == ("live", "high")
    assert "priority default/medium -> live/high by an operator" in [e.reason for e in second.story("t3")]
    run(second, "release t1")
    assert second.listing_ids("queued") == ["t3", "t1", "t2"]
    store.close()


def _batch(tmp_path, *lines: str) -> str:
    path = tmp_path / "batch.txt"
    path.write_text("".join(f"{line}\n" for line in lines))
    return str(path)


def test_a_batch_warns_when_tasks_in_it_can_never_run(master, tmp_path):
    worker(master, "w1", cores=4.0)
    batch = _batch(tmp_path, "--noop", "--noop -cpu 64", "--noop -cpu 2", "--noop -cpu 64 -mem 512",
                   "--noop -cpu 8", "--noop -gpu 2")
    reply = run(master, f"submit {batch}")
    first, warning = reply.status.split("\n")
    assert first == "ids t1 to t6" and reply.title == "Submitted 6 tasks"
    assert warning == ("Warning: no registered worker can ever run 4 of the 6 tasks as asked "
                       "(t2, t4, t5, ...); t2: needs 64 cores; the largest worker has 4. "
                       "Cancel them and ask for less, or add a worker that big.")
    assert [v["id"] for v in reply.data if v["never_fits"]] == ["t2", "t4", "t5", "t6"]

    reply = run(master, f"submit {_batch(tmp_path, '--noop -cpu 1', '--noop -mem 64')}")
    assert reply.status.split("\n")[1] == (
        "Warning: no registered worker can ever run t8 as asked: needs 64 GB memory; the largest "
        "worker has 16 GB. Cancel it and ask for less, or add a worker that big.")
    reply = run(master, f"submit {_batch(tmp_path, '--noop -cpu 9', '--noop -cpu 10')}")
    assert reply.status.split("\n")[1].startswith(
        "Warning: no registered worker can ever run all 2 tasks as asked (t9, t10); t9: needs 9 cores")
    reply = run(master, f"submit {_batch(tmp_path, '--noop -cpu 64')}")  # one task: as `task` says it
    assert reply.status.split("\n")[1].startswith("Warning: no registered worker can ever run it as asked: ")
    assert run(master, f"submit {_batch(tmp_path, '--noop', '--noop -cpu 3')}").status == "ids t12 to t13"


def test_a_batch_warning_counts_the_tasks_past_the_first_page(master, tmp_path, monkeypatch):
    import cloudq.commands.pages as pages

    monkeypatch.setattr(pages, "PAGE_BYTES", 1)  # one task a page, as a huge batch over RPC
    monkeypatch.setattr(pages, "SNAPSHOTS", pages.Snapshots())  # its cursor is left unread
    worker(master, "w1", cores=4.0)
    path = _batch(tmp_path, "--noop", "--noop -cpu 64", "--noop -cpu 32")
    reply = dispatch(Context(master, files={"b.txt": Path(path).read_text()}, local=False),
                     ["submit", "b.txt"])
    assert len(reply.data) == 1 and reply.next_argv is not None
    assert reply.status.split("\n")[1].startswith(
        "Warning: no registered worker can ever run 2 of the 3 tasks as asked (t2, t3); t2: needs 64 cores")


def test_a_batch_with_no_worker_registered_has_no_warning(master, tmp_path):
    reply = run(master, f"submit {_batch(tmp_path, '--noop -cpu 64', '--noop')}")
    assert reply.status == "ids t1 to t2"  # no worker yet: each task's reason says so


def test_a_task_blocked_on_a_lock_has_an_event_naming_the_holder_once(master):
    session = worker(master, "w1")
    run(master, "task --noop --lock db --name first")  # t1 takes the lock on w1
    run(master, "task --noop --lock db --name second")  # t2 waits for it
    run(master, "task --noop --name other")  # another pass: t2 still waits, told once
    blocked = [e for e in run(master, "events t2").data if e["src"] == e["dst"]]
    assert [e["reason"] for e in blocked] == ["blocked: lock db is held by t1 on w1"]
    master.report("w1", session, [{"task": "t1", "attempt": 1, "state": "completed"}])
    assert [e["dst"] for e in run(master, "events t2").data][-1] == "assigned"
    row = next(r for r in run(master, "events t2").rows if r[2] == "queued")
    assert row[5] == "blocked: lock db is held by t1 on w1"


def test_what_happens_to_workers_is_in_the_events(master, clock):
    worker(master, "w1")
    run(master, "drain w1")
    run(master, "release w1")
    clock.now += 11
    master.tick()  # w1 missed its lease of 10 s
    worker(master, "w1")
    told = [(e["dst"], e["reason"]) for e in run(master, "events --worker w1").data]
    assert [what for what, _ in told] == ["joined", "draining", "released", "lost", "joined"]
    assert told[0][1] == "4 cores, 16 GB, 0 GPUs, 4 slots; re-adopted 0 running"
    assert told[2][1] == "from drain by an operator" and told[3][1].startswith("missed its lease of 10s")


def test_at_debug_level_each_placement_pass_is_logged_with_its_shapes(master, caplog):
    worker(master, "w1", cores=2.0)
    with caplog.at_level(logging.DEBUG, logger="cloudq.master"):
        run(master, "task --noop -cpu 2 --lock db")
        run(master, "task --noop -cpu 2 --lock db")
    passes = [r.getMessage() for r in caplog.records if r.getMessage().startswith("placement pass")]
    print("\n" + "\n".join(passes))
    assert "placed t1->w1" in passes[0]
    assert "1 queued, by shape: 1 x 2c 0G lock db: Lock db is held by t1" in passes[-1]
    assert "workers: w1 available (1 schedulable)" in passes[-1]
