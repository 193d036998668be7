"""Table columns for task listings: how each column is made from a task view. A column that
is not named here is the view's field of that name."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from typing import Any

View = dict[str, Any]

QUEUE_COLUMNS = ["id", "kind", "target", "image/scenario", "owner", "cpu/mem/disk/gpu", "state",
                 "class", "in queue", "placements", "reason"]
MAX_WHAT = 60  # characters of an exec line shown in a listing (show ID has all of it)


def cell(value: Any) -> str:
    """A field of a task view as a table cell."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={cell(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(cell(v) for v in value)
    return str(value)


def row(view: View, columns: list[str]) -> list[str]:
    return [_CELLS[c](view) if c in _CELLS else cell(view.get(c)) for c in columns]


def duration(seconds: float) -> str:
    """12s, 1m04s, 2h03m, 3d04h: short enough for a column, exact enough to compare."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def _target(view: View) -> str:
    """Where it runs; while it waits, the worker it is pinned to, or any."""
    return view.get("worker") or view.get("target_worker") or "any"


def _what(view: View) -> str:
    spec, kind = view.get("spec") or {}, view.get("kind")
    if kind == "container":
        return str(spec.get("image", ""))
    if kind == "ffmpeg":
        return str(spec.get("scenario", ""))
    if kind == "exec":
        line = shlex.join(str(word) for word in spec.get("argv") or [])
        return line if len(line) <= MAX_WHAT else line[: MAX_WHAT - 3] + "..."
    return f"sleep {spec.get('sleep_s') or 0:g}s" if kind == "noop" else ""


def _resources(view: View) -> str:
    r = view.get("resources") or {}
    return f"{r.get('cpu_cores', 0):g}/{r.get('mem_gb', 0):g}/{r.get('storage_gb', 0):g}/{r.get('gpus', 0)}"


def _note(view: View) -> str:
    """Why it waits (a task no worker could ever run says so first), or its last error."""
    if view.get("never_fits"):
        return f"Never fits: {view['never_fits']}"
    return str(view.get("reason") or view.get("last_error") or "")


_CELLS: dict[str, Callable[[View], str]] = {
    "target": _target,
    "image/scenario": _what,
    "cpu/mem/disk/gpu": _resources,
    "class": lambda view: f"{view.get('queue')}/{view.get('priority')}",
    "in queue": lambda view: duration(view["in_queue_s"]) if view.get("in_queue_s") is not None else "",
    "placements": lambda view: str(view.get("placement_attempts") or 0),
    "reason": _note,
}
