"""The Prometheus endpoint. Figures are read from the master when scraped, and placement timing
arrives through the core's hooks, so the core never imports prometheus_client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from cloudq.web import serve_http


class MasterCollector(Collector):
    def __init__(self, master: Any) -> None:
        self.master = master

    def collect(self) -> Iterator[GaugeMetricFamily]:
        summary = self.master.summary()
        tasks = GaugeMetricFamily("cloudq_tasks", "Tasks by state", labels=["state"])
        for state, count in summary["tasks"].items():
            tasks.add_metric([state], count)
        yield tasks
        workers = GaugeMetricFamily("cloudq_workers", "Workers by status", labels=["status"])
        for status, count in summary["workers"].items():
            workers.add_metric([status], count)
        yield workers
        yield GaugeMetricFamily("cloudq_queue_depth", "Tasks waiting to be placed", value=summary["queued"])
        yield GaugeMetricFamily("cloudq_uptime_seconds", "Seconds since the master started",
                                value=summary["uptime_s"])


def serve_metrics(master: Any, host: str, port: int) -> Any:
    registry = CollectorRegistry()
    registry.register(MasterCollector(master))
    passes = Histogram("cloudq_placement_pass_seconds", "Time of one placement pass",
                       registry=registry, buckets=(0.0001, 0.0005, 0.001, 0.005, 0.02, 0.1, 0.5))
    master.hooks.on_placement_pass.append(lambda seconds, placed: passes.observe(seconds))
    return serve_http(make_wsgi_app(registry), host, port)
