"""A worker's own metrics, from an in-process agent that is never connected (its task side is
driven directly): what its tasks came to, what it runs now with progress and speed, the
bytes its tasks left, GPU energy integrated from power samples, and a clean exposition."""

from __future__ import annotations

import queue
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cloudq import __version__
from cloudq.worker.agent import Running, WorkerAgent, WorkerOptions
from cloudq.worker.metrics import worker_registry
from cloudq.worker.probes import GpuEnergy
from cloudq.worker.tasks import directory_bytes
from tests.promtool import check_exposition

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def agent(open_dir: Path) -> WorkerAgent:
    return WorkerAgent(WorkerOptions(master="127.0.0.1:1", name="metrics-test",
                                     work_dir=open_dir / "work"))


def scrape(agent: WorkerAgent) -> Samples:
    out = {}
    for family in text_string_to_metric_families(generate_latest(worker_registry(agent)).decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def assignment(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"id": f"wm-{uuid.uuid4().hex[:10]}", "attempt": 1, "kind": kind, "spec": spec,
            "timeout_s": 30, "resources": {"cpu_cores": 1.0, "mem_gb": 0.0, "gpus": 0}}


def outcomes(agent: WorkerAgent, *task_ids: str, timeout: float = 30) -> dict[str, str]:
    """{task: state} of these tasks' outcomes, from the outbox (start reports are passed over)."""
    deadline = time.monotonic() + timeout
    found: dict[str, str] = {}
    while len(found) < len(task_ids):
        try:
            item = agent.outbox.get(timeout=max(deadline - time.monotonic(), 0.01))
        except queue.Empty:
            raise AssertionError(f"outcomes of {task_ids} within {timeout}s: only {found}") from None
        if item["task"] in task_ids and "result" in item:
            found[item["task"]] = item["state"]
    return found


def test_finished_tasks_and_bytes_written_are_counted(agent: WorkerAgent) -> None:
    samples = scrape(agent)
    assert value(samples, "cloudq_worker_active_tasks") == 0
    assert value(samples, "cloudq_worker_tasks_finished_total", kind="exec", outcome="completed") == 0
    assert value(samples, "cloudq_worker_info", worker="metrics-test", version=__version__) == 1

    writes = assignment("exec", {"argv": ["sh", "-c", "head -c 5000 /dev/zero > out.bin"]})
    fails = assignment("exec", {"argv": ["sh", "-c", "exit 3"]})
    for task in (writes, fails):
        agent._start(task)
    assert outcomes(agent, writes["id"], fails["id"]) == {writes["id"]: "completed", fails["id"]: "failed"}
    agent._start(assignment("noop", {}))  # instant: runs right here

    samples = scrape(agent)
    assert value(samples, "cloudq_worker_tasks_finished_total", kind="exec", outcome="completed") == 1
    assert value(samples, "cloudq_worker_tasks_finished_total", kind="exec", outcome="failed") == 1
    assert value(samples, "cloudq_worker_tasks_finished_total", kind="noop", outcome="completed") == 1
    # out.bin, and the task log (empty here, or a line): measured before the directory went.
    written = value(samples, "cloudq_worker_bytes_written_total")
    assert 5000 <= written < 6000
    assert value(samples, "cloudq_worker_runner_errors_total", kind="exec") == 0  # the task's fault
    assert value(samples, "cloudq_worker_active_tasks") == 0


def test_the_workers_own_faults_are_runner_errors(agent: WorkerAgent, monkeypatch) -> None:
    def crash(ctx):
        raise RuntimeError("a bug in a runner")

    task = assignment("exec", {"argv": ["true"]})
    (agent.options.work_dir / f"{task['id']}.1").write_text("a file where the directory goes")
    agent._start(task)  # its directory cannot be made: failed at once
    monkeypatch.setattr("cloudq.worker.agent.run_task", crash)
    crashing = assignment("ffmpeg", {"scenario": "360p30-h264"})
    agent._run(crashing, Running(crashing["id"], 1, threading.Event(), agent.options.work_dir / "x",
                                 kind="ffmpeg"), 0.0)
    samples = scrape(agent)
    assert value(samples, "cloudq_worker_runner_errors_total", kind="exec") == 1
    assert value(samples, "cloudq_worker_runner_errors_total", kind="ffmpeg") == 1
    assert value(samples, "cloudq_worker_tasks_finished_total", kind="ffmpeg", outcome="failed") == 1


def test_running_tasks_show_their_last_progress_and_speed(agent: WorkerAgent) -> None:
    work = agent.options.work_dir
    encoding = Running("t1", 1, threading.Event(), work / "t1.1", kind="ffmpeg",
                       progress={"percent": 42.5, "speed": 3.25, "fps": 97.0})
    starting = Running("t2", 1, threading.Event(), work / "t2.1", kind="ffmpeg",
                       progress={"percent": 0.0, "speed": None})
    sleeping = Running("t3", 1, threading.Event(), work / "t3.1", kind="exec")
    agent.running.update({e.task_id: e for e in (encoding, starting, sleeping)})
    samples = scrape(agent)
    assert value(samples, "cloudq_worker_active_tasks") == 3
    assert value(samples, "cloudq_worker_task_progress_ratio", task="t1") == pytest.approx(0.425)
    assert value(samples, "cloudq_worker_task_progress_ratio", task="t2") == 0
    assert value(samples, "cloudq_worker_encode_speed", task="t1") == 3.25
    names = {(name, dict(labels).get("task")) for name, labels in samples}
    assert ("cloudq_worker_encode_speed", "t2") not in names  # no speed yet: no series
    assert ("cloudq_worker_task_progress_ratio", "t3") not in names  # exec reports no progress


def test_progress_reports_reach_the_running_entry(agent: WorkerAgent) -> None:
    """The progress callback a runner gets records the last report on the task's entry."""
    seen: list[dict] = []

    def runner(ctx):
        ctx.on_progress({"percent": 50.0, "speed": 2.0})
        seen.append(dict(agent.running[ctx.task_id].progress or {}))
        from cloudq.worker.runners import RunResult
        return RunResult("completed", 0, 0.1)

    agent._run_task = runner  # type: ignore[method-assign]
    task = assignment("exec", {"argv": ["true"]})
    agent._start(task)
    assert outcomes(agent, task["id"]) == {task["id"]: "completed"}
    assert seen == [{"percent": 50.0, "speed": 2.0}]


def test_directory_bytes_counts_files_and_never_follows_links(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 100)
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "sub" / "deeper" / "b").write_bytes(b"y" * 50)
    outside = tmp_path.parent / f"outside-{uuid.uuid4().hex[:6]}"
    outside.mkdir()
    try:
        (outside / "big").write_bytes(b"z" * 10_000)
        (tmp_path / "link-to-dir").symlink_to(outside)
        (tmp_path / "link-to-file").symlink_to(outside / "big")
        assert directory_bytes(tmp_path) == 150
        assert directory_bytes(tmp_path, limit=1) <= 100  # stops counting at the limit
        assert directory_bytes(tmp_path / "missing") == 0
    finally:
        shutil.rmtree(outside)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_gpu_energy_is_the_trapezoid_between_power_samples() -> None:
    clock = Clock()
    energy = GpuEnergy(clock)

    def sample(*watts: float | None) -> list[dict]:
        gpus = [{"index": i, "power_w": w} for i, w in enumerate(watts)]
        energy.add(gpus)
        return gpus

    assert [g.get("energy_j") for g in sample(100.0, 50.0)] == [0.0, 0.0]
    clock.now += 2
    assert [g["energy_j"] for g in sample(200.0, 50.0)] == [300.0, 100.0]  # (100+200)/2*2, 50*2
    clock.now += 2
    gpus = sample(None, 50.0)  # no reading from GPU 0: its interval is left out
    assert gpus[0]["energy_j"] == 300.0 and gpus[1]["energy_j"] == 200.0
    clock.now += 2
    assert sample(100.0, 50.0)[0]["energy_j"] == 300.0  # restarts from this sample
    clock.now += GpuEnergy.MAX_GAP_S + 1  # a gap too long to guess across
    assert sample(100.0, 50.0)[0]["energy_j"] == 300.0
    clock.now += 1
    assert sample(100.0, 50.0)[0]["energy_j"] == 400.0
    assert energy.joules == {0: 400.0, 1: 350.0}  # 50 W for 7 s of the 68


def test_promtool_finds_the_worker_exposition_clean(agent: WorkerAgent) -> None:
    agent.running["t1"] = Running("t1", 1, threading.Event(), agent.options.work_dir / "t1.1",
                                  kind="ffmpeg", progress={"percent": 10.0, "speed": 1.5})
    agent.gpu_energy.add([{"index": 0, "power_w": 70.0}])
    agent._start(assignment("noop", {}))
    check_exposition(generate_latest(worker_registry(agent)).decode(), (
        "cloudq_worker_active_tasks", "cloudq_worker_task_progress_ratio", "cloudq_worker_encode_speed",
        "cloudq_worker_bytes_written_total", "cloudq_worker_runner_errors_total",
        "cloudq_worker_tasks_finished_total", "cloudq_worker_gpu_energy_joules_total",
        "cloudq_worker_rpc_bytes_total"))
