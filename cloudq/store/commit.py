"""Group commit: many threads' journal lines share one write and one fdatasync.

Leader/follower: a thread that finds its line not yet durable and nobody writing becomes the
leader, takes every line queued so far, writes and syncs them with the lock released, then
wakes the others. Threads whose lines were in that batch return; the rest elect the next
leader. One fdatasync costs about as much for 100 lines as for one, so under concurrency the
cost per append falls with the number of appending threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from cloudq.errors import StoreError
from cloudq.store.journal import JournalWriter, frame

T = TypeVar("T")


class GroupCommit:
    def __init__(self, writer: JournalWriter, next_lsn: int):
        self._writer = writer
        self._cond = threading.Condition()
        self._pending: list[bytes] = []
        self._next_lsn = next_lsn
        self._durable_lsn = next_lsn - 1
        self._leading = False
        self._failure: BaseException | None = None
        self._closed = False
        self.commits = 0  # batches written (each one write + one fdatasync)

    @property
    def last_lsn(self) -> int:
        return self._next_lsn - 1

    def commit(self, body: str, on_assigned: Callable[[], None]) -> int:
        """Journal one batch and return its lsn once it is durable.

        ``on_assigned`` runs under the lock right after the lsn is taken, so whatever it
        records (the mirror) is ordered exactly like the journal.
        """
        with self._cond:
            if self._closed:
                raise StoreError("the store is closed; no more changes can be stored")
            self._raise_if_failed()
            lsn = self._next_lsn
            self._next_lsn += 1
            self._pending.append(frame(lsn, body))
            on_assigned()
            while self._durable_lsn < lsn:
                self._raise_if_failed()
                if self._leading:
                    self._cond.wait()
                else:
                    self._lead()
        return lsn

    def _lead(self) -> None:
        """Write everything queued so far. Called and returns with the lock held."""
        self._leading = True
        batch, self._pending = self._pending, []
        upto = self._next_lsn - 1
        self._cond.release()
        failure: BaseException | None = None
        try:
            self._writer.write(b"".join(batch), upto)
        except BaseException as exc:  # every waiter must learn of it, whatever it is
            failure = exc
        finally:
            self._cond.acquire()
        self._leading = False
        if failure is None:
            self._durable_lsn = upto
            self.commits += 1
        else:
            # Lines may be half on disk; later lines must not follow them. The in-memory
            # state now runs ahead of the journal, so the store refuses all further work.
            self._failure = failure
        self._cond.notify_all()
        if failure is not None:
            raise StoreError(f"journal write failed: {failure}") from failure

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise StoreError(
                f"the journal failed earlier ({self._failure}); the store accepts no more "
                "changes: restart the master to recover from the files on disk"
            ) from self._failure

    def locked(self, fn: Callable[[int], T]) -> T:
        """Run ``fn(last assigned lsn)`` with appends paused: for consistent snapshots."""
        with self._cond:
            return fn(self._next_lsn - 1)

    def abandon(self) -> None:
        """After a failure: refuse everything from now on, without waiting for anything."""
        with self._cond:
            self._closed = True
            self._pending = []
            self._cond.notify_all()

    def close(self) -> None:
        """Refuse new commits and wait for the batch being written, if any."""
        with self._cond:
            self._closed = True
            while self._leading or (self._pending and self._failure is None):
                self._cond.wait()
