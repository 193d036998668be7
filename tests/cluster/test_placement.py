"""Placement across real master and worker processes over real sockets."""

from __future__ import annotations

from tests.cluster.harness import wait_until


def test_tasks_land_only_where_they_fit_and_big_task_starts_when_a_big_worker_joins(cluster):
    master = cluster.start_master()
    cluster.start_worker("small", "--cpu-cores", "2", "--mem-gb", "2", "--max-tasks", "4")
    cluster.start_worker("medium", "--cpu-cores", "4", "--mem-gb", "8", "--max-tasks", "4")
    fits_medium = master.ctl("task", "--exec", "sleep 0.2", "-cpu_cores", "3", "-mem", "4")
    fits_any = master.ctl("task", "--exec", "true", "-cpu_cores", "1", "-mem", "1")
    big = master.ctl("task", "--exec", "true", "-cpu_cores", "8")
    assert master.wait_state(fits_medium["id"], "completed")["worker"] == "medium"
    assert master.wait_state(fits_any["id"], "completed")["worker"] in ("small", "medium")

    waiting = master.task(big["id"])
    assert waiting["state"] == "queued"
    assert "Insufficient CPU: worker has 4.00 available, task requires 8.00" in waiting["reason"]
    why = master.ctl("why", big["id"])
    assert why["workers"]["medium"] == "Insufficient CPU: worker has 4.00 available, task requires 8.00"
    assert why["workers"]["small"] == "Insufficient CPU: worker has 2.00 available, task requires 8.00"

    # The processor runs every 300 s here: only the registration can start it.
    cluster.start_worker("large", "--cpu-cores", "16", "--mem-gb", "32")
    done = master.wait_state(big["id"], "completed", timeout=10)
    assert done["worker"] == "large" and done["attempt"] == 1


def test_named_lock_serialises_and_other_locks_run_side_by_side(cluster):
    master = cluster.start_master()
    cluster.start_worker("w1", "--cpu-cores", "4", "--max-tasks", "4")
    cluster.start_worker("w2", "--cpu-cores", "4", "--max-tasks", "4")
    same = [master.ctl("task", "--exec", "sleep 0.6", "--lock", "model-a")["id"] for _ in range(3)]
    other = [master.ctl("task", "--exec", "sleep 0.6", "--lock", f"model-{n}")["id"] for n in "xy"]
    runs = [master.wait_state(i, "completed", timeout=30) for i in same + other]
    spans = {r["id"]: (r["started_at"], r["finished_at"]) for r in runs}
    locked = sorted(spans[i] for i in same)
    for (_, end), (start, _) in zip(locked, locked[1:], strict=False):
        assert end <= start, f"tasks sharing lock model-a overlapped: {locked}"
    (x_start, x_end), (y_start, y_end) = spans[other[0]], spans[other[1]]
    assert x_start < y_end and y_start < x_end, "tasks with different locks should overlap"


def test_submit_batch_and_json_views(cluster, tmp_path):
    master = cluster.start_master()
    cluster.start_worker("w1", "--max-tasks", "4")
    lines = ['--exec "true" --name first', '{"kind": "noop", "name": "second"}', "# comment", ""]
    batch = tmp_path / "batch.txt"
    batch.write_text("\n".join(lines))
    from cloudq.commands.registry import files_to_send

    files = files_to_send(["submit", str(batch)])
    reply = master.client().call("call", {"argv": ["submit", str(batch)], "files": files})
    tasks = reply["data"]
    assert [t["name"] for t in tasks] == ["first", "second"]
    for t in tasks:
        assert {"id", "state", "worker", "attempt", "reason"} <= set(t)
        master.wait_state(t["id"], "completed")
    workers = master.ctl("workers")
    assert {"name", "status"} <= set(workers[0])
    assert wait_until(lambda: master.ctl("status")["tasks"]["completed"] == 2, 5, "status counts")


def test_instant_noops_run_on_the_fetch_thread_and_keep_the_whole_story(cluster):
    master = cluster.start_master()
    cluster.start_worker("w1", "--max-tasks", "8", "--cpu-cores", "8")
    tasks = master.client().call("submit", {"tasks": [{"kind": "noop"}] * 300 + [
        {"kind": "noop", "spec": {"sleep_s": 0.3}, "name": "sleeper"}]})
    wait_until(lambda: master.ctl("status")["tasks"]["completed"] == 301, 60, "301 no-ops")
    for task in (tasks[0], tasks[150], tasks[-1]):
        shown = master.ctl("show", task["id"])
        moves = [(e["src"], e["dst"]) for e in shown["events"]]
        assert moves == [("pending", "queued"), ("queued", "assigned"), ("assigned", "running"),
                         ("running", "completed")]
        assert shown["attempt"] == 1 and shown["worker"] == "w1" and shown["result"]["exit_code"] == 0
        assert shown["created_at"] <= shown["started_at"] <= shown["finished_at"]
    # Neither kind leaves anything behind in the worker's directory.
    work = cluster.tmp / "work" / "w1"
    assert not [p for p in work.iterdir() if p.name.startswith("t")]
