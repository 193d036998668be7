"""Crashes of real processes: a worker killed mid-task, a master killed and restarted."""

from __future__ import annotations

import os
import signal
import time

import psutil

from tests.cluster.harness import MasterProc, task_processes, wait_until


def test_killed_worker_task_is_requeued_within_lease_and_runs_elsewhere(cluster):
    master = cluster.start_master()
    doomed = cluster.start_worker("doomed", "--cpu-cores", "2")
    task = master.ctl("task", "--exec", "sleep 1.5", "--backoff", "0", "doomed")  # pinned at first
    assert task["target_worker"] == "doomed"
    # Let it start, then remove the pin so the retry may go anywhere: resubmit a free task too.
    free = master.ctl("task", "--exec", "sleep 1.5", "--backoff", "0")
    master.wait_state(free["id"], "running")
    assert master.task(free["id"])["worker"] == "doomed"
    cluster.start_worker("survivor", "--cpu-cores", "2")
    killed_at = time.monotonic()
    doomed.kill()
    requeued = wait_until(lambda: master.task(free["id"])["attempt"] == 2 and master.task(free["id"]),
                          timeout=10, what="the task to be placed again")
    lease = 3.0
    assert time.monotonic() - killed_at < lease + 2.0, "requeue took longer than the lease"
    assert requeued["worker"] == "survivor"
    done = master.wait_state(free["id"], "completed")
    assert done["attempt"] == 2 and done["tried_workers"] == ["doomed"]
    assert master.worker("doomed")["status"] == "offline"
    # The pinned task cannot go elsewhere: it waits for its worker, saying so.
    pinned = master.task(task["id"])
    assert pinned["state"] in ("queued", "retrying")


def test_master_killed_and_restarted_loses_nothing_and_runs_nothing_twice(cluster, task_writable_dir):
    marks = task_writable_dir
    master = cluster.start_master("--lease", "10")  # the restart fits well inside the lease
    cluster.start_worker("w1", "--cpu-cores", "8", "--max-tasks", "6")
    cluster.start_worker("w2", "--cpu-cores", "8", "--max-tasks", "6")
    ids = []
    for n in range(8):
        # Each run leaves one line per attempt: a task run twice would leave two.
        script = f"echo $$ >> {marks}/task{n}; sleep 3"
        ids.append(master.ctl("task", "--exec", f"sh -c '{script}'", "--name", f"job{n}")["id"])
    queued_more = [master.ctl("task", "--exec", "true", "-cpu_cores", "64")["id"]]  # never fits
    wait_until(lambda: sum(master.task(i)["state"] == "running" for i in ids) >= 8, 15, "all running")
    before = {i: master.task(i) for i in ids + queued_more}
    port = master.port
    master.kill()

    restarted = cluster.start_master("--lease", "10", port=port)
    assert restarted.port == port
    for i in ids:
        done = restarted.wait_state(i, {"completed", "failed", "dead"}, timeout=30)
        assert done["state"] == "completed" and done["attempt"] == 1, done
    for n in range(8):
        runs = (marks / f"task{n}").read_text().split()
        assert len(runs) == 1, f"task{n} ran {len(runs)} times"
    after = restarted.task(queued_more[0])
    assert after["state"] == "queued" and after["seq"] == before[queued_more[0]]["seq"]
    story = [e["reason"] for e in restarted.task(ids[0])["events"]]
    assert "re-adopted after reconnect" in story


def test_cut_off_worker_stops_its_task_before_the_lease_ends(cluster):
    """Never two live attempts: the master is frozen (SIGSTOP), so the worker cannot reach it;
    the worker kills attempt 1 before the lease ends, and attempt 2 runs after it."""
    master = cluster.start_master()  # lease 3 s
    cluster.start_worker("w1")
    task = master.ctl("task", "--exec", "sleep 30", "--backoff", "0")
    master.wait_state(task["id"], "running")
    wait_until(lambda: task_processes(task["id"], 1), 10, "attempt 1 to start")
    master.close_client()
    master.proc.send_signal(signal.SIGSTOP)
    frozen_at = time.monotonic()
    try:
        wait_until(lambda: not task_processes(task["id"], 1), 5, "the cut-off worker to stop attempt 1")
        assert time.monotonic() - frozen_at < 3.0, "attempt 1 outlived the lease"
    finally:
        master.proc.send_signal(signal.SIGCONT)
    second = wait_until(lambda: (t := master.task(task["id"]))["attempt"] == 2 and t, 15, "attempt 2")
    assert second["state"] in ("assigned", "running")
    assert not task_processes(task["id"], 1)



def test_task_that_ends_while_the_master_is_down_is_reported_not_run_again(cluster, task_writable_dir):
    """The outcome is kept by the worker, which registers again with it: the restarted master
    re-adopts the task and takes the outcome instead of retrying a task that has already run."""
    marks = task_writable_dir
    master = cluster.start_master("--lease", "10")
    cluster.start_worker("w1")
    task = master.ctl("task", "--exec", f"sh -c 'echo $$ >> {marks}/once; sleep 1'", "--backoff", "0")
    master.wait_state(task["id"], "running")
    port = master.port
    master.close_client()
    master.proc.send_signal(signal.SIGSTOP)  # the worker's report of the outcome cannot land
    wait_until(lambda: (marks / "once").exists() and not task_processes(task["id"], 1), 10,
               "the task to end while the master is frozen")
    master.kill()

    restarted = cluster.start_master("--lease", "10", port=port)
    done = restarted.wait_state(task["id"], {"completed", "failed", "dead"}, timeout=30)
    assert done["state"] == "completed" and done["attempt"] == 1, done
    assert len((marks / "once").read_text().split()) == 1, "the task ran again"
    assert "re-adopted after reconnect" in [e["reason"] for e in done["events"]]


def test_local_workers_end_with_a_killed_master_but_not_with_its_ctrl_c(tmp_path):
    """Local workers run in a session of their own (a Ctrl-C at the master's terminal is not
    theirs), yet end with the master however it dies: an orphan worker-1 would fight the
    worker-1 a restarted master starts."""
    master = MasterProc(tmp_path / "data", "--local-workers", "1")
    try:
        worker = wait_until(lambda: psutil.Process(master.proc.pid).children(), 30, "the local worker")[0]
        assert os.getsid(worker.pid) != os.getsid(master.proc.pid)
        master.kill()
        started = time.monotonic()
        worker.wait(timeout=15)
        print(f"\nlocal worker ended {time.monotonic() - started:.2f}s after the master was killed")
    finally:
        master.stop()
