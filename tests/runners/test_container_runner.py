"""The container runner against the real Docker engine and the local busybox image."""

from __future__ import annotations

from typing import Any

import pytest

from cloudq.worker.agent import WorkerOptions, container_mem_default
from cloudq.worker.runners import Fault, RunStatus, run_task

from .conftest import BUSYBOX, Background, running, task_containers


@pytest.fixture
def run_container(make_ctx, docker_client):
    """Run a container task and check that nothing with its label is left afterwards."""
    ran: list[str] = []

    def run(command: list[str] | None, **overrides: Any):
        spec = {"image": overrides.pop("image", BUSYBOX), "command": command,
                **overrides.pop("spec", {})}  # fmt: skip
        ctx = make_ctx("container", spec, **overrides)
        ran.append(ctx.task_id)
        return ctx, run_task(ctx)

    yield run
    for task_id in ran:
        assert task_containers(docker_client, task_id) == [], f"container of {task_id} left"


def test_exit_code_and_logs(run_container):
    ctx, result = run_container(["sh", "-c", "echo hello-from-container; echo oops >&2; exit 3"])
    assert result.status == RunStatus.FAILED
    assert result.exit_code == 3
    assert result.error == "container exited with code 3"
    assert "hello-from-container" in result.log_tail and "oops" in result.log_tail
    assert result.output["image"] == BUSYBOX
    assert result.output["container_id"]
    assert "hello-from-container" in (ctx.work_dir / "task.log").read_text()


def test_success_with_env_and_workdir(run_container):
    _, result = run_container(["sh", "-c", "pwd; echo $GREETING; echo $CLOUDQ_TASK_ID"],
                              spec={"env": {"GREETING": "hi there"}, "workdir": "/tmp"})  # fmt: skip
    assert result.status == RunStatus.COMPLETED and result.exit_code == 0
    lines = result.log_tail.splitlines()
    assert lines[:2] == ["/tmp", "hi there"]
    assert lines[2].startswith("rt-")


def test_limits_are_applied_inside_the_container(run_container):
    # Read the limits from inside: capabilities, no-new-privileges, pids and memory cgroups.
    script = (
        "grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; "
        "cat /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/pids.max 2>/dev/null; "
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory.max 2>/dev/null; "
        "true"
    )
    _, result = run_container(["sh", "-c", script])
    assert result.status == RunStatus.COMPLETED
    text = result.log_tail
    assert "CapEff:\t0000000000000000" in text
    assert "NoNewPrivs:\t1" in text
    assert "512" in text.split()  # pids_limit
    assert str(256 * 1024 * 1024) in text.split()  # mem_gb 0.25


def test_memory_limit_is_enforced(run_container):
    # tail buffers /dev/zero forever looking for a newline: a classic way to exhaust memory.
    _, result = run_container(
        ["sh", "-c", "tail /dev/zero"],
        resources={"cpu_cores": 1.0, "mem_gb": 32 / 1024, "gpus": 0},
    )
    assert result.status == RunStatus.FAILED
    assert result.exit_code == 137
    assert "memory limit exceeded (32 MiB)" in result.error


NET_PROBE = "ip -o link; nc -w 2 172.17.0.1 80 </dev/null"


def _links(log_tail: str) -> list[str]:
    # "2: eth0@if15: <...>" -> "eth0"
    names = [line.split(":")[1].strip() for line in log_tail.splitlines() if line[:1].isdigit()]
    return [name.split("@")[0] for name in names]


def test_no_network_by_default(run_container):
    _, result = run_container(["sh", "-c", NET_PROBE])
    assert _links(result.log_tail) == ["lo"]
    assert "Network is unreachable" in result.log_tail


def test_network_when_asked(run_container):
    # The same probe with a network: an interface, and the host answers (here: refuses).
    _, result = run_container(["sh", "-c", NET_PROBE], spec={"network": True})
    assert "eth0" in _links(result.log_tail)
    assert "Network is unreachable" not in result.log_tail


def test_cancel_kills_within_5_s(make_ctx, docker_client):
    ctx = make_ctx("container", {"image": BUSYBOX, "command": ["sleep", "300"]}, timeout_s=None)
    events = docker_client.events(
        decode=True, filters={"label": f"cloudq.task={ctx.task_id}", "event": "start"}
    )
    try:
        task = Background(ctx).start()
        next(iter(events))  # the engine says the container has started
    finally:
        events.close()
    result, took = task.cancel_and_wait(5)
    assert result.status == RunStatus.CANCELLED
    assert took < 5.0
    assert result.error == "cancelled: the container was killed"
    assert task_containers(docker_client, ctx.task_id) == []


def test_timeout_kills_the_container(run_container):
    _, result = run_container(["sleep", "300"], timeout_s=1.0)
    assert result.status == RunStatus.TIMED_OUT
    assert result.duration_s < 6.0
    assert result.error == "timed out after 1 s: the container was killed"


def test_missing_image_fails_at_once_without_pulling(run_container, docker_client):
    _, result = run_container(["true"], image="alpine:latest")
    assert result.status == RunStatus.FAILED
    assert result.error == "image alpine:latest is not present on worker-test"
    assert result.duration_s < 2.0
    assert result.exit_code is None


def test_missing_command_fails_cleanly(run_container):
    _, result = run_container(["/no/such/binary"])
    assert result.status == RunStatus.FAILED
    assert "container could not start" in result.error
    assert "/no/such/binary" in result.error


def test_gpu_request_on_a_host_without_gpus_fails_cleanly(run_container):
    # No NVIDIA runtime here: the engine refuses the device request; nothing may be left.
    _, result = run_container(["true"], gpu_indices=[0])
    assert result.status == RunStatus.FAILED
    assert "container could not start" in result.error


LOG_MB = 100


def test_a_loud_container_keeps_the_end_of_its_log(run_container):
    # Writes LOG_MB MiB of 1 KiB lines, then one last line: the log must end with that line,
    # so the copy of the engine's stream must be complete before task.log is closed.
    line = "x" * 1023
    script = (f"yes {line} | head -c {LOG_MB * 1024 * 1024}; echo END-OF-OUTPUT")
    ctx, result = run_container(["sh", "-c", script])
    assert result.status == RunStatus.COMPLETED, result.error
    log = ctx.work_dir / "task.log"
    size = log.stat().st_size
    with open(log, "rb") as f:
        f.seek(size - 100)
        last = f.read().splitlines()[-1]
    print(f"\ntask.log {size / 2**20:.1f} MiB in {result.duration_s:.1f} s; last line {last[:40]!r}")
    assert last == b"END-OF-OUTPUT"
    assert size == LOG_MB * 1024 * 1024 + len(b"END-OF-OUTPUT\n")
    assert result.log_tail.endswith("END-OF-OUTPUT\n")


NO_MEMORY_ASKED = {"cpu_cores": 1.0, "mem_gb": 0.0, "gpus": 0}


def test_a_task_asking_no_memory_gets_the_workers_default_limit(make_ctx, docker_client):
    limit = 48 * 2**20
    ctx = make_ctx("container", {"image": BUSYBOX, "command": ["sleep", "300"]},
                   resources=NO_MEMORY_ASKED, container_mem_default=limit, timeout_s=None)
    # The engine's own word on the container it runs: its start event, then its HostConfig.
    with running(docker_client, ctx) as (task, container):
        host_config = container.attrs["HostConfig"]
        result, _ = task.cancel_and_wait(5)
    assert result.status == RunStatus.CANCELLED
    print(f"\nHostConfig.Memory {host_config['Memory']} MemorySwap {host_config['MemorySwap']}")
    assert host_config["Memory"] == host_config["MemorySwap"] == limit
    assert task_containers(docker_client, ctx.task_id) == []


def test_the_default_limit_is_enforced_and_is_the_tasks_fault(run_container):
    _, result = run_container(["sh", "-c", "tail /dev/zero"], resources=NO_MEMORY_ASKED,
                              container_mem_default=32 * 2**20)  # fmt: skip
    assert result.status == RunStatus.FAILED
    assert result.exit_code == 137
    assert "memory limit exceeded (32 MiB)" in result.error
    assert result.fault == Fault.TASK
    print(f"\nOOM-killed at the 32 MiB default after {result.duration_s:.2f} s")


def test_the_worker_default_is_its_memory_shared_among_its_tasks(tmp_path):
    shared = container_mem_default(WorkerOptions(master="m", max_tasks=4), offered_gb=8.0)
    assert shared == 2 * 2**30
    flagged = WorkerOptions(master="m", max_tasks=4, container_mem_default_gb=0.5)
    assert container_mem_default(flagged, offered_gb=8.0) == 2**29
    assert container_mem_default(WorkerOptions(master="m", max_tasks=512), 1.0) == 64 * 2**20
