"""Runners: run one task for real (FFmpeg, a container, an argv command, or nothing).

run_task is the one entry point: it validates the spec again (the worker does not trust what
came over the wire), picks the runner for the kind, and turns every task-level problem into a
RunResult, which says whose fault a failure was (base.Fault). Only programming errors raise.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from cloudq.errors import RunnerError, SpecError
from cloudq.specs import KINDS, validate_spec
from cloudq.worker.runners import container, ffmpeg, noop
from cloudq.worker.runners import exec as exec_runner
from cloudq.worker.runners.base import (
    LOG_NAME,
    Fault,
    RunContext,
    RunResult,
    RunStatus,
    WorkerFaultError,
    refused,
    refused_by,
    tail_log,
)
from cloudq.worker.runners.capabilities import capability_set, detect_capabilities

RUNNERS: dict[str, Callable[[RunContext], RunResult]] = {
    "ffmpeg": ffmpeg.run,
    "container": container.run,
    "exec": exec_runner.run,
    "noop": noop.run,
}
assert tuple(RUNNERS) == KINDS, "a task kind without a runner, or one too many"

__all__ = [
    "is_instant",
    "Fault",
    "LOG_NAME",
    "WorkerFaultError",
    "RunContext",
    "RunResult",
    "RunStatus",
    "capability_set",
    "detect_capabilities",
    "run_task",
    "tail_log",
]


def is_instant(kind: str, spec: dict) -> bool:
    """True for a task that finishes at once and cannot block (a no-op with no sleep): the
    agent runs it on the thread that received it instead of handing it to a task thread."""
    return kind == "noop" and isinstance(spec, dict) and noop.instant(spec)


def run_task(ctx: RunContext) -> RunResult:
    """Run the task described by `ctx` to its end (completed, failed, cancelled, timed out)."""
    started = time.monotonic()
    try:
        spec = validate_spec(ctx.kind, ctx.spec)
    except SpecError as exc:
        return refused(started, f"spec refused: {exc}")
    ctx = dataclasses.replace(ctx, spec=spec)
    try:
        return RUNNERS[ctx.kind](ctx)
    except RunnerError as exc:
        return refused_by(started, exc)
