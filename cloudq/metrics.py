"""The Prometheus endpoint. The core never imports prometheus_client: gauges are read from the
master when scraped (Views.figures, one hold of its lock, O(workers + shapes + locks)), and
counters and histograms are kept here by the core's hooks (every task move, every retry, every
placement pass, every group commit of the journal), so they only ever grow: a finished task
the master forgets later (--keep-finished) takes nothing away from them. Transcodes are counted
from the same moves, with what the FFmpeg result says (speed, output size); GPU energy from the
running totals workers send with each heartbeat (each integrates its GPUs' power samples over
the time between them); RPC bytes from the channel's count (protocol.WIRE_BYTES). Quality
scores (ssim, psnr, vmaf) come from the result of a completed transcode that asked for them.

Counters and histograms are plain numbers, not prometheus_client objects: the hooks run under
the master's lock on every move, and an increment there costs a dict lookup, no lock and no
allocation. The same lock is held while they are read at a scrape.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from cloudq.core.model import TASK_KINDS, QueueClass, TaskState
from cloudq.core.transitions import Event
from cloudq.master.state import RETRY_CAUSES
from cloudq.rpc.protocol import WIRE_BYTES, WireBytes
from cloudq.rpc.server import REJECTION_REASONS
from cloudq.specs.scenarios import parse_scenario

log = logging.getLogger("cloudq.metrics")

S = TaskState
GIB = 1 << 30  # workers give sizes in GiB ("mem_gb"); metrics are in bytes
OUTCOMES = ("completed", "failed", "cancelled", "dead", "expired")
_OUTCOME_OF = {S.COMPLETED: "completed", S.FAILED: "failed", S.CANCELLED: "cancelled", S.DEAD: "dead"}
_PENDING, _QUEUED, _ASSIGNED, _RUNNING, _FAILED = S.PENDING, S.QUEUED, S.ASSIGNED, S.RUNNING, S.FAILED

# Bucket bounds in seconds.
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0,
                7200.0, 21600.0, 86400.0)
RUN_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0,
               14400.0, 43200.0, 86400.0)
PASS_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.02, 0.1, 0.5, 2.0)
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# Encode speed, in times real time (2.0: a minute of media in 30 s).
SPEED_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0)
ENGINES = ("cpu", "nvenc")
# Quality scores, each on its own scale: SSIM 0 to 1, PSNR in dB, VMAF 0 to 100.
QUALITY_BUCKETS = {
    "ssim": (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.92, 0.94, 0.96, 0.97, 0.98, 0.99, 0.995, 1.0),
    "psnr": (20.0, 25.0, 28.0, 30.0, 32.0, 34.0, 36.0, 38.0, 40.0, 42.0, 45.0, 50.0, 60.0, 100.0),
    "vmaf": (20.0, 40.0, 50.0, 60.0, 70.0, 75.0, 80.0, 85.0, 90.0, 93.0, 95.0, 97.0, 99.0, 100.0),
}


class Buckets:
    """One histogram series: counts per bucket (not cumulative; the last is +Inf) and a sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # bounds are inclusive (le)
        self.total += value

    def snapshot(self) -> tuple[list[tuple[str, float]], float]:
        """Cumulative buckets as exposed, and the sum."""
        counts, total = list(self.counts), self.total
        out, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), counts, strict=True):
            running += count
            out.append((floatToGoString(bound), running))
        return out, total


class Rejected(Protocol):
    def counts(self) -> dict[str, int]: ...


class MasterMetrics(Collector):
    """Counts what happens (from the hooks) and reads what is (from the master) at a scrape."""

    def __init__(self, master: Any, rejections: Rejected | None = None,
                 wire: WireBytes = WIRE_BYTES) -> None:
        self.master = master
        self.rejections = rejections
        self.wire = wire
        self.submitted: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.finished: defaultdict[str, Counter[str]] = defaultdict(Counter)
        for kind in TASK_KINDS:  # every series from the start, so rate() has a zero to begin at
            self.submitted[kind].update(dict.fromkeys(map(str, QueueClass), 0))
            self.finished[kind].update(dict.fromkeys(OUTCOMES, 0))
        self.retries: Counter[str] = Counter(dict.fromkeys(RETRY_CAUSES, 0))
        self.placement_attempts = 0
        self.wait = {str(queue): Buckets(WAIT_BUCKETS) for queue in QueueClass}
        self.run = {kind: Buckets(RUN_BUCKETS) for kind in TASK_KINDS}
        self.passes = Buckets(PASS_BUCKETS)
        self.commits = Buckets(COMMIT_BUCKETS)
        # Transcodes: finishes by (engine, scenario), speed by engine, bytes of output.
        self.transcodes: defaultdict[tuple[str, str], Counter[str]] = defaultdict(
            lambda: Counter(dict.fromkeys(OUTCOMES, 0)))
        self.speed = {engine: Buckets(SPEED_BUCKETS) for engine in ENGINES}
        self.output_bytes = 0
        self.quality = {metric: Buckets(bounds) for metric, bounds in QUALITY_BUCKETS.items()}
        self._engines: dict[str, str] = {}  # by scenario name
        # GPU energy by worker: what was counted, and the worker's own running total when last
        # read (it starts again from zero when the worker restarts).
        self.energy: dict[str, float] = {}
        self._energy_seen: dict[str, dict[Any, float]] = {}  # by worker, by GPU index

    def attach(self) -> MasterMetrics:
        hooks = self.master.hooks
        hooks.on_event.append(self.on_event)
        hooks.on_retry.append(self.on_retry)
        hooks.on_placement_pass.append(self.on_placement_pass)
        self.master.journal.on_commit.append(self.on_commit)
        return self

    # ------------------------------------------------------------------ hooks
    def on_event(self, event: Event) -> None:
        """Every move of every task, under the master's lock: cheap, and never raises. The
        core's moves carry TaskState members, so they are compared by identity."""
        dst = event.dst
        if dst is _ASSIGNED:  # the commonest move, and nothing to count
            return
        try:
            self._count(event, dst)
        except Exception:  # noqa: BLE001 - a metric must never break a move
            log.exception("counting %s failed", event)

    def _count(self, event: Event, dst: str) -> None:
        task = self.master.tasks.get(event.task)
        if task is None:
            return
        src = event.src
        if dst is _QUEUED:
            if src is _PENDING:
                self.submitted[task.kind][task.queue] += 1
        elif dst is _RUNNING:  # queued (the last time) to started, on the master's clock
            waited = event.time - (task.queued_at or event.time)
            series = self.wait.get(task.queue) or self.wait.setdefault(task.queue, Buckets(WAIT_BUCKETS))
            series.observe(waited if waited > 0.0 else 0.0)
        else:
            if src is _RUNNING:
                ran = event.time - (task.started_at or event.time)
                series = self.run.get(task.kind) or self.run.setdefault(task.kind, Buckets(RUN_BUCKETS))
                series.observe(ran if ran > 0.0 else 0.0)
            outcome = _OUTCOME_OF.get(dst)
            if outcome is not None:
                if dst is _FAILED and src is _QUEUED:  # the only way to failed: its TTL ran out
                    outcome = "expired"
                self.finished[task.kind][outcome] += 1
                if task.kind == "ffmpeg":
                    self._transcoded(task, outcome)

    def _transcoded(self, task: Any, outcome: str) -> None:
        """A transcode that reached a final state; a completed one adds its speed and size as
        its FFmpeg result gives them (a worker's numbers: only finite, non-negative ones)."""
        scenario = str(task.spec.get("scenario"))
        engine = self._engines.get(scenario)
        if engine is None:
            engine = "nvenc" if parse_scenario(scenario).codec.gpu else "cpu"
            self._engines[scenario] = engine
        self.transcodes[engine, scenario][outcome] += 1
        if outcome != "completed":
            return
        output = (task.result or {}).get("output")
        if not isinstance(output, dict):
            return
        if _amount(speed := output.get("encode_speed")):
            self.speed[engine].observe(speed)
        if _amount(size := output.get("size_bytes")):
            self.output_bytes += int(size)
        scores = output.get("quality")
        if isinstance(scores, dict):
            for metric, score in scores.items():
                series = self.quality.get(metric)  # only the metrics there are, by name
                if series is not None and _amount(score):
                    series.observe(float(score))

    def on_retry(self, task: Any, cause: str) -> None:
        self.retries[cause] += 1

    def on_placement_pass(self, seconds: float, placed: int) -> None:
        self.placement_attempts += 1
        self.passes.observe(seconds)

    def on_commit(self, seconds: float, changes: int) -> None:
        self.commits.observe(seconds)

    # ------------------------------------------------------------------ scrape
    def _counted(self) -> dict[str, Any]:
        """The hooks' figures, copied under the master's lock (they change under it)."""
        return {
            "submitted": {kind: dict(by) for kind, by in self.submitted.items()},
            "finished": {kind: dict(by) for kind, by in self.finished.items()},
            "retries": dict(self.retries),
            "placement_attempts": self.placement_attempts,
            "wait": {queue: b.snapshot() for queue, b in self.wait.items()},
            "run": {kind: b.snapshot() for kind, b in self.run.items()},
            "passes": self.passes.snapshot(),
            "transcodes": {key: dict(by) for key, by in self.transcodes.items()},
            "speed": {engine: b.snapshot() for engine, b in self.speed.items()},
            "output_bytes": self.output_bytes,
            "quality": {metric: b.snapshot() for metric, b in self.quality.items()},
            "energy": self._gpu_energy(),
        }

    def _gpu_energy(self) -> dict[str, float]:
        """Joules per worker, from the running total of each GPU that the worker's last
        heartbeat carried (`energy_j`): what a GPU's total grew by since the last scrape is
        added, and a total that went down (the worker restarted) is added whole. Counted from
        the first scrape that sees the worker; a worker the master forgets is dropped. Runs
        under the master's lock."""
        workers = self.master.workers
        for name, record in workers.items():
            gpus = record.sample.get("gpus")
            for gpu in gpus if isinstance(gpus, list) else ():
                if not (isinstance(gpu, dict) and _amount(total := gpu.get("energy_j"))):
                    continue  # a worker that sends no energy, or a GPU without a power reading
                seen = self._energy_seen.setdefault(name, {})
                last = seen.get(index := gpu.get("index"))
                grew = 0.0 if last is None else total - last if total >= last else total
                self.energy[name] = self.energy.get(name, 0.0) + grew
                seen[index] = total
        for name in [name for name in self.energy if name not in workers]:
            del self.energy[name], self._energy_seen[name]
        return dict(self.energy)

    def collect(self) -> Iterator[Metric]:
        figures = self.master.figures(also=self._counted)
        counted = figures["also"]
        yield from _state_families(figures)
        yield from _worker_families(figures["worker_rows"])
        yield from _lock_families(figures["lock_holders"], figures["lock_waiters"])

        submitted = CounterMetricFamily("cloudq_tasks_submitted", "Tasks accepted, by kind and queue class",
                                        labels=["kind", "queue"])
        for kind, by in sorted(counted["submitted"].items()):
            for queue, count in by.items():
                submitted.add_metric([kind, queue], count)
        yield submitted
        finished = CounterMetricFamily(
            "cloudq_tasks_finished",
            "Tasks that reached a final state, by kind and outcome (completed, failed, cancelled, "
            "dead: retries used up, expired: waited past its TTL)", labels=["kind", "outcome"])
        for kind, by in sorted(counted["finished"].items()):
            for outcome, count in by.items():
                finished.add_metric([kind, outcome], count)
        yield finished
        retries = CounterMetricFamily("cloudq_task_retries", "Tasks sent back to wait out a back-off, by cause",
                                      labels=["reason"])
        for cause, count in counted["retries"].items():
            retries.add_metric([cause], count)
        yield retries
        yield CounterMetricFamily("cloudq_placement_attempts",
                                  "Placement passes run over a non-empty queue",
                                  value=counted["placement_attempts"])
        rejected = CounterMetricFamily("cloudq_rpc_rejected",
                                       "RPC connections and frames refused, by reason", labels=["reason"])
        counts = self.rejections.counts() if self.rejections is not None else {}
        for reason in (*REJECTION_REASONS, *sorted(set(counts) - set(REJECTION_REASONS))):
            rejected.add_metric([reason], counts.get(reason, 0))
        yield rejected
        wire = CounterMetricFamily("cloudq_rpc_bytes", "Bytes of RPC frames the master received and sent, "
                                   "as they crossed the wire (compressed)", labels=["direction"])
        for direction, count in self.wire.counts().items():
            wire.add_metric([direction], count)
        yield wire
        yield from _transcode_families(counted)

        yield _histogram("cloudq_task_wait_seconds",
                         "Time from being queued (the last time) to starting on a worker, by queue class",
                         "queue", counted["wait"])
        yield _histogram("cloudq_task_run_seconds", "Time tasks ran, from start to leaving running, by kind",
                         "kind", counted["run"])
        yield _histogram("cloudq_placement_pass_seconds", "Time of one placement pass over a non-empty queue",
                         None, {"": counted["passes"]})
        yield _histogram("cloudq_store_commit_seconds",
                         "Time of one group commit of the journal (write and fsync)",
                         None, {"": self.commits.snapshot()})


def _by(name: str, documentation: str, label: str, values: dict[str, float]) -> GaugeMetricFamily:
    """A gauge with one label, a series for each key of `values`."""
    family = GaugeMetricFamily(name, documentation, labels=[label])
    for key, value in values.items():
        family.add_metric([key], value)
    return family


def _state_families(figures: dict[str, Any]) -> Iterator[Metric]:
    yield _by("cloudq_tasks", "Tasks the master holds, by state", "state", figures["tasks"])
    yield GaugeMetricFamily("cloudq_queue_length", "Tasks queued, waiting to be placed", value=figures["queued"])
    yield _by("cloudq_queue_by_priority", "Tasks queued, by priority", "priority",
              figures["queued_by_priority"])
    yield _by("cloudq_queue_by_class", "Tasks queued, by queue class", "queue", figures["queued_by_class"])
    yield _by("cloudq_oldest_queued_seconds", "How long the longest-waiting queued task of each class "
              "has waited (classes with a queued task only)", "queue", figures["oldest_wait_s"])
    yield _by("cloudq_workers", "Workers by status", "status", figures["workers"])
    yield GaugeMetricFamily("cloudq_uptime_seconds", "Seconds since the master started",
                            value=figures["uptime_s"])


def _worker_families(rows: list[dict[str, Any]]) -> Iterator[Metric]:
    cpu = GaugeMetricFamily("cloudq_worker_cpu_cores",
                            "CPU cores of each worker: total, and free (not reserved by its tasks)",
                            labels=["worker", "kind"])
    mem = GaugeMetricFamily("cloudq_worker_mem_bytes",
                            "Memory of each worker: total, and free (not reserved by its tasks)",
                            labels=["worker", "kind"])
    disk = GaugeMetricFamily("cloudq_worker_disk_bytes",
                             "Task storage of each worker: total, and free (not reserved by its tasks)",
                             labels=["worker", "kind"])
    running = GaugeMetricFamily("cloudq_worker_running_tasks", "Tasks placed on each worker",
                                labels=["worker"])
    max_tasks = GaugeMetricFamily("cloudq_worker_max_tasks", "Tasks each worker runs at most at once",
                                  labels=["worker"])
    age = GaugeMetricFamily("cloudq_worker_heartbeat_age_seconds", "Seconds since each worker was last heard from",
                            labels=["worker"])
    gpu_mem = GaugeMetricFamily("cloudq_gpu_memory_bytes", "Memory of each GPU: total, and used (last sample)",
                                labels=["worker", "gpu", "kind"])
    gpu_util = GaugeMetricFamily("cloudq_gpu_utilization_ratio", "Utilization of each GPU, 0 to 1 (last sample)",
                                 labels=["worker", "gpu"])
    gpu_temp = GaugeMetricFamily("cloudq_gpu_temperature_celsius", "Temperature of each GPU (last sample)",
                                 labels=["worker", "gpu"])
    gpu_power = GaugeMetricFamily("cloudq_gpu_power_watts", "Power draw of each GPU (last sample)",
                                  labels=["worker", "gpu"])
    for row in sorted(rows, key=lambda r: r["name"]):
        name = row["name"]
        cpu.add_metric([name, "total"], row["cpu_cores"])
        cpu.add_metric([name, "free"], row["cpu_free"])
        mem.add_metric([name, "total"], row["mem_gb"] * GIB)
        mem.add_metric([name, "free"], row["mem_free_gb"] * GIB)
        disk.add_metric([name, "total"], row["storage_gb"] * GIB)
        disk.add_metric([name, "free"], row["storage_free_gb"] * GIB)
        running.add_metric([name], row["tasks"])
        max_tasks.add_metric([name], row["max_tasks"])
        if row["heartbeat_age_s"] is not None:
            age.add_metric([name], row["heartbeat_age_s"])
        for gpu in row["gpus"]:
            index = str(gpu["index"])
            for kind, value, scale in (("total", gpu["mem_gb"], GIB), ("used", gpu["mem_used_gb"], GIB)):
                if _number(value):
                    gpu_mem.add_metric([name, index, kind], value * scale)
            if _number(gpu["util_percent"]):
                gpu_util.add_metric([name, index], gpu["util_percent"] / 100)
            if _number(gpu["temperature_c"]):
                gpu_temp.add_metric([name, index], gpu["temperature_c"])
            if _number(gpu["power_w"]):
                gpu_power.add_metric([name, index], gpu["power_w"])
    yield from (cpu, mem, disk, running, max_tasks, age, gpu_mem, gpu_util, gpu_temp, gpu_power)


def _transcode_families(counted: dict[str, Any]) -> Iterator[Metric]:
    finished = CounterMetricFamily(
        "cloudq_transcodes_finished",
        "FFmpeg tasks that reached a final state, by engine (cpu, nvenc), scenario and outcome",
        labels=["engine", "scenario", "outcome"])
    for (engine, scenario), by in sorted(counted["transcodes"].items()):
        for outcome, count in by.items():
            finished.add_metric([engine, scenario, outcome], count)
    yield finished
    yield _histogram("cloudq_transcode_encode_speed",
                     "Encode speed of completed transcodes, in times real time, by engine",
                     "engine", counted["speed"])
    yield CounterMetricFamily("cloudq_transcode_output_bytes",
                              "Bytes of the files completed transcodes wrote",
                              value=counted["output_bytes"])
    yield _histogram("cloudq_transcode_quality",
                     "Quality scores of completed transcodes that asked for them, by metric "
                     "(ssim 0 to 1, psnr in dB, vmaf 0 to 100)", "metric", counted["quality"])
    energy = CounterMetricFamily("cloudq_gpu_energy",
                                 "Energy used by each worker's GPUs, integrated from their power samples",
                                 labels=["worker"], unit="joules")
    for worker, joules in sorted(counted["energy"].items()):
        energy.add_metric([worker], joules)
    yield energy


def _lock_families(holders: dict[str, int], waiters: dict[str, int]) -> Iterator[Metric]:
    held = GaugeMetricFamily("cloudq_lock_holders", "Tasks holding each named lock", labels=["lock"])
    waiting = GaugeMetricFamily("cloudq_lock_waiters", "Queued tasks that ask for each named lock",
                                labels=["lock"])
    for name in sorted(set(holders) | set(waiters)):
        held.add_metric([name], holders.get(name, 0))
        waiting.add_metric([name], waiters.get(name, 0))
    yield held
    yield waiting


def _histogram(name: str, documentation: str, label: str | None,
               series: dict[str, tuple[list[tuple[str, float]], float]]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=[label] if label else None)
    for value, (buckets, total) in sorted(series.items()):
        family.add_metric([value] if label else [], buckets, total)
    return family


def _number(value: Any) -> bool:
    """A figure a worker sent that can be exported (workers may send null, or nothing)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _amount(value: Any) -> bool:
    """A figure a worker sent that may be added to a counter: finite and not negative."""
    return _number(value) and 0 <= value < float("inf")


def master_registry(master: Any, rejections: Rejected | None = None) -> tuple[CollectorRegistry, MasterMetrics]:
    """A registry with the master's metrics, hooked into the master from now on."""
    registry = CollectorRegistry()
    metrics = MasterMetrics(master, rejections).attach()
    registry.register(metrics)
    return registry, metrics


def metrics_app(master: Any, rejections: Rejected | None = None, seat: Any = None) -> Any:
    """The WSGI application for /metrics; `rejections` is the RPC server's count of refusals,
    `seat` whether this master leads (masters sharing a store)."""
    registry, _ = master_registry(master, rejections)
    if seat is not None:
        registry.register(LeadershipCollector(seat))
    return make_wsgi_app(registry)


class LeadershipCollector:
    """cloudq_master_is_leader and cloudq_master_epoch: on every master, leader or standby."""

    def __init__(self, seat: Any) -> None:
        self.seat = seat

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("cloudq_master_is_leader", "1 on the master that leads, 0 on a "
                                "standby", value=1 if self.seat.role == "leader" else 0)
        yield GaugeMetricFamily("cloudq_master_epoch", "The leader epoch this master last held "
                                "(0: a master alone on the embedded store)", value=self.seat.epoch)


def standby_app(seat: Any) -> Any:
    """A standby's HTTP port: its metrics (role and epoch), and elsewhere a short page that
    says it is a standby and names the leader."""
    registry = CollectorRegistry()
    registry.register(LeadershipCollector(seat))
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") == "/metrics":
            return metrics(environ, start_response)
        text = f"cloudq master: {seat.refusal()}\n".encode()
        start_response("503 Service Unavailable", [("Content-Type", "text/plain; charset=utf-8"),
                                                   ("Content-Length", str(len(text)))])
        return [text]

    return app
