"""The three task kinds run for real through master and worker processes: progress reaches the
master, cancel and timeouts reach the worker, and nothing is left behind."""

from __future__ import annotations

import time

import docker

from tests.cluster.harness import task_processes, wait_until

IMAGE = "cloudq-busybox:latest"


def test_ffmpeg_transcode_reports_progress_and_probed_result(cluster):
    master = cluster.start_master()
    cluster.start_worker("enc", "--cpu-cores", "2")
    task = master.ctl("task", "--scenario", "360p30-vp8", "--duration", "4", "--name", "clip")
    seen = []

    def progressing():
        view = master.task(task["id"])
        if view["progress"]:
            seen.append(view["progress"]["percent"])
        return view["state"] in ("completed", "failed", "dead")

    wait_until(progressing, 120, "the transcode to finish", every=0.1)
    done = master.task(task["id"])
    assert done["state"] == "completed", done["last_error"]
    assert any(0 < p < 100 for p in seen), f"no progress seen while running: {seen}"
    out = done["result"]["output"]
    assert (out["codec"], out["width"], out["height"]) == ("vp8", 640, 360)
    assert abs(out["duration_s"] - 4.0) < 0.2 and out["size_bytes"] > 0


def test_nvenc_task_waits_for_a_worker_with_the_encoder_and_a_gpu(cluster):
    master = cluster.start_master()
    cluster.start_worker("cpu-only")
    task = master.ctl("task", "--scenario", "720p30-h264-nvenc", "-gpu", "1")
    why = master.ctl("why", task["id"])
    assert "cpu-only" in why["workers"]
    assert "Insufficient GPUs" in why["workers"]["cpu-only"] or "lacks" in why["workers"]["cpu-only"]
    assert master.task(task["id"])["state"] == "queued"


def test_container_cancel_kills_within_5s_and_leaves_nothing(cluster):
    master = cluster.start_master()
    cluster.start_worker("docker-host", "--cpu-cores", "2")
    task = master.ctl("task", IMAGE, "--cmd", "sh -c 'echo started; sleep 60'", "-mem", "0.1")
    master.wait_state(task["id"], "running")
    wait_until(lambda: "started" in master.ctl("logs", task["id"])["log"], 20, "live container logs")
    cancelled_at = time.monotonic()
    master.ctl("cancel", task["id"])
    wait_until(lambda: master.worker("docker-host")["tasks"] == 0, 10, "the worker to confirm the kill")
    assert time.monotonic() - cancelled_at < 5.0
    view = master.task(task["id"])
    assert view["state"] == "cancelled" and view["result"]["status"] == "cancelled"
    engine = docker.from_env()
    assert engine.containers.list(all=True, filters={"label": f"cloudq.task={task['id']}"}) == []


def test_exec_cancel_leaves_no_child_and_timeout_kills(cluster):
    master = cluster.start_master()
    cluster.start_worker("shell-host", "--max-tasks", "4")
    spawner = master.ctl("task", "--exec", "sh -c 'sleep 301 & sleep 302 & echo up; wait'")
    master.wait_state(spawner["id"], "running")
    wait_until(lambda: task_processes(spawner["id"]), 10, "the children to start")
    master.ctl("cancel", spawner["id"])
    wait_until(lambda: not task_processes(spawner["id"]), 6, "every child of the cancelled task to die")

    slow = master.ctl("task", "--exec", "sleep 30", "--timeout", "1", "--retries", "0")
    started = time.monotonic()
    done = master.wait_state(slow["id"], {"dead", "failed"}, timeout=15)
    assert time.monotonic() - started < 1 + 5 + 2
    assert done["last_error"].startswith("timed out after 1 s")
    assert done["result"]["status"] == "timed_out" and done["attempt"] == 1


def test_worker_runs_at_most_max_tasks_at_once(cluster):
    master = cluster.start_master()
    cluster.start_worker("pair", "--max-tasks", "2", "--cpu-cores", "8")
    ids = [master.ctl("task", "--exec", "sleep 0.5")["id"] for _ in range(5)]
    spans = [(t["started_at"], t["finished_at"]) for t in (master.wait_state(i, "completed") for i in ids)]
    for start, _ in spans:
        overlapping = sum(1 for s, e in spans if s <= start < e)
        assert overlapping <= 2, spans

