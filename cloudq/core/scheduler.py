"""Placement: which queued task goes to which worker, with no I/O.

Queued tasks are grouped by *shape* (resources, target, labels, locks, required
capabilities): tasks of one shape are interchangeable for placement, so when the head of a
shape fits nowhere, every task behind it is skipped at no cost. A pass merges the heads of all
shapes in queue order (class, priority, FIFO) and places each head on the first worker that
fits ("pack") or the one with most room ("spread"). A blocked head does not stop tasks of other
shapes behind it (backfill); once it has waited longer than the aging limit it reserves the
best worker for itself, so small tasks can no longer starve it.

A pass costs O(shapes + placements x open workers), never O(queued tasks).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from cloudq import defaults
from cloudq.core.ledger import EPSILON, Ledger, LockTable, held_reason
from cloudq.core.model import LockSpec, Resources, Task
from cloudq.core.queue import Key, TaskQueue
from cloudq.specs.roots import describe_capability

ShapeKey = tuple[Resources, str | None, tuple[tuple[str, str], ...], tuple[LockSpec, ...], frozenset[str]]

STRATEGIES = ("pack", "spread")


class Shape:
    """What placement looks at: resources, target worker, labels, locks, capabilities.

    The Backlog keeps one Shape object per distinct key while tasks of that shape wait, and
    hashes it by identity: a key tuple would be hashed again (fields and all) on every lookup,
    several times per task."""

    __slots__ = ("key", "capabilities")

    def __init__(self, key: ShapeKey) -> None:
        self.key = key
        self.capabilities = key[4]

    def __str__(self) -> str:
        need, target, labels, locks, capabilities = self.key
        parts = [f"{need.cpu_cores:g}c {need.mem_gb:g}G" + (f" {need.gpus}g" if need.gpus else "")]
        parts += [f"on {target}"] if target else []
        parts += [",".join(f"{k}={v}" for k, v in labels)] if labels else []
        parts += [f"lock {','.join(lock.name for lock in locks)}"] if locks else []
        parts += [f"needs {','.join(sorted(capabilities))}"] if capabilities else []
        return " ".join(parts)


def shape_key(task: Task, capabilities: frozenset[str]) -> ShapeKey:
    return (
        task.resources,
        task.target_worker,
        tuple(sorted(task.labels.items())) if task.labels else (),
        task.locks,
        capabilities,
    )


@dataclass(frozen=True, slots=True)
class Placement:
    task_id: str
    worker: str
    gpu_indices: tuple[int, ...]


class Backlog:
    """The queued tasks, one TaskQueue per shape, plus the last known reason each shape waits."""

    def __init__(self) -> None:
        self._shapes: dict[ShapeKey, Shape] = {}  # the waiting shapes, interned
        self._groups: dict[Shape, TaskQueue] = {}
        self._shape_of: dict[str, Shape] = {}
        self.reasons: dict[Shape, str] = {}

    def add(self, task: Task, capabilities: frozenset[str]) -> None:
        shape = self._shape(shape_key(task, capabilities))
        self._groups[shape].push(task.id, task.order_key)
        self._shape_of[task.id] = shape

    def add_many(self, tasks: Iterable[tuple[Task, frozenset[str]]]) -> None:
        """add() for many tasks at once, with one heap build per shape (a restart)."""
        by_shape: dict[Shape, list[tuple[str, int]]] = {}
        for task, capabilities in tasks:
            shape = self._shape(shape_key(task, capabilities))
            by_shape.setdefault(shape, []).append((task.id, task.order_key))
            self._shape_of[task.id] = shape
        for shape, items in by_shape.items():
            self._groups[shape].push_many(items)

    def _shape(self, key: ShapeKey) -> Shape:
        """The interned shape of `key`, with its (maybe new, empty) queue."""
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._shapes[key] = Shape(key)
            self._groups[shape] = TaskQueue()
        return shape

    def remove(self, task_id: str) -> bool:
        shape = self._shape_of.pop(task_id, None)
        if shape is None:
            return False
        group = self._groups[shape]
        group.remove(task_id)
        if not group:
            self._forget(shape)
        return True

    def pop_head(self, shape: Shape) -> str:
        group = self._groups[shape]
        task_id = group.pop()
        assert task_id is not None
        del self._shape_of[task_id]
        if not group:
            self._forget(shape)
        return task_id

    def _forget(self, shape: Shape) -> None:
        del self._groups[shape]
        del self._shapes[shape.key]
        self.reasons.pop(shape, None)

    def heads(self) -> list[tuple[Key, Shape]]:
        return [(group.peek_key(), shape) for shape, group in self._groups.items()]

    def head_of(self, shape: Shape) -> str | None:
        group = self._groups.get(shape)
        return None if group is None else group.peek()

    def reason_for(self, task_id: str) -> str | None:
        shape = self._shape_of.get(task_id)
        return None if shape is None else self.reasons.get(shape)

    def ordered(self) -> Iterator[str]:
        """Every queued id in queue order (merges the shapes' sorted snapshots)."""
        runs = [group.ordered() for group in self._groups.values()]
        return (task_id for _, task_id in heapq.merge(*runs))

    def waiting_on(self, lock: str) -> Iterator[str]:
        """The queued ids that ask for lock `lock`, in queue order: only their shapes are read."""
        runs = [group.ordered() for shape, group in self._groups.items()
                if any(spec.name == lock for spec in shape.key[3])]
        return (task_id for _, task_id in heapq.merge(*runs))

    def lock_names(self) -> set[str]:
        """Every lock some queued task asks for."""
        return {spec.name for shape in self._groups for spec in shape.key[3]}

    def lock_waiters(self) -> dict[str, int]:
        """How many queued tasks ask for each lock: O(shapes), not O(queued tasks)."""
        out: dict[str, int] = {}
        for shape, group in self._groups.items():
            for spec in shape.key[3]:
                out[spec.name] = out.get(spec.name, 0) + len(group)
        return out

    def shape_of(self, task_id: str) -> Shape | None:
        return self._shape_of.get(task_id)

    def ids_of(self, shape: Shape) -> list[str]:
        """The queued tasks of one shape (any order)."""
        group = self._groups.get(shape)
        return list(group) if group is not None else []

    def shapes(self) -> int:
        return len(self._groups)

    def describe(self) -> list[tuple[Shape, int, str]]:
        """Each waiting shape with how many tasks wait in it and its last reason, the most
        crowded first (for logs: O(shapes))."""
        out = [(shape, len(group), self.reasons.get(shape, "not looked at yet"))
               for shape, group in self._groups.items()]
        return sorted(out, key=lambda item: -item[1])

    def __len__(self) -> int:
        return len(self._shape_of)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._shape_of


def static_misfit(task: Task, ledger: Ledger, required: frozenset[str]) -> str | None:
    """Reasons that no amount of free capacity would fix."""
    if task.target_worker and task.target_worker != ledger.name:
        return f"Wrong worker: task is for {task.target_worker}"
    for key, value in task.labels.items():
        have = ledger.labels.get(key)
        if have != value:
            return f"Label mismatch: task needs {key}={value}, worker has {key}={have or '(unset)'}"
    missing = required - ledger.capabilities
    if missing:
        return f"Missing capability: worker lacks {', '.join(map(describe_capability, sorted(missing)))}"
    return None


def misfit(task: Task, ledger: Ledger, required: frozenset[str]) -> str | None:
    return static_misfit(task, ledger, required) or ledger.misfit(task.resources)


def explain(task: Task, ledgers: Iterable[Ledger], required: frozenset[str]) -> dict[str, str]:
    """Per worker, why `task` does not fit there now (workers where it fits are left out)."""
    out = {}
    for ledger in sorted(ledgers, key=lambda item: item.name):
        reason = misfit(task, ledger, required)
        if reason:
            out[ledger.name] = reason
    return out


def never_fits(task: Task, ledgers: Iterable[Ledger], required: frozenset[str]) -> str | None:
    """Why no registered worker could run `task` even with nothing else on it, or None when
    one could (then it waits for room, which is another thing to tell an operator). Offline
    workers count: they are expected back with what they registered."""
    target = task.target_worker
    candidates = [ledger for ledger in ledgers if target in (None, ledger.name)]
    if not candidates:
        return None  # no workers, or the target has not registered: the reason says so
    lacking: dict[str, str] = {}
    roomy = []
    for ledger in candidates:
        why = static_misfit(task, ledger, required)
        if why:
            lacking[ledger.name] = why
        elif ledger.misfit_when_empty(task.resources) is None:
            return None
        else:
            roomy.append(ledger)
    if not roomy:
        shown = "; ".join(f"{name}: {why}" for name, why in sorted(lacking.items())[:3])
        return shown if target else f"no registered worker can run it: {shown}"
    return _short_of(task.resources, roomy, target)


def _short_of(need: Resources, ledgers: list[Ledger], target: str | None) -> str:
    """What the task needs beyond the biggest worker, each resource in its own words:
    "needs 8 cores; the largest worker has 4"."""
    who = target or "the largest worker"
    gpus = max(sum(mem + EPSILON >= need.gpu_mem_gb for mem in ledger.gpu_mem_gb) for ledger in ledgers)
    gpu_noun = f"GPUs with {need.gpu_mem_gb:g} GB each" if need.gpu_mem_gb else "GPUs"
    checks = (  # (needed, most any worker has, unit, noun)
        (need.cpu_cores, max(ledger.cpu_cores for ledger in ledgers), "", "cores"),
        (need.mem_gb, max(ledger.mem_gb for ledger in ledgers), " GB", "memory"),
        (need.storage_gb, max(ledger.storage_gb for ledger in ledgers), " GB", "storage"),
        (need.gpus, gpus, "", gpu_noun),
    )
    parts = [f"needs {want:g}{unit} {noun}; {who} has {have:g}{unit}"
             for want, have, unit, noun in checks if want > have + EPSILON]
    if parts:
        return "; ".join(parts)
    return (f"no registered worker has {need.cpu_cores:g} cores, {need.mem_gb:g} GB memory, "
            f"{need.storage_gb:g} GB storage and {need.gpus} {gpu_noun} at once")


def summarise(reasons: Mapping[str, str], workers: int, limit: int = 3) -> str:
    if workers == 0:
        return "No workers available"
    shown = [f"{name}: {why}" for name, why in list(reasons.items())[:limit]]
    more = len(reasons) - limit
    tail = f"; and {more} more" if more > 0 else ""
    return f"Fits on none of {workers} workers. " + "; ".join(shown) + tail


class Scheduler:
    def __init__(self, strategy: str = defaults.PLACEMENT_STRATEGY, aging_s: float = defaults.AGING_S):
        if strategy not in STRATEGIES:
            raise ValueError(f"placement strategy must be one of {STRATEGIES}, got {strategy!r}")
        self.strategy = strategy
        self.aging_s = aging_s
        # The last pass's heads that wait for a lock: task id -> (lock name, its holders).
        self.lock_blocked: dict[str, tuple[str, tuple[str, ...]]] = {}

    def place(
        self,
        backlog: Backlog,
        tasks: Mapping[str, Task],
        ledgers: Mapping[str, Ledger],
        locks: LockTable,
        now: float,
        absent: Callable[[str], str] | None = None,
    ) -> list[Placement]:
        """One pass: books placed tasks on their ledgers and locks, pops them from the backlog,
        records why each blocked shape waits, and returns the placements. `absent(name)` says
        why a task's target worker is not among `ledgers` (offline, never registered)."""
        open_workers = [ledger for ledger in ledgers.values() if ledger.slots_free > 0]
        open_workers.sort(key=lambda ledger: ledger.name)
        reserved: set[str] = set()
        placements: list[Placement] = []
        self.lock_blocked = {}
        heads = backlog.heads()
        heapq.heapify(heads)
        while heads and open_workers:
            _, shape = heapq.heappop(heads)
            task = tasks[backlog.head_of(shape)]  # type: ignore[index]
            target = task.target_worker
            if target is not None and target not in ledgers:  # only that worker could help
                backlog.reasons[shape] = _absent(target, absent)
                continue
            held = locks.blocking(task.locks) if task.locks else None
            if held:  # no worker can help: wait for the lock, reserve nothing
                lock, holders = held
                backlog.reasons[shape] = held_reason(lock, holders)
                self.lock_blocked[task.id] = (lock.name, tuple(holders))
                continue
            if target is not None:
                chosen, reason = self._choose_target(task, shape.capabilities, ledgers[target], reserved)
            else:
                chosen, reason = self._choose(task, shape.capabilities, open_workers, reserved,
                                              len(ledgers))
            if chosen is None:
                backlog.reasons[shape] = reason
                if task.queued_at is not None and now - task.queued_at >= self.aging_s:
                    self._reserve_for(task, shape.capabilities, ledgers, reserved)
                continue
            backlog.pop_head(shape)
            booking = chosen.book(task.id, task.resources)
            locks.acquire(task.id, task.locks)
            placements.append(Placement(task.id, chosen.name, booking.gpu_indices))
            if chosen.slots_free <= 0:
                open_workers.remove(chosen)
            head = backlog.head_of(shape)
            if head is not None:
                heapq.heappush(heads, (tasks[head].order_key, shape))
        for _, shape in heads:  # the pass ran out of open workers
            target = tasks[backlog.head_of(shape)].target_worker  # type: ignore[index]
            if target is not None and target not in ledgers:
                backlog.reasons[shape] = _absent(target, absent)
            else:
                backlog.reasons[shape] = _all_full(len(ledgers))
        return placements

    def pick(self, task: Task, fitting: list[Ledger]) -> str | None:
        """Which of the workers `task` fits on now the strategy would choose (for a dry run)."""
        if not fitting:
            return None
        fresh = [ledger for ledger in fitting if ledger.name not in task.tried_workers] or fitting
        if self.strategy == "pack":
            return min(fresh, key=lambda ledger: ledger.name).name
        return max(fresh, key=lambda ledger: (ledger.free_cpu, ledger.slots_free, ledger.free_mem)).name

    @staticmethod
    def _choose_target(
        task: Task, required: frozenset[str], ledger: Ledger, reserved: set[str]
    ) -> tuple[Ledger | None, str]:
        """A task for one worker: that worker's own reason is the reason, word for word."""
        if ledger.name in reserved:
            return None, "Reserved for an older task that waited too long"
        why = misfit(task, ledger, required)
        return (None, why) if why else (ledger, "")

    def _choose(
        self,
        task: Task,
        required: frozenset[str],
        open_workers: list[Ledger],
        reserved: set[str],
        total_workers: int,
    ) -> tuple[Ledger | None, str]:
        fitting: list[Ledger] = []
        reasons: dict[str, str] = {}
        for ledger in open_workers:
            if ledger.name in reserved:
                reasons[ledger.name] = "Reserved for an older task that waited too long"
                continue
            why = misfit(task, ledger, required)
            if why:
                reasons[ledger.name] = why
                continue
            if self.strategy == "pack" and ledger.name not in task.tried_workers:
                return ledger, ""  # first fit: fills workers in name order
            fitting.append(ledger)
        if not fitting:
            if len(open_workers) < total_workers:
                reasons.setdefault("others", _all_full(total_workers - len(open_workers)))
            return None, summarise(reasons, total_workers)
        fresh = [ledger for ledger in fitting if ledger.name not in task.tried_workers] or fitting
        if self.strategy == "pack":
            return fresh[0], ""
        return max(fresh, key=lambda ledger: (ledger.free_cpu, ledger.slots_free, ledger.free_mem)), ""

    def _reserve_for(
        self, task: Task, required: frozenset[str], ledgers: Mapping[str, Ledger], reserved: set[str]
    ) -> None:
        """Keeps backfill off the worker that could hold `task` soonest (most free CPU)."""
        could = [
            ledger
            for ledger in ledgers.values()
            if ledger.name not in reserved
            and static_misfit(task, ledger, required) is None
            and ledger.misfit_when_empty(task.resources) is None
        ]
        if could:
            reserved.add(max(could, key=lambda ledger: (ledger.free_cpu, ledger.name)).name)


def _absent(target: str, absent: Callable[[str], str] | None) -> str:
    return absent(target) if absent else f"{target} is not available"


def _all_full(count: int) -> str:
    if count == 0:
        return "No workers available"
    return f"All {count} workers with room are taken: every worker is at its task limit"
