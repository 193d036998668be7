"""Retry policy: how long a failed or lost task waits before it is queued again."""

from __future__ import annotations

import random

from cloudq import defaults
from cloudq.core.model import Task


def retries_left(task: Task) -> bool:
    """Attempts are numbered from 1; a task runs at most max_retries + 1 times. An attempt
    its worker never started did not run: a peer that takes work and sits on it must not use
    up the task's retries (it is charged to the worker instead)."""
    return task.attempt - task.unstarted <= task.max_retries


def backoff_s(task: Task, rng: random.Random) -> float:
    """Exponential in the attempt, capped, with +/- jitter so a burst of retries spreads out."""
    if task.retry_backoff_s <= 0:
        return 0.0
    runs = task.attempt - task.unstarted
    base = min(task.retry_backoff_s * 2 ** max(runs - 1, 0), defaults.RETRY_BACKOFF_MAX_S)
    jitter = 1.0 + rng.uniform(-defaults.RETRY_JITTER, defaults.RETRY_JITTER)
    return base * jitter
