"""The master: every task, every worker, every reservation, and the rules that change them.
Network, threads and disk stay outside: callers (the RPC service, the shell, the processor)
call these methods, and every change is journalled before it is acknowledged (state.py says
how). This module has the task operations; delivery.py the worker protocol; views.py reads.
"""

from __future__ import annotations

from typing import Any

from cloudq.core.model import (
    MAX_ARRAY,
    Priority,
    QueueClass,
    Task,
    TaskState,
    choice,
    expand_array,
    group_kind,
    new_task,
)
from cloudq.errors import NotFoundError, QueueFullError, ValidationError
from cloudq.master.delivery import Delivery
from cloudq.master.groups import Groups
from cloudq.master.state import Hooks, MasterConfig, awaiting_kill
from cloudq.master.workers import WorkerRecord

S = TaskState
HOLDABLE = (S.QUEUED, S.RETRYING)
RETRYABLE = (S.FAILED, S.DEAD, S.CANCELLED)
WAITING = (S.QUEUED, S.RETRYING, S.HELD)  # not on a worker yet: its priority may change

__all__ = ["Hooks", "Master", "MasterConfig"]


class Master(Delivery, Groups):
    # ------------------------------------------------------------------ tasks
    def submit(self, requests: list[Any]) -> list[Task]:
        """Validates every request first: a batch is accepted whole or refused whole."""
        if not isinstance(requests, list) or not requests:
            raise ValidationError("submit needs a non-empty list of tasks")
        with self._change() as now:
            return self._submit(requests, now)

    def submit_workflow(self, steps: list[tuple[str, dict[str, Any], list[str], list[str]]]
                        ) -> tuple[str, list[Task]]:
        """A workflow's steps (name, request, after, after_any; `after` lists step names, each
        before it), in one batch: the step names become the task ids the master gives them.
        Returns the workflow's id (wfN, N the first step's number) and its tasks."""
        if not steps:
            raise ValidationError("a workflow needs at least one step")
        with self._change() as now:
            first = self._last_seq + 1
            ids = {name: f"t{first + index}" for index, (name, *_) in enumerate(steps)}
            requests = [{**request, "after": [ids[n] for n in after], "after_any": [ids[n] for n in any_]}
                        for _, request, after, any_ in steps]
            workflow = f"wf{first}"
            return workflow, self._submit(requests, now, workflow)

    def submit_array(self, request: dict[str, Any], count: int, max_running: int | None = None
                     ) -> tuple[str, list[Task]]:
        """`count` copies of a task ({index} put in its spec and name) in one batch, as array
        arN; with `max_running`, at most that many of them run at once (a lock of the array's
        own, so they wait for each other as for any lock, and say so)."""
        if max_running is not None and not 1 <= max_running <= MAX_ARRAY:
            raise ValidationError(f"--max-running must be from 1 to {MAX_ARRAY}, not {max_running}")
        if not isinstance(request, dict):
            raise ValidationError("an array needs a task")
        requests = expand_array(request, count)
        with self._change() as now:
            array = f"ar{self._last_seq + 1}"
            if max_running is not None:
                lock = {"name": f"array:{array}", "holders": max_running}
                requests = [{**r, "locks": [*(r.get("locks") or []), lock]} for r in requests]
            return array, self._submit(requests, now, array)

    def _submit(self, requests: list[Any], now: float, group: str | None = None) -> list[Task]:
        if len(self.backlog) + len(requests) > self.config.max_queued:
            raise QueueFullError(
                f"queue is full: {len(self.backlog)} queued, limit {self.config.max_queued}; "
                f"refused {len(requests)} new task(s)"
            )
        tasks = []
        first = self._last_seq + 1
        for index, raw in enumerate(requests):
            prefix = f"task {index + 1} of {len(requests)}: " if len(requests) > 1 else ""
            try:
                task = new_task(raw, task_id=f"t{first + index}", seq=first + index, now=now)
                self._check_dependencies(task, first)
            except ValidationError as err:
                raise ValidationError(f"{prefix}{err}") from None
            task.group = group
            tasks.append(task)
        self._last_seq = first + len(tasks) - 1
        for task in tasks:
            self.tasks[task.id] = task
            self._counts[S.PENDING] += 1
            waits = self.waits.unmet(task) if task.dependencies else []
            if waits:
                self.waits.park(task)
                self._note(task, now, f"submitted; waits for {', '.join(waits)}")
            else:
                self._move(task, S.QUEUED, now, "submitted")
        self._place(now)
        return tasks

    def _check_dependencies(self, task: Task, batch_first: int) -> None:
        """Each task waited for exists (or comes earlier in this batch), and a task that
        must complete has not already ended otherwise."""
        for dep_id in task.dependencies:
            number = int(dep_id[1:])
            if batch_first <= number < task.seq:
                continue  # earlier in this batch
            if number >= task.seq or dep_id not in self.tasks:
                raise ValidationError(f"waits for {dep_id}, which is not a task here")
        if broken := self.waits.broken(task):
            raise ValidationError(f"waits for {broken.removeprefix('dependency ')}: it can never "
                                  f"run; nothing was submitted")

    def cancel(self, task_id: str) -> Task:
        with self._change() as now:
            task = self.get(task_id)
            if task.state.is_final:
                raise ValidationError(f"task {task_id} is already {task.state.value}")
            self._cancel(task, now, "cancelled by an operator")
        return task

    def _cancel(self, task: Task, now: float, why: str) -> None:
        """A task not yet ended is cancelled: it stops waiting for others, and a running one
        is told to stop (it is finished when its worker confirms the kill)."""
        if task.state is S.PENDING:
            self.waits.forget(task)
        if task.state.is_active:
            self._tell(task.worker, {"cancel": task.id, "attempt": task.attempt})
        self._move(task, S.CANCELLED, now, why)

    def cancel_group(self, group: str) -> list[Task]:
        """Cancels every task of a workflow or array not yet ended, the last first (so each
        is cancelled by the operator, not by a step before it)."""
        with self._change() as now:
            steps = sorted((t for t in self.tasks.values() if t.group == group),
                           key=lambda t: t.seq, reverse=True)
            if not steps:
                raise NotFoundError(f"no workflow or array {group!r}")
            cancelled = []
            for task in steps:
                if not task.state.is_final:
                    self._cancel(task, now, f"{group_kind(group)} {group} cancelled by an operator")
                    cancelled.append(task)
        return cancelled[::-1]

    def hold(self, task_id: str) -> Task:
        """Parks a waiting task: it is not placed until `release ID`."""
        with self._change() as now:
            task = self._in_state(task_id, HOLDABLE, "held")
            self._move(task, S.HELD, now, "held by an operator")
        return task

    def release_task(self, task_id: str) -> Task:
        """A held task goes back to the queue, where its class, priority and submission order
        put it; its time in the queue starts again."""
        with self._change() as now:
            task = self._in_state(task_id, (S.HELD,), "released")
            self._move(task, S.QUEUED, now, "released by an operator")
            self._place(now)
        return task

    def release(self, name: str) -> str:
        """`release NAME`: a held task, or a quarantined or draining worker. Returns which
        ("task" or "worker"). A name that is both is refused rather than guessed."""
        with self._lock:
            is_task, is_worker = name in self.tasks, name in self.workers
        if is_task and is_worker:
            raise ValidationError(f"{name} is both a task and a worker; rename the worker")
        if is_task:
            self.release_task(name)
            return "task"
        if is_worker:
            self.release_worker(name)
            return "worker"
        raise NotFoundError(f"no task or worker {name!r}")

    def retry(self, task_id: str) -> Task:
        """A failed, dead or cancelled task is queued again for one more attempt (its retry
        budget is not reset: should that attempt fail, it is dead again)."""
        with self._change() as now:
            task = self._in_state(task_id, RETRYABLE, "retried")
            if awaiting_kill(task):
                raise ValidationError(f"task {task_id} is still being stopped on {task.worker}; "
                                      f"retry it once the worker confirms")
            self._move(task, S.QUEUED, now, "retried by an operator")
            self._place(now)
        return task

    def set_priority(self, task_id: str, priority: str, queue: str | None = None) -> Task:
        """A waiting task's priority (and queue class) changes; a queued one is re-sorted."""
        new_priority = choice(Priority, "priority", priority)
        new_queue = choice(QueueClass, "queue class", queue) if queue is not None else None
        with self._change() as now:
            task = self._in_state(task_id, WAITING, "re-prioritised")
            before = f"{task.queue}/{task.priority}"
            queued = self.backlog.remove(task.id)
            self.waiting.leave(task)
            task.priority = new_priority
            task.queue = new_queue or task.queue
            task.request_json = None  # the request half changed: encode it again
            if queued:
                self.backlog.add(task, self._required(task))
                self.waiting.enter(task, task.queued_at or now)
            self._note(task, now, f"priority {before} -> {task.queue}/{task.priority} by an operator")
            self._place(now)
        return task

    def _in_state(self, task_id: str, states: tuple[TaskState, ...], verb: str) -> Task:
        task = self.get(task_id)
        if task.state not in states:
            names = [state.value for state in states]
            allowed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
            raise ValidationError(f"task {task_id} is {task.state.value}; only a task that is "
                                  f"{allowed} can be {verb}")
        return task

    def release_worker(self, name: str) -> None:
        """Lets a quarantined or draining worker take tasks again."""
        with self._change() as now:
            record = self._known_worker(name)
            if not (record.quarantined or record.draining):
                raise ValidationError(f"worker {name} is neither quarantined nor draining")
            was = "quarantine" if record.quarantined else "drain"
            record.quarantined = record.draining = False
            record.quarantine_reason = ""
            self._flags_changed()
            self._worker_event(name, "released", f"from {was} by an operator", now)
            record.consecutive_failures = 0
            self._place(now)

    def drain_worker(self, name: str) -> None:
        """The worker finishes what it runs and is given nothing new."""
        with self._change() as now:
            self._known_worker(name).draining = True
            self._flags_changed()
            self._worker_event(name, "draining", "by an operator", now)

    def _known_worker(self, name: str) -> WorkerRecord:
        record = self.workers.get(name)
        if record is None:
            raise NotFoundError(f"no worker {name!r}")
        return record

