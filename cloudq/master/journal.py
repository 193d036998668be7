"""How the master's core hands changes to durable storage without holding its lock during fsync.

enqueue() is called under the master lock, so changes reach the journal in the order they were
applied; wait() is called after the lock is released, so concurrent operations share one fsync.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Protocol

from cloudq.errors import StoreError
from cloudq.model import Task
from cloudq.store import Encoded, dumps


def encode_task(task: Task) -> Encoded:
    """The task as the store keeps it. Its request half never changes after submission, so
    its JSON is made once and kept on the task; a change re-encodes only the bookkeeping."""
    if task.request_json is None:
        task.request_json = dumps(task.request_dict())
    return Encoded(task.id, task.request_json[:-1] + "," + dumps(task.state_dict())[1:])


class Journal(Protocol):
    def enqueue(self, changes: list[tuple]) -> int:
        """Queues changes in order; returns a ticket that wait() accepts."""

    def wait(self, ticket: int) -> None:
        """Returns once every change up to `ticket` is durable."""

    def last_ticket(self) -> int:
        """The newest ticket handed out (waiting on it covers everything enqueued so far)."""

    def stats(self) -> dict[str, Any]:
        """Figures for `status`: what is on disk and when it was last checkpointed."""


class NullJournal:
    """Keeps nothing: for unit tests of the core and for benchmarks of placement alone."""

    def __init__(self) -> None:
        self.changes = 0

    def enqueue(self, changes: list[tuple]) -> int:
        self.changes += len(changes)
        return self.changes

    def wait(self, ticket: int) -> None:
        return None

    def last_ticket(self) -> int:
        return self.changes

    def stats(self) -> dict[str, Any]:
        return {}


class StoreJournal:
    """Group commit on top of cloudq.store.Store.

    enqueue() only buffers (it runs under the master lock, so the buffer is in apply order).
    The first caller of wait() whose ticket is not yet durable becomes the writer: it takes
    everything buffered so far, appends it to the store in one call (one fsync), and wakes the
    others; callers that arrived meanwhile are covered by that write or lead the next one.
    """

    def __init__(self, store: Any) -> None:
        self.store = store
        self._cv = threading.Condition()
        self._buffer: list[tuple] = []
        self._issued = 0
        self._durable = 0
        self._writing = False
        self._failure: BaseException | None = None
        self.writes = 0

    def enqueue(self, changes: list[tuple]) -> int:
        with self._cv:
            self._buffer.extend(changes)
            self._issued += 1
            return self._issued

    def last_ticket(self) -> int:
        return self._issued

    def stats(self) -> dict[str, Any]:
        stats = self.store.stats()
        out = {key: stats.get(key) for key in (
            "journal_bytes", "journal_segments", "changes_since_checkpoint", "checkpoints")}
        at = stats.get("last_checkpoint_at")
        out["last_checkpoint_age_s"] = round(time.time() - at, 1) if at else None
        out["load_s"] = round(stats["load_s"], 3) if stats.get("load_s") is not None else None
        return out

    def wait(self, ticket: int) -> None:
        with self._cv:
            while self._durable < ticket:
                if self._failure is not None:
                    raise StoreError(f"the journal cannot be written: {self._failure}")
                if self._writing:
                    self._cv.wait()
                    continue
                batch, upto = self._buffer, self._issued
                self._buffer, self._writing = [], True
                self._cv.release()
                try:
                    if batch:
                        self.store.append(batch)
                        self.writes += 1
                except BaseException as err:
                    self._failure = err  # memory is now ahead of disk: acknowledge nothing more
                    raise
                finally:
                    self._cv.acquire()
                    self._writing = False
                    self._cv.notify_all()
                self._durable = upto
