"""Hostile or broken peers against real master and worker processes: bad reports, peers that
take work and sit on it, padded registrations, ghost workers, and users' own mistakes. Each
test prints what it measured."""

from __future__ import annotations

import time

import pytest

from cloudq.errors import CloudqError, LimitError, ValidationError
from cloudq.rpc.client import MasterClient
from tests.cluster.harness import wait_until

pytestmark = pytest.mark.timeout(180)


def _register(client: MasterClient, name: str, **facts) -> int:
    reply = client.call("register", {"facts": {"name": name, "cpu_cores": 4.0, "mem_gb": 8.0,
                                               "max_tasks": 4, **facts}, "running": []})
    return reply["session"]


def test_a_bad_report_is_refused_and_the_safety_net_keeps_running(cluster):
    master = cluster.start_master("--interval", "1")
    with MasterClient(master.address) as peer:
        session = _register(peer, "evil")
        victim = master.ctl("task", "evil", "--exec", "true", "--timeout", "2")["id"]
        (assignment,) = peer.call("fetch", {"name": "evil", "session": session, "wait_s": 5})
        assert assignment["assign"]["id"] == victim
        refused = peer.call("report", {"name": "evil", "session": session, "reports": [
            {"task": victim, "attempt": 1, "state": "running", "started_at": "not a time"}]})
        assert refused == {"refused": [victim]}
        shown = master.task(victim)  # `show` works: nothing of the report was applied
        assert shown["started_at"] is None
        # Deadlines go on for everyone: a TTL on a task that fits nowhere still expires.
        started = time.monotonic()
        doomed = master.ctl("task", "--exec", "true", "--ttl", "1", "-cpu_cores", "64")["id"]
        master.wait_state(doomed, "failed", timeout=15)
        print(f"\nbad report refused; a 1s TTL still expired after {time.monotonic() - started:.1f}s")


def test_a_peer_that_never_starts_its_assignments_loses_them(cluster):
    master = cluster.start_master("--start-deadline", "2", "--interval", "1", "--lease", "60")
    with MasterClient(master.address) as ghost:
        session = _register(ghost, "ghost", max_tasks=20, cpu_cores=32.0)
        tasks = [master.ctl("task", "--exec", "true", "--retries", "5")["id"] for _ in range(20)]
        held = [t for t in tasks if master.task(t)["worker"] == "ghost"]
        assert len(held) >= 10  # the first ones may already have gone back
        # It heartbeats (so its lease holds) but never fetches nor starts anything.
        good = None
        started = time.monotonic()
        deadline = started + 60
        while time.monotonic() < deadline:
            ghost.call("report", {"name": "ghost", "session": session, "reports": [],
                                  "sample": {"cpu_percent": 1.0}})
            if good is None and time.monotonic() - started > 1:
                good = cluster.start_worker("good", wait=False)
            if all(master.task(t)["state"] == "completed" for t in tasks):
                break
            time.sleep(0.3)
        took = time.monotonic() - started
        states = {t: master.task(t) for t in tasks}
        print(f"\n{len(held)} of 20 tasks held by a peer that never starts them: all completed "
              f"elsewhere after {took:.1f}s")
        assert all(t["state"] == "completed" and t["worker"] == "good" for t in states.values())
        assert master.worker("ghost")["consecutive_failures"] >= 1


def test_padded_registrations_and_samples_stay_small(cluster):
    master = cluster.start_master()
    pad = "x" * (8 << 20)
    with MasterClient(master.address) as peer:
        session = _register(peer, "padded", host=pad, junk=pad, tools={"encoders": [pad[:1000]] * 4000})
        peer.call("report", {"name": "padded", "session": session, "reports": [],
                             "sample": {"cpu_percent": 5.0, "junk": pad, "gpus": [{"name": pad}] * 2}})
    listing = master.client().call("call", {"argv": ["workers"]})
    size = len(str(listing))
    print(f"\n~33 MB of facts and sample sent; `workers` reply is {size} characters")
    assert size < 200_000


def test_ghost_workers_are_capped(cluster):
    master = cluster.start_master("--max-workers", "50")
    good = cluster.start_worker("good")
    registered, refused = 0, None
    started = time.monotonic()
    for batch in range(40):  # a peer registering fake workers as fast as it can
        with MasterClient(master.address) as peer:
            for index in range(5):
                try:
                    _register(peer, f"ghost-{batch}-{index}", cpu_cores=64.0, max_tasks=64)
                    registered += 1
                except LimitError as err:
                    refused = str(err)
    print(f"\nghost registrations: {registered} accepted in {time.monotonic() - started:.1f}s, then {refused!r}")
    assert registered <= 50 and refused and "limit" in refused
    workers = master.ctl("workers")
    assert len(workers) <= 50 and any(w["name"] == "good" for w in workers)
    assert good.proc.poll() is None


def test_users_own_failures_never_quarantine_workers(cluster, tmp_path):
    master = cluster.start_master("--quarantine-after", "2")
    for name in ("w1", "w2", "w3"):
        cluster.start_worker(name)
    secret = tmp_path / "outside.mp4"
    secret.write_bytes(b"not a video")
    bad = [master.ctl("task", "--scenario", "360p30-h264", "--input", str(secret), "--retries", "0")["id"]
           for _ in range(4)]
    bad += [master.ctl("task", "--exec", "false", "--retries", "0")["id"] for _ in range(4)]
    for task_id in bad:
        task = master.wait_state(task_id, {"dead", "failed"}, timeout=60)
        assert task["result"]["fault"] == "task", task
    statuses = {w["name"]: w["status"] for w in master.ctl("workers")}
    print(f"\n8 tasks failed by their own fault; workers: {statuses}")
    assert set(statuses.values()) <= {"available", "busy"}
    echo = master.ctl("task", "--exec", "echo still working")["id"]
    assert master.wait_state(echo, "completed", timeout=30)


def _run_batch(master, count: int) -> float:
    """Submits `count` no-ops and returns the seconds until all of them have completed."""
    before = master.ctl("status")["tasks"]["completed"]
    started = time.monotonic()
    master.client().call("submit", {"tasks": [{"kind": "noop", "retry_backoff_s": 0}] * count})
    wait_until(lambda: master.ctl("status")["tasks"]["completed"] >= before + count, 90,
               f"{count} no-ops to complete", every=0.1)
    return time.monotonic() - started


def test_a_good_worker_keeps_working_beside_capacity_advertising_ghosts(cluster):
    master = cluster.start_master("--start-deadline", "2", "--interval", "1", "--lease", "60")
    cluster.start_worker("zz-good", "--max-tasks", "8")
    alone = _run_batch(master, 300)
    peers = [MasterClient(master.address) for _ in range(5)]
    try:
        for index in range(20):  # named to come first: placement tries them before the good one
            _register(peers[index // 4], f"a-ghost-{index}", cpu_cores=64.0, max_tasks=64)
        attacked = _run_batch(master, 300)
    finally:
        for peer in peers:
            peer.close()
    ghosts = [w for w in master.ctl("workers") if w["name"].startswith("a-ghost")]
    print(f"\n300 no-ops on the good worker: {300 / alone:.0f} tasks/s alone, {300 / attacked:.0f} "
          f"tasks/s beside 20 ghosts advertising 1,280 slots ({attacked:.1f}s, start deadline 2s); "
          f"ghosts quarantined: {sum(w['status'] == 'quarantined' for w in ghosts)}/20")
    assert attacked < 30
    assert all(w["status"] in ("quarantined", "offline") for w in ghosts)


def test_the_shell_feed_and_read_only_calls_check_what_they_are_sent(cluster):
    """What the remote shell calls (`feed`, `call` with read_only) against a real master: bad
    cursors are refused with a reason, a read-only call cannot change anything, and the feed
    tells a move once."""
    master = cluster.start_master()
    client = master.client()
    for bad in ({"after": -1}, {"after": True}, {"after": "t1"}, {"after": 1.5}, [1]):
        with pytest.raises(ValidationError):
            client.call("feed", bad)
    assert client.call("feed", {"after": 2**62})["events"] == []  # from the future: from now on
    task_id = master.ctl("task", "--noop")["id"]
    with pytest.raises(CloudqError, match="cancel changes the master"):
        client.call("call", {"argv": ["cancel", task_id], "files": {}, "read_only": True})
    assert master.task(task_id)["state"] == "queued"
    # A command that says it reads runs read-only whatever the caller asks.
    listed = client.call("call", {"argv": ["queue"], "files": {}, "read_only": False})
    assert [row[0] for row in listed["rows"]] == [task_id]
    seed = client.call("feed", {"after": None, "workers": True})
    assert seed["last_id"] == task_id and task_id in seed["recent_ids"] and seed["workers"] == []
    cluster.start_worker("w1")
    master.wait_state(task_id, "completed")
    feed = client.call("feed", {"after": seed["cursor"]})
    told = [(e["task"], e["dst"]) for e in feed["events"]]
    assert told == [(task_id, "assigned"), (task_id, "completed")], told
    assert client.call("feed", {"after": feed["cursor"]})["events"] == []
