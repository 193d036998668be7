"""How the master's core hands changes to durable storage without holding its lock during fsync.

enqueue() is called under the master lock, so changes reach the journal in the order they were
applied; wait() is called after the lock is released, so concurrent operations share one fsync.
"""

from __future__ import annotations

from typing import Protocol


class Journal(Protocol):
    def enqueue(self, changes: list[tuple]) -> int:
        """Queues changes in order; returns a ticket that wait() accepts."""

    def wait(self, ticket: int) -> None:
        """Returns once every change up to `ticket` is durable."""

    def last_ticket(self) -> int:
        """The newest ticket handed out (waiting on it covers everything enqueued so far)."""


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
