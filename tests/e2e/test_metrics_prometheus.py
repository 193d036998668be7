"""The master's metrics endpoint, read with a plain HTTP GET, checked by promtool, and scraped
by a real Prometheus."""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster.harness import MasterProc, wait_until
from tests.e2e.conftest import JOB, Cluster, Prometheus, Worker, free_port, http_get
from tests.promtool import check_exposition


@dataclass
class Metrics:
    master: MasterProc
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of one scrape, keyed by name and sorted labels."""
        out = {}
        for family in text_string_to_metric_families(http_get(self.url)):
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return out


@pytest.fixture
def metrics(tmp_path: Path) -> Iterator[Metrics]:
    port = free_port()
    master = MasterProc(tmp_path / "data", "--metrics-port", str(port), "--local-workers", "1",
                        "--local-worker-args", f"--work-dir {tmp_path / 'work'}", "--interval", "300")
    try:
        master.wait_worker("worker-1")
        yield Metrics(master, port)
    finally:
        master.stop()


def submit_noops(master: MasterProc, count: int) -> list[str]:
    ids = [master.ctl("task", "--noop")["id"] for _ in range(count)]
    for task_id in ids:
        master.wait_state(task_id, "completed")
    return ids


def test_metrics_endpoint_over_plain_http(metrics: Metrics) -> None:
    submit_noops(metrics.master, 2)
    blocked = metrics.master.ctl("task", "-cpu_cores", "64", "--exec", "true")["id"]
    assert metrics.master.task(blocked)["state"] == "queued"

    text = http_get(metrics.url)
    assert "# TYPE cloudq_queue_length gauge" in text
    assert "cloudq_placement_pass_seconds_count" in text

    samples = metrics.samples()
    assert samples[("cloudq_queue_length", ())] == 1
    assert samples[("cloudq_tasks", (("state", "completed"),))] == 2
    assert samples[("cloudq_tasks", (("state", "queued"),))] == 1
    assert samples[("cloudq_workers", (("status", "available"),))] == 1
    # Each of the 3 submissions ran a placement pass (the backlog was not empty), each one timed.
    passes = samples[("cloudq_placement_pass_seconds_count", ())]
    assert passes >= 3, f"only {passes} placement passes observed"
    assert samples[("cloudq_placement_pass_seconds_bucket", (("le", "+Inf"),))] == passes
    assert samples[("cloudq_placement_pass_seconds_sum", ())] > 0


def test_prometheus_scrapes_the_master(metrics: Metrics,
                                       start_prometheus: Callable[[int], Prometheus]) -> None:
    submit_noops(metrics.master, 3)
    prom = start_prometheus(metrics.port)

    prom.wait_value(f'up{{job="{JOB}"}}', 1)
    prom.wait_value('cloudq_tasks{state="completed"}', 3)
    assert prom.value('cloudq_workers{status="available"}') == 1
    assert prom.value("cloudq_queue_length") == 0
    (series,) = prom.query('cloudq_tasks{state="completed"}')
    assert series["metric"]["instance"] == f"127.0.0.1:{metrics.port}"
    assert series["metric"]["job"] == JOB

    # Later scrapes follow the master: one more completed task shows up as 4.
    submit_noops(metrics.master, 1)
    prom.wait_value('cloudq_tasks{state="completed"}', 4)
    assert prom.value("sum(cloudq_tasks)") == 4


def test_promtool_finds_the_endpoint_clean(metrics: Metrics) -> None:
    submit_noops(metrics.master, 1)
    metrics.master.ctl("task", "-cpu_cores", "64", "-lock", "enc", "--exec", "true")  # waits
    check_exposition(http_get(metrics.url), (
        "cloudq_tasks_finished_total", "cloudq_worker_cpu_cores", "cloudq_lock_waiters",
        "cloudq_task_run_seconds", "cloudq_store_commit_seconds", "cloudq_rpc_rejected_total",
        "cloudq_rpc_bytes_total", "cloudq_transcodes_finished_total", "cloudq_transcode_encode_speed",
        "cloudq_gpu_energy_joules_total"))


def test_refused_rpc_frames_are_counted(metrics: Metrics) -> None:
    reason = (("reason", "frame_too_large"),)
    assert metrics.samples()[("cloudq_rpc_rejected_total", reason)] == 0
    with socket.create_connection((metrics.master.host, metrics.master.port), timeout=10) as sock:
        sock.sendall(struct.pack("!LB", (64 << 20) + 1, 0))  # a frame header over the limit
        with contextlib.suppress(OSError):
            while sock.recv(4096):  # the master closes the connection
                pass
    wait_until(lambda: metrics.samples()[("cloudq_rpc_rejected_total", reason)] == 1, 10,
               "the refused frame to be counted")


@pytest.fixture
def cluster(start_cluster: Callable[..., Cluster]) -> Cluster:
    """A master with two workers: wa has 4 cores and runs 2 tasks at once, wb 2 cores and 1 task."""
    return start_cluster(Worker("wa", ("--cpu-cores", "4", "--max-tasks", "2")),
                         Worker("wb", ("--cpu-cores", "2", "--max-tasks", "1")))


def noop(**fields: object) -> dict:
    return {"kind": "noop", **fields}


def test_prometheus_sees_queue_outcomes_and_workers(cluster: Cluster,
                                                    start_prometheus: Callable[[int], Prometheus]) -> None:
    master = cluster.master
    # Finished, one way or another: 3 completed, 1 dead, 1 cancelled, 1 expired.
    for task_id in cluster.submit(noop(), noop(), noop()):
        master.wait_state(task_id, "completed")
    (dead,) = cluster.submit({"kind": "exec", "spec": {"argv": ["false"]}, "max_retries": 0})
    (cancelled,) = cluster.submit(noop(resources={"cpu_cores": 64}))
    master.ctl("cancel", cancelled)
    (expired,) = cluster.submit(noop(resources={"cpu_cores": 64}, ttl_s=1))
    master.wait_state(dead, "dead")
    master.wait_state(expired, "failed")
    # Running: two tasks of one core on wa (free: 2 of 4), one of 1.5 cores on wb (free: 0.5 of 2).
    sleepers = cluster.submit(noop(spec={"sleep_s": 300}, target_worker="wa"),
                              noop(spec={"sleep_s": 300}, target_worker="wa"),
                              noop(spec={"sleep_s": 300}, target_worker="wb", resources={"cpu_cores": 1.5}))
    for task_id in sleepers:
        master.wait_state(task_id, "running")
    # Queued, as both workers are at their task limit: 2 live/high, 3 default/medium, 1 batch/low.
    cluster.submit(*[noop(queue="live", priority="high")] * 2, *[noop()] * 3,
                   noop(queue="batch", priority="low"))

    prom = start_prometheus(cluster.port)
    prom.wait_value(f'up{{job="{JOB}"}}', 1)
    prom.wait_value("cloudq_queue_length", 6)
    for queue, count in (("live", 2), ("default", 3), ("batch", 1)):
        assert prom.value(f'cloudq_queue_by_class{{queue="{queue}"}}') == count, queue
    for priority, count in (("high", 2), ("medium", 3), ("low", 1)):
        assert prom.value(f'cloudq_queue_by_priority{{priority="{priority}"}}') == count, priority
    outcomes = {series["metric"]["outcome"]: float(series["value"][1])
                for series in prom.query("sum by (outcome) (cloudq_tasks_finished_total)")}
    assert outcomes == {"completed": 3, "dead": 1, "cancelled": 1, "expired": 1, "failed": 0}
    assert prom.value('cloudq_worker_cpu_cores{worker="wa",kind="free"}') == 2
    assert prom.value('cloudq_worker_cpu_cores{worker="wa",kind="total"}') == 4
    assert prom.value('cloudq_worker_cpu_cores{worker="wb",kind="free"}') == 0.5
    assert prom.value('cloudq_worker_running_tasks{worker="wa"}') == 2
    assert prom.value('cloudq_workers{status="busy"}') == 2
    assert prom.value("sum(cloudq_tasks_submitted_total)") == 15
    assert prom.value("sum(cloudq_task_wait_seconds_count)") >= 7  # every task that started
    assert prom.value('cloudq_oldest_queued_seconds{queue="batch"}') >= 0
