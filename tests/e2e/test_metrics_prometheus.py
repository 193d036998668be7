"""The master's metrics endpoint, read with a plain HTTP GET and scraped by a real Prometheus."""

from __future__ import annotations

import contextlib
import json
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster.harness import MasterProc, Proc, wait_until
from tests.e2e.conftest import free_port, require_tool

JOB = "cloudq-e2e"


def http_get(url: str, timeout: float = 5) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        assert response.status == 200, f"GET {url}: HTTP {response.status}"
        return response.read().decode()


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


class Prometheus:
    def __init__(self, tmp: Path, target_port: int) -> None:
        binary = require_tool("prometheus")
        self.port = free_port()
        tmp.mkdir(parents=True, exist_ok=True)
        config = tmp / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
            f"scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{target_port}']\n"
        )
        self.proc = Proc([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                          f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"])

    def wait_ready(self, timeout: float = 30) -> None:
        def ready() -> bool:
            assert self.proc.proc.poll() is None, "prometheus exited:\n" + self.proc.output()
            try:
                return "Ready" in http_get(f"http://127.0.0.1:{self.port}/-/ready", timeout=2)
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                return False

        wait_until(ready, timeout, "prometheus to be ready", every=0.2)

    def query(self, promql: str) -> list[dict]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        answer = json.loads(http_get(url))
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def value(self, promql: str) -> float | None:
        """The one sample a query returns, or None while there is none yet."""
        result = self.query(promql)
        assert len(result) <= 1, f"{promql} returned several series: {result}"
        return float(result[0]["value"][1]) if result else None

    def wait_value(self, promql: str, expected: float, timeout: float = 30) -> None:
        seen: list[float | None] = []

        def check() -> bool:
            seen.append(self.value(promql))
            return seen[-1] == expected

        try:
            wait_until(check, timeout, f"{promql} == {expected} in prometheus", every=0.3)
        except AssertionError as err:
            raise AssertionError(f"{err}; last value {seen[-1:]}; prometheus output:\n"
                                 + self.proc.output()) from None

    def stop(self) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):  # then Proc.stop has killed it
            self.proc.stop(timeout=15)


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


@pytest.fixture
def start_prometheus(tmp_path: Path) -> Iterator[Callable[[int], Prometheus]]:
    started: list[Prometheus] = []

    def start(target_port: int) -> Prometheus:
        prom = Prometheus(tmp_path / "prometheus", target_port)
        started.append(prom)
        prom.wait_ready()
        return prom

    try:
        yield start
    finally:
        for prom in started:
            prom.stop()


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
    assert "# TYPE cloudq_queue_depth gauge" in text
    assert "cloudq_placement_pass_seconds_count" in text

    samples = metrics.samples()
    assert samples[("cloudq_queue_depth", ())] == 1
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
    assert prom.value("cloudq_queue_depth") == 0
    (series,) = prom.query('cloudq_tasks{state="completed"}')
    assert series["metric"]["instance"] == f"127.0.0.1:{metrics.port}"
    assert series["metric"]["job"] == JOB

    # Later scrapes follow the master: one more completed task shows up as 4.
    submit_noops(metrics.master, 1)
    prom.wait_value('cloudq_tasks{state="completed"}', 4)
    assert prom.value("sum(cloudq_tasks)") == 4
