"""A worker's own Prometheus endpoint (`cloudq worker --metrics-port N`): what it runs now,
each running task's progress and FFmpeg speed, and counts of what its tasks came to.

Everything is read from the agent when scraped, in one short hold of its lock: the tasks it
runs (with the last progress each runner reported) and the counts its task threads keep
(tasks.TaskCounts). Nothing is added to the path a task takes but a few increments.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cloudq import __version__
from cloudq.errors import CloudqError
from cloudq.rpc.protocol import WIRE_BYTES
from cloudq.specs import KINDS
from cloudq.web import BoundedHTTPServer, serve_http
from cloudq.worker.runners import RunStatus

log = logging.getLogger("cloudq.worker")

STATUSES = tuple(str(status) for status in RunStatus)


class WorkerMetrics(Collector):
    def __init__(self, agent: Any) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Metric]:
        agent = self.agent
        with agent._lock:
            running = [(entry.task_id, entry.progress) for entry in agent.running.values()]
            counts = agent.counts
            finished = dict(counts.finished)
            errors = dict(counts.runner_errors)
            written = counts.bytes_written
        energy = dict(agent.gpu_energy.joules)  # written by the report thread: a copy is enough

        info = GaugeMetricFamily("cloudq_worker_info", "This worker: its name and cloudq version "
                                 "(always 1; join on instance to name the worker)",
                                 labels=["worker", "version"])
        info.add_metric([agent.name, __version__], 1)
        yield info
        yield GaugeMetricFamily("cloudq_worker_active_tasks",
                                "Tasks running on this worker (not counting no-ops, which end at once)",
                                value=len(running))
        progress = GaugeMetricFamily("cloudq_worker_task_progress_ratio",
                                     "How far each running task is, 0 to 1 (tasks that report it: FFmpeg)",
                                     labels=["task"])
        speed = GaugeMetricFamily("cloudq_worker_encode_speed",
                                  "Encode speed of each running FFmpeg task, in times real time",
                                  labels=["task"])
        for task_id, last in sorted(running, key=lambda item: item[0]):
            last = last or {}
            if _number(percent := last.get("percent")):
                progress.add_metric([task_id], percent / 100)
            if _number(rate := last.get("speed")):
                speed.add_metric([task_id], rate)
        yield progress
        yield speed

        done = CounterMetricFamily("cloudq_worker_tasks_finished",
                                   "Tasks this worker ran to an end, by kind and outcome "
                                   "(completed, failed, cancelled, timed_out)",
                                   labels=["kind", "outcome"])
        for kind in (*KINDS, *sorted({k for k, _ in finished} - set(KINDS))):
            for status in STATUSES:
                done.add_metric([kind, status], finished.get((kind, status), 0))
        yield done
        failures = CounterMetricFamily("cloudq_worker_runner_errors",
                                       "Tasks that failed through this worker's own fault (a runner "
                                       "that crashed, a tool or engine missing, a task directory it "
                                       "could not make), by task kind", labels=["kind"])
        for kind in (*KINDS, *sorted(set(errors) - set(KINDS))):
            failures.add_metric([kind], errors.get(kind, 0))
        yield failures
        yield CounterMetricFamily("cloudq_worker_bytes_written",
                                  "Bytes of the files tasks left in their task directories, "
                                  "measured as each task ended", value=written)
        wire = CounterMetricFamily("cloudq_worker_rpc_bytes",
                                   "Bytes of RPC frames this worker received from and sent to the "
                                   "master, as they crossed the wire", labels=["direction"])
        for direction, count in WIRE_BYTES.counts().items():
            wire.add_metric([direction], count)
        yield wire
        joules = CounterMetricFamily("cloudq_worker_gpu_energy",
                                     "Energy each GPU used since this worker started, integrated "
                                     "from its power samples", labels=["gpu"], unit="joules")
        for index, value in sorted(energy.items()):
            joules.add_metric([str(index)], value)
        yield joules


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


def worker_registry(agent: Any) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(WorkerMetrics(agent))
    return registry


def serve_metrics(agent: Any, host: str, port: int) -> BoundedHTTPServer:
    """/metrics on host:port, in a background thread (the master's bounded HTTP server)."""
    app = make_wsgi_app(worker_registry(agent))

    def only_metrics(environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") in ("/metrics", "/"):
            return app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: this worker serves /metrics\n"]

    try:
        server = serve_http(only_metrics, host, port)
    except OSError as err:
        raise CloudqError(f"cannot serve metrics on {host}:{port}: {err.strerror or err}") from None
    log.info("metrics on http://%s:%d/metrics", host, server.server_address[1])
    return server
