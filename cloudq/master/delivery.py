"""Talking to workers: registration and re-adoption, instructions (fetch), progress and
outcomes (report), and the deadlines that guard them: leases, back-offs, run timeouts."""

from __future__ import annotations

import logging
import time
from typing import Any

from cloudq import defaults
from cloudq.core.ledger import Ledger
from cloudq.core.model import Task, TaskState
from cloudq.core.scheduler import never_fits
from cloudq.core.transitions import Event
from cloudq.errors import LimitError, ValidationError
from cloudq.master.reports import Report, parse_report
from cloudq.master.state import MasterState
from cloudq.master.workers import WorkerRecord, parse_registration, parse_sample

log = logging.getLogger("cloudq.master")

S = TaskState


class Delivery(MasterState):
    # ------------------------------------------------------------------ workers
    def register(self, raw: Any, running: list[Any]) -> dict[str, Any]:
        """A worker (re)connects. Tasks it still runs are re-adopted when the master agrees they
        are its current attempt; the rest it is told to stop."""
        info = parse_registration(raw)
        with self._change() as now:
            new = info["name"] not in self.workers
            if new:
                self._make_room_for_a_worker(now)
            record = self._worker(info["name"])
            returning = not new and not record.connected
            old_bookings = record.ledger.bookings
            record.host = info["host"]
            record.facts = info["facts"]
            record.ledger = Ledger(
                info["name"], info["cpu_cores"], info["mem_gb"], info["storage_gb"],
                info["gpu_mem_gb"], info["max_tasks"], info["labels"], info["capabilities"],
            )
            record.connected, record.last_seen, record.registered_at = True, now, now
            record.leaving = False
            self._fleet += 1
            record.session += 1
            record.outbox.clear()
            stop = self._readopt(record, old_bookings, _pairs(running), now)
            ledger = record.ledger
            self._worker_event(record.name, "joined" if new or returning else "re-registered",
                               f"{ledger.cpu_cores:g} cores, {ledger.mem_gb:g} GB, "
                               f"{len(ledger.gpu_mem_gb)} GPUs, {ledger.max_tasks} slots; "
                               f"re-adopted {len(running) - len(stop)} running", now)
            self._place(now)
        return {"session": record.session, "stop": stop, "lease_s": self.config.lease_s,
                "heartbeat_s": self.config.heartbeat_s, "fetch_sample": True}

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
                self._stopped(task, now)
        return stop

    def _make_room_for_a_worker(self, now: float) -> None:
        """At the cap, a new worker displaces the one offline longest (never one that holds a
        task or an operator's flag); with none to displace, it is refused."""
        if len(self.workers) < self.config.max_workers:
            return
        idle = [w for w in self.workers.values() if _forgettable(w)]
        if not idle:
            raise LimitError(f"worker limit reached: {len(self.workers)} workers are registered "
                             f"(--max-workers {self.config.max_workers})")
        self._forget_worker(min(idle, key=lambda w: w.last_seen), now,
                            f"offline the longest, displaced at --max-workers {self.config.max_workers}")

    def _forget_worker(self, record: WorkerRecord, now: float, why: str) -> None:
        self._worker_event(record.name, "forgotten", why, now)
        del self.workers[record.name]
        self._wakeups.pop(record.name, None)
        self._fleet += 1

    def _forget_offline(self, now: float) -> None:
        keep = self.config.forget_offline_s
        if keep <= 0:
            return
        for record in [w for w in self.workers.values() if _forgettable(w)]:
            if now - record.last_seen > keep:
                self._forget_worker(record, now, f"offline for over {keep:g}s (--forget-offline)")

    def leave(self, name: str, session: int) -> None:
        """The worker process is stopping: it takes nothing new, and its waiting fetch is
        answered now instead of at the end of its long-poll, so it stops at once. It stays
        registered: it still reports how the tasks it stops end, and a restart registers
        again (which clears this)."""
        with self._change() as now:
            record = self._connected(name, session)
            if not record.leaving:
                record.leaving = True
                self._worker_event(name, "stopping", "its process is shutting down; it takes nothing "
                                   f"new and stops its {len(record.ledger.bookings)} tasks", now)
            self._wakeups[name].notify_all()

    def heartbeat(self, name: str, sample: Any, session: int | None = None) -> None:
        """A worker's live sample. Given its `session`, only that session's: a process of an
        older one (replaced since) is refused and registers again, rather than keep the
        worker's lease and show its own samples. With no sample, only that check."""
        sample = None if sample is None else parse_sample(sample)
        with self._lock:
            record = self._connected(name, session)
            if sample is not None:
                record.last_seen = self.clock()
                record.sample = sample

    def fetch(
        self, name: str, session: int, wait_s: float, reports: list[Any] = (),
        sample: Any = None,
    ) -> list[dict[str, Any]]:
        """Instructions for a worker (assignments, cancels), waiting up to wait_s for some.

        `reports` are outcomes the fetching thread has at hand (tasks it ran itself, which
        finished at once): they are applied first, like a report, so the room they free is
        filled and the new assignments go back in this same reply. A refused one needs nothing
        from the worker (the task has already ended there), so refusals are not returned.
        `sample` is an idle worker's heartbeat: while this call waits, an idle worker counts
        as heard (see _timers), so it makes one call per long-poll."""
        wait_s = min(max(float(wait_s), 0.0), 30.0)
        if sample is not None:
            sample = parse_sample(sample)
        if reports:
            self.report(name, session, reports)
        with self._lock:
            record = self._connected(name, session)
            record.last_seen = self.clock()
            if sample is not None:
                record.sample = sample
            wake = self._wakeups[name]
            deadline = time.monotonic() + wait_s
            record.polling += 1
            try:
                while (not record.outbox and record.session == session and record.connected
                       and not record.leaving):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    wake.wait(left)
                    self._refuse_if_closed()
            finally:
                record.polling -= 1
            # No last_seen here: the wait ending is the master's own clock, not word from the
            # worker (a killed one's poll still ends), so only the call's arrival counts.
            # A fetch of an older session (its process was killed while this call waited, and
            # the worker has registered again since) takes nothing: the outbox now holds the
            # new session's assignments, which its own fetch must find.
            out: list[dict[str, Any]] = []
            if record.session == session:
                out = list(record.outbox)
                record.outbox.clear()
            ticket = record.outbox_ticket
        if out:
            self.journal.wait(ticket)  # a worker never acts on what is not yet durable
        return out

    def report(self, name: str, session: int, reports: list[Any], sample: Any = None) -> list[str]:
        """Progress and outcomes from a worker, with its live sample if it sent one. Returns the
        ids whose report was refused (stale attempt, or not this worker's task): the worker
        drops those."""
        checked, refused = _checked(name, reports, self.clock())
        if sample is not None:
            sample = parse_sample(sample)
        with self._change() as now:
            record = self._connected(name, session)
            record.last_seen = now
            if sample is not None:
                record.sample = sample
            refused += [r.task for r in checked if not self._apply_report(record, r, now)]
            self._place(now)
        return refused

    def _apply_report(self, record: WorkerRecord, report: Report, now: float) -> bool:
        task = self.tasks.get(report.task)
        if task is None or task.worker != record.name or task.attempt != report.attempt:
            return False
        if task.state is S.CANCELLED:  # the worker confirms it stopped: free what it held
            if report.is_outcome:
                task.result = report.result or None
                self.live_logs.pop(task.id, None)
                self._stopped(task, now)
            return True
        if not task.state.is_active:
            return False
        if task.state is S.ASSIGNED and report.state is not None:  # running, or already ended
            task.started_at = report.started_at or now
            self._move(task, S.RUNNING, now, f"started on {record.name}")
            self._progressed[task.id] = now
        if report.progress is not None:
            if report.progress != task.progress:
                self._progressed[task.id] = now
            task.progress = report.progress
        if report.log_tail is not None:
            if report.log_tail != self.live_logs.get(task.id):
                self._progressed[task.id] = now
            self.live_logs[task.id] = report.log_tail
        if report.is_outcome:
            self._finish(record, task, report, now)
        return True

    def _finish(self, record: WorkerRecord, task: Task, report: Report, now: float) -> None:
        outcome, result = report.state, report.result or {}
        task.result = result
        self.live_logs.pop(task.id, None)
        if outcome == "completed":
            record.consecutive_failures = 0
            self._move(task, S.COMPLETED, now, f"completed on {record.name}")
            return
        error = str(result.get("error") or outcome)
        task.last_error = error
        if report.worker_fault:  # the task's own failures say nothing about the worker
            self._worker_failed(record, error)
        cause = "worker_fault" if report.worker_fault else str(outcome)  # failed, timed_out, cancelled
        self._retry_or_bury(task, now, f"{outcome} on {record.name}: {error}", cause)

    def _worker_failed(self, record: WorkerRecord, error: str) -> None:
        """A failure of the worker itself; enough of them in a row quarantine it."""
        record.consecutive_failures += 1
        if record.consecutive_failures >= self.config.quarantine_after and not record.quarantined:
            record.quarantined = True
            record.quarantine_reason = (f"{record.consecutive_failures} worker failures in a row, "
                                        f"the last: {error[:200]}")
            self._flags_changed()
            self._worker_event(record.name, "quarantined", record.quarantine_reason, self.clock())

    # ------------------------------------------------------------------ processor
    def tick(self) -> None:
        """The safety net, run every few seconds: timers, queue expiry, forgetting long-finished
        tasks, a counted placement pass."""
        with self._change() as now:
            self._timers(now)
            for task_id in list(self._expiring):
                task = self.tasks[task_id]
                if task.state is not S.QUEUED:
                    self._expiring.discard(task_id)
                elif now - (task.queued_at or now) > (task.ttl_s or 0):
                    self._expiring.discard(task_id)
                    self._expire_queued(task, now)
            self._expire_unschedulable(now)
            self._prune(now)
            self._forget_offline(now)
            self._place(now, count_attempts=True)

    def timers(self) -> None:
        """Cheap deadlines, checked about every second: leases, back-offs, run timeouts. Costs
        O(workers + retrying + running), never O(all tasks)."""
        with self._change() as now:
            self._timers(now)
            self._place(now)

    def _timers(self, now: float) -> None:
        """Each item is handled on its own: one that fails is logged and skipped, and the
        deadlines of every other task and worker are still kept."""
        for record in list(self.workers.values()):
            if record.polling and not record.ledger.bookings:
                # An idle worker whose fetch waits here is heard now: that open long-poll is
                # its heartbeat (its live sample comes with its fetches). One killed while idle
                # is known lost when the poll (at most a lease) and then its lease run out.
                # A worker with tasks reports every heartbeat, and its silence counts as ever.
                record.last_seen = now
            silent = now - record.last_seen > self.config.lease_s
            if silent and (record.connected or record.ledger.bookings):
                self._guarded(self._expire, record, now)
        for task_id in list(self._retrying):
            task = self.tasks[task_id]
            if (task.not_before or 0) <= now:
                self._guarded(self._requeue, task, now)
        for record in list(self.workers.values()):
            for task_id in list(record.ledger.bookings):
                task = self.tasks.get(task_id)
                if task is not None and task_id not in self._timer_failed:
                    self._guarded(self._deadlines, task, now)

    def _guarded(self, action: Any, item: Any, now: float) -> None:
        try:
            action(item, now)
        except Exception as err:  # noqa: BLE001 - one bad item must not stop the safety net
            name = getattr(item, "id", None) or getattr(item, "name", "?")
            log.exception("%s failed for %s; going on with the others", action.__name__, name)
            if isinstance(item, Task):  # marked, and left out until an operator acts on it
                item.last_error = f"internal error in {action.__name__}: {type(err).__name__}"[:200]
                self._retrying.discard(item.id)
                self._timer_failed.add(item.id)

    def _deadlines(self, task: Task, now: float) -> None:
        if task.state is S.RUNNING and self._overdue(task, now):
            self._time_out(task, now)
        elif task.state is S.RUNNING and (stall := self.stall_limit(task)) and \
                now - self._progressed.setdefault(task.id, now) > stall:
            self._stalled(task, stall, now)
        elif task.state is S.ASSIGNED and now - task.updated_at > self.config.start_deadline_s:
            self._not_started(task, now)

    def _requeue(self, task: Task, now: float) -> None:
        self._move(task, S.QUEUED, now)

    def _not_started(self, task: Task, now: float) -> None:
        """Assigned, but its worker never said it started: a worker that takes work and sits
        on it. The task goes back to the queue and the attempt counts against the worker."""
        record = self.workers.get(task.worker or "")
        self._tell(task.worker, {"cancel": task.id, "attempt": task.attempt})
        why = f"{task.worker} did not start it within {self.config.start_deadline_s:g}s"
        task.last_error = why
        task.unstarted += 1
        if record is not None:
            self._worker_failed(record, why)
        self._retry_or_bury(task, now, why, "not_started")

    def _expire_queued(self, task: Task, now: float) -> None:
        task.last_error = f"expired after waiting {task.ttl_s:g}s in the queue"
        self._move(task, S.FAILED, now, task.last_error)

    def _overdue(self, task: Task, now: float) -> bool:
        """The worker kills a task at its time limit; this catches a worker that did not."""
        limit = self.run_limit(task)
        if not limit or not task.started_at:
            return False
        return now - task.started_at > limit + defaults.TIMEOUT_GRACE_S

    def _time_out(self, task: Task, now: float) -> None:
        self._tell(task.worker, {"cancel": task.id, "attempt": task.attempt})
        limit = self.run_limit(task) or 0.0
        own = "timeout" if task.timeout_s else f"{task.queue.value} class's --max-run"
        task.last_error = f"ran past its {own} of {limit:g}s"
        self._retry_or_bury(task, now, task.last_error, "timed_out")

    def _stalled(self, task: Task, limit: float, now: float) -> None:
        """Running, but its progress has not moved for `limit` seconds: a hung encoder (a
        stalled input pipe, a wedged GPU). Killed on its worker and retried."""
        self._tell(task.worker, {"cancel": task.id, "attempt": task.attempt})
        task.last_error = f"stalled: no progress for {limit:g} s"
        self._progressed.pop(task.id, None)
        self._retry_or_bury(task, now, task.last_error, "stalled")

    def _expire_unschedulable(self, now: float) -> None:
        """--unschedulable-ttl: queued tasks that no registered worker could ever run fail once
        they have waited that long (one check per shape, not per task)."""
        ttl = self.config.unschedulable_ttl_s
        ledgers = [w.ledger for w in self.workers.values() if w.registered_at]
        if ttl <= 0 or not ledgers:
            return  # with no worker at all, nothing is known to be too big yet
        for _, shape in self.backlog.heads():
            head = self.tasks[self.backlog.head_of(shape)]  # type: ignore[index]
            why = never_fits(head, ledgers, self._required(head))
            if why is None:
                continue
            for task_id in self.backlog.ids_of(shape):
                task = self.tasks[task_id]
                if now - (task.queued_at or now) > ttl:
                    task.last_error = f"unschedulable for {ttl:g}s: {why}"
                    self._move(task, S.FAILED, now, task.last_error)

    def _expire(self, record: WorkerRecord, now: float) -> None:
        record.connected = False
        self._worker_event(record.name, "lost", f"missed its lease of {self.config.lease_s:g}s; "
                           f"{len(record.ledger.bookings)} tasks on it", now)
        self._wakeups[record.name].notify_all()
        for task_id in list(record.ledger.bookings):
            task = self.tasks.get(task_id)
            if task is None:
                record.ledger.release(task_id)
            elif task.state.is_active:
                self._lost(task, now, f"{record.name} missed its lease of {self.config.lease_s:g}s")
            else:
                self._stopped(task, now)


def _checked(worker: str, reports: list[Any], now: float) -> tuple[list[Report], list[str]]:
    """Reports that pass the boundary checks, and the ids of those refused (logged)."""
    checked, refused = [], []
    for raw in reports:
        try:
            checked.append(parse_report(raw, now))
        except ValidationError as err:
            log.warning("refused a report from %s: %s", worker, err)
            task = raw.get("task") if isinstance(raw, dict) else None
            refused.append(task if isinstance(task, str) and len(task) <= 64 else "?")
    return checked, refused


def _forgettable(record: WorkerRecord) -> bool:
    """Offline, holding no task, and carrying no operator's decision."""
    return not (record.connected or record.ledger.bookings or record.quarantined or record.draining)


def _pairs(running: list[Any]) -> dict[str, int]:
    out = {}
    for item in running or []:
        if isinstance(item, list | tuple) and len(item) == 2 and isinstance(item[0], str) and isinstance(
            item[1], int
        ):
            out[item[0]] = item[1]
    return out

