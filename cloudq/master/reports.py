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
FAULTS = ("task", "worker", "space")  # only "worker" counts toward quarantine
MAX_ID_CHARS = 64
MAX_LOG_TAIL_CHARS = 8192
MAX_ERROR_CHARS = 2000
MAX_PROGRESS_KEYS = 32
MAX_OUTPUT_BYTES = 64 << 10  # a result's `output` (probe figures, file names), as JSON
CLOCK_SKEW_S = 300.0  # a worker's time may run this far ahead of the master's
MAX_RUN_S = 366 * 24 * 3600.0  # ...or this far behind: no task has run longer


@dataclass(slots=True)
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


class _Bad(ValueError):
    """A field failed its check; parse_report adds which report and field it was."""


def parse_report(raw: Any, now: float) -> Report:
    """A checked Report, or ValidationError saying what was wrong. On the task path for every
    outcome, so the checks are plain and messages are only built for a failure."""
    if not isinstance(raw, dict):
        raise ValidationError("a report must be an object")
    task = raw.get("task")
    if type(task) is not str or not 0 < len(task) <= MAX_ID_CHARS:
        raise ValidationError(f"report 'task' must be a task id, got {_short(task)}")
    field = "attempt"
    try:
        attempt = raw.get("attempt")
        if type(attempt) is not int or not 0 < attempt < 1 << 31:
            raise _Bad("must be a positive whole number")
        field = "state"
        state = raw.get("state")
        if state is not None and (type(state) is not str or state not in STATES):
            raise _Bad(f"is unknown: {_short(state)}")
        field = "started_at"
        started_at = _time(raw.get("started_at"), now)
        field = "progress"
        progress = _progress(raw.get("progress"))
        field = "log_tail"
        log_tail = _text(raw.get("log_tail"), MAX_LOG_TAIL_CHARS)
        result = None
        if state in OUTCOMES:
            field = "result"
            result = _result(raw.get("result"), now)
    except _Bad as err:
        raise ValidationError(f"report for {task}: {field!r} {err}") from None
    return Report(task, attempt, state, started_at, progress, log_tail, result)


def _time(value: Any, now: float) -> float | None:
    """A moment on the worker's clock, within a sane window of ours."""
    if value is None:
        return None
    kind = type(value)
    if (kind is not float and kind is not int) or not math.isfinite(value):
        raise _Bad(f"must be a time in seconds, got {_short(value)}")
    if not now - MAX_RUN_S <= value <= now + CLOCK_SKEW_S:
        raise _Bad(f"is {value - now:+.0f}s from the master's clock")
    return float(value)


def _text(value: Any, limit: int) -> str | None:
    if value is None:
        return None
    if type(value) is not str:
        raise _Bad("must be text")
    return value if len(value) <= limit else value[-limit:]


def _progress(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > MAX_PROGRESS_KEYS:
        raise _Bad(f"must be an object of at most {MAX_PROGRESS_KEYS} figures")
    out: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str) or len(key) > MAX_ID_CHARS:
            raise _Bad("has a key that is not a short name")
        if isinstance(item, float) and not math.isfinite(item):
            item = None
        elif isinstance(item, str):
            item = item[:256]
        elif item is not None and not isinstance(item, bool | int | float):
            raise _Bad(f"{key!r} must be a number or text")
        out[key] = item
    return out


def _result(value: Any, now: float) -> dict[str, Any]:
    """An outcome's result: only the fields the master knows, each checked; others dropped."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Bad("must be an object")
    out: dict[str, Any] = {}
    for key, check in _RESULT_FIELDS:
        if key in value:
            try:
                out[key] = check(value[key], now)
            except _Bad as err:
                raise _Bad(f"field {key!r} {err}") from None
    return out


def _exit_code(value: Any, now: float) -> int | None:
    if value is not None and (type(value) is not int or not -(1 << 31) <= value < 1 << 32):
        raise _Bad("must be a whole number")
    return value


def _seconds(value: Any, now: float) -> float | None:
    if value is None:
        return None
    kind = type(value)
    if (kind is not float and kind is not int) or not (math.isfinite(value) and 0 <= value <= MAX_RUN_S):
        raise _Bad("must be seconds")
    return float(value)


def _one_of(choices: tuple[str, ...]) -> Any:
    def check(value: Any, now: float) -> str | None:
        if value is not None and (type(value) is not str or value not in choices):
            raise _Bad(f"must be one of {', '.join(choices)}")
        return value
    return check


def _output(value: Any, now: float) -> dict[str, Any]:
    if value is None or value == {}:
        return {}
    if not isinstance(value, dict):
        raise _Bad("must be an object")
    try:
        size = len(orjson.dumps(value))
    except (TypeError, orjson.JSONEncodeError):
        raise _Bad("is not plain JSON") from None
    if size > MAX_OUTPUT_BYTES:
        raise _Bad(f"of {size} bytes is over {MAX_OUTPUT_BYTES}")
    return value


_RESULT_FIELDS: tuple[tuple[str, Any], ...] = (
    ("status", _one_of(STATES)),
    ("exit_code", _exit_code),
    ("duration_s", _seconds),
    ("error", lambda value, now: _text(value, MAX_ERROR_CHARS)),
    ("log_tail", lambda value, now: _text(value, MAX_LOG_TAIL_CHARS)),
    ("fault", _one_of(FAULTS)),
    ("started_at", _time),
    ("output", _output),
)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
