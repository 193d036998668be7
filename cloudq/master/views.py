"""What operators read: task views with the reason they wait, why, listings, workers, locks,
events and counts."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from fnmatch import fnmatchcase
from typing import Any

from cloudq.core.model import Task, TaskState, new_task
from cloudq.core.scheduler import explain, misfit, never_fits, summarise
from cloudq.core.transitions import Event
from cloudq.errors import NotFoundError
from cloudq.master.state import MasterState
from cloudq.master.workers import WorkerRecord, WorkerStatus

S = TaskState


class Views(MasterState):
    # ------------------------------------------------------------------ queries
    def get(self, task_id: str) -> Task:
        task = self.tasks.get(task_id)
        if task is None:
            raise NotFoundError(f"no task {task_id!r}")
        return task

    def view(self, task: Task) -> dict[str, Any]:
        """A task as shown to operators: its record plus why it waits."""
        out = task.to_dict()
        out["never_fits"] = None
        out["in_queue_s"] = None
        if task.state is S.QUEUED:
            out["reason"] = self.backlog.reason_for(task.id) or "Waiting for the next placement pass"
            out["never_fits"] = self.never_fits(task)
            out["in_queue_s"] = round(max(self.clock() - (task.queued_at or task.created_at), 0.0), 3)
        elif task.state is S.RETRYING:
            wait = max((task.not_before or 0) - self.clock(), 0.0)
            out["reason"] = f"Retrying in {wait:.1f}s after: {task.last_error}"
        elif task.state is S.RUNNING and task.progress:
            out["reason"] = _progress_line(task.progress)
        elif task.state is S.PENDING and task.dependencies:
            out["reason"] = self._waits_line(task)
        return out

    def wait_ended(self, ids: list[str], wait_s: float) -> dict[str, Any]:
        """Blocks until every task in `ids` has ended or `wait_s` has passed; answers only
        once those ends are durable, so a caller never acts on an end a crash would undo.
        {"ended": {id: view}, "waiting": [ids]}; an unknown id is refused at once."""
        deadline = time.monotonic() + max(wait_s, 0.0)
        with self._lock:
            for task_id in ids:
                self.get(task_id)
            while True:
                waiting = [i for i in ids if i in self.tasks and not self.tasks[i].state.is_final]
                left = deadline - time.monotonic()
                if not waiting or left <= 0:
                    break
                self._ended.wait(left)
                self._refuse_if_closed()
            ticket = self.journal.last_ticket()  # the ends seen are in it, or older
            ended = {i: self.view(self.tasks[i]) for i in ids if i in self.tasks and i not in waiting}
        if ended:
            self.journal.wait(ticket)
        return {"ended": ended, "waiting": waiting}

    def _waits_line(self, task: Task) -> str:
        """`waiting for t4 (running on worker-2), t5 (queued)`: what a pending task waits for."""
        waits = self.waits.unmet(task)
        shown = []
        for dep_id in waits[:5]:
            dep = self.tasks[dep_id]
            where = f" on {dep.worker}" if dep.worker and dep.state.is_active else ""
            shown.append(f"{dep_id} ({dep.state.value}{where})")
        more = f" and {len(waits) - 5} more" if len(waits) > 5 else ""
        return f"waiting for {', '.join(shown)}{more}" if waits else "its dependencies have ended"

    def never_fits(self, task: Task) -> str | None:
        """Why no registered worker could ever run `task` (see scheduler.never_fits), or None.
        Kept per shape until a worker registers or is forgotten: a long listing asks for it
        once per row, and the answer is the same for every task of a shape."""
        with self._lock:  # a paged listing builds views outside the operation that made it
            shape = self.backlog.shape_of(task.id)
            cache = self._never_fits
            cached = cache.get(shape) if shape is not None else None
            if cached is not None and cached[0] == self._fleet:
                return cached[1]
            ledgers = [w.ledger for w in self.workers.values() if w.registered_at]
            answer = never_fits(task, ledgers, self._required(task))
            if shape is not None:
                if len(cache) > 4096:
                    cache.clear()
                cache[shape] = (self._fleet, answer)
            return answer

    def why(self, task_id: str) -> dict[str, Any]:
        with self._lock:
            task = self.get(task_id)
            if task.state is not S.QUEUED:
                return {"task": task.id, "state": task.state.value, "summary": self.view(task).get("reason")
                        or f"Task is {task.state.value}", "workers": {}, "never_fits": None}
            if task.target_worker:
                return self._why_targeted(task)
            workers = [w.ledger for w in self.workers.values() if w.schedulable]
            per_worker = explain(task, workers, self._required(task))
            summary = self.locks.blocker(task.locks)
            if summary is None and (per_worker or not workers):
                summary = summarise(per_worker, len(workers))
            # Workers that take nothing now, and why: quarantine, drain, offline.
            unavailable = {w.name: w.unavailable_because() for w in self.workers.values()
                           if not w.schedulable and (task.target_worker in (None, w.name))}
            if not workers and unavailable:
                summary = "No workers available: " + "; ".join(
                    f"{name} {why}" for name, why in sorted(unavailable.items())[:8])
            per_worker = {**per_worker, **unavailable}
            if summary is None:
                summary = "Fits now; it starts on the next placement pass"
            return {"task": task.id, "state": task.state.value, "summary": summary,
                    "workers": per_worker, "never_fits": self.never_fits(task)}

    def _why_targeted(self, task: Task) -> dict[str, Any]:
        """A task for one worker: only that worker's answer matters."""
        target = task.target_worker or ""
        record = self.workers.get(target)
        if record is None or not record.schedulable:
            summary = self._absent(target)
            reason = summary.removeprefix(f"{target} ")
        else:
            reason = (self.locks.blocker(task.locks) or misfit(task, record.ledger, self._required(task))
                      or "Fits now; it starts on the next placement pass")
            summary = reason
        return {"task": task.id, "state": task.state.value, "summary": summary,
                "workers": {target: reason}, "never_fits": self.never_fits(task)}

    def dry_run(self, raw: Any) -> dict[str, Any]:
        """Where a task would go now and why not elsewhere, for every worker; nothing is
        submitted or changed. The request is checked as `submit` checks it."""
        with self._lock:
            task = new_task(raw, task_id="dry-run", seq=self._last_seq + 1, now=self.clock())
            required = self._required(task)
            verdicts, fitting = {}, []
            for record in sorted(self.workers.values(), key=lambda w: w.name):
                if task.target_worker and record.name != task.target_worker:
                    verdicts[record.name] = f"Wrong worker: task is for {task.target_worker}"
                elif not record.schedulable:
                    verdicts[record.name] = record.unavailable_because()
                elif why := misfit(task, record.ledger, required):
                    verdicts[record.name] = why
                else:
                    verdicts[record.name] = "fits now"
                    fitting.append(record.ledger)
            chosen = self.scheduler.pick(task, fitting)
            lock = self.locks.blocker(task.locks)
            never = never_fits(task, [w.ledger for w in self.workers.values() if w.registered_at],
                               required)
            if lock:
                summary = f"It would wait: {lock}"
            elif chosen:
                summary = f"It would be assigned to {chosen}"
                if len(self.backlog):
                    summary += f" if none of the {len(self.backlog)} queued tasks takes the room first"
            elif task.target_worker and not self._takes_tasks(task.target_worker):
                summary = f"It would wait: {self._absent(task.target_worker)}"
            else:
                summary = f"It would wait: {never or 'no worker has room for it now'}"
            return {"would_go_to": None if lock else chosen, "summary": summary,
                    "never_fits": never, "workers": verdicts, "request": task.request_dict()}

    def _takes_tasks(self, name: str) -> bool:
        record = self.workers.get(name)
        return record is not None and record.schedulable

    def story(self, task_id: str) -> list[Event]:
        with self._lock:
            self.get(task_id)
            return self.events.story(task_id)

    def queued(self) -> list[Task]:
        with self._lock:
            return [self.tasks[i] for i in self.backlog.ordered()]

    def listing(self, state: str | None = None, limit: int = 200, **filters: str | None
                ) -> list[dict[str, Any]]:
        """Tasks for `queue`: one state, or everything unfinished in the order it is served."""
        with self._lock:
            return [self.view(self.tasks[i]) for i in self.listing_ids(state, limit, **filters)]

    def listing_ids(self, state: str | None = None, limit: int = 200, *, worker: str | None = None,
                    queue: str | None = None, owner: str | None = None, name: str | None = None,
                    group: str | None = None) -> list[str]:
        """The ids `listing` would show, in its order: cheap, so a long listing read in pages
        builds each view only when its page is sent, not all of them under the lock. Filters:
        `worker` (where it runs or is pinned to), `queue` class, `owner`, `name` (a glob),
        `group` (a workflow or array id)."""
        keep = _filter(worker, queue, owner, name, group)
        with self._lock:
            if state == S.QUEUED.value:
                return list(itertools.islice(self._queued_ids(keep), limit))
            if state:
                return [t.id for t in self.tasks.values() if t.state.value == state and keep(t)][-limit:]
            by_state: dict[TaskState, list[str]] = {}
            for task in self.tasks.values():
                if task.state in _UNFINISHED_ORDER and task.state is not S.QUEUED and keep(task):
                    by_state.setdefault(task.state, []).append(task.id)
            by_state[S.QUEUED] = list(itertools.islice(self._queued_ids(keep), limit))
            return [i for s in _UNFINISHED_ORDER for i in by_state.get(s, [])][:limit]

    def _queued_ids(self, keep: Callable[[Task], bool]) -> Iterable[str]:
        """Queued ids in the order they will be served, filtered."""
        ordered = self.backlog.ordered()
        if keep is _everything:
            return ordered
        return (i for i in ordered if keep(self.tasks[i]))

    def log_tail(self, task_id: str) -> str:
        with self._lock:
            task = self.get(task_id)
            live = self.live_logs.get(task_id)
            return live if live is not None else str((task.result or {}).get("log_tail") or "")

    def events_since(self, task_id: str | None = None, worker: str | None = None,
                     since: float | None = None, limit: int = 100) -> list[Event]:
        """The newest `limit` events, oldest first: of one task, of one worker, after a time."""
        with self._lock:
            if task_id is not None:
                self.get(task_id)
                pool = reversed(self.events.story(task_id))
            else:
                pool = self.events.newest_first()
            picked = []
            for event in pool:
                if since is not None and event.time < since:
                    break  # newest first: the rest are older still
                if worker is None or event.worker == worker:
                    picked.append(event)
                    if len(picked) >= limit:
                        break
            return picked[::-1]

    def lock_views(self, waiters: int = 50) -> list[dict[str, Any]]:
        """Every lock held or asked for by a queued task: its holders (task and worker) and the
        first `waiters` queued tasks that want it, in the order they will be served."""
        with self._lock:
            held = self.locks.snapshot()
            out = []
            for name in sorted(set(held) | self.backlog.lock_names()):
                holders = [self.tasks[i] for i in held.get(name, ()) if i in self.tasks]
                queued = self.backlog.waiting_on(name)
                first = list(itertools.islice(queued, waiters))
                more = sum(1 for _ in queued)
                limit = next((spec.holders for t in holders + [self.tasks[i] for i in first[:1]]
                              for spec in t.locks if spec.name == name), None)
                out.append({
                    "name": name, "limit": limit,
                    "holders": [{"task": t.id, "worker": t.worker, "state": t.state.value}
                                for t in holders],
                    "waiters": first, "waiting": len(first) + more,
                })
            return out

    def worker_detail(self, name: str) -> dict[str, Any]:
        """One worker in full: capacity free and total, GPUs (what it registered with the
        latest sample), running tasks, labels, capabilities, flags, last heartbeat."""
        with self._lock:
            record = self.workers.get(name)
            if record is None:
                raise NotFoundError(f"no worker {name!r}")
            out = record.to_dict()
            out["running_tasks"] = [self._running_row(self.tasks[i]) for i in sorted(record.ledger.bookings)
                                    if i in self.tasks]
            out["gpu_devices"] = gpu_devices(record)
            out["flags"] = [flag for flag, on in (("quarantined", record.quarantined),
                                                  ("draining", record.draining)) if on]
            out["registered_at"] = record.registered_at or None
            out["connected"] = record.connected
            return out

    @staticmethod
    def _running_row(task: Task) -> dict[str, Any]:
        return {"id": task.id, "name": task.name, "kind": task.kind, "state": task.state.value,
                "attempt": task.attempt, "cpu_cores": task.resources.cpu_cores,
                "mem_gb": task.resources.mem_gb, "gpus": task.resources.gpus,
                "started_at": task.started_at}

    def worker_views(self) -> list[dict[str, Any]]:
        with self._lock:
            return [w.to_dict() for w in sorted(self.workers.values(), key=lambda w: w.name)]

    def summary(self) -> dict[str, Any]:
        with self._lock:
            workers = dict.fromkeys((status.value for status in WorkerStatus), 0)  # zeros too
            for record in self.workers.values():
                workers[record.status.value] += 1
            summary = {
                "uptime_s": round(self.clock() - self.started_at, 1),
                "queued": len(self.backlog),
                "shapes": self.backlog.shapes(),
                "strategy": self.scheduler.strategy,
                "locks held": len(self.locks.snapshot()),
                "oldest_wait_s": self._oldest_wait(),
                "tasks": self.counts(),
                "workers": workers,
                "store": self.journal.stats(),
            }
        if self.leadership is not None:
            summary["leadership"] = self.leadership()
        return summary

    def oldest_waits(self) -> dict[str, float]:
        """Seconds the longest-waiting queued task of each queue class has waited (classes
        with a queued task only)."""
        with self._lock:
            return self.waiting.oldest(self.clock())

    def figures(self, also: Callable[[], Any] | None = None) -> dict[str, Any]:
        """What the metrics endpoint reads at each scrape, in one hold of the lock: the counts
        every move keeps up to date, one row per worker, and the locks. O(workers + shapes +
        locks), never O(tasks). `also` is read in the same hold, as "also" (the counters the
        hooks keep, which change under this lock too)."""
        with self._lock:
            now = self.clock()
            statuses = dict.fromkeys((status.value for status in WorkerStatus), 0)
            rows = []
            for record in self.workers.values():
                statuses[record.status.value] += 1
                ledger = record.ledger
                rows.append({
                    "name": record.name, "cpu_cores": ledger.cpu_cores, "cpu_free": ledger.free_cpu,
                    "mem_gb": ledger.mem_gb, "mem_free_gb": ledger.free_mem,
                    "storage_gb": ledger.storage_gb, "storage_free_gb": ledger.free_storage,
                    "tasks": len(ledger.bookings), "max_tasks": ledger.max_tasks,
                    "heartbeat_age_s": max(now - record.last_seen, 0.0) if record.last_seen else None,
                    "gpus": gpu_devices(record),
                })
            return {
                "uptime_s": now - self.started_at,
                "tasks": {state.value: self._counts[state] for state in S},
                "queued": len(self.backlog),
                "queued_by_class": self.waiting.by_class(),
                "queued_by_priority": self.waiting.by_priority(),
                "oldest_wait_s": self.oldest_waits(),
                "workers": statuses,
                "worker_rows": rows,
                "lock_holders": self.locks.holder_counts(),
                "lock_waiters": self.backlog.lock_waiters(),
                "also": also() if also is not None else None,
            }

    def _oldest_wait(self) -> float | None:
        return max(self.oldest_waits().values(), default=None)

    def feed(self, after: int | None, workers: bool = False) -> dict[str, Any]:
        """What a shell shows between commands, in one read: the summary; the moves since
        `after` that a notice tells (a cursor from the last feed; None: none, only the cursor
        and the recent task ids, for a shell that starts), each with the task facts its notice
        needs, and how many were skipped; the newest task's id (ids are t1, t2, ... in order);
        and the worker views and lock names when asked for."""
        with self._lock:
            out: dict[str, Any] = {"summary": self.summary(), "workers": None,
                                   "last_id": f"t{self._last_seq}" if self._last_seq else None}
            if after is None:
                out["events"], out["cursor"], out["missed"] = [], self.events.added, 0
                out["recent_ids"] = [i for state in (None, *_FINAL) for i in self.listing_ids(state, 1000)]
            else:
                events, out["cursor"], skipped = self.events.after(after, FEED_SCAN)
                told = [e for e in events if e.dst in _TOLD and (e.dst != "assigned" or e.src == "queued")]
                out["missed"] = skipped + max(len(told) - FEED_EVENTS, 0)
                out["events"] = [self._fed(event) for event in told[-FEED_EVENTS:]]
            if workers:
                out["workers"] = self.worker_views()
                out["locks"] = sorted(set(self.locks.snapshot()) | self.backlog.lock_names())[:FEED_LOCKS]
            return out

    def _fed(self, event: Event) -> dict[str, Any]:
        out = event.to_dict()
        task = self.tasks.get(event.task)
        if task is not None:
            out["facts"] = {"placement_attempts": task.placement_attempts, "queued_at": task.queued_at,
                            "started_at": task.started_at, "last_error": task.last_error,
                            "name": task.name}
        return out

    def counts(self) -> dict[str, int]:
        """Tasks by state, kept up to date by every move: O(1), however many tasks there are."""
        with self._lock:
            return {state.value: self._counts[state] for state in S}


FEED_SCAN = 200_000  # moves one feed reads; a shell that falls further behind skips, and says so
FEED_EVENTS = 1000  # moves one feed returns: more in half a second are a burst, told as a count
FEED_LOCKS = 10_000  # lock names one feed returns, for completion
_TOLD = frozenset({"assigned", "completed", "failed", "dead"})  # the moves notices tell
_FINAL = ("completed", "failed", "cancelled", "dead")
_UNFINISHED_ORDER = (S.RUNNING, S.ASSIGNED, S.QUEUED, S.RETRYING, S.HELD, S.PENDING)


def _everything(task: Task) -> bool:
    return True


def _filter(worker: str | None, queue: str | None, owner: str | None,
            name: str | None, group: str | None = None) -> Callable[[Task], bool]:
    """One predicate for the listing's filters; every filter given must match."""
    if worker is None and queue is None and owner is None and name is None and group is None:
        return _everything

    def keep(task: Task) -> bool:
        return ((worker is None or worker in (task.worker, task.target_worker))
                and (queue is None or task.queue == queue)
                and (owner is None or task.owner == owner)
                and (name is None or fnmatchcase(task.name, name))
                and (group is None or task.group == group))
    return keep


def gpu_devices(record: WorkerRecord) -> list[dict[str, Any]]:
    """Each GPU's one-time facts (name, memory) joined with its live sample, by index."""
    facts = record.facts.get("gpus") or []
    samples = {g.get("index"): g for g in record.sample.get("gpus") or [] if isinstance(g, dict)}
    out = []
    for index, fact in enumerate(facts):
        fact = fact if isinstance(fact, dict) else {}
        live = samples.get(fact.get("index", index), {})
        out.append({"index": fact.get("index", index), "name": fact.get("name"),
                    "mem_gb": fact.get("mem_gb"), "mem_used_gb": live.get("mem_used_gb"),
                    "util_percent": live.get("util_percent"),
                    "temperature_c": live.get("temperature_c"), "power_w": live.get("power_w"),
                    "free": fact.get("index", index) in record.ledger.free_gpus})
    return out


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


