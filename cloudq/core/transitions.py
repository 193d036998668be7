"""The task lifecycle: one table of allowed moves, and the audit event every move writes.

    pending -> queued -> assigned -> running -> completed | failed | cancelled
    plus held (an operator parked it), retrying (waiting out a back-off before it is queued
    again) and dead (retries exhausted: the dead-letter list).

Any move not in the table raises TransitionError naming the task and its last events, so a
bug shows up as a story, not as a silently corrupted queue. Each allowed move also says what
bookkeeping it carries (EFFECTS): the master applies it in one place, so no caller pairs a
move with its effects by hand.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

from cloudq.core.model import Task, TaskState
from cloudq.errors import TransitionError

S = TaskState

# (from, to): what the move means. The only source of truth for what may happen to a task;
# only moves some code path makes are listed.
ALLOWED: dict[tuple[TaskState, TaskState], str] = {
    (S.PENDING, S.QUEUED): "accepted",
    (S.PENDING, S.CANCELLED): "cancelled before its dependencies ended",
    (S.QUEUED, S.ASSIGNED): "placed on a worker",
    (S.QUEUED, S.HELD): "held by an operator",
    (S.QUEUED, S.CANCELLED): "cancelled while queued",
    (S.QUEUED, S.FAILED): "expired in the queue",
    (S.ASSIGNED, S.RUNNING): "started by the worker",
    (S.ASSIGNED, S.RETRYING): "lost before it started; will retry",
    (S.ASSIGNED, S.DEAD): "lost before it started; no retries left",
    (S.ASSIGNED, S.CANCELLED): "cancelled before it started",
    (S.RUNNING, S.COMPLETED): "finished successfully",
    (S.RUNNING, S.RETRYING): "failed or lost; will retry",
    (S.RUNNING, S.DEAD): "failed or lost; no retries left",
    (S.RUNNING, S.CANCELLED): "cancelled while running",
    (S.RETRYING, S.QUEUED): "back-off over",
    (S.RETRYING, S.HELD): "held by an operator",
    (S.RETRYING, S.CANCELLED): "cancelled while waiting to retry",
    (S.HELD, S.QUEUED): "released by an operator",
    (S.HELD, S.CANCELLED): "cancelled while held",
    (S.FAILED, S.QUEUED): "retried by an operator",
    (S.DEAD, S.QUEUED): "retried by an operator",
    (S.CANCELLED, S.QUEUED): "retried by an operator",
}


class Effects(NamedTuple):
    """The bookkeeping one move carries besides the new state, applied by the master's _move."""

    dequeue: bool  # leaves the queue: out of the backlog
    release: bool  # leaves a worker: its booking and its named locks are freed
    enqueue: bool  # enters the queue: into the backlog, queue time starts again
    finish: bool  # enters a final state: finished_at is stamped (pruning counts from it)


def _effects(src: TaskState, dst: TaskState) -> Effects:
    # A task cancelled on a worker keeps its booking and is not finished until the worker
    # confirms it stopped: the master frees it then (not a move, the state stays cancelled).
    cancel_on_worker = src.is_active and dst is S.CANCELLED
    return Effects(
        dequeue=src is S.QUEUED,
        release=src.is_active and not dst.is_active and not cancel_on_worker,
        enqueue=dst is S.QUEUED,
        finish=dst.is_final and not cancel_on_worker,
    )


EFFECTS: dict[tuple[TaskState, TaskState], Effects] = {pair: _effects(*pair) for pair in ALLOWED}


class Event(NamedTuple):
    """One move of one task: the audit trail, `events`, and `why` read these.

    A NamedTuple rather than a frozen dataclass: every move makes one, and a tuple is built
    several times faster. src and dst are TaskState members, which are strings."""

    task: str
    src: str
    dst: str
    reason: str
    worker: str | None
    attempt: int
    time: float

    def to_dict(self) -> dict:
        # A literal: every move is journalled, and _asdict() is several times slower.
        return {"task": self.task, "src": self.src, "dst": self.dst, "reason": self.reason,
                "worker": self.worker, "attempt": self.attempt, "time": self.time}

    @classmethod
    def from_dict(cls, raw: dict) -> Event:
        return cls(raw["task"], raw["src"], raw["dst"], raw["reason"], raw["worker"], raw["attempt"],
                   raw["time"])

    def __str__(self) -> str:
        where = f" on {self.worker}" if self.worker else ""
        return f"{self.src} -> {self.dst}{where} (attempt {self.attempt}): {self.reason}"


def can_move(src: TaskState, dst: TaskState) -> bool:
    return (src, dst) in ALLOWED


def move(
    task: Task,
    dst: TaskState,
    *,
    now: float,
    reason: str | None = None,
    history: Iterable[Event] | Callable[[str], Iterable[Event]] = (),
) -> Event:
    """Moves `task` to `dst` in place and returns the event that records it. `history` may be
    a function of the task id, so the story is only gathered when a move is refused."""
    src = task.state
    meaning = ALLOWED.get((src, dst))
    if meaning is None:
        events = history(task.id) if callable(history) else history
        story = "; ".join(str(e) for e in list(events)[-5:]) or "no earlier events"
        raise TransitionError(
            f"task {task.id} cannot move from {src.value} to {dst.value}. Its last events: {story}"
        )
    task.state = dst
    task.updated_at = now
    return Event(task.id, src, dst, reason or meaning, task.worker, task.attempt, now)


class EventLog:
    """The newest events, overall and per task, bounded so a long-lived master stays small."""

    def __init__(self, retention: int, per_task: int = 50) -> None:
        self._all: deque[Event] = deque(maxlen=retention)
        # A task's first event alone, then a list: most queued tasks have one event, and a
        # list of one costs more than the event itself. Lists, not bounded deques: an empty
        # deque alone is larger than a short list.
        self._per_task: dict[str, Event | list[Event]] = {}
        self._per_task_limit = per_task
        self.added = 0  # events ever added: the cursor of `after`

    def add(self, event: Event) -> None:
        self._all.append(event)
        self.added += 1
        if not event.task:
            return  # a worker's own event: no task's story
        story = self._per_task.get(event.task)
        if story is None:
            self._per_task[event.task] = event
        elif isinstance(story, Event):
            self._per_task[event.task] = [story, event]
        else:
            story.append(event)
            if len(story) > self._per_task_limit:
                del story[0]

    def story(self, task_id: str) -> list[Event]:
        story = self._per_task.get(task_id)
        if story is None:
            return []
        return [story] if isinstance(story, Event) else list(story)

    def forget(self, task_id: str) -> None:
        self._per_task.pop(task_id, None)

    def newest_first(self) -> Iterator[Event]:
        """Every kept event, newest first, without copying (call it under the master lock)."""
        return reversed(self._all)

    def after(self, cursor: int, limit: int) -> tuple[list[Event], int, int]:
        """The events added since `cursor` (a value of `added`), at most `limit`, the newest
        kept; with the cursor to ask with next and how many were skipped (over `limit`, or no
        longer kept). A cursor from the future (the log was rebuilt) starts again from now."""
        if cursor > self.added:
            return [], self.added, 0
        new = self.added - cursor
        keep = min(new, len(self._all), limit)
        events = list(itertools.islice(reversed(self._all), keep))[::-1]
        return events, self.added, new - keep

    def recent(self, limit: int = 100) -> list[Event]:
        return list(self._all)[-limit:]

    def __len__(self) -> int:
        return len(self._all)
