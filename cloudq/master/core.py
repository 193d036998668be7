"""The master: every task, every worker, every reservation, and the rules that change them.
Network, threads and disk stay outside: callers (the RPC service, the shell, the processor)
call these methods, and every change is journalled before it is acknowledged (state.py says
how). This module has the task operations; delivery.py the worker protocol; views.py reads.
"""

from __future__ import annotations

from typing import Any

from cloudq.errors import NotFoundError, QueueFullError, ValidationError
from cloudq.master.delivery import Delivery
from cloudq.master.state import Hooks, MasterConfig
from cloudq.master.views import Views
from cloudq.master.workers import WorkerRecord
from cloudq.model import Task, TaskState, new_task

S = TaskState

__all__ = ["Hooks", "Master", "MasterConfig"]


class Master(Delivery, Views):
    # ------------------------------------------------------------------ tasks
    def submit(self, requests: list[Any]) -> list[Task]:
        """Validates every request first: a batch is accepted whole or refused whole."""
        if not isinstance(requests, list) or not requests:
            raise ValidationError("submit needs a non-empty list of tasks")
        with self._change() as now:
            if len(self.backlog) + len(requests) > self.config.max_queued:
                raise QueueFullError(
                    f"queue is full: {len(self.backlog)} queued, limit {self.config.max_queued}; "
                    f"refused {len(requests)} new task(s)"
                )
            tasks = []
            for index, raw in enumerate(requests):
                self._last_seq += 1
                seq = self._last_seq
                try:
                    tasks.append(new_task(raw, task_id=f"t{seq}", seq=seq, now=now))
                except ValidationError as err:
                    prefix = f"task {index + 1} of {len(requests)}: " if len(requests) > 1 else ""
                    raise ValidationError(f"{prefix}{err}") from None
            for task in tasks:
                self.tasks[task.id] = task
                self._counts[S.PENDING] += 1
                self._move(task, S.QUEUED, now, "submitted")
            self._place(now)
        return tasks

    def cancel(self, task_id: str) -> Task:
        with self._change() as now:
            task = self.get(task_id)
            if task.state.is_final:
                raise ValidationError(f"task {task_id} is already {task.state.value}")
            if task.state.is_active:  # finished when the worker confirms the kill
                self._tell(task.worker, {"cancel": task.id, "attempt": task.attempt})
            self._move(task, S.CANCELLED, now, "cancelled by an operator")
        return task

    def release_worker(self, name: str) -> None:
        """Lets a quarantined or draining worker take tasks again."""
        with self._change() as now:
            record = self._known_worker(name)
            if not (record.quarantined or record.draining):
                raise ValidationError(f"worker {name} is neither quarantined nor draining")
            record.quarantined = record.draining = False
            record.quarantine_reason = ""
            self._flags_changed()
            record.consecutive_failures = 0
            self._place(now)

    def drain_worker(self, name: str) -> None:
        """The worker finishes what it runs and is given nothing new."""
        with self._change():
            self._known_worker(name).draining = True
            self._flags_changed()

    def _known_worker(self, name: str) -> WorkerRecord:
        record = self.workers.get(name)
        if record is None:
            raise NotFoundError(f"no worker {name!r}")
        return record

