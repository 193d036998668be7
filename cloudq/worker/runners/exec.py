"""The exec runner: an argv list run in the task directory as its own process group.

No shell is involved, so the argv items reach the program exactly as written. The environment
is made afresh (PATH, HOME, LANG), nothing is taken from the worker's, so the worker's own
settings and secrets do not leak into tasks. On a root worker the task runs as its task user
in a directory that user owns (confine.py).
"""

from __future__ import annotations

import errno
import time
from pathlib import Path
from typing import Any

from cloudq.errors import RunnerError
from cloudq.worker.runners.base import (
    RunContext,
    RunResult,
    RunStatus,
    fault_of,
    open_log,
    refused_by,
    tail_log,
)
from cloudq.worker.runners.paths import give_task_dir, task_subdir
from cloudq.worker.runners.process import DEFAULT_PATH, describe_outcome, start, supervise


def run(ctx: RunContext) -> RunResult:
    started = time.monotonic()
    spec = ctx.spec
    try:
        cwd = task_subdir(ctx.work_dir, spec["cwd"])
        if ctx.user is not None:
            give_task_dir(ctx.work_dir, ctx.user, cwd)
    except RunnerError as exc:
        return refused_by(started, exc)
    with open_log(ctx) as log:
        try:
            proc = start(spec["argv"], cwd=cwd, env=task_env(ctx), stdout=log, stderr=log,
                         user=ctx.user)  # fmt: skip
        except OSError as exc:
            return _not_started(ctx, started, spec["argv"][0], exc, log)
    outcome = supervise(proc, ctx, started)
    return RunResult(
        status=outcome.status,
        exit_code=outcome.exit_code,
        duration_s=outcome.duration_s,
        error=describe_outcome(outcome, ctx.timeout_s),
        output={},
        log_tail=tail_log(ctx.work_dir),
    )


def task_env(ctx: RunContext) -> dict[str, str]:
    """Minimal base, then the spec's variables, then what cloudq tells every task."""
    env = {
        "PATH": DEFAULT_PATH,
        "HOME": str(ctx.work_dir),
        "LANG": "C.UTF-8",
    }
    env.update(ctx.spec.get("env") or {})
    env.update(
        {
            "CLOUDQ_TASK_ID": ctx.task_id,
            "CLOUDQ_ATTEMPT": str(ctx.attempt),
            "CLOUDQ_WORK_DIR": str(ctx.work_dir),
            # A task sees only the GPUs it was given (none when it asked for none).
            "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in ctx.gpu_indices),
        }
    )
    return env


def _not_started(
    ctx: RunContext, started: float, program: str, exc: OSError, log: Any
) -> RunResult:
    # 127 / 126 as a shell would say: not found / found but not runnable. The task named the
    # program, so it is the task's fault, unless the machine could not start a process at all.
    code = 127 if exc.errno == errno.ENOENT else 126
    message = f"cannot run {program!r}: {exc.strerror or exc}"
    log.write(f"cloudq: {message}\n".encode())
    return RunResult(
        status=RunStatus.FAILED,
        exit_code=code,
        duration_s=time.monotonic() - started,
        error=message,
        log_tail=tail_log(Path(ctx.work_dir)),
        fault=fault_of(exc),
    )
