"""Which pending tasks wait for which others (`--after`, `--after-any`, workflow steps).

I/O-free bookkeeping over the master's task table: what a task still waits for, whether it can
never start, and, when a task ends, who was waiting for it. The master (state.py) makes the
moves that follow: queued once nothing is left to wait for, cancelled when a task it needed
completed did not.
"""

from __future__ import annotations

from collections.abc import Mapping

from cloudq.core.model import Task, TaskState

S = TaskState


class Waits:
    def __init__(self, tasks: Mapping[str, Task]) -> None:
        self._tasks = tasks
        self.waiting: dict[str, set[str]] = {}  # task id -> pending tasks waiting for it

    def __contains__(self, task_id: object) -> bool:
        return task_id in self.waiting

    def unmet(self, task: Task) -> list[str]:
        """The tasks `task` still waits for (after: not completed; after_any: not ended)."""
        unmet = [d for d in task.after if self._state(d) is not S.COMPLETED]
        unmet += [d for d in task.after_any if not self._state(d).is_final]
        return unmet

    def broken(self, task: Task) -> str | None:
        """Why `task` can never start: a task it needs completed ended otherwise."""
        for dep_id in task.after:
            state = self._state(dep_id)
            if state.is_final and state is not S.COMPLETED:
                return f"dependency {dep_id} {state.value}"
        return None

    def park(self, task: Task) -> None:
        """A task waiting for others: found again when each of them ends."""
        for dep_id in self.unmet(task):
            self.waiting.setdefault(dep_id, set()).add(task.id)

    def forget(self, task: Task) -> None:
        """`task` waits no more (cancelled)."""
        for dep_id in task.dependencies:
            waiting = self.waiting.get(dep_id)
            if waiting is not None:
                waiting.discard(task.id)
                if not waiting:
                    del self.waiting[dep_id]

    def take(self, ended_id: str) -> list[str]:
        """Those that waited for `ended_id`, in submission order; they are looked at now."""
        return sorted(self.waiting.pop(ended_id, ()), key=_seq_of)

    def _state(self, task_id: str) -> TaskState:
        dep = self._tasks.get(task_id)
        return dep.state if dep is not None else S.COMPLETED  # forgotten: it had ended long ago


def _seq_of(task_id: str) -> int:
    return int(task_id[1:]) if task_id[1:].isdigit() else 0
