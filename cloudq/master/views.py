"""What operators read: task views with the reason they wait, why, listings, workers, counts."""

from __future__ import annotations

import itertools
from typing import Any

from cloudq.errors import NotFoundError
from cloudq.master.state import MasterState
from cloudq.master.workers import WorkerStatus
from cloudq.model import Task, TaskState
from cloudq.scheduler import explain, summarise
from cloudq.transitions import Event

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
            return [self.view(self.tasks[i]) for i in self.listing_ids(state, limit)]

    def listing_ids(self, state: str | None = None, limit: int = 200) -> list[str]:
        """The ids `listing` would show, in its order: cheap, so a long listing read in pages
        builds each view only when its page is sent, not all of them under the lock."""
        with self._lock:
            if state == S.QUEUED.value:
                return list(itertools.islice(self.backlog.ordered(), limit))
            if state:
                return [t.id for t in self.tasks.values() if t.state.value == state][-limit:]
            by_state: dict[TaskState, list[str]] = {}
            for task in self.tasks.values():
                if task.state in _UNFINISHED_ORDER and task.state is not S.QUEUED:
                    by_state.setdefault(task.state, []).append(task.id)
            by_state[S.QUEUED] = list(itertools.islice(self.backlog.ordered(), limit))
            return [i for s in _UNFINISHED_ORDER for i in by_state.get(s, [])][:limit]

    def log_tail(self, task_id: str) -> str:
        with self._lock:
            task = self.get(task_id)
            live = self.live_logs.get(task_id)
            return live if live is not None else str((task.result or {}).get("log_tail") or "")

    def worker_views(self) -> list[dict[str, Any]]:
        with self._lock:
            return [w.to_dict() for w in sorted(self.workers.values(), key=lambda w: w.name)]

    def summary(self) -> dict[str, Any]:
        with self._lock:
            workers = dict.fromkeys((status.value for status in WorkerStatus), 0)  # zeros too
            for record in self.workers.values():
                workers[record.status.value] += 1
            return {
                "uptime_s": round(self.clock() - self.started_at, 1),
                "queued": len(self.backlog),
                "shapes": self.backlog.shapes(),
                "strategy": self.scheduler.strategy,
                "locks held": len(self.locks.snapshot()),
                "tasks": self.counts(),
                "workers": workers,
                "store": self.journal.stats(),
            }

    def counts(self) -> dict[str, int]:
        """Tasks by state, kept up to date by every move: O(1), however many tasks there are."""
        with self._lock:
            return {state.value: self._counts[state] for state in S}


_UNFINISHED_ORDER = (S.RUNNING, S.ASSIGNED, S.QUEUED, S.RETRYING, S.HELD, S.PENDING)


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


