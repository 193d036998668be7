"""Who is queued, counted the ways the operator asks about: by queue class in the order they
began to wait (so the oldest wait of each class is the first entry, without a scan of the
backlog), and by priority. O(1) per task that enters or leaves; the toolbar, `status` and the
metrics read it on every refresh."""

from __future__ import annotations

import itertools
from collections import Counter

from cloudq.core.model import Priority, QueueClass, Task


class WaitingLine:
    def __init__(self) -> None:
        self._by_class: dict[QueueClass, dict[str, float]] = {q: {} for q in QueueClass}
        self._by_priority: Counter[Priority] = Counter()

    def enter(self, task: Task, since: float) -> None:
        """A task is queued, waiting since `since`. Nearly always the newest of its class; one
        that is older (an operator moved it to another class) is put in its place by time:
        Timsort mends one element out of order in a single pass."""
        waiting = self._by_class[task.queue]
        newest = next(reversed(waiting.values()), None)
        waiting[task.id] = since
        if newest is not None and since < newest:
            self._by_class[task.queue] = dict(sorted(waiting.items(), key=lambda item: item[1]))
        self._by_priority[task.priority] += 1

    def leave(self, task: Task) -> None:
        """The task is no longer queued (placed, cancelled, held, expired, or re-sorted). Must
        be called before its queue class or priority change."""
        if self._by_class[task.queue].pop(task.id, None) is not None:
            self._by_priority[task.priority] -= 1

    def oldest(self, now: float) -> dict[str, float]:
        """Seconds the longest-waiting task of each class has waited (classes with one only)."""
        return {str(q): round(max(now - first, 0.0), 3) for q, waiting in self._by_class.items()
                for first in itertools.islice(waiting.values(), 1)}

    def by_class(self) -> dict[str, int]:
        return {str(q): len(waiting) for q, waiting in self._by_class.items()}

    def by_priority(self) -> dict[str, int]:
        return {str(p): self._by_priority[p] for p in Priority}
