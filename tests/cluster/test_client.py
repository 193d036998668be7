"""cloudq.Client and `cloudq ctl wait` against real master and worker processes: each outcome
waited for, many ids at once, a timeout, logs and events followed, errors for unknown ids and
bad fields, TLS with the admin certificate, and ctl's exit statuses."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from cloudq import Client
from cloudq.errors import NotFoundError, ValidationError
from cloudq.rpc import tls
from cloudq.rpc.client import MasterClient
from tests.cluster.harness import ROOT

pytestmark = pytest.mark.timeout(180)


def ctl(address: str, *words: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cloudq", "ctl", "--master", address, *words],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_submit_and_wait_for_each_outcome_and_many_at_once(cluster):
    master = cluster.start_master()
    cluster.start_worker("w1", "--max-tasks", "4")
    with Client(master.address) as cq:
        ok = cq.submit(kind="exec", spec={"argv": ["sh", "-c", "echo fine"]}, name="ok")
        bad = cq.submit(kind="exec", spec={"argv": ["false"]}, max_retries=0)
        slow = cq.submit(kind="exec", spec={"argv": ["sleep", "60"]})
        threading.Timer(1.0, lambda: Client(master.address).cancel(slow["id"])).start()
        ended = cq.wait([ok["id"], bad["id"], slow["id"]], timeout=60)
        assert {i: v["state"] for i, v in ended.items()} == {
            ok["id"]: "completed", bad["id"]: "dead", slow["id"]: "cancelled"}
        assert ended[ok["id"]]["result"]["log_tail"].strip() == "fine"
        many = cq.submit_many([{"kind": "noop"} for _ in range(50)])
        assert len(cq.wait([t.id for t in many], timeout=60)) == 50
        # A handle: the submit answer as a dict, with the per-task calls bound to its id.
        handle = cq.submit(kind="exec", spec={"argv": ["sh", "-c", "echo handled"]})
        assert handle["state"] in ("queued", "assigned") and handle.id == handle["id"]
        assert handle.wait(timeout=30)["state"] == "completed"
        assert handle.get()["state"] == "completed" and "handled" in "".join(handle.logs())
        # Submit to done, seen by wait, on an idle worker: event-driven, not polled.
        took = []
        for _ in range(20):
            started = time.perf_counter()
            task = cq.submit(kind="noop")
            cq.wait([task["id"]], timeout=10)
            took.append(time.perf_counter() - started)
        took.sort()
        print(f"\nsubmit to done seen by wait: p50 {took[10] * 1000:.1f} ms, max {took[-1] * 1000:.1f} ms")


def test_timeout_logs_events_and_errors(cluster):
    master = cluster.start_master()
    cluster.start_worker("w1", "--max-tasks", "4")
    with Client(master.address) as cq:
        long = cq.submit(kind="exec", spec={"argv": ["sleep", "30"]})
        started = time.monotonic()
        with pytest.raises(TimeoutError, match=f"1 of 1 tasks had not ended after 1s: {long['id']}"):
            cq.wait([long["id"]], timeout=1)
        assert time.monotonic() - started < 5
        cq.cancel(long["id"])
        talk = cq.submit(kind="exec", spec={"argv": ["sh", "-c", "echo one; sleep 1.5; echo two"]})
        chunks = list(cq.logs(talk["id"], follow=True))
        assert "".join(chunks).split() == ["one", "two"] and len(chunks) >= 2
        seen = []
        for event in cq.events(follow=True, task_id=talk["id"]):
            seen.append(event["dst"])
            if event["dst"] == "completed":
                break
        assert seen[-3:] == ["assigned", "running", "completed"]
        with pytest.raises(NotFoundError, match="no task 't999'"):
            cq.wait(["t999"])
        with pytest.raises(ValidationError, match="unknown task kind"):
            cq.submit(kind="rocket")
        assert [t["id"] for t in cq.queue(state="cancelled")] == [long["id"]]


def test_ctl_wait_and_task_wait_exit_statuses(cluster):
    master = cluster.start_master()
    cluster.start_worker("w1", "--max-tasks", "4")
    done = ctl(master.address, "task", "--exec", "true", "--wait")
    assert done.returncode == 0, done.stderr
    assert "1 of 1 completed" in done.stdout
    failed = ctl(master.address, "task", "--exec", "false", "--retries", "0", "--wait", "--json")
    assert failed.returncode == 1 and '"state": "dead"' in failed.stdout
    array = ctl(master.address, "task", "--exec", "true", "--count", "5", "--max-running", "2", "--wait")
    assert array.returncode == 0 and "5 of 5 completed" in array.stdout, array.stdout + array.stderr
    sleeper = master.ctl("task", "--exec", "sleep 30")["id"]
    timed_out = ctl(master.address, "wait", sleeper, "--timeout", "1")
    assert timed_out.returncode == 2 and "had not ended after 1s" in timed_out.stderr
    assert "running" in timed_out.stdout or "assigned" in timed_out.stdout


def test_the_client_over_tls_with_the_admin_certificate(cluster, tmp_path):
    certs = tmp_path / "certs"
    tls.init_cluster(certs, ["w1"], ["localhost", "127.0.0.1"])
    master = cluster.start_master("--tls-dir", str(certs))
    master._client = MasterClient(master.address, certs)  # the harness's own reads, as the admin
    cluster.start_worker("w1", "--tls-dir", str(certs))
    with Client(master.address, tls_dir=certs) as cq:
        task = cq.submit(kind="noop")
        assert cq.wait([task["id"]], timeout=30)[task["id"]]["state"] == "completed"
        assert [w["name"] for w in cq.workers()] == ["w1"]
