"""Table columns for task listings: how each column is made from a task view. A column that
is not named here is the view's field of that name."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from typing import Any

View = dict[str, Any]

# Short headers and compact cells, so that every column fits an 80-column terminal (the
# renderer cuts the reason, then image and target, to make them fit; `show ID` and --json have
# every field whole): image is the image, the scenario, the exec line or `sleep Ns`; needs is
# what the task asks for (`8c 16G 1g d50G`); class is queue class and priority (`live/hi`,
# `def/med`); wait is the time in queue; passes counts the placement passes that found no
# worker for it.
QUEUE_COLUMNS = ["id", "kind", "target", "image", "owner", "needs", "state", "class", "wait",
                 "passes", "reason"]
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


def needs(resources: dict[str, Any]) -> str:
    """What a task asks for, in one short cell: `8c 16G 1g d50G` is 8 cores, 16 GB of memory,
    1 GPU and 50 GB of disk; what it does not ask for is left out (but the cores)."""
    words = [f"{resources.get('cpu_cores') or 0:g}c"]
    if resources.get("mem_gb"):
        words.append(f"{resources['mem_gb']:g}G")
    if resources.get("gpus"):
        words.append(f"{resources['gpus']:g}g")
    if resources.get("storage_gb"):
        words.append(f"d{resources['storage_gb']:g}G")
    return " ".join(words)


SHORT = {"default": "def", "high": "hi", "medium": "med", "low": "lo"}  # queue classes, priorities


def queue_class(view: View) -> str:
    """Queue class and priority, short: `live/hi`, `def/med`, `batch/lo`."""
    queue, priority = str(view.get("queue")), str(view.get("priority"))
    return f"{SHORT.get(queue, queue)}/{SHORT.get(priority, priority)}"


def _note(view: View) -> str:
    """Why it waits (a task no worker could ever run says so first), or its last error."""
    if view.get("never_fits"):
        return f"Never fits: {view['never_fits']}"
    return str(view.get("reason") or view.get("last_error") or "")


_CELLS: dict[str, Callable[[View], str]] = {
    "target": _target,
    "image": _what,
    "needs": lambda view: needs(view.get("resources") or {}),
    "class": queue_class,
    "wait": lambda view: duration(view["in_queue_s"]) if view.get("in_queue_s") is not None else "",
    "passes": lambda view: str(view.get("placement_attempts") or 0),
    "reason": _note,
}
