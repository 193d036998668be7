"""What every runner takes (RunContext) and gives back (RunResult), and the task log.

A runner never raises for a task-level problem: a bad path, a missing image, a crash of the
task, a timeout or a cancel all come back as a RunResult with a one-line error. Only bugs raise.

Every failure also says whose fault it is, for the master's quarantine: `task` when the task
caused it (a refused spec, a bad input, a non-zero exit, a missing image, a timeout, memory)
and `worker` when this worker could not do its part (no Docker engine, no FFmpeg, a task
directory or log it cannot write, a process it cannot start, a runner crash). Only the second
kind counts against the worker.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from cloudq.errors import RunnerError
from cloudq.worker.runners.confine import TaskUser

LOG_NAME = "task.log"
LOG_TAIL_BYTES = 8192


class RunStatus(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"


class Fault(StrEnum):
    """Who a failed (or timed-out) task failed because of."""

    TASK = "task"
    WORKER = "worker"
    # The worker's disk was full. Not the task's doing, and not a fault that should quarantine
    # the worker either: it clears by itself when space is freed (and the task is retried).
    SPACE = "space"


class WorkerFaultError(RunnerError):
    """The task could not run because of this worker (its engine, tools, disk), not the task."""


# An OSError with one of these is the machine's trouble whatever the task asked for.
WORKER_ERRNOS = frozenset({errno.EROFS, errno.EIO, errno.ENOMEM, errno.EMFILE, errno.ENFILE,
                           errno.EAGAIN})
SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})  # a full disk or quota: Fault.SPACE


def fault_of(exc: BaseException) -> Fault:
    """The fault a RunnerError (or an OSError met while setting a task up) stands for."""
    if isinstance(exc, OSError) and exc.errno in SPACE_ERRNOS:
        return Fault.SPACE
    if isinstance(exc, WorkerFaultError):
        return Fault.SPACE if isinstance(exc.__cause__, OSError) and (
            exc.__cause__.errno in SPACE_ERRNOS) else Fault.WORKER
    if isinstance(exc, OSError) and exc.errno in WORKER_ERRNOS:
        return Fault.WORKER
    return Fault.TASK


def _ignore_progress(_: dict[str, Any]) -> None:
    pass


@dataclass(frozen=True)
class StorageRoot:
    """A named directory this worker shares with the farm (--input-root / --output-root NAME=PATH):
    `path` is where it is mounted here, already resolved; `writable` for an output root."""

    name: str
    path: Path
    writable: bool = False


@dataclass
class RunContext:
    task_id: str
    attempt: int
    kind: str
    spec: dict[str, Any]  # already validated by validate_spec; the runner validates again
    resources: dict[str, Any]  # cpu_cores, mem_gb, storage_gb, gpus, gpu_mem_gb
    work_dir: Path  # created by the caller, this task's alone
    timeout_s: float | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    # Set with cancel when the task must be gone at once: its process group is killed without
    # the SIGTERM grace (the worker's lease is about to run out, process.terminate_group).
    kill: threading.Event = field(default_factory=threading.Event)
    on_progress: Callable[[dict[str, Any]], None] = _ignore_progress
    gpu_indices: list[int] = field(default_factory=list)
    input_roots: list[Path] = field(default_factory=list)  # where ffmpeg inputs may come from
    roots: dict[str, StorageRoot] = field(default_factory=dict)  # the worker's named roots
    allow_pull: bool = False
    worker_name: str = ""
    # Memory limit of a container whose task asked for no memory (the worker's memory over its
    # max_tasks, or --container-mem-default); None: the machine's memory.
    container_mem_default: int | None = None
    user: TaskUser | None = None  # who exec and ffmpeg processes run as; None: the worker

    @property
    def log_path(self) -> Path:
        return self.work_dir / LOG_NAME

    @property
    def worker_label(self) -> str:
        return self.worker_name or "this worker"

    def deadline(self, started: float) -> float | None:
        """The monotonic time at which the task is timed out, or None for no limit."""
        return None if self.timeout_s is None else started + self.timeout_s


@dataclass
class RunResult:
    status: str
    exit_code: int | None
    duration_s: float
    error: str | None = None
    output: dict[str, Any] = field(default_factory=dict)
    log_tail: str = ""
    fault: Fault | None = None  # set for failed and timed_out; task unless said otherwise

    def __post_init__(self) -> None:
        if self.status in (RunStatus.FAILED, RunStatus.TIMED_OUT):
            self.fault = self.fault or Fault.TASK
        else:
            self.fault = None  # completed or cancelled: nobody's fault

    @property
    def ok(self) -> bool:
        return self.status == RunStatus.COMPLETED

    def to_dict(self) -> dict[str, Any]:
        """Plain values only, ready to cross the RPC boundary as JSON."""
        return {
            "status": str(self.status),
            "exit_code": self.exit_code,
            "duration_s": self.duration_s,
            "error": self.error,
            "output": dict(self.output),
            "log_tail": self.log_tail,
            "fault": None if self.fault is None else str(self.fault),
        }


def refused(started: float, error: str, fault: Fault = Fault.TASK) -> RunResult:
    """A task turned down before anything ran: no process, no container, no log."""
    return RunResult(
        status=RunStatus.FAILED,
        exit_code=None,
        duration_s=time.monotonic() - started,
        error=one_line(error),
        fault=fault,
    )


def refused_by(started: float, exc: RunnerError) -> RunResult:
    """refused() for a RunnerError, with the fault it stands for."""
    return refused(started, str(exc), fault_of(exc))


def finished(
    ctx: RunContext,
    status: RunStatus,
    exit_code: int | None,
    started: float,
    error: str | None,
    output: dict[str, Any] | None = None,
    fault: Fault | None = None,
) -> RunResult:
    """The result of a task that ran: its outcome, the time since `started`, its log's tail.
    A failure is the task's fault unless `fault` says otherwise."""
    return RunResult(
        status=status,
        exit_code=exit_code,
        duration_s=time.monotonic() - started,
        error=one_line(error) if error else None,
        output=output or {},
        log_tail=tail_log(ctx.work_dir),
        fault=fault,
    )


def one_line(text: str, limit: int = 500) -> str:
    """Errors travel as one line: the operator reads them in a table."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def tail_log(work_dir: Path | str, max_bytes: int = LOG_TAIL_BYTES) -> str:
    """The last `max_bytes` of the task's log (whole lines where possible), or "" if none."""
    path = Path(work_dir) / LOG_NAME
    # The task owns its directory and may have put something else in the log's place: the
    # worker reads only the plain file it made, never through a symlink or a hard link (to a
    # secret), and never blocks on a FIFO.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return ""
    with os.fdopen(fd, "rb") as log:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            return ""
        start = max(0, st.st_size - max_bytes)
        log.seek(start)
        data = log.read(max_bytes)
    if start > 0:
        newline = data.find(b"\n")
        if 0 <= newline < len(data) - 1:
            data = data[newline + 1 :]  # drop the cut-off first line
    return data.decode("utf-8", errors="replace")


def open_log(ctx: RunContext):
    """Open a fresh task.log, refusing to follow a symlink planted in its place.

    O_APPEND so that the task's processes, which share the descriptor, never overwrite each
    other; truncated because the log belongs to this run only.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(ctx.log_path, flags, 0o644)
    except OSError as exc:
        raise WorkerFaultError(f"task log {ctx.log_path} cannot be written: {exc.strerror}") from None
    return os.fdopen(fd, "ab", buffering=0)
