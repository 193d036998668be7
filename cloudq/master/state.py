"""The master's state and the primitives every operation is built from.

Everything the master knows lives in a MasterState: tasks, workers and their ledgers, the
backlog, locks and the audit log. Its helpers apply one move (`_move`, the only writer of the
bookkeeping a move carries: the backlog, bookings and locks, finished_at; see
transitions.EFFECTS), run a placement pass and hand the operation's changes to the journal
(`_flush`).
The operations themselves are in core.py (submit, cancel, operator controls), delivery.py
(workers: registration, instructions, reports, leases) and views.py (what operators read).

Concurrency: one lock guards the state. A change is applied and enqueued to the journal under
the lock, in order; the caller then waits for it to be durable *outside* the lock, so many
callers share one fsync (group commit) and nothing is acknowledged before it is on disk.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from cloudq import defaults
from cloudq.core import retry
from cloudq.core.ledger import Booking, Ledger, LockTable
from cloudq.core.model import Task, TaskState
from cloudq.core.scheduler import Backlog, Scheduler
from cloudq.core.transitions import EFFECTS, Event, EventLog, move
from cloudq.core.waiting import WaitingLine
from cloudq.errors import NotFoundError, NotLeaderError
from cloudq.master.journal import Journal, NullJournal, encode_task
from cloudq.master.waits import Waits
from cloudq.master.workers import WorkerRecord
from cloudq.specs import capabilities_of

log = logging.getLogger("cloudq.master")

S = TaskState
_RETRYING = S.RETRYING  # module constants: _move runs for every change of every task
_QUEUED = S.QUEUED
_RUNNING_STATE = S.RUNNING


@dataclass
class MasterConfig:
    processor_interval_s: float = defaults.PROCESSOR_INTERVAL_S
    lease_s: float = defaults.LEASE_S
    heartbeat_s: float = defaults.HEARTBEAT_S
    max_queued: int = defaults.MAX_QUEUED
    strategy: str = defaults.PLACEMENT_STRATEGY
    aging_s: float = defaults.AGING_S
    quarantine_after: int = defaults.QUARANTINE_AFTER
    event_retention: int = defaults.EVENT_RETENTION
    keep_finished_s: float = defaults.KEEP_FINISHED_S
    max_workers: int = defaults.MAX_WORKERS
    forget_offline_s: float = defaults.FORGET_OFFLINE_S
    start_deadline_s: float = defaults.START_DEADLINE_S
    # A transcode whose progress has not moved this long is killed and retried (0: never).
    stall_timeout_s: float = defaults.STALL_TIMEOUT_S
    max_run_s: dict[str, float] = field(default_factory=dict)  # by queue class: run time at most
    unschedulable_ttl_s: float = 0.0  # a queued task no worker could ever run fails after (0: never)


@dataclass
class Hooks:
    """Called after a change is applied; metrics and logging hang here, the core imports neither."""

    on_event: list[Callable[[Event], None]] = field(default_factory=list)
    on_placement_pass: list[Callable[[float, int], None]] = field(default_factory=list)
    # A task going back to wait out a back-off, with why in one word (RETRY_CAUSES).
    on_retry: list[Callable[[Task, str], None]] = field(default_factory=list)


# Why a task is retried, as on_retry tells it: its run failed, ran past its timeout, or was
# cancelled by its worker; its worker failed it (a worker fault), was lost (lease, restart),
# or never started it.
RETRY_CAUSES = ("failed", "timed_out", "cancelled", "worker_fault", "worker_lost", "not_started",
                "stalled")


class MasterState:
    def __init__(
        self,
        journal: Journal | None = None,
        config: MasterConfig | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config or MasterConfig()
        self.journal = journal or NullJournal()
        self.clock = clock
        self.rng = rng or random.Random()
        self.hooks = Hooks()
        self._lock = threading.RLock()
        self._ended = threading.Condition(self._lock)  # a task reached a final state (wait)
        self.started_at = clock()
        self.closed = False  # this master stepped down: its waiting calls end, refused
        # Masters sharing a store: role, epoch and the masters seen, for `status` (Seat.describe).
        self.leadership: Callable[[], dict[str, Any]] | None = None
        self._fresh()

    def close(self) -> None:
        """This master no longer leads: long-polls waiting on it (fetch, wait) end now with
        NotLeaderError, so their callers go to the new leader instead of waiting them out."""
        with self._lock:
            self.closed = True
            self._ended.notify_all()
            for wake in self._wakeups.values():
                wake.notify_all()

    def _refuse_if_closed(self) -> None:
        if self.closed:
            raise NotLeaderError("this master stepped down; ask the leader")

    def _fresh(self) -> None:
        """Empty state: at start, and before a rollback to what the disk holds."""
        self.tasks: dict[str, Task] = {}
        self.workers: dict[str, WorkerRecord] = {}
        self.backlog = Backlog()
        self.locks = LockTable()
        self.events = EventLog(self.config.event_retention)
        self.scheduler = Scheduler(self.config.strategy, self.config.aging_s)
        self._wakeups: dict[str, threading.Condition] = {}
        self._last_seq = 0  # task ids are t<seq>, never reused: kept in the store's meta too
        self._dirty: dict[str, Task] = {}  # tasks changed by the operation in progress
        self._pending: list[tuple] = []  # its events, in order
        self._told: dict[str, WorkerRecord] = {}  # workers given instructions by that operation
        self._capabilities: dict[tuple[str, bytes], frozenset[str]] = {}  # by kind and spec
        self._fleet = 0  # bumped when a worker registers or is forgotten: what fits may change
        self._never_fits: dict[Any, tuple[int, str | None]] = {}  # by shape: (fleet, answer)
        self._counts: Counter[TaskState] = Counter()
        self._retrying: set[str] = set()  # tasks waiting out a back-off
        self._expiring: set[str] = set()  # queued tasks with a time-to-live
        self.waiting = WaitingLine()  # the queued tasks by class and priority, oldest wait first
        self._timer_failed: set[str] = set()  # tasks whose deadline check raised: left out
        self._blocked_told: dict[str, tuple[str, tuple[str, ...]]] = {}  # lock waits in events
        self.waits = Waits(self.tasks)  # pending tasks and those they wait for
        self._progressed: dict[str, float] = {}  # running task id -> when its progress last moved
        self._ended_waits: list[Task] = []  # tasks just ended whose dependents are to be looked at
        self._resolving = False
        self._finished: deque[tuple[float, str]] = deque()  # (when, id), oldest first: pruning
        self.live_logs: dict[str, str] = {}  # output tails of running tasks; memory only

    # ------------------------------------------------------------------ loading
    def restore(self, records: Iterable[dict[str, Any]], events: Iterable[dict[str, Any]],
                meta: dict[str, Any] | None = None) -> None:
        """Rebuilds the state from the store. Tasks that were on workers stay theirs: the workers
        re-adopt them on reconnect, or the lease runs out and they are retried."""
        now = self.clock()
        top = int((meta or {}).get("last_seq") or 0)  # pruned tasks may have held the top ids
        finished: list[tuple[float, str]] = []
        queued: list[Task] = []
        with self._lock:
            for event in events:
                self.events.add(Event.from_dict(event))
            for raw in records:
                task = Task.from_dict(raw)
                self.tasks[task.id] = task
                self._counts[task.state] += 1
                if task.state.is_final:
                    finished.append((task.finished_at or task.updated_at, task.id))
                top = max(top, task.seq)
                if task.state is S.QUEUED:
                    queued.append(task)
                elif task.state is S.RETRYING:
                    self._retrying.add(task.id)
                elif task.state.is_active or awaiting_kill(task):
                    self.locks.acquire(task.id, task.locks)
                    record = self._worker(task.worker or "?")
                    record.last_seen = now  # give it one lease to come back
                    record.ledger.bookings.setdefault(task.id, Booking(0.0, 0.0, 0.0, ()))
            self._enqueue_all(sorted(queued, key=lambda t: t.queued_at or 0.0))  # oldest wait first
            for task in self.tasks.values():
                if task.state is S.PENDING:  # waits for others: found again when they end
                    self.waits.park(task)
            self._last_seq = top
            self._finished.extend(sorted(finished))
            for name, flags in ((meta or {}).get(_WORKER_FLAGS) or {}).items():
                record = self._worker(name)
                record.quarantined = bool(flags.get("quarantined"))
                record.draining = bool(flags.get("draining"))
                record.quarantine_reason = str(flags.get("reason") or "")

    def roll_back(self) -> None:
        """After a failed journal write: forget everything and take the state on disk, so
        nothing shown was not stored. Under the lock, so no operation sits between its change
        and its journalling. Workers lose their sessions (a fetch waiting now returns
        nothing); they register again with what they run and are re-adopted, as after a
        master restart."""
        with self._lock:
            stored = self.journal.reload()
            for name, record in self.workers.items():
                record.connected = False
                record.session += 1
                self._wakeups[name].notify_all()
            self._fresh()
            self.restore(consume(stored.records), stored.events, stored.meta)

    def _lost(self, task: Task, now: float, why: str) -> None:
        task.last_error = why
        self._retry_or_bury(task, now, why, "worker_lost")

    def _retry_or_bury(self, task: Task, now: float, why: str, cause: str) -> None:
        """`cause`: one of RETRY_CAUSES, told to the on_retry hooks."""
        if task.worker and task.worker not in task.tried_workers:
            task.tried_workers = (*task.tried_workers, task.worker)
        if not retry.retries_left(task):
            self._move(task, S.DEAD, now, f"{why}; no retries left after {task.attempt} attempts")
            return
        task.not_before = now + retry.backoff_s(task, self.rng)
        self._move(task, S.RETRYING, now, why)
        for hook in self.hooks.on_retry:
            hook(task, cause)
        if task.not_before <= now:
            self._move(task, S.QUEUED, now)

    # ------------------------------------------------------------------ placement
    @contextlib.contextmanager
    def _change(self) -> Iterator[float]:
        """One operation: applied under the lock, its changes queued for the journal in order
        (even if it fails part way: what changed in memory must reach the disk), and it returns
        only once they are durable. Yields the operation's time."""
        with self._lock:
            self.journal.check_writable()  # a full disk: refused before anything changes
            try:
                yield self.clock()
            finally:
                ticket = self._flush()
        self.journal.wait(ticket)

    def place(self) -> int:
        with self._change() as now:
            placed = self._place(now)
        return placed

    def _place(self, now: float, count_attempts: bool = False) -> int:
        if not self.backlog:
            return 0
        started = time.perf_counter()
        ledgers = {name: w.ledger for name, w in self.workers.items() if w.schedulable}
        placements = self.scheduler.place(self.backlog, self.tasks, ledgers, self.locks, now,
                                          self._absent)
        for placement in placements:
            task = self.tasks[placement.task_id]
            task.attempt += 1
            task.worker = placement.worker
            task.reason = None
            task.progress = None
            self._move(task, S.ASSIGNED, now, f"placed on {placement.worker}")
            self._tell(placement.worker, {"assign": self._assignment(task, placement.gpu_indices)})
        if self.scheduler.lock_blocked:
            self._tell_blocked(now)
        if log.isEnabledFor(logging.DEBUG):
            self._log_pass(placements, ledgers, time.perf_counter() - started)
        if count_attempts:
            self._count_blocked(now)
        for hook in self.hooks.on_placement_pass:
            hook(time.perf_counter() - started, len(placements))
        return len(placements)

    def _tell_blocked(self, now: float) -> None:
        """An event when a task at the head of the queue starts waiting for a lock, or for
        other holders of it: which lock, held by which tasks on which workers. Once per wait,
        not once per pass."""
        for task_id, (lock, holders) in self.scheduler.lock_blocked.items():
            if self._blocked_told.get(task_id) == (lock, holders):
                continue
            self._blocked_told[task_id] = (lock, holders)
            who = ", ".join(f"{h} on {self.tasks[h].worker}" if h in self.tasks and self.tasks[h].worker
                            else h for h in holders)
            self._note(self.tasks[task_id], now, f"blocked: lock {lock} is held by {who}")

    def _log_pass(self, placements: list[Any], ledgers: dict[str, Any], took: float) -> None:
        """At debug level, one pass in full: what waits, by shape and why; the workers; what
        was placed where. Built only when debug logging is on."""
        shapes = "; ".join(f"{count} x {shape}: {reason}" for shape, count, reason in
                           self.backlog.describe()[:20]) or "none"
        workers = ", ".join(f"{w.name} {w.status.value}" for w in self.workers.values()) or "none"
        placed = ", ".join(f"{p.task_id}->{p.worker}" for p in placements[:50]) or "nothing"
        log.debug("placement pass in %.2f ms: placed %s; %d queued, by shape: %s; "
                  "workers: %s (%d schedulable)", took * 1000, placed, len(self.backlog), shapes,
                  workers, len(ledgers))

    def _worker_event(self, name: str, what: str, reason: str, now: float) -> None:
        """A worker's own change (joined, lost, quarantined, draining, stopping, released,
        forgotten): an event with no task, journalled and shown by `events --worker` like a
        task's."""
        event = Event("", "", what, reason, name, 0, now)
        self.events.add(event)
        self._pending.append(("event", event.to_dict()))
        log.info("worker %s %s: %s", name, what, reason)

    def _count_blocked(self, now: float) -> None:
        """Only the head of each blocked shape is touched: the rest wait behind it for the same reason."""
        for _, shape in self.backlog.heads():
            head = self.tasks[self.backlog.head_of(shape)]  # type: ignore[index]
            head.placement_attempts += 1
            head.last_error = self.backlog.reasons.get(shape)

    def _assignment(self, task: Task, gpu_indices: tuple[int, ...]) -> dict[str, Any]:
        return {
            "id": task.id, "attempt": task.attempt, "kind": task.kind, "spec": task.spec,
            "resources": task.resources.to_dict(), "timeout_s": self.run_limit(task),
            "gpu_indices": list(gpu_indices), "name": task.name,
        }

    def run_limit(self, task: Task) -> float | None:
        """How long it may run: its own timeout, else its queue class's --max-run."""
        return task.timeout_s or self.config.max_run_s.get(task.queue.value)

    def stall_limit(self, task: Task) -> float | None:
        """How long its progress may stand still: transcodes only (--stall-timeout)."""
        if task.kind != "ffmpeg" or self.config.stall_timeout_s <= 0:
            return None
        return self.config.stall_timeout_s

    def _absent(self, name: str) -> str:
        """Why a task's target worker takes nothing now, naming it: the reason the task waits."""
        record = self.workers.get(name)
        if record is None or not record.registered_at:
            return f"{name} has not registered"
        return f"{name} is {record.unavailable_because()}"

    # ------------------------------------------------------------------ internals
    def _worker(self, name: str) -> WorkerRecord:
        record = self.workers.get(name)
        if record is None:
            record = self.workers[name] = WorkerRecord(name, ledger=Ledger(name, 0.0, 0.0, 0.0))
            self._wakeups[name] = threading.Condition(self._lock)
        return record

    def _connected(self, name: str, session: int | None = None) -> WorkerRecord:
        record = self.workers.get(name)
        if record is None or not record.connected:
            raise NotFoundError(f"worker {name!r} is not registered; register first")
        if session is not None and session != record.session:
            raise NotFoundError(f"worker {name!r} session {session} is stale; register again")
        return record

    def _required(self, task: Task) -> frozenset[str]:
        key = (task.kind, orjson.dumps(task.spec, option=orjson.OPT_SORT_KEYS))
        caps = self._capabilities.get(key)
        if caps is None:
            # task.spec was normalised by validate_spec on submit: no need to check it again
            caps = self._capabilities[key] = capabilities_of(task.kind, task.spec)
        return caps

    def _enqueue_all(self, tasks: list[Task]) -> None:
        """_enqueue for the tasks a restart finds queued, given oldest wait first: one heap
        build per shape instead of a push per task. Each keeps its queued_at."""
        now = self.clock()
        self.backlog.add_many((task, self._required(task)) for task in tasks)
        for task in tasks:
            self._mark_queued(task, task.queued_at or now)

    def _enqueue(self, task: Task, since: float | None = None) -> None:
        self.backlog.add(task, self._required(task))
        self._mark_queued(task, since or self.clock())

    def _mark_queued(self, task: Task, since: float) -> None:
        """A task just put in the backlog: waiting since `since` (kept across a restart: TTL
        and aging go on), on no worker and past any back-off, in the waiting line."""
        task.queued_at = since
        task.worker = None
        task.not_before = None
        self.waiting.enter(task, since)
        if task.ttl_s:
            self._expiring.add(task.id)

    def _release(self, task: Task) -> None:
        record = self.workers.get(task.worker or "")
        if record is not None:
            record.ledger.release(task.id)
        self.locks.release(task.id, task.locks)

    def _stopped(self, task: Task, now: float) -> None:
        """A task cancelled on its worker is known to have stopped there (the worker said so,
        came back without it, or lost its lease): what it held is freed and it is finished.
        Not a move: it was cancelled when the operator asked."""
        self._release(task)
        if task.finished_at is None:
            self._stamp_finished(task, now)
        self._dirty[task.id] = task

    def _stamp_finished(self, task: Task, now: float) -> None:
        task.finished_at = now
        self._finished.append((now, task.id))

    def _tell(self, worker: str | None, instruction: dict[str, Any]) -> None:
        record = self.workers.get(worker or "")
        if record is None or not record.connected:
            return
        record.outbox.append(instruction)
        self._told[record.name] = record  # its outbox_ticket is set when the operation is flushed
        self._wakeups[record.name].notify_all()

    def _move(self, task: Task, dst: TaskState, now: float, reason: str | None = None) -> None:
        src = task.state
        event = move(task, dst, now=now, reason=reason, history=self.events.story)
        effects = EFFECTS[(src, dst)]
        if effects.dequeue:
            self.backlog.remove(task.id)  # a placed task was already popped: a cheap miss
        if src is _RUNNING_STATE:
            self._progressed.pop(task.id, None)
        if src is _QUEUED:
            self.waiting.leave(task)
            self._blocked_told.pop(task.id, None)
        if effects.release:
            self._release(task)
        if effects.enqueue:
            task.finished_at = None  # an operator's retry: the task is not finished any more
            self._enqueue(task, since=now)
        elif effects.finish:
            self._stamp_finished(task, now)
        counts = self._counts
        counts[src] -= 1
        counts[dst] += 1
        if dst is _RETRYING:
            self._retrying.add(task.id)
        elif src is _RETRYING:
            self._retrying.discard(task.id)
        self.events.add(event)
        self._dirty[task.id] = task  # serialised once at flush, however often it moved
        self._pending.append(("event", event.to_dict()))
        if self.hooks.on_event:
            for hook in self.hooks.on_event:
                hook(event)
        if dst.is_final:
            self._ended.notify_all()
        if dst.is_final and task.id in self.waits:
            self._ended_waits.append(task)
            if not self._resolving:  # a cascade is resolved in a loop, not by recursion
                self._resolve_dependents(now)

    # ------------------------------------------------------------------ dependencies
    def _resolve_dependents(self, now: float) -> None:
        """Tasks waiting on those that just ended: queued once nothing they wait for is left,
        cancelled when one they needed completed did not. Cancelling one may end the wait
        of others: they are taken in turn."""
        self._resolving = True
        try:
            while self._ended_waits:
                ended = self._ended_waits.pop()
                for waiting_id in self.waits.take(ended.id):
                    waiting = self.tasks.get(waiting_id)
                    if waiting is None or waiting.state is not S.PENDING:
                        continue
                    broken = self.waits.broken(waiting)
                    if broken:
                        waiting.last_error = broken
                        self.waits.forget(waiting)
                        self._move(waiting, S.CANCELLED, now, broken)
                    elif not self.waits.unmet(waiting):
                        self._move(waiting, S.QUEUED, now, f"dependencies ended: {ended.id} "
                                                           f"{ended.state.value}")
        finally:
            self._resolving = False

    def _note(self, task: Task, now: float, reason: str) -> None:
        """An operator's change that is not a move (a new priority): recorded and journalled as
        an event that keeps the state, so `events` and `show` tell it. Not a move, so the
        on_event hooks (which count moves) do not see it."""
        state = task.state
        event = Event(task.id, state, state, reason, task.worker, task.attempt, now)
        task.updated_at = now
        self.events.add(event)
        self._dirty[task.id] = task
        self._pending.append(("event", event.to_dict()))

    def _flags_changed(self) -> None:
        """Quarantine and drain are operator decisions: journalled, so a restart keeps them."""
        flagged = {name: {"quarantined": w.quarantined, "draining": w.draining,
                          "reason": w.quarantine_reason}
                   for name, w in sorted(self.workers.items()) if w.quarantined or w.draining}
        self._pending.append(("meta", _WORKER_FLAGS, flagged))

    def _prune(self, now: float) -> int:
        """Forgets tasks that finished more than keep_finished_s ago, oldest first, so a
        long-lived master does not grow without bound. O(tasks pruned)."""
        keep = self.config.keep_finished_s
        pruned = 0
        while keep > 0 and self._finished and self._finished[0][0] < now - keep:
            _, task_id = self._finished.popleft()
            task = self.tasks.get(task_id)
            if task is None or not task.state.is_final or awaiting_kill(task):
                continue  # retried since, already gone, or its worker has not confirmed the kill
            if task.finished_at is not None and task.finished_at >= now - keep:
                self._finished.append((task.finished_at, task_id))  # finished again later
                continue
            del self.tasks[task_id]
            self._counts[task.state] -= 1
            self.events.forget(task_id)
            self.live_logs.pop(task_id, None)
            self._pending.append(("del", task_id))
            pruned += 1
        if pruned:
            self._pending.append(("meta", "last_seq", self._last_seq))
        return pruned

    def _flush(self) -> int:
        """Hands the operation's changes to the journal, in order; returns the ticket to wait on."""
        if self._dirty or self._pending:
            changes: list[tuple] = [("put", encode_task(task)) for task in self._dirty.values()]
            changes += self._pending
            ticket = self.journal.enqueue(changes)
        else:
            ticket = self.journal.last_ticket()
        for record in self._told.values():
            record.outbox_ticket = ticket
        self._told = {}
        self._dirty = {}
        self._pending = []
        return ticket


_WORKER_FLAGS = "worker_flags"  # store meta: {worker: {"quarantined", "draining", "reason"}}


def awaiting_kill(task: Task) -> bool:
    """Cancelled while on a worker, and the worker has not yet confirmed it stopped."""
    return task.state is S.CANCELLED and bool(task.worker) and task.finished_at is None


def consume(records: dict[str, dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The loaded records for restore(), each taken out of `records` as it is handed over, so
    its memory is freed and reused for the task built from it: a restart then needs about the
    state's size once, not the parsed records and the state side by side."""
    while records:
        yield records.popitem()[1]
