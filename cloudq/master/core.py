"""The master's state: every task, every worker, every reservation, and the rules that change
them. Network, threads and disk stay outside: callers (the RPC service, the shell, the
processor) call these methods, and every change is handed to a Journal before it is
acknowledged.

Concurrency: one lock guards the state. A change is applied and enqueued to the journal under
the lock, in order; the caller then waits for it to be durable *outside* the lock, so many
callers share one fsync (group commit) and nothing is acknowledged before it is on disk.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from cloudq import defaults, retry
from cloudq.errors import NotFoundError, QueueFullError, ValidationError
from cloudq.ledger import Booking, Ledger, LockTable
from cloudq.master.journal import Journal, NullJournal
from cloudq.master.workers import WorkerRecord, WorkerStatus, parse_registration
from cloudq.model import Task, TaskState, new_task
from cloudq.scheduler import Backlog, Scheduler, explain, summarise
from cloudq.specs import required_capabilities
from cloudq.transitions import Event, EventLog, move

S = TaskState


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


@dataclass
class Hooks:
    """Called after a change is applied; metrics and logging hang here, the core imports neither."""

    on_event: list[Callable[[Event], None]] = field(default_factory=list)
    on_placement_pass: list[Callable[[float, int], None]] = field(default_factory=list)


class Master:
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
        self.tasks: dict[str, Task] = {}
        self.workers: dict[str, WorkerRecord] = {}
        self.backlog = Backlog()
        self.locks = LockTable()
        self.events = EventLog(self.config.event_retention)
        self.scheduler = Scheduler(self.config.strategy, self.config.aging_s)
        self._lock = threading.RLock()
        self._wakeups: dict[str, threading.Condition] = {}
        self._seq = itertools.count(1)
        self._dirty: dict[str, Task] = {}  # tasks changed by the operation in progress
        self._pending: list[tuple] = []  # its events, in order
        self._told: list[dict[str, Any]] = []  # instructions of that operation, held until durable
        self._capabilities: dict[str, frozenset[str]] = {}
        self._counts: Counter[TaskState] = Counter()
        self._retrying: set[str] = set()  # tasks waiting out a back-off
        self._expiring: set[str] = set()  # queued tasks with a time-to-live
        self.live_logs: dict[str, str] = {}  # output tails of running tasks; memory only
        self.started_at = clock()

    # ------------------------------------------------------------------ loading
    def restore(self, records: Iterable[dict[str, Any]], events: Iterable[dict[str, Any]]) -> None:
        """Rebuilds the state from the store. Tasks that were on workers stay theirs: the workers
        re-adopt them on reconnect, or the lease runs out and they are retried."""
        now = self.clock()
        top = 0
        with self._lock:
            for event in events:
                self.events.add(Event.from_dict(event))
            for raw in records:
                task = Task.from_dict(raw)
                self.tasks[task.id] = task
                self._counts[task.state] += 1
                top = max(top, task.seq)
                if task.state is S.QUEUED:
                    self._enqueue(task, since=task.queued_at)
                elif task.state is S.RETRYING:
                    self._retrying.add(task.id)
                elif task.state.is_active or _awaiting_kill(task):
                    self.locks.acquire(task.id, task.locks)
                    record = self._worker(task.worker or "?")
                    record.last_seen = now  # give it one lease to come back
                    record.ledger.bookings.setdefault(task.id, Booking(0.0, 0.0, 0.0, ()))
            self._seq = itertools.count(top + 1)

    # ------------------------------------------------------------------ submitting
    def submit(self, requests: list[Any]) -> list[Task]:
        """Validates every request first: a batch is accepted whole or refused whole."""
        if not isinstance(requests, list) or not requests:
            raise ValidationError("submit needs a non-empty list of tasks")
        with self._lock:
            if len(self.backlog) + len(requests) > self.config.max_queued:
                raise QueueFullError(
                    f"queue is full: {len(self.backlog)} queued, limit {self.config.max_queued}; "
                    f"refused {len(requests)} new task(s)"
                )
            now = self.clock()
            tasks = []
            for index, raw in enumerate(requests):
                seq = next(self._seq)
                try:
                    tasks.append(new_task(raw, task_id=f"t{seq}", seq=seq, now=now))
                except ValidationError as err:
                    prefix = f"task {index + 1} of {len(requests)}: " if len(requests) > 1 else ""
                    raise ValidationError(f"{prefix}{err}") from None
            for task in tasks:
                self.tasks[task.id] = task
                self._counts[S.PENDING] += 1
                self._move(task, S.QUEUED, now, "submitted")
                self._enqueue(task)
            self._place(now)
            ticket = self._flush()
        self.journal.wait(ticket)
        return tasks

    def cancel(self, task_id: str) -> Task:
        with self._lock:
            task = self.get(task_id)
            now = self.clock()
            if task.state.is_final:
                raise ValidationError(f"task {task_id} is already {task.state.value}")
            if task.state is S.QUEUED:
                self.backlog.remove(task.id)
            if task.state.is_active:
                self._tell(task.worker, {"cancel": task.id, "attempt": task.attempt})
            holds_worker = task.state.is_active
            self._move(task, S.CANCELLED, now, "cancelled by an operator")
            if not holds_worker:  # otherwise finished when the worker confirms the kill
                task.finished_at = now
            ticket = self._flush()
        self.journal.wait(ticket)
        return task

    # ------------------------------------------------------------------ workers
    def register(self, raw: Any, running: list[Any]) -> dict[str, Any]:
        """A worker (re)connects. Tasks it still runs are re-adopted when the master agrees they
        are its current attempt; the rest it is told to stop."""
        info = parse_registration(raw)
        with self._lock:
            now = self.clock()
            record = self._worker(info["name"])
            old_bookings = record.ledger.bookings
            record.host = info["host"]
            record.facts = raw if isinstance(raw, dict) else {}
            record.ledger = Ledger(
                info["name"], info["cpu_cores"], info["mem_gb"], info["storage_gb"],
                info["gpu_mem_gb"], info["max_tasks"], info["labels"], info["capabilities"],
            )
            record.connected, record.last_seen, record.registered_at = True, now, now
            record.session += 1
            record.outbox.clear()
            stop = self._readopt(record, old_bookings, _pairs(running), now)
            self._place(now)
            ticket = self._flush()
        self.journal.wait(ticket)
        return {"session": record.session, "stop": stop, "lease_s": self.config.lease_s,
                "heartbeat_s": self.config.heartbeat_s}

    def _readopt(
        self, record: WorkerRecord, old: dict, running: dict[str, int], now: float
    ) -> list[str]:
        stop = []
        for task_id, attempt in running.items():
            task = self.tasks.get(task_id)
            if task and task.worker == record.name and task.attempt == attempt and (
                task.state.is_active
            ):
                record.ledger.book(task.id, task.resources)
                event = Event(task.id, task.state.value, task.state.value, "re-adopted after reconnect",
                              record.name, attempt, now)
                self.events.add(event)
                self._pending.append(("event", event.to_dict()))
            else:
                stop.append(task_id)
        for task_id in old:
            task = self.tasks.get(task_id)
            if task_id in record.ledger.bookings or task is None:
                continue
            if task.state.is_active and task.worker == record.name:
                self._lost(task, now, f"{record.name} restarted without it")
            elif task.state is S.CANCELLED:
                self._release(task)
        return stop

    def heartbeat(self, name: str, sample: Any) -> None:
        with self._lock:
            record = self._connected(name)
            record.last_seen = self.clock()
            if isinstance(sample, dict):
                record.sample = sample

    def fetch(self, name: str, session: int, wait_s: float) -> list[dict[str, Any]]:
        """Instructions for a worker (assignments, cancels), waiting up to wait_s for some."""
        wait_s = min(max(float(wait_s), 0.0), 30.0)
        with self._lock:
            record = self._connected(name, session)
            wake = self._wakeups[name]
            deadline = time.monotonic() + wait_s
            while not record.outbox and record.session == session and record.connected:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                wake.wait(left)
            record.last_seen = self.clock()
            out = list(record.outbox) if record.session == session else []
            record.outbox.clear()
        if out:
            self.journal.wait(max(item["ticket"] for item in out))  # never act before durable
        return [{k: v for k, v in item.items() if k != "ticket"} for item in out]

    def report(self, name: str, session: int, reports: list[Any]) -> list[str]:
        """Progress and outcomes from a worker. Returns the ids whose report was refused (stale
        attempt, or not this worker's task): the worker drops those."""
        with self._lock:
            record = self._connected(name, session)
            now = self.clock()
            record.last_seen = now
            refused = [r.get("task", "?") for r in reports if not self._apply_report(record, r, now)]
            self._place(now)
            ticket = self._flush()
        self.journal.wait(ticket)
        return refused

    def _apply_report(self, record: WorkerRecord, report: dict[str, Any], now: float) -> bool:
        task = self.tasks.get(report.get("task"))  # type: ignore[arg-type]
        if task is None or task.worker != record.name or task.attempt != report.get("attempt"):
            return False
        if task.state is S.CANCELLED:  # the worker confirms it stopped: free what it held
            if report.get("state") in _OUTCOMES:
                self._release(task)
                task.finished_at = now
                task.result = report.get("result") if isinstance(report.get("result"), dict) else None
                self.live_logs.pop(task.id, None)
                self._dirty[task.id] = task
            return True
        if not task.state.is_active:
            return False
        if task.state is S.ASSIGNED and report.get("state") in ("running", *_OUTCOMES):
            task.started_at = report.get("started_at") or now
            self._move(task, S.RUNNING, now, f"started on {record.name}")
        if isinstance(report.get("progress"), dict):
            task.progress = report["progress"]
        if isinstance(report.get("log_tail"), str):
            self.live_logs[task.id] = report["log_tail"][-_LOG_TAIL_CHARS:]
        outcome = report.get("state")
        if outcome in _OUTCOMES:
            self._finish(record, task, outcome, report.get("result") or {}, now)
        return True

    def _finish(self, record: WorkerRecord, task: Task, outcome: str, result: dict, now: float) -> None:
        task.result = result if isinstance(result, dict) else {}
        self.live_logs.pop(task.id, None)
        task.finished_at = now
        self._release(task)
        if outcome == "completed":
            record.consecutive_failures = 0
            self._move(task, S.COMPLETED, now, f"completed on {record.name}")
            return
        error = str(result.get("error") or outcome)[:2000]
        task.last_error = error
        if outcome == "failed":  # a cancel or a timeout says nothing about the worker's health
            record.consecutive_failures += 1
        if record.consecutive_failures >= self.config.quarantine_after and not record.quarantined:
            record.quarantined = True
        self._retry_or_bury(task, now, f"{outcome} on {record.name}: {error}")

    # ------------------------------------------------------------------ processor
    def tick(self) -> None:
        """The safety net, run every few seconds: timers, queue expiry, a counted placement pass."""
        with self._lock:
            now = self.clock()
            self._timers(now)
            for task_id in list(self._expiring):
                task = self.tasks[task_id]
                if task.state is not S.QUEUED:
                    self._expiring.discard(task_id)
                elif now - (task.queued_at or now) > (task.ttl_s or 0):
                    self._expiring.discard(task_id)
                    self._expire_queued(task, now)
            self._place(now, count_attempts=True)
            ticket = self._flush()
        self.journal.wait(ticket)

    def timers(self) -> None:
        """Cheap deadlines, checked about every second: leases, back-offs, run timeouts. Costs
        O(workers + retrying + running), never O(all tasks)."""
        with self._lock:
            self._timers(self.clock())
            self._place(self.clock())
            ticket = self._flush()
        self.journal.wait(ticket)

    def _timers(self, now: float) -> None:
        for record in list(self.workers.values()):
            silent = now - record.last_seen > self.config.lease_s
            if silent and (record.connected or record.ledger.bookings):
                self._expire(record, now)
        for task_id in list(self._retrying):
            task = self.tasks[task_id]
            if (task.not_before or 0) <= now:
                self._move(task, S.QUEUED, now)
                self._enqueue(task)
        for record in self.workers.values():
            for task_id in list(record.ledger.bookings):
                task = self.tasks.get(task_id)
                if task is not None and task.state is S.RUNNING and _overdue(task, now):
                    self._time_out(task, now)

    def _expire_queued(self, task: Task, now: float) -> None:
        self.backlog.remove(task.id)
        task.last_error = f"expired after waiting {task.ttl_s:g}s in the queue"
        task.finished_at = now
        self._move(task, S.FAILED, now, task.last_error)

    def _time_out(self, task: Task, now: float) -> None:
        self._tell(task.worker, {"cancel": task.id, "attempt": task.attempt})
        task.last_error = f"ran past its timeout of {task.timeout_s:g}s"
        self._release(task)
        self._retry_or_bury(task, now, task.last_error)

    def _expire(self, record: WorkerRecord, now: float) -> None:
        record.connected = False
        self._wakeups[record.name].notify_all()
        for task_id in list(record.ledger.bookings):
            task = self.tasks.get(task_id)
            if task is None:
                record.ledger.release(task_id)
            elif task.state.is_active:
                self._lost(task, now, f"{record.name} missed its lease of {self.config.lease_s:g}s")
            else:
                self._release(task)

    def _lost(self, task: Task, now: float, why: str) -> None:
        task.last_error = why
        self._release(task)
        self._retry_or_bury(task, now, why)

    def _retry_or_bury(self, task: Task, now: float, why: str) -> None:
        if task.worker and task.worker not in task.tried_workers:
            task.tried_workers.append(task.worker)
        if not retry.retries_left(task):
            task.finished_at = now
            self._move(task, S.DEAD, now, f"{why}; no retries left after {task.attempt} attempts")
            return
        task.not_before = now + retry.backoff_s(task, self.rng)
        self._move(task, S.RETRYING, now, why)
        if task.not_before <= now:
            self._move(task, S.QUEUED, now)
            self._enqueue(task)

    # ------------------------------------------------------------------ placement
    def place(self) -> int:
        with self._lock:
            placed = self._place(self.clock())
            ticket = self._flush()
        self.journal.wait(ticket)
        return placed

    def _place(self, now: float, count_attempts: bool = False) -> int:
        if not self.backlog:
            return 0
        started = time.perf_counter()
        ledgers = {name: w.ledger for name, w in self.workers.items() if w.schedulable}
        placements = self.scheduler.place(self.backlog, self.tasks, ledgers, self.locks, now)
        for placement in placements:
            task = self.tasks[placement.task_id]
            task.attempt += 1
            task.worker = placement.worker
            task.reason = None
            task.progress = None
            self._move(task, S.ASSIGNED, now, f"placed on {placement.worker}")
            self._tell(placement.worker, {"assign": self._assignment(task, placement.gpu_indices)})
        if count_attempts:
            self._count_blocked(now)
        for hook in self.hooks.on_placement_pass:
            hook(time.perf_counter() - started, len(placements))
        return len(placements)

    def _count_blocked(self, now: float) -> None:
        """Only the head of each blocked shape is touched: the rest wait behind it for the same reason."""
        for _, shape in self.backlog.heads():
            head = self.tasks[self.backlog.head_of(shape)]  # type: ignore[index]
            head.placement_attempts += 1
            head.last_error = self.backlog.reasons.get(shape)

    def _assignment(self, task: Task, gpu_indices: tuple[int, ...]) -> dict[str, Any]:
        return {
            "id": task.id, "attempt": task.attempt, "kind": task.kind, "spec": task.spec,
            "resources": task.resources.to_dict(), "timeout_s": task.timeout_s,
            "gpu_indices": list(gpu_indices), "name": task.name,
        }

    # ------------------------------------------------------------------ queries
    def get(self, task_id: str) -> Task:
        task = self.tasks.get(task_id)
        if task is None:
            raise NotFoundError(f"no task {task_id!r}")
        return task

    def view(self, task: Task) -> dict[str, Any]:
        """A task as shown to operators: its record plus why it waits."""
        out = task.to_dict()
        if task.state is S.QUEUED:
            out["reason"] = self.backlog.reason_for(task.id) or "Waiting for the next placement pass"
        elif task.state is S.RETRYING:
            wait = max((task.not_before or 0) - self.clock(), 0.0)
            out["reason"] = f"Retrying in {wait:.1f}s after: {task.last_error}"
        elif task.state is S.RUNNING and task.progress:
            out["reason"] = _progress_line(task.progress)
        return out

    def why(self, task_id: str) -> dict[str, Any]:
        with self._lock:
            task = self.get(task_id)
            if task.state is not S.QUEUED:
                return {"task": task.id, "state": task.state.value, "summary": self.view(task).get("reason")
                        or f"Task is {task.state.value}", "workers": {}}
            workers = [w.ledger for w in self.workers.values() if w.schedulable]
            per_worker = explain(task, workers, self._required(task))
            summary = self.locks.blocker(task.locks)
            if summary is None and (per_worker or not workers):
                summary = summarise(per_worker, len(workers))
            if summary is None:
                summary = "Fits now; it starts on the next placement pass"
            return {"task": task.id, "state": task.state.value, "summary": summary,
                    "workers": per_worker}

    def story(self, task_id: str) -> list[Event]:
        with self._lock:
            self.get(task_id)
            return self.events.story(task_id)

    def queued(self) -> list[Task]:
        with self._lock:
            return [self.tasks[i] for i in self.backlog.ordered()]

    def listing(self, state: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        """Tasks for `queue`: one state, or everything unfinished in the order it is served."""
        with self._lock:
            if state == S.QUEUED.value:
                chosen = [self.tasks[i] for i in itertools.islice(self.backlog.ordered(), limit)]
            elif state:
                chosen = [t for t in self.tasks.values() if t.state.value == state][-limit:]
            else:
                by_state: dict[TaskState, list[Task]] = {}
                for task in self.tasks.values():
                    if task.state in _UNFINISHED_ORDER and task.state is not S.QUEUED:
                        by_state.setdefault(task.state, []).append(task)
                by_state[S.QUEUED] = [self.tasks[i] for i in itertools.islice(self.backlog.ordered(), limit)]
                chosen = [t for s in _UNFINISHED_ORDER for t in by_state.get(s, [])][:limit]
            return [self.view(t) for t in chosen]

    def log_tail(self, task_id: str) -> str:
        with self._lock:
            task = self.get(task_id)
            live = self.live_logs.get(task_id)
            return live if live is not None else str((task.result or {}).get("log_tail") or "")

    def worker_views(self) -> list[dict[str, Any]]:
        with self._lock:
            return [w.to_dict() for w in sorted(self.workers.values(), key=lambda w: w.name)]

    def release_worker(self, name: str) -> None:
        """Lets a quarantined or draining worker take tasks again."""
        with self._lock:
            record = self._known_worker(name)
            if not (record.quarantined or record.draining):
                raise ValidationError(f"worker {name} is neither quarantined nor draining")
            record.quarantined = record.draining = False
            record.consecutive_failures = 0
            self._place(self.clock())
            ticket = self._flush()
        self.journal.wait(ticket)

    def drain_worker(self, name: str) -> None:
        """The worker finishes what it runs and is given nothing new."""
        with self._lock:
            self._known_worker(name).draining = True

    def _known_worker(self, name: str) -> WorkerRecord:
        record = self.workers.get(name)
        if record is None:
            raise NotFoundError(f"no worker {name!r}")
        return record

    def summary(self) -> dict[str, Any]:
        with self._lock:
            workers = dict.fromkeys((status.value for status in WorkerStatus), 0)  # zeros too
            for record in self.workers.values():
                workers[record.status.value] = workers.get(record.status.value, 0) + 1
            return {
                "uptime_s": round(self.clock() - self.started_at, 1),
                "queued": len(self.backlog),
                "shapes": self.backlog.shapes(),
                "strategy": self.scheduler.strategy,
                "locks held": len(self.locks.snapshot()),
                "tasks": self.counts(),
                "workers": workers,
            }

    def counts(self) -> dict[str, int]:
        """Tasks by state, kept up to date by every move: O(1), however many tasks there are."""
        with self._lock:
            return {state.value: self._counts[state] for state in S}

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
        key = task.kind + repr(sorted(task.spec.items()))
        caps = self._capabilities.get(key)
        if caps is None:
            caps = self._capabilities[key] = required_capabilities(task.kind, task.spec)
        return caps

    def _enqueue(self, task: Task, since: float | None = None) -> None:
        task.queued_at = since or self.clock()  # kept across a restart: TTL and aging go on
        task.worker = None
        task.not_before = None
        self.backlog.add(task, self._required(task))
        if task.ttl_s:
            self._expiring.add(task.id)

    def _release(self, task: Task) -> None:
        record = self.workers.get(task.worker or "")
        if record is not None:
            record.ledger.release(task.id)
        self.locks.release(task.id, task.locks)

    def _tell(self, worker: str | None, instruction: dict[str, Any]) -> None:
        record = self.workers.get(worker or "")
        if record is None or not record.connected:
            return
        instruction["ticket"] = 0  # set to the operation's journal ticket at flush
        record.outbox.append(instruction)
        self._told.append(instruction)
        self._wakeups[record.name].notify_all()

    def _move(self, task: Task, dst: TaskState, now: float, reason: str | None = None) -> None:
        src = task.state
        event = move(task, dst, now=now, reason=reason, history=lambda: self.events.story(task.id))
        self._counts[src] -= 1
        self._counts[dst] += 1
        if dst is S.RETRYING:
            self._retrying.add(task.id)
        else:
            self._retrying.discard(task.id)
        self.events.add(event)
        self._dirty[task.id] = task  # serialised once at flush, however often it moved
        self._pending.append(("event", event.to_dict()))
        for hook in self.hooks.on_event:
            hook(event)

    def _flush(self) -> int:
        """Hands the operation's changes to the journal, in order; returns the ticket to wait on."""
        if self._dirty or self._pending:
            changes = [("put", task.to_dict()) for task in self._dirty.values()]
            changes += self._pending
            ticket = self.journal.enqueue(changes)
        else:
            ticket = self.journal.last_ticket()
        for instruction in self._told:
            instruction["ticket"] = ticket
        self._told = []
        self._dirty = {}
        self._pending = []
        return ticket


_OUTCOMES = ("completed", "failed", "cancelled", "timed_out")
_UNFINISHED_ORDER = (S.RUNNING, S.ASSIGNED, S.QUEUED, S.RETRYING, S.HELD, S.PENDING)
_LOG_TAIL_CHARS = 8192


def _progress_line(progress: dict[str, Any]) -> str:
    """e.g. "42.0% at 118 fps, 2.1x" for the queue listing."""
    parts = []
    if isinstance(progress.get("percent"), int | float):
        parts.append(f"{progress['percent']:.1f}%")
    if isinstance(progress.get("fps"), int | float):
        parts.append(f"at {progress['fps']:.0f} fps")
    if isinstance(progress.get("speed"), int | float):
        parts.append(f"{progress['speed']:.2f}x")
    return "Running: " + ", ".join(parts) if parts else "Running"


def _awaiting_kill(task: Task) -> bool:
    """Cancelled while on a worker, and the worker has not yet confirmed it stopped."""
    return task.state is S.CANCELLED and bool(task.worker) and task.finished_at is None


def _overdue(task: Task, now: float) -> bool:
    """The worker kills a task at its timeout; this catches a worker that did not."""
    if not task.timeout_s or not task.started_at:
        return False
    return now - task.started_at > task.timeout_s + defaults.TIMEOUT_GRACE_S


def _pairs(running: list[Any]) -> dict[str, int]:
    out = {}
    for item in running or []:
        if isinstance(item, list | tuple) and len(item) == 2 and isinstance(item[0], str) and isinstance(
            item[1], int
        ):
            out[item[0]] = item[1]
    return out
