"""Operator controls through real master and worker processes: hold, release, retry, priority,
events and locks, as `cloudq ctl` runs them."""

from __future__ import annotations

from tests.cluster.harness import wait_until

# Attempt 1 blocks until cancelled; a later attempt (an operator's retry) ends at once.
SECOND_TRY_ENDS = "sh -c 'test $CLOUDQ_ATTEMPT -ge 2 || exec sleep 60'"


def test_hold_release_priority_locks_retry_and_events_on_a_real_cluster(cluster):
    master = cluster.start_master()
    cluster.start_worker("w1", "--cpu-cores", "4", "--max-tasks", "4")
    first = master.ctl("task", "--exec", SECOND_TRY_ENDS, "--lock", "gate")["id"]
    master.wait_state(first, "running")
    second = master.ctl("task", "--exec", "true", "--lock", "gate")["id"]
    third = master.ctl("task", "--exec", "true", "--lock", "gate")["id"]

    (gate,) = master.ctl("locks")
    assert gate["holders"] == [{"task": first, "worker": "w1", "state": "running"}]
    assert gate["waiters"] == [second, third] and gate["limit"] == 1
    assert master.ctl("priority", third, "high", "--queue", "live")["priority"] == "high"
    assert master.ctl("locks")[0]["waiters"] == [third, second]
    assert master.ctl("hold", second)["state"] == "held"
    assert master.ctl("locks")[0]["waiters"] == [third]

    master.ctl("cancel", first)  # frees the lock once w1 confirms the kill
    assert master.wait_state(third, "completed")["queue"] == "live"
    assert master.task(second)["state"] == "held"  # a held task is never placed
    assert master.ctl("release", second)["id"] == second
    master.wait_state(second, "completed")

    wait_until(lambda: master.task(first)["finished_at"], 10, "w1 to confirm the kill")
    assert master.ctl("retry", first)["state"] in ("queued", "assigned", "running", "completed")
    retried = master.wait_state(first, "completed")
    assert retried["attempt"] == 2 and master.ctl("locks") == []

    moves = [(e["src"], e["dst"], e["reason"]) for e in master.ctl("events", first)]
    assert ("running", "cancelled", "cancelled by an operator") in moves
    assert ("cancelled", "queued", "retried by an operator") in moves
    assert moves[-1][1] == "completed"
    reasons = [e["reason"] for e in master.ctl("events", third)]
    assert "priority default/medium -> live/high by an operator" in reasons
    on_w1 = master.ctl("events", "--worker", "w1", "--since", "5m", "--limit", "1000")
    assert {e["task"] for e in on_w1} == {first, second, third, ""}  # "": w1's own (joined)
    assert [e["dst"] for e in on_w1 if not e["task"]] == ["joined"]
    assert all(e["worker"] == "w1" for e in on_w1)


def test_retry_redrives_a_dead_task_and_workers_name_shows_it_running(cluster):
    master = cluster.start_master()
    cluster.start_worker("w1", "--cpu-cores", "2", "--max-tasks", "2", "--label", "zone=eu")
    dead = master.ctl("task", "--exec", "false", "--retries", "0")["id"]
    assert master.wait_state(dead, "dead")["attempt"] == 1
    master.ctl("retry", dead)
    again = master.wait_state(dead, "dead")
    assert again["attempt"] == 2 and again["finished_at"]
    sleeper = master.ctl("task", "--exec", "sleep 30", "-cpu_cores", "1.5")["id"]
    master.wait_state(sleeper, "running")
    detail = master.ctl("workers", "w1")
    assert detail["running_tasks"][0]["id"] == sleeper and detail["cpu_free"] == 0.5
    assert detail["labels"] == {"zone": "eu"} and detail["connected"] and detail["flags"] == []
    master.ctl("cancel", sleeper)


def test_reasons_name_an_absent_target_and_dry_run_submits_nothing(cluster):
    master = cluster.start_master()
    worker = cluster.start_worker("worker-1", "--cpu-cores", "4", "--max-tasks", "2")
    reply = master.client().call("call", {"argv": ["task", "worker-1", "--exec", "true", "-cpu_cores",
                                                   "8.0"], "files": {}})
    first, warning = reply["status"].split("\n")
    assert first == ("Task t1 queued: Insufficient CPU: worker has 4.00 available, task requires 8.00. "
                     "Will be assigned when resources become available.")
    assert "needs 8 cores; worker-1 has 4" in warning
    pinned = master.ctl("task", "worker-9", "--exec", "true")
    assert pinned["reason"] == "worker-9 has not registered"

    dry = master.ctl("task", "--exec", "true", "-cpu_cores", "2", "--dry-run")
    assert dry["would_go_to"] == "worker-1" and dry["workers"] == {"worker-1": "fits now"}
    assert [t["id"] for t in master.ctl("queue")] == ["t1", "t2"]  # nothing was submitted

    worker.kill()
    master.wait_worker("worker-1", "offline", timeout=10)
    gone = master.ctl("task", "worker-1", "--exec", "true")
    assert gone["reason"].startswith("worker-1 is offline since ")
    dry = master.ctl("task", "--exec", "true", "--dry-run")
    assert dry["would_go_to"] is None and dry["workers"]["worker-1"].startswith("offline since")
