"""How the master's core hands changes to durable storage without holding its lock during fsync.

enqueue() is called under the master lock, so changes reach the journal in the order they were
applied; wait() is called after the lock is released, so concurrent operations share one fsync.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from cloudq.core.model import REQUEST_DEFAULTS, STATE_DEFAULTS, Task, without_defaults
from cloudq.errors import StoreError
from cloudq.store import Encoded, dumps

log = logging.getLogger("cloudq.master")


def encode_task(task: Task) -> Encoded:
    """The task as the store keeps it, without the fields at their defaults.

    Its request half never changes after submission, so while the task is on a worker (where
    it moves often: assigned, running, ended) that half's JSON is kept on it and a change
    re-encodes only the bookkeeping. A task at rest (waiting, queued, ended) gives that memory
    back: there may be millions of them, and they move seldom. Both halves always hold a
    field, so the join is valid JSON."""
    request = task.request_json or dumps(without_defaults(task.request_dict(), REQUEST_DEFAULTS))
    task.request_json = request if task.state.is_active else None
    state = dumps(without_defaults(task.state_dict(), STATE_DEFAULTS))
    return Encoded(task.id, request[:-1] + "," + state[1:])


CommitHook = Callable[[float, int], None]  # (seconds one group commit took, changes it wrote)


class Journal(Protocol):
    on_commit: list[CommitHook]  # called after each group commit; metrics hang here

    def enqueue(self, changes: list[tuple]) -> int:
        """Queues changes in order; returns a ticket that wait() accepts."""

    def wait(self, ticket: int) -> None:
        """Returns once every change up to `ticket` is durable."""

    def last_ticket(self) -> int:
        """The newest ticket handed out (waiting on it covers everything enqueued so far)."""

    def stats(self) -> dict[str, Any]:
        """Figures for `status`: what is on disk and when it was last checkpointed."""

    def check_writable(self) -> None:
        """Raises StoreError when a change could not be stored now (a full disk)."""

    def reload(self) -> Any:
        """What is durable (records, events, meta): the state a failed write rolls back to."""


class NullJournal:
    """Keeps nothing: for unit tests of the core and for benchmarks of placement alone."""

    def __init__(self) -> None:
        self.changes = 0
        self.on_commit: list[CommitHook] = []  # nothing is committed: never called

    def enqueue(self, changes: list[tuple]) -> int:
        self.changes += len(changes)
        return self.changes

    def wait(self, ticket: int) -> None:
        return None

    def last_ticket(self) -> int:
        return self.changes

    def stats(self) -> dict[str, Any]:
        return {}

    def check_writable(self) -> None:
        return None

    def reload(self) -> Any:
        raise StoreError("nothing is stored: there is no state to go back to")


class StoreJournal:
    """Group commit on top of cloudq.store.Store.

    enqueue() only buffers (it runs under the master lock, so the buffer is in apply order).
    The first caller of wait() whose ticket is not yet durable becomes the writer: it takes
    everything buffered so far, appends it to the store in one call (one fsync), and wakes the
    others; callers that arrived meanwhile are covered by that write or lead the next one.

    A failed write (a full disk) fails every ticket not yet durable, and the journal refuses
    new changes (`check_writable`) until the master has rolled its memory back to the disk and
    called `resume()`; a thread probes the disk meanwhile and asks for that rollback once there
    is room again (`on_room`, set by the master).
    """

    def __init__(self, store: Any, probe_every_s: float = 1.0) -> None:
        self.store = store
        self.probe_every_s = probe_every_s
        self.on_failure: Any = None  # the master's rollback to the disk, set by the master
        self._cv = threading.Condition()
        self._buffer: list[tuple] = []
        self._issued = 0
        self._durable = 0
        self._writing = False
        self._failure: BaseException | None = None
        self._lost: list[tuple[int, int]] = []  # (after, upto]: tickets a failed write took down
        self.writes = 0
        self.failures = 0
        self.on_commit: list[CommitHook] = []
        # Each batch of changes once it is durable, in commit order (the audit log hangs here).
        self.on_durable: list[Callable[[list[tuple]], None]] = []

    def enqueue(self, changes: list[tuple]) -> int:
        with self._cv:
            self._buffer.extend(changes)
            self._issued += 1
            return self._issued

    def last_ticket(self) -> int:
        return self._issued

    def check_writable(self) -> None:
        """Raises StoreError while the disk refused the last write: called before a change is
        applied, so memory never runs ahead of the disk again."""
        failure = self._failure
        if failure is not None:
            raise StoreError(f"{_refusal(failure)}; nothing was changed. Reads work; writes "
                             f"resume by themselves when the store {_remedy(failure)}")

    def stats(self) -> dict[str, Any]:
        stats = self.store.stats()
        out = {key: stats.get(key) for key in (
            "journal_bytes", "journal_segments", "changes_since_checkpoint", "checkpoints")}
        at = stats.get("last_checkpoint_at")
        out["last_checkpoint_age_s"] = round(time.time() - at, 1) if at else None
        out["load_s"] = round(stats["load_s"], 3) if stats.get("load_s") is not None else None
        out["write_failures"] = self.failures
        out["refusing_writes"] = _reason(self._failure) if self._failure is not None else None
        return out

    def wait(self, ticket: int) -> None:
        with self._cv:
            while self._durable < ticket or self._was_lost(ticket):
                if self._failure is not None or self._was_lost(ticket):
                    raise StoreError(f"{_refusal(self._failure)}; this change was not stored "
                                     f"and has been undone")
                if self._writing:
                    self._cv.wait()
                    continue
                batch, upto = self._buffer, self._issued
                self._buffer, self._writing = [], True
                self._cv.release()
                failure: BaseException | None = None
                took = None
                try:
                    if batch:
                        started = time.perf_counter()
                        self.store.append(batch)
                        took = time.perf_counter() - started
                        self.writes += 1
                except BaseException as err:  # noqa: BLE001 - every waiter must learn of it
                    failure = err
                finally:
                    self._cv.acquire()
                    self._writing = False
                    self._cv.notify_all()
                if failure is not None:
                    self._failed(failure, upto)
                    continue
                self._durable = upto
                if took is not None:
                    self._committed(took, batch)

    def _committed(self, seconds: float, batch: list[tuple]) -> None:
        """Tells the on_commit and on_durable hooks (under the journal's lock: one at a time,
        in commit order). A hook that fails is logged: the commit itself is durable and stays
        so."""
        calls = [(hook, (seconds, len(batch))) for hook in self.on_commit]
        calls += [(hook, (batch,)) for hook in self.on_durable]
        for hook, args in calls:
            try:
                hook(*args)  # type: ignore[operator]
            except Exception:  # noqa: BLE001 - a hook must never fail a commit
                log.exception("a commit hook failed")

    def _was_lost(self, ticket: int) -> bool:
        return any(after < ticket <= upto for after, upto in self._lost)

    def _failed(self, failure: BaseException, upto: int) -> None:
        """Called with the lock held. Memory is now ahead of the disk: nothing more is written
        until the master has rolled back (resume)."""
        self.failures += 1
        first = self._failure is None
        self._failure = failure
        self._buffer = []
        self._lost.append((self._durable, max(upto, self._issued)))
        log.error("journal write failed: %s; refusing changes until the store takes writes again",
                  _reason(failure))
        if first:
            threading.Thread(target=self._await_room, name="store-probe", daemon=True).start()

    def _await_room(self) -> None:
        """Has the master roll its memory back to what is on disk (at once: nothing it shows
        may be more than the disk holds), then probes the disk until a write of some size
        succeeds, and lets changes in again."""
        rolled_back = self.on_failure is None
        while True:
            if not rolled_back:
                try:
                    self.on_failure()
                    rolled_back = True
                    log.warning("memory rolled back to what the disk holds; waiting for room")
                except Exception:  # noqa: BLE001 - try again at the next probe
                    log.exception("rolling back to the disk failed; trying again")
            time.sleep(self.probe_every_s)
            if not rolled_back:
                continue
            try:
                self.store.probe()
            except (OSError, StoreError) as err:
                log.debug("still refusing: %s", err)
                continue
            self.resume()
            log.warning("the store takes writes again: writes resume")
            return

    def reload(self) -> Any:
        """What is on disk (records, events, meta), with a fresh writer to go on with."""
        return self.store.reload()

    def resume(self) -> None:
        """The master has rolled back to the disk (under its lock): every ticket handed out
        so far is lost, and new changes may be written again."""
        with self._cv:
            self._buffer = []
            self._lost.append((self._durable, self._issued))
            self._durable = self._issued
            self._lost = self._lost[-64:]  # late waiters of older failures are long gone
            self._failure = None
            self._cv.notify_all()


def _refusal(failure: BaseException | None) -> str:
    """`store full: ...` for a disk without room; `store unavailable: ...` otherwise (a
    database that does not answer)."""
    cause = failure.__cause__ if failure is not None and failure.__cause__ else failure
    kind = "store full" if isinstance(cause, OSError) else "store unavailable"
    return f"{kind}: {_reason(failure)}"


def _remedy(failure: BaseException | None) -> str:
    cause = failure.__cause__ if failure is not None and failure.__cause__ else failure
    return "has room again" if isinstance(cause, OSError) else "answers again"


def _reason(failure: BaseException | None) -> str:
    cause = failure.__cause__ if failure is not None and failure.__cause__ else failure
    if isinstance(cause, OSError):
        return cause.strerror or str(cause)
    return str(failure)  # the store's own words (a database's error is its cause)
