"""The noop runner: waits `sleep_s` (or until cancelled or timed out) and completes.

Benchmarks use it to measure the queue itself; it starts no process and writes no log.
"""

from __future__ import annotations

import time
from typing import Any

from cloudq.worker.runners.base import RunContext, RunResult, RunStatus


def instant(spec: dict[str, Any]) -> bool:
    """Without a sleep it cannot block, so the agent runs it without a thread of its own."""
    return not spec.get("sleep_s")


def run(ctx: RunContext) -> RunResult:
    started = time.monotonic()
    sleep_s = float(ctx.spec.get("sleep_s", 0.0))
    limit = sleep_s if ctx.timeout_s is None else min(sleep_s, ctx.timeout_s)
    if limit > 0 and ctx.cancel.wait(limit):
        return _result(RunStatus.CANCELLED, started, "cancelled")
    if ctx.cancel.is_set():
        return _result(RunStatus.CANCELLED, started, "cancelled")
    if limit < sleep_s:
        return _result(RunStatus.TIMED_OUT, started, f"timed out after {ctx.timeout_s:g} s")
    return RunResult(status=RunStatus.COMPLETED, exit_code=0, duration_s=time.monotonic() - started)


def _result(status: RunStatus, started: float, error: str) -> RunResult:
    return RunResult(
        status=status, exit_code=None, duration_s=time.monotonic() - started, error=error
    )
