"""Fixtures for the runner tests: real FFmpeg, a real Docker engine, real processes.

A missing tool is a failure, not a skip: these tests are what proves the runners work.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest

from cloudq.worker.runners import RunContext, RunResult, run_task

BUSYBOX = os.environ.get("CLOUDQ_TEST_IMAGE", "cloudq-busybox:latest")
TASK_LABEL = "cloudq.task"


def new_task_id() -> str:
    return f"rt-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def make_ctx(tmp_path: Path) -> Callable[..., RunContext]:
    """RunContext factory: a fresh work dir per call, small resources, a unique task id."""
    counter = iter(range(1000))

    def make(kind: str, spec: dict[str, Any], **overrides: Any) -> RunContext:
        work_dir = overrides.pop("work_dir", None)
        if work_dir is None:
            work_dir = tmp_path / f"task{next(counter)}"
            work_dir.mkdir()
        fields: dict[str, Any] = {
            "task_id": new_task_id(),
            "attempt": 1,
            "kind": kind,
            "spec": spec,
            "resources": {
                "cpu_cores": 1.0,
                "mem_gb": 0.25,
                "storage_gb": 1.0,
                "gpus": 0,
                "gpu_mem_gb": 0.0,
            },  # fmt: skip
            "work_dir": Path(work_dir),
            "timeout_s": 60.0,
            "worker_name": "worker-test",
        }
        fields.update(overrides)
        return RunContext(**fields)

    return make


@pytest.fixture(scope="session")
def ffmpeg_tools() -> None:
    missing = [tool for tool in ("ffmpeg", "ffprobe") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: the ffmpeg runner cannot be tested")


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    import docker

    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except Exception as exc:
        pytest.fail(f"no Docker engine answers ({exc}); run scripts/start-services.sh")
    try:
        client.images.get(BUSYBOX)
    except Exception as exc:
        pytest.fail(f"test image {BUSYBOX} missing ({exc}); run scripts/start-services.sh")
    yield client
    client.close()


def task_containers(client: Any, task_id: str) -> list[Any]:
    return client.containers.list(all=True, filters={"label": f"{TASK_LABEL}={task_id}"})


@pytest.fixture(scope="session")
def sample_video(tmp_path_factory: pytest.TempPathFactory, ffmpeg_tools: None) -> Path:
    """A 1 s 320x240 H.264 file with audio, made once, used as a file input."""
    path = tmp_path_factory.mktemp("media") / "sample.mp4"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:duration=1",
         "-f", "lavfi", "-i", "sine=duration=1",
         "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "-shortest", str(path)],
        check=True, timeout=60,
    )  # fmt: skip
    return path


def probe(path: Path) -> dict[str, Any]:
    """The test's own ffprobe, independent of the runner's."""
    import json

    done = subprocess.run(
        ["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams",
         str(path)],
        capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    return json.loads(done.stdout)


class Background:
    """run_task in a thread, so the test can act (cancel) while it runs."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.result: RunResult | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.result = run_task(self.ctx)
        finally:
            self.done.set()

    def start(self) -> Background:
        self.thread.start()
        return self

    def cancel_and_wait(self, limit_s: float) -> tuple[RunResult, float]:
        """Cancel, then wait for the result; returns it with how long the cancel took."""
        asked = time.monotonic()
        self.ctx.cancel.set()
        assert self.done.wait(limit_s + 10), "run_task did not return after cancel"
        assert self.result is not None
        return self.result, time.monotonic() - asked


def read_fifo(path: Path, timeout_s: float = 30.0) -> str:
    """Block until a task writes a line into the FIFO at `path` (the task's 'I am running')."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        data = b""
        deadline = time.monotonic() + timeout_s
        while not data.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"nothing was written to {path} within {timeout_s} s"
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 4096)
                data += chunk
        return data.decode()
    finally:
        os.close(fd)


def group_gone(pgid: int, timeout: float = 2.0) -> list[psutil.Process]:
    """Awaits the end of a process group the runner has SIGKILLed: the signal is sent before
    the runner returns, but the kernel ends the processes asynchronously, which on a loaded
    machine can take a moment. Returns the members still alive at the deadline."""
    deadline = time.monotonic() + timeout
    while (alive := live_group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.01)
    return alive


def live_group_members(pgid: int) -> list[psutil.Process]:
    """Processes still alive (not zombies) in a process group."""
    members = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


@contextmanager
def running(docker_client: Any, ctx: RunContext) -> Iterator[tuple[Background, Any]]:
    """Starts the task aside and yields it with its container once the engine says it started.
    A task still running when the block ends is cancelled; its container must be gone."""
    now = int(time.time())
    events = docker_client.events(decode=True, since=now - 1, until=now + 60,  # ends by itself
                                  filters={"label": f"cloudq.task={ctx.task_id}", "event": "start"})
    task = Background(ctx).start()
    try:
        started = next(iter(events), None)
    finally:
        events.close()
    try:
        assert started is not None, "the container did not start within 60 s"
        yield task, docker_client.containers.get(started["id"])
    finally:
        if not task.done.is_set():
            task.cancel_and_wait(5)
        assert task_containers(docker_client, ctx.task_id) == []
