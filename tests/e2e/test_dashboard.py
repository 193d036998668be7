"""The Grafana dashboard works, proven without Grafana: a real Prometheus scrapes a master and
two workers' own endpoints while they run tasks, and every query of every panel of
docs/grafana/cloudq.json, with Grafana's variables filled in as Grafana would, returns data
through Prometheus's HTTP API.

To give every panel something to show, the cluster runs an exec task, a short transcode, a
transcode that is still running when the queries are made, and a task holding a lock while
another waits for it. One worker is started with a fake NVML reporting one GPU (this machine
has none; tests/e2e/fake_gpu_worker.py): everything else about it is the real worker."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import pytest

from tests.cluster.harness import wait_until
from tests.dashboard import load, substitute, targets
from tests.e2e.conftest import JOB, WORKER_JOB, Cluster, Prometheus, Worker, require_tool

pytestmark = pytest.mark.timeout(300)


def exec_task(*argv: str, **fields: object) -> dict:
    return {"kind": "exec", "spec": {"argv": list(argv)}, **fields}


def transcode(seconds: float, **fields: object) -> dict:
    return {"kind": "ffmpeg", "spec": {"scenario": "360p30-h264", "duration_s": seconds}, **fields}


def has_data(result: list[dict]) -> bool:
    """At least one series with a number (not NaN, as a quantile over no observations is)."""
    return any(not math.isnan(float(series["value"][1])) for series in result)


def test_every_dashboard_query_returns_data(start_cluster: Callable[..., Cluster],
                                           start_prometheus: Callable[..., Prometheus]) -> None:
    require_tool("ffmpeg")
    cluster = start_cluster(Worker("wa", ("--cpu-cores", "4", "--max-tasks", "3"), metrics=True),
                            Worker("wgpu", ("--max-tasks", "2"), metrics=True, fake_gpu=True))
    master = cluster.master
    prom = start_prometheus(cluster.port, tuple(cluster.worker_ports.values()))
    prom.wait_value(f'sum(up{{job="{JOB}"}})', 1)
    prom.wait_value(f'sum(up{{job="{WORKER_JOB}"}})', 2)
    # The histograms' zero buckets are in Prometheus before anything is observed, so a rate()
    # over them sees the first observation as an increase.
    prom.wait_value('cloudq_transcode_encode_speed_count{engine="cpu"}', 0)

    (holder,) = cluster.submit(exec_task("sleep", "300", locks=["enc"], target_worker="wa"))
    master.wait_state(holder, "running")
    (waiter,) = cluster.submit(exec_task("true", locks=["enc"]))
    (live,) = cluster.submit(transcode(3600, target_worker="wa"))
    done = cluster.submit(exec_task("true", target_worker="wgpu"), transcode(2, target_worker="wgpu"))
    # wgpu kept busy: a worker with tasks sends its sample (and GPU energy) every heartbeat,
    # where an idle one sends it with its fetch long-poll, every POLL_WAIT_S.
    (busy,) = cluster.submit(exec_task("sleep", "300", target_worker="wgpu"))
    master.wait_state(live, "running")
    master.wait_state(busy, "running")
    busy_since = time.time() + 2.5  # from its first heartbeat sample on
    for task_id in done:
        master.wait_state(task_id, "completed", timeout=60)
    assert master.task(waiter)["state"] == "queued"

    queries = targets(load())
    assert len(queries) >= 40
    results: dict[str, list[dict]] = {}

    def all_have_data() -> bool:
        for _title, _ref, expr in queries:
            if not has_data(results.get(expr, [])):
                results[expr] = prom.query(substitute(expr))
        return all(has_data(results[expr]) for _, _, expr in queries)

    try:
        wait_until(all_have_data, 90, "every dashboard query to return data", every=1.0)
    finally:
        for title, ref, expr in queries:
            result = results.get(expr, [])
            values = [series["value"][1] for series in result][:3]
            print(f"{'ok ' if has_data(result) else 'NO '} {title} [{ref}]: {len(result)} series {values}")
    empty = [f"{title} [{ref}]: {substitute(expr)}" for title, ref, expr in queries
             if not has_data(results[expr])]
    assert not empty, "panels without data:\n" + "\n".join(empty)

    # A few of the answers, checked against what the cluster did.
    gpu = prom.query('cloudq_gpu_utilization_ratio{worker="wgpu"}')
    assert [float(s["value"][1]) for s in gpu] == [0.4]
    assert prom.value('cloudq_lock_waiters{lock="enc"}') == 1
    assert prom.value('cloudq_lock_holders{lock="enc"}') == 1
    assert prom.value('sum(cloudq_transcodes_finished_total{engine="cpu", outcome="completed"})') == 1
    assert prom.value("cloudq_transcode_output_bytes_total") > 0
    # The fake GPU draws 75 W: the energy counter grows by that much a second, give or take a
    # heartbeat's worth (2 s, 150 J) at each end of what Prometheus has of it since wgpu has
    # been busy (before, idle, it sent its sample only with each 10 s long-poll).
    def energy_span() -> tuple[float, float] | None:
        (series,) = prom.query('cloudq_gpu_energy_joules_total{worker="wgpu"}[5m]')
        kept = [(t, float(e)) for t, e in series["values"] if t >= busy_since]  # while busy
        if len(kept) < 2:
            return None
        (t0, e0), (t1, e1) = kept[0], kept[-1]
        return (t1 - t0, e1 - e0) if t1 - t0 >= 12 else None

    seconds, joules = wait_until(energy_span, 30, "12 s of the GPU energy counter in prometheus")
    print(f"GPU energy: {joules:.0f} J over {seconds:.1f} s, {joules / seconds:.1f} W")
    assert 75 - 300 / seconds <= joules / seconds <= 75 + 300 / seconds, (joules, seconds)
    (speed,) = prom.query(f'cloudq_worker_encode_speed{{task="{live}"}}')
    assert float(speed["value"][1]) > 0
    master.ctl("cancel", live)
