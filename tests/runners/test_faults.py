"""Whose fault a failure is, as the master's quarantine reads it from the result's `fault`:
`task` when the task caused it, `worker` when this worker could not do its part. Real FFmpeg,
real processes, the real Docker engine (and a socket where none answers)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from cloudq.worker.agent import Running, WorkerAgent, WorkerOptions
from cloudq.worker.runners import Fault, RunStatus, run_task

from .conftest import BUSYBOX, new_task_id


def outcome(result) -> dict:
    """The result as it crosses the wire to the master."""
    return json.loads(json.dumps(result.to_dict()))


def test_ffmpeg_with_a_bad_input_path_is_the_tasks_fault(make_ctx, ffmpeg_tools):
    ctx = make_ctx("ffmpeg", {"scenario": "360p30-h264", "input": "no/such/input.mp4"})
    result = run_task(ctx)
    assert result.status == RunStatus.FAILED
    assert "was not found in the allowed input directories" in result.error
    assert outcome(result)["fault"] == "task"
    print(f"\nffmpeg bad input: fault={result.fault} error={result.error!r}")


def test_exec_non_zero_exit_and_timeout_are_the_tasks_fault(make_ctx):
    failed = run_task(make_ctx("exec", {"argv": ["sh", "-c", "exit 3"]}))
    assert (failed.status, failed.exit_code, outcome(failed)["fault"]) == ("failed", 3, "task")
    missing = run_task(make_ctx("exec", {"argv": ["no-such-program-cloudq"]}))
    assert (missing.exit_code, missing.fault) == (127, Fault.TASK)
    timed = run_task(make_ctx("exec", {"argv": ["sleep", "30"]}, timeout_s=0.2))
    assert (timed.status, timed.fault) == (RunStatus.TIMED_OUT, Fault.TASK)
    done = run_task(make_ctx("exec", {"argv": ["true"]}))
    assert (done.status, outcome(done)["fault"]) == ("completed", None)
    print(f"\nexec exit 3: fault={failed.fault}; not found: {missing.fault}; timeout: {timed.fault}")


def test_missing_image_is_the_tasks_fault(make_ctx, docker_client):
    result = run_task(make_ctx("container", {"image": "cloudq-absent:latest", "command": ["true"]}))
    assert "is not present" in result.error
    assert result.fault == Fault.TASK


def test_docker_engine_unreachable_is_the_workers_fault(make_ctx, monkeypatch, tmp_path: Path):
    # docker.from_env reads DOCKER_HOST: a socket path where nothing listens.
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    result = run_task(make_ctx("container", {"image": BUSYBOX, "command": ["true"]}))
    assert result.status == RunStatus.FAILED
    assert "no Docker engine on worker-test" in result.error
    assert outcome(result)["fault"] == "worker"
    print(f"\nno engine: fault={result.fault} error={result.error[:90]!r}")


def test_engine_failing_a_gpu_request_is_the_workers_fault(make_ctx, docker_client):
    # No NVIDIA runtime: the engine answers 500 to the device request. A bad command is a 400.
    gpu = run_task(make_ctx("container", {"image": BUSYBOX, "command": ["true"]}, gpu_indices=[0]))
    bad = run_task(make_ctx("container", {"image": BUSYBOX, "command": ["/no/such/binary"]}))
    assert "container could not start" in gpu.error and "container could not start" in bad.error
    assert (gpu.fault, bad.fault) == (Fault.WORKER, Fault.TASK)


@pytest.fixture
def agent(open_dir: Path) -> WorkerAgent:
    """A worker agent that is never connected: its task path is what is tested."""
    return WorkerAgent(WorkerOptions(master="127.0.0.1:1", name="fault-test",
                                     work_dir=open_dir / "work"))  # fmt: skip


def assignment(kind: str, spec: dict) -> dict:
    return {"id": new_task_id(), "attempt": 1, "kind": kind, "spec": spec, "timeout_s": 30,
            "resources": {"cpu_cores": 1.0, "mem_gb": 0.0, "gpus": 0}}


def test_a_runner_crash_is_the_workers_fault(agent, monkeypatch):
    def crash(ctx):
        raise RuntimeError("a bug in a runner")

    monkeypatch.setattr("cloudq.worker.agent.run_task", crash)
    task = assignment("exec", {"argv": ["true"]})
    entry = Running(task["id"], 1, threading.Event(), agent.options.work_dir / task["id"])
    report = agent._run(task, entry, 0.0)
    assert report["state"] == "failed"
    assert report["result"]["error"] == "runner crashed: RuntimeError: a bug in a runner"
    assert report["result"]["fault"] == "worker"


def test_a_task_directory_that_cannot_be_made_is_the_workers_fault(agent):
    task = assignment("exec", {"argv": ["true"]})
    (agent.options.work_dir / f"{task['id']}.1").write_text("a file where the directory goes")
    agent._start(task)  # answered at once, nothing runs
    report = agent.outbox.get_nowait()
    assert report["state"] == "failed" and report["result"]["fault"] == "worker"
    assert "cannot be created" in report["result"]["error"]
    assert agent.running == {} and agent._unreported == {task["id"]: 1}
