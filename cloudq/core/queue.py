"""A thread-safe priority queue of task ids: O(log n) push, pop, remove and reprioritise.

Order is by key, smallest first; cloudq uses Task.order_key (queue class rank, priority rank
and submission seq, packed into one int), which gives live > default > batch, high > medium >
low, FIFO within.

Removal is lazy: the heap entry is marked dead and skipped when it reaches the top, so cancel
does not pay O(n) to find the entry. When dead entries outnumber live ones the heap is rebuilt,
which keeps memory bounded and the amortised cost O(log n).
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Iterable, Iterator
from typing import Any

Key = tuple[Any, ...]

_KEY, _ID, _ALIVE = 0, 1, 2


class TaskQueue:
    def __init__(self) -> None:
        self._heap: list[list[Any]] = []
        self._entries: dict[str, list[Any]] = {}
        self._lock = threading.RLock()

    def push(self, task_id: str, key: Key) -> None:
        """Adds a task; pushing an id already queued is an error (it would run twice)."""
        with self._lock:
            if task_id in self._entries:
                raise KeyError(f"task {task_id} is already queued")
            entry = [key, task_id, True]
            self._entries[task_id] = entry
            heapq.heappush(self._heap, entry)

    def push_many(self, items: Iterable[tuple[str, Key]]) -> None:
        """Adds many tasks with one heap build (O(n)) instead of a push each: a restart
        queues every stored task at once."""
        with self._lock:
            for task_id, key in items:
                if task_id in self._entries:
                    raise KeyError(f"task {task_id} is already queued")
                entry = [key, task_id, True]
                self._entries[task_id] = entry
                self._heap.append(entry)
            heapq.heapify(self._heap)

    def pop(self) -> str | None:
        """Removes and returns the first task id, or None when empty."""
        with self._lock:
            entry = self._top()
            if entry is None:
                return None
            heapq.heappop(self._heap)
            del self._entries[entry[_ID]]
            return entry[_ID]

    def peek(self) -> str | None:
        with self._lock:
            entry = self._top()
            return None if entry is None else entry[_ID]

    def peek_key(self) -> Key | None:
        with self._lock:
            entry = self._top()
            return None if entry is None else entry[_KEY]

    def remove(self, task_id: str) -> bool:
        """Takes a task out wherever it is (cancel, hold). False if it was not queued."""
        with self._lock:
            entry = self._entries.pop(task_id, None)
            if entry is None:
                return False
            entry[_ALIVE] = False
            self._maybe_compact()
            return True

    def reprioritise(self, task_id: str, key: Key) -> None:
        with self._lock:
            if not self.remove(task_id):
                raise KeyError(f"task {task_id} is not queued")
            self.push(task_id, key)

    def key_of(self, task_id: str) -> Key | None:
        with self._lock:
            entry = self._entries.get(task_id)
            return None if entry is None else entry[_KEY]

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._entries

    def __bool__(self) -> bool:
        return bool(self._entries)

    def __iter__(self) -> Iterator[str]:
        """Ids in queue order, from a snapshot: safe while others push and pop."""
        return (task_id for _, task_id in self.ordered())

    def ordered(self) -> list[tuple[Key, str]]:
        with self._lock:
            snapshot = [(e[_KEY], e[_ID]) for e in self._entries.values()]
        snapshot.sort()
        return snapshot

    def _top(self) -> list[Any] | None:
        heap = self._heap
        while heap and not heap[0][_ALIVE]:
            heapq.heappop(heap)
        return heap[0] if heap else None

    def _maybe_compact(self) -> None:
        if len(self._heap) > 64 and len(self._heap) > 2 * len(self._entries):
            self._heap = [e for e in self._heap if e[_ALIVE]]
            heapq.heapify(self._heap)
