"""Task groups as operators read them: workflows (wfN) and arrays (arN), each with its tasks in
order, their states, and how far the whole has got."""

from __future__ import annotations

from collections import Counter
from typing import Any

from cloudq.core.model import GROUP_PREFIX, Task, TaskState, group_kind
from cloudq.errors import NotFoundError
from cloudq.master.views import Views

S = TaskState


class Groups(Views):
    def group_view(self, group: str) -> dict[str, Any]:
        """One workflow or array: its tasks in order with their states, and how far it got."""
        with self._lock:
            steps = sorted((t for t in self.tasks.values() if t.group == group), key=lambda t: t.seq)
            if not steps:
                raise NotFoundError(f"no {group_kind(group)} {group!r} (or all its tasks were forgotten)")
            return self._group(group, steps)

    def group_views(self, kind: str) -> list[dict[str, Any]]:
        """Every workflow (or array) the master still holds tasks of, oldest first."""
        prefix = GROUP_PREFIX[kind]
        with self._lock:
            groups: dict[str, list[Task]] = {}
            for task in self.tasks.values():
                if task.group is not None and task.group.startswith(prefix):
                    groups.setdefault(task.group, []).append(task)
            return [self._group(group, sorted(steps, key=lambda t: t.seq))
                    for group, steps in sorted(groups.items(), key=lambda item: int(item[0][2:]))]

    def _group(self, group: str, steps: list[Task]) -> dict[str, Any]:
        name, sep, _ = steps[0].name.partition("/")
        states = [t.state for t in steps]
        done = states.count(S.COMPLETED)
        if done == len(steps):
            state = "completed"
        elif all(s.is_final for s in states):
            state = "failed"
        elif any(s.is_active or s is S.QUEUED or s is S.RETRYING for s in states):
            state = "running"
        else:
            state = "waiting"
        return {
            "group": group, "kind": group_kind(group), "name": name if sep else None,
            "state": state, "done": done, "counts": dict(Counter(s.value for s in states)),
            "steps": [{"step": t.name.partition("/")[2] if sep else t.name, "id": t.id,
                       "state": t.state.value, "after": list(t.dependencies), "worker": t.worker,
                       "reason": self.view(t).get("reason") if not t.state.is_final else t.last_error}
                      for t in steps],
        }
