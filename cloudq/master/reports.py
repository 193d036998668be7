"""What a worker may tell the master, checked at the boundary.

A worker's report is hostile until proven otherwise: one non-numeric `started_at` once reached
the timers and stopped expiry, timeouts and pruning for the whole cluster. Every field is
checked here for type, range and size before the core sees it; a report that fails is refused
(the worker drops it) and the reason is logged, and nothing of it is applied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import orjson

from cloudq.errors import ValidationError

OUTCOMES = ("completed", "failed", "cancelled", "timed_out")
STATES = ("running", *OUTCOMES)
FAULTS = ("task", "worker")
MAX_ID_CHARS = 64
MAX_LOG_TAIL_CHARS = 8192
MAX_ERROR_CHARS = 2000
MAX_PROGRESS_KEYS = 32
MAX_OUTPUT_BYTES = 64 << 10  # a result's `output` (probe figures, file names), as JSON
CLOCK_SKEW_S = 300.0  # a worker's time may run this far ahead of the master's
MAX_RUN_S = 366 * 24 * 3600.0  # ...or this far behind: no task has run longer


@dataclass(frozen=True)
class Report:
    """One checked report item: progress, a start, or an outcome of one attempt."""

    task: str
    attempt: int
    state: str | None
    started_at: float | None = None
    progress: dict[str, Any] | None = None
    log_tail: str | None = None
    result: dict[str, Any] | None = None  # only with an outcome

    @property
    def is_outcome(self) -> bool:
        return self.state in OUTCOMES

    @property
    def worker_fault(self) -> bool:
        """A failure of the worker itself (not of the task): counts toward quarantine."""
        return bool(self.result) and self.result.get("fault") == "worker"


def parse_report(raw: Any, now: float) -> Report:
    """A checked Report, or ValidationError saying what was wrong."""
    if not isinstance(raw, dict):
        raise ValidationError("a report must be an object")
    task = raw.get("task")
    if not isinstance(task, str) or not 0 < len(task) <= MAX_ID_CHARS:
        raise ValidationError(f"report 'task' must be a task id, got {_short(task)}")
    attempt = raw.get("attempt")
    if isinstance(attempt, bool) or not isinstance(attempt, int) or not 0 < attempt < 1 << 31:
        raise ValidationError(f"report for {task}: 'attempt' must be a positive whole number")
    state = raw.get("state")
    if state is not None and (not isinstance(state, str) or state not in STATES):
        raise ValidationError(f"report for {task}: unknown state {_short(state)}")
    return Report(
        task=task, attempt=attempt, state=state,
        started_at=_time(raw.get("started_at"), f"report for {task}: 'started_at'", now),
        progress=_progress(raw.get("progress"), task) if "progress" in raw else None,
        log_tail=_text(raw.get("log_tail"), MAX_LOG_TAIL_CHARS, f"report for {task}: 'log_tail'"),
        result=_result(raw.get("result"), task, now) if state in OUTCOMES else None,
    )


def _time(value: Any, what: str, now: float) -> float | None:
    """A moment on the worker's clock, within a sane window of ours."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValidationError(f"{what} must be a time in seconds, got {_short(value)}")
    if not now - MAX_RUN_S <= value <= now + CLOCK_SKEW_S:
        raise ValidationError(f"{what} is {value - now:+.0f}s from the master's clock")
    return float(value)


def _text(value: Any, limit: int, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError(f"{what} must be text")
    return value[-limit:]


def _progress(value: Any, task: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > MAX_PROGRESS_KEYS:
        raise ValidationError(f"report for {task}: 'progress' must be an object of at most "
                              f"{MAX_PROGRESS_KEYS} figures")
    out: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str) or len(key) > MAX_ID_CHARS:
            raise ValidationError(f"report for {task}: a progress key is not a short name")
        if isinstance(item, float) and not math.isfinite(item):
            item = None
        elif isinstance(item, str):
            item = item[:256]
        elif item is not None and not isinstance(item, bool | int | float):
            raise ValidationError(f"report for {task}: progress {key!r} must be a number or text")
        out[key] = item
    return out


def _result(value: Any, task: str, now: float) -> dict[str, Any]:
    """An outcome's result: only the fields the master knows, each checked; others dropped."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValidationError(f"report for {task}: 'result' must be an object")
    what = f"report for {task}: result"
    out: dict[str, Any] = {}
    for key, check in _RESULT_FIELDS.items():
        if key in value:
            out[key] = check(value[key], f"{what} {key!r}", now)
    return out


def _exit_code(value: Any, what: str, now: float) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or not -(1 << 31) <= value < 1 << 32):
        raise ValidationError(f"{what} must be a whole number")
    return value


def _seconds(value: Any, what: str, now: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
        math.isfinite(value) and 0 <= value <= MAX_RUN_S
    ):
        raise ValidationError(f"{what} must be seconds")
    return float(value)


def _one_of(choices: tuple[str, ...]) -> Any:
    def check(value: Any, what: str, now: float) -> str | None:
        if value is not None and (not isinstance(value, str) or value not in choices):
            raise ValidationError(f"{what} must be one of {', '.join(choices)}")
        return value
    return check


def _output(value: Any, what: str, now: float) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValidationError(f"{what} must be an object")
    try:
        size = len(orjson.dumps(value))
    except (TypeError, orjson.JSONEncodeError):
        raise ValidationError(f"{what} is not plain JSON") from None
    if size > MAX_OUTPUT_BYTES:
        raise ValidationError(f"{what} of {size} bytes is over {MAX_OUTPUT_BYTES}")
    return value


_RESULT_FIELDS: dict[str, Any] = {
    "status": _one_of(STATES),
    "exit_code": _exit_code,
    "duration_s": _seconds,
    "error": lambda value, what, now: _text(value, MAX_ERROR_CHARS, what),
    "log_tail": lambda value, what, now: _text(value, MAX_LOG_TAIL_CHARS, what),
    "fault": _one_of(FAULTS),
    "started_at": _time,
    "output": _output,
}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
