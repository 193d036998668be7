"""The exec runner: an argv list run in the task directory as its own process group.

No shell is involved, so the argv items reach the program exactly as written. The environment
is made afresh (PATH, HOME, LANG), nothing is taken from the worker's, so the worker's own
settings and secrets do not leak into tasks. On a root worker the task runs as its task user
in a directory that user owns (confine.py). The storage roots the task names are given as
CLOUDQ_ROOT_<NAME>, this worker's path of each; the task reaches them with its own user's
permissions, nothing more.
"""

from __future__ import annotations

import errno
import time
from pathlib import Path
from typing import Any

from cloudq.errors import RunnerError
from cloudq.specs import roots
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
from cloudq.worker.runners.storage import root_of


def run(ctx: RunContext) -> RunResult:
    started = time.monotonic()
    spec = ctx.spec
    try:
        env = task_env(ctx)
        cwd = task_subdir(ctx.work_dir, spec["cwd"])
        if ctx.user is not None:
            give_task_dir(ctx.work_dir, ctx.user, cwd)
    except RunnerError as exc:
        return refused_by(started, exc)
    with open_log(ctx) as log:
        try:
            proc = start(spec["argv"], cwd=cwd, env=env, stdout=log, stderr=log,
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
    env.update(root_env(ctx, lambda root: str(root.path)))
    return env


def root_env(ctx: RunContext, where: Any) -> dict[str, str]:
    """CLOUDQ_ROOT_<NAME> for each root the task names, at `where(root)`; RunnerError (the
    worker's fault) if this worker lacks one or cannot write one it should."""
    env = {}
    for write, key in ((False, "input_roots"), (True, "output_roots")):
        for name in ctx.spec.get(key) or ():
            env[roots.env_name(name)] = where(root_of(ctx, name, write=write))
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
