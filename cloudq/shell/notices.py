"""Notices: one line above the prompt when something the operator waits for happens.

A queued task is assigned (one that waited: a task placed by its own submit is in that
command's reply), a task finishes, fails or dies, a worker joins, is lost or is
quarantined. Each line starts with the time it happened, so a scrolled-back screen still reads
in order, and failures print in red. `notices errors` keeps only the red ones; `notices off`
none. A burst (a batch placed at once) prints a few lines and a count of the rest, so the
prompt stays usable on a busy cluster.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, NamedTuple

from cloudq.core.transitions import Event
from cloudq.render import neutralise

BURST_LINES = 5  # notices printed from one burst; the rest are counted on one more line
NOTICE_PREFIX = "["  # every notice starts with "[HH:MM:SS] "


class TaskFacts(NamedTuple):
    """Fields of the task as it moved, copied under the master's lock by the hook."""

    placement_attempts: int
    queued_at: float | None
    started_at: float | None
    last_error: str | None
    name: str


@dataclass(frozen=True)
class Notice:
    kind: str  # assigned, finished, failed, dead, joined, lost, quarantined
    text: str
    error: bool = False
    at: float = 0.0

    def line(self) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(self.at or time.time()))
        return f"[{stamp}] {neutralise(self.text, one_line=True)}"


def duration(seconds: float) -> str:
    """12s, 1m04s, 2h03m: short, and exact enough for a wait."""
    seconds = max(int(seconds), 0)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def task_notice(event: Event, facts: TaskFacts | None) -> Notice | None:
    task, worker, at = event.task, event.worker, event.time
    if event.dst == "assigned" and event.src == "queued" and facts is not None:
        waited = at - (facts.queued_at or at)
        if facts.placement_attempts == 0 and waited <= 0:
            return None  # placed by the submit itself: its reply said so
        tries = facts.placement_attempts
        after = f"{tries} placement attempt{'s' * (tries != 1)}, " if tries else ""
        return Notice("assigned", f"{task} assigned to {worker} after {after}{duration(waited)} in queue",
                      at=at)
    if event.dst == "completed":
        took = f" in {duration(at - facts.started_at)}" if facts and facts.started_at else ""
        return Notice("finished", f"{task} finished on {worker}{took}", at=at)
    if event.dst == "failed":
        where = f" on {worker}" if worker else ""
        why = (facts.last_error if facts and facts.last_error else None) or event.reason
        return Notice("failed", f"{task} failed{where}: {why}", error=True, at=at)
    if event.dst == "dead":
        return Notice("dead", f"{task} is dead: {event.reason}", error=True, at=at)
    return None


def worker_notice(view: dict[str, Any], before: str | None, now: float | None = None) -> Notice | None:
    """What changed for one worker since the last read (`before`: its status then, or None)."""
    name, status = view["name"], view["status"]
    at = now or time.time()
    if status == before:
        return None
    if status == "offline":
        if before is None:
            return None  # known from the store, never seen by this shell
        seen = view.get("last_seen")
        since = f": no word since {time.strftime('%H:%M:%S', time.localtime(seen))}" if seen else ""
        return Notice("lost", f"{name} lost{since}", error=True, at=at)
    if status == "quarantined":
        why = view.get("quarantine_reason") or "by an operator"
        return Notice("quarantined", f"{name} quarantined ({why}); `release {name}` lets it take tasks",
                      error=True, at=at)
    if before in (None, "offline"):
        gpus = view.get("gpus") or 0
        size = f"{view.get('cpu_cores', 0):g} cores, {view.get('mem_gb', 0):g} GB" + \
            (f", {gpus} GPU{'s' * (gpus != 1)}" if gpus else "")
        return Notice("joined", f"{name} joined ({size})", at=at)
    return None


def select(notices: list[Notice], mode: str) -> list[Notice]:
    """The notices `mode` shows (on, errors, off), a burst cut to BURST_LINES and a count."""
    if mode == "off":
        return []
    shown = [n for n in notices if n.error or mode == "on"]
    if len(shown) <= BURST_LINES:
        return shown
    keep = ([n for n in shown if n.error] + [n for n in shown if not n.error])[:BURST_LINES - 1]
    kept = set(map(id, keep))
    rest = Counter(n.kind for n in shown if id(n) not in kept)
    counted = ", ".join(f"{count} {kind}" for kind, count in rest.most_common())
    return [*(n for n in shown if id(n) in kept),
            Notice("more", f"and {sum(rest.values())} more: {counted}",
                   error=any(n.error for n in shown if id(n) not in kept), at=shown[-1].at)]
