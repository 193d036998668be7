"""The master's Prometheus metrics, scraped from an in-process master with a fake clock: what
each family says after a known history, that counters never go down when finished tasks are
forgotten, and that promtool finds the exposition clean."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cloudq.core.model import TaskState
from cloudq.master.core import Master, MasterConfig
from cloudq.metrics import GIB, master_registry
from cloudq.rpc.server import ConnectionSlots, Identity
from tests.promtool import check_exposition
from tests.unit.test_master_core import Clock

S = TaskState
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_master(clock: Clock, **config: float) -> Master:
    return Master(config=MasterConfig(lease_s=10.0, **config), clock=clock)


def worker(master: Master, name: str, cores: float = 4.0, max_tasks: int = 4, **extra: object) -> int:
    facts = {"name": name, "cpu_cores": cores, "mem_gb": 16.0, "storage_gb": 100.0,
             "max_tasks": max_tasks, **extra}
    return master.register(facts, [])["session"]


def noop(**fields: object) -> dict:
    return {"kind": "noop", **fields}


def report(master: Master, name: str, session: int, task, state: str, **result: object) -> None:
    item = {"task": task.id, "attempt": task.attempt, "state": state}
    if result:
        item["result"] = result
    assert master.report(name, session, [item]) == []


def text_of(registry) -> str:
    return generate_latest(registry).decode()


def scrape(registry) -> Samples:
    out = {}
    for family in text_string_to_metric_families(text_of(registry)):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def series(samples: Samples, name: str, label: str) -> dict[str, float]:
    """{label value: sample} of one family keyed by one label (the others left out)."""
    return {dict(key)[label]: v for (n, key), v in samples.items() if n == name}


def test_gauges_counters_and_histograms_after_a_known_history(clock: Clock) -> None:
    master = make_master(clock)
    registry, _ = master_registry(master)
    gpu = [{"index": 0, "name": "L4", "mem_gb": 24.0}]
    s1 = worker(master, "w1", cores=4.0, max_tasks=2, gpus=gpu)
    s2 = worker(master, "w2", cores=2.0, max_tasks=1)
    master.heartbeat("w1", {"gpus": [{"index": 0, "util_percent": 40, "mem_used_gb": 6.0,
                                      "temperature_c": 61, "power_w": 72.5}]})

    # Two run on w1 (one holds the lock "enc"), one on w2.
    a, b = master.submit([noop(target_worker="w1", locks=["enc"]), noop(target_worker="w1")])
    (c,) = master.submit([noop(target_worker="w2", resources={"cpu_cores": 1.5})])
    assert (a.state, b.state, c.state) == (S.ASSIGNED,) * 3
    clock.now += 2  # they waited 2 s in the queue
    for name, session, task in (("w1", s1, a), ("w1", s1, b), ("w2", s2, c)):
        report(master, name, session, task, "running")

    # Queued: both workers are at their task limit.
    waiting = master.submit([noop(queue="live", priority="high"), noop(queue="live", priority="high"),
                             noop(queue="batch", priority="low"), noop(locks=["enc"]),
                             noop(priority="low")])
    assert all(t.state is S.QUEUED for t in waiting)
    clock.now += 5

    samples = scrape(registry)
    assert value(samples, "cloudq_queue_length") == 5
    assert series(samples, "cloudq_queue_by_class", "queue") == {"live": 2, "default": 2, "batch": 1}
    assert series(samples, "cloudq_queue_by_priority", "priority") == {"high": 2, "medium": 1, "low": 2}
    assert series(samples, "cloudq_oldest_queued_seconds", "queue") == {"live": 5, "default": 5, "batch": 5}
    assert value(samples, "cloudq_tasks", state="running") == 3
    assert value(samples, "cloudq_tasks", state="queued") == 5
    assert value(samples, "cloudq_workers", status="busy") == 2
    assert value(samples, "cloudq_workers", status="available") == 0
    assert value(samples, "cloudq_uptime_seconds") == 7
    assert value(samples, "cloudq_worker_cpu_cores", worker="w1", kind="total") == 4
    assert value(samples, "cloudq_worker_cpu_cores", worker="w1", kind="free") == 2
    assert value(samples, "cloudq_worker_cpu_cores", worker="w2", kind="free") == 0.5
    assert value(samples, "cloudq_worker_mem_bytes", worker="w2", kind="total") == 16 * GIB
    assert value(samples, "cloudq_worker_disk_bytes", worker="w2", kind="free") == 100 * GIB
    assert value(samples, "cloudq_worker_running_tasks", worker="w1") == 2
    assert value(samples, "cloudq_worker_max_tasks", worker="w2") == 1
    assert value(samples, "cloudq_worker_heartbeat_age_seconds", worker="w1") == 5
    assert value(samples, "cloudq_gpu_memory_bytes", worker="w1", gpu="0", kind="total") == 24 * GIB
    assert value(samples, "cloudq_gpu_memory_bytes", worker="w1", gpu="0", kind="used") == 6 * GIB
    assert value(samples, "cloudq_gpu_utilization_ratio", worker="w1", gpu="0") == 0.4
    assert value(samples, "cloudq_gpu_temperature_celsius", worker="w1", gpu="0") == 61
    assert value(samples, "cloudq_gpu_power_watts", worker="w1", gpu="0") == 72.5
    assert not series(samples, "cloudq_gpu_power_watts", "worker").get("w2")
    assert value(samples, "cloudq_lock_holders", lock="enc") == 1
    assert value(samples, "cloudq_lock_waiters", lock="enc") == 1
    assert value(samples, "cloudq_tasks_submitted_total", kind="noop", queue="default") == 5
    assert value(samples, "cloudq_tasks_submitted_total", kind="noop", queue="live") == 2
    assert value(samples, "cloudq_tasks_submitted_total", kind="exec", queue="live") == 0
    # Queued to started: 3 tasks, 2 s each, all in the default class.
    assert value(samples, "cloudq_task_wait_seconds_count", queue="default") == 3
    assert value(samples, "cloudq_task_wait_seconds_sum", queue="default") == 6
    assert value(samples, "cloudq_task_wait_seconds_bucket", queue="default", le="1.0") == 0
    assert value(samples, "cloudq_task_wait_seconds_bucket", queue="default", le="5.0") == 3
    assert value(samples, "cloudq_task_wait_seconds_count", queue="live") == 0

    # Outcomes: a completes after 5 s of running; b fails and is retried; c fails for good;
    # a queued task is cancelled; another waits past its TTL.
    report(master, "w1", s1, a, "completed")
    report(master, "w1", s1, b, "failed", error="boom")
    assert b.state is S.RETRYING
    c.max_retries = 0
    report(master, "w2", s2, c, "failed", error="worker broke", fault="worker")
    assert c.state is S.DEAD
    (blocked,) = master.submit([noop(resources={"cpu_cores": 64}, ttl_s=3)])
    (doomed,) = master.submit([noop(resources={"cpu_cores": 64})])
    master.cancel(doomed.id)
    clock.now += 4
    master.tick()
    assert blocked.state is S.FAILED

    samples = scrape(registry)
    assert only_outcomes(samples) == {"completed": 1, "failed": 0, "cancelled": 1, "dead": 1, "expired": 1}
    assert value(samples, "cloudq_tasks_finished_total", kind="noop", outcome="dead") == 1
    assert value(samples, "cloudq_task_retries_total", reason="failed") == 1
    assert value(samples, "cloudq_task_retries_total", reason="worker_fault") == 0
    assert value(samples, "cloudq_task_run_seconds_count", kind="noop") == 3
    assert value(samples, "cloudq_task_run_seconds_sum", kind="noop") == 15  # 5 s each
    assert value(samples, "cloudq_placement_attempts_total") >= 5
    assert value(samples, "cloudq_placement_attempts_total") == value(samples, "cloudq_placement_pass_seconds_count")
    assert value(samples, "cloudq_store_commit_seconds_count") == 0  # nothing is stored
    assert value(samples, "cloudq_rpc_rejected_total", reason="connection_limit") == 0


def only_outcomes(samples: Samples) -> dict[str, float]:
    out: dict[str, float] = {}
    for (name, labels), v in samples.items():
        if name == "cloudq_tasks_finished_total":
            outcome = dict(labels)["outcome"]
            out[outcome] = out.get(outcome, 0) + v
    return out


def test_retry_causes_are_counted_by_what_happened(clock: Clock) -> None:
    master = make_master(clock, start_deadline_s=30.0)
    registry, _ = master_registry(master)
    s = worker(master, "w", max_tasks=4)
    slow_retry = {"retry_backoff_s": 1000}  # retried tasks stay retrying while this runs
    lost, unstarted, slow, faulty = master.submit(
        [noop(**slow_retry), noop(**slow_retry), noop(timeout_s=1, **slow_retry), noop(**slow_retry)])
    for task in (lost, slow, faulty):
        report(master, "w", s, task, "running")
    report(master, "w", s, faulty, "failed", error="disk gone", fault="worker")
    clock.now += 7  # past slow's timeout and the grace
    master.heartbeat("w", {})
    master.timers()
    assert slow.state is S.RETRYING
    clock.now += 24  # unstarted is past the start deadline
    master.heartbeat("w", {})
    master.timers()
    assert unstarted.state is S.RETRYING
    clock.now += 11  # w has been silent past its lease: lost is lost
    master.timers()
    assert lost.state is S.RETRYING and faulty.state is S.RETRYING
    samples = scrape(registry)
    assert series(samples, "cloudq_task_retries_total", "reason") == {
        "failed": 0, "timed_out": 1, "cancelled": 0, "worker_fault": 1, "worker_lost": 1, "not_started": 1,
        "stalled": 0}


def test_counters_do_not_go_down_when_finished_tasks_are_forgotten(clock: Clock) -> None:
    master = make_master(clock, keep_finished_s=60.0)
    registry, _ = master_registry(master)
    s = worker(master, "w")
    for task in master.submit([noop(), noop(), noop()]):
        report(master, "w", s, task, "completed")
    before = scrape(registry)
    assert value(before, "cloudq_tasks", state="completed") == 3
    assert only_outcomes(before)["completed"] == 3

    clock.now += 61
    master.heartbeat("w", {})
    master.tick()  # forgets them
    assert not master.tasks
    after = scrape(registry)
    assert value(after, "cloudq_tasks", state="completed") == 0  # a gauge: what is held now
    for (name, labels), v in before.items():
        if name.endswith(("_total", "_count", "_bucket", "_sum")):
            assert after[(name, labels)] >= v, f"{name}{dict(labels)} went down"
    assert only_outcomes(after)["completed"] == 3
    assert value(after, "cloudq_tasks_submitted_total", kind="noop", queue="default") == 3


def test_queue_by_priority_follows_priority_changes_holds_and_cancels(clock: Clock) -> None:
    master = make_master(clock)
    registry, _ = master_registry(master)
    tasks = master.submit([noop(priority=p) for p in ("high", "medium", "low", "low", "medium")])
    master.set_priority(tasks[2].id, "high", queue="live")
    master.hold(tasks[1].id)
    master.cancel(tasks[3].id)
    master.set_priority(tasks[1].id, "low")  # held: not counted as queued either way
    master.release_task(tasks[1].id)
    s = worker(master, "w", max_tasks=1)  # takes the first in serve order
    assert s and sum(t.state is S.ASSIGNED for t in tasks) == 1

    samples = scrape(registry)
    queued = [t for t in tasks if t.state is S.QUEUED]
    for priority in ("high", "medium", "low"):
        assert value(samples, "cloudq_queue_by_priority", priority=priority) == sum(
            t.priority == priority for t in queued)
    for queue in ("live", "default", "batch"):
        assert value(samples, "cloudq_queue_by_class", queue=queue) == sum(t.queue == queue for t in queued)
    assert value(samples, "cloudq_queue_length") == len(queued) == 3


def test_store_commits_are_timed(clock: Clock, tmp_path) -> None:
    from cloudq.master.journal import StoreJournal
    from cloudq.store import Store

    store = Store(tmp_path)
    store.load()
    try:
        master = Master(StoreJournal(store), MasterConfig(), clock=clock)
        registry, _ = master_registry(master)
        master.submit([noop()])
        master.submit([noop(), noop()])
        samples = scrape(registry)
        assert value(samples, "cloudq_store_commit_seconds_count") == 2
        assert value(samples, "cloudq_store_commit_seconds_sum") > 0
    finally:
        store.close()


def test_rpc_refusals_are_counted_by_reason() -> None:
    master = Master()
    slots = ConnectionSlots(total=10, per_peer=1, admin_reserve=0)
    registry, _ = master_registry(master, slots.rejections)
    worker_id = Identity("w1")
    assert slots.take(worker_id) is None
    assert "already holds" in (slots.take(worker_id) or "")
    slots.rejections.add("frame_too_large")
    samples = scrape(registry)
    assert series(samples, "cloudq_rpc_rejected_total", "reason") == {
        "connection_limit": 0, "peer_limit": 1, "overflow": 0, "tls_handshake": 0, "certificate": 0,
        "revoked": 0, "handshake_flood": 0, "malformed_frame": 0, "frame_too_large": 1, "inflate_budget": 0}


def test_a_failing_hook_never_breaks_a_move(clock: Clock) -> None:
    master = make_master(clock)
    _, metrics = master_registry(master)
    metrics.submitted = None  # type: ignore[assignment]  # counting a submission now raises
    (task,) = master.submit([noop()])
    assert task.state is S.QUEUED


def test_promtool_finds_the_exposition_clean(clock: Clock) -> None:
    master = make_master(clock)
    registry, _ = master_registry(master)
    s = worker(master, "w1", gpus=[{"index": 0, "mem_gb": 24.0}], capabilities=["ffmpeg", "encoder:libx264"])
    master.heartbeat("w1", {"gpus": [{"index": 0, "util_percent": 10, "mem_used_gb": 1.0,
                                      "temperature_c": 50, "power_w": 30.0}]})
    (task,) = master.submit([noop(locks=["enc"])])
    report(master, "w1", s, task, "completed")
    master.submit([noop(resources={"cpu_cores": 64}, locks=["enc"])])
    (encode,) = master.submit([transcode("360p30-h264", target_worker="w1")])
    report(master, "w1", s, encode, "completed", output={"encode_speed": 3.0, "size_bytes": 10,
                                                          "quality": {"ssim": 0.95, "psnr": 39.0}})
    master.heartbeat("w1", gpu_sample(12.5))
    check_exposition(text_of(registry), (
        "cloudq_transcodes_finished_total", "cloudq_transcode_encode_speed", "cloudq_transcode_quality",
        "cloudq_transcode_output_bytes_total", "cloudq_gpu_energy_joules_total", "cloudq_rpc_bytes_total"))


def transcode(scenario: str, **fields: object) -> dict:
    return {"kind": "ffmpeg", "spec": {"scenario": scenario, "duration_s": 10}, **fields}


def test_transcodes_are_counted_by_engine_scenario_and_outcome(clock: Clock) -> None:
    master = make_master(clock)
    registry, _ = master_registry(master)
    caps = ["ffmpeg", "encoder:libx264", "encoder:h264_nvenc", "gpu"]
    s = worker(master, "w", max_tasks=8, capabilities=caps, gpus=[{"index": 0, "mem_gb": 24.0}])
    fast, slow, nvenc, broken = master.submit([
        transcode("720p30-h264"), transcode("720p30-h264"),
        transcode("1080p30-h264-nvenc", resources={"gpus": 1}), transcode("360p30-h264", max_retries=0)])
    (queued,) = master.submit([transcode("720p30-h264", target_worker="elsewhere")])
    for task in (fast, slow, nvenc, broken):
        report(master, "w", s, task, "running")
    report(master, "w", s, fast, "completed", output={"encode_speed": 4.2, "size_bytes": 1000})
    report(master, "w", s, slow, "completed", output={"encode_speed": 0.8, "size_bytes": 3000})
    # A worker's odd numbers are not counted: no speed, a negative size.
    report(master, "w", s, nvenc, "completed", output={"encode_speed": None, "size_bytes": -5})
    report(master, "w", s, broken, "failed", error="ffmpeg exited with 1")
    master.cancel(queued.id)

    samples = scrape(registry)
    assert value(samples, "cloudq_transcodes_finished_total", engine="cpu", scenario="720p30-h264",
                 outcome="completed") == 2
    assert value(samples, "cloudq_transcodes_finished_total", engine="cpu", scenario="720p30-h264",
                 outcome="cancelled") == 1
    assert value(samples, "cloudq_transcodes_finished_total", engine="nvenc",
                 scenario="1080p30-h264-nvenc", outcome="completed") == 1
    assert value(samples, "cloudq_transcodes_finished_total", engine="cpu", scenario="360p30-h264",
                 outcome="dead") == 1
    assert value(samples, "cloudq_transcodes_finished_total", engine="cpu", scenario="360p30-h264",
                 outcome="completed") == 0  # every outcome of a scenario, once it is seen
    assert value(samples, "cloudq_transcode_encode_speed_count", engine="cpu") == 2
    assert value(samples, "cloudq_transcode_encode_speed_sum", engine="cpu") == pytest.approx(5.0)
    assert value(samples, "cloudq_transcode_encode_speed_bucket", engine="cpu", le="1.0") == 1
    assert value(samples, "cloudq_transcode_encode_speed_bucket", engine="cpu", le="5.0") == 2
    assert value(samples, "cloudq_transcode_encode_speed_count", engine="nvenc") == 0
    assert value(samples, "cloudq_transcode_output_bytes_total") == 4000
    # Other kinds are not transcodes.
    (other,) = master.submit([noop()])
    report(master, "w", s, other, "completed")
    assert sum(v for (name, _), v in scrape(registry).items()
               if name == "cloudq_transcodes_finished_total") == 5


def gpu_sample(*energy_j: float) -> dict:
    return {"gpus": [{"index": i, "power_w": 100.0, "energy_j": e} for i, e in enumerate(energy_j)]}


def test_gpu_energy_adds_what_the_workers_totals_grew_by(clock: Clock) -> None:
    master = make_master(clock)
    registry, _ = master_registry(master)
    gpus = [{"index": 0, "mem_gb": 24.0}, {"index": 1, "mem_gb": 24.0}]
    worker(master, "g", gpus=gpus)
    worker(master, "cpu-only")
    master.heartbeat("g", gpu_sample(500.0, 700.0))  # since the worker started: counted from here
    master.heartbeat("cpu-only", {"gpus": []})

    def energy() -> dict[str, float]:
        return series(scrape(registry), "cloudq_gpu_energy_joules_total", "worker")

    assert energy() == {"g": 0}  # no series for a worker without GPUs
    master.heartbeat("g", gpu_sample(600.0, 750.0))
    master.heartbeat("g", gpu_sample(700.0, 800.0))  # two samples between scrapes: both count
    assert energy() == {"g": 300}
    master.heartbeat("g", gpu_sample(40.0, 2.0))  # the worker restarted: its new total counts whole
    assert energy() == {"g": 342}
    master.heartbeat("g", {"gpus": [{"index": 0, "power_w": 1.0, "energy_j": "junk"},
                                    {"index": 1, "power_w": 1.0, "energy_j": 10.0}]})
    assert energy() == {"g": 350}  # the junk GPU is left out, never a decrease


def test_rpc_bytes_are_read_from_the_channels_count() -> None:
    from cloudq.metrics import MasterMetrics
    from cloudq.rpc.protocol import WireBytes

    wire = WireBytes()
    gone, open_ = wire.tally(), wire.tally()
    gone[:] = [100, 40]
    wire.closed(gone)
    wire.closed(gone)  # a channel closed twice counts once
    open_[:] = [7, 2]
    registry = CollectorRegistry()
    registry.register(MasterMetrics(Master(), wire=wire).attach())
    assert series(scrape(registry), "cloudq_rpc_bytes_total", "direction") == {"received": 107, "sent": 42}


def test_rpc_channel_counts_the_bytes_of_each_frame() -> None:
    """Frames through a real BoundedChannel pair: what one side sent is what the other read,
    header and trailing newline included, compressed frames as compressed."""
    import socket

    from rpyc.core.stream import SocketStream

    from cloudq.rpc.protocol import WIRE_BYTES, BoundedChannel

    left, right = socket.socketpair()
    sender, receiver = BoundedChannel(SocketStream(left)), BoundedChannel(SocketStream(right))
    try:
        before = WIRE_BYTES.counts()
        small, large = b"x" * 100, b"y" * 100_000  # the large one is compressed
        for data in (small, large):
            sender.send(data)
            assert receiver.recv() == data
        after = WIRE_BYTES.counts()
        sent = after["sent"] - before["sent"]
        assert sent == after["received"] - before["received"]
        assert (100 + 6) < sent < (100 + 6) + 100_000 // 10  # header 5 bytes, newline 1
    finally:
        sender.close()
        receiver.close()
    assert WIRE_BYTES.counts() == after  # what closed channels counted stays counted
