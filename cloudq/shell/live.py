"""What the shell knows of the master between commands: the toolbar's figures, the names Tab
completes, and the changes the notices tell.

The master calls `Hooks.on_event` under its lock, for every move of every task (50,000 in one
batch submit), so the hook only copies a few fields and enqueues them. A thread of the shell's
own (the watcher) takes them off, keeps its snapshots and hands notices on; once a second it
also reads `summary()` and, when the workers' counts move (or every few seconds), their views.
The toolbar and the completer read snapshots only: a redraw or a Tab never waits for the
master's lock.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import shlex
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from cloudq.commands.registry import COMMANDS
from cloudq.commands.task_syntax import request_from_args
from cloudq.shell.completion import Live
from cloudq.shell.notices import Notice, TaskFacts, task_notice, worker_notice
from cloudq.transitions import Event

log = logging.getLogger("cloudq.shell")

TICK_S = 1.0  # how often the toolbar's figures are read
WORKER_VIEWS_EVERY_S = 5.0  # worker names and labels, even when no count moved
MAX_IDS = 10_000  # task ids kept for completion, the most recent
MAX_BATCH = 10_000  # events taken off the queue before the notices of a burst go out
_FINAL_STATES = ("completed", "failed", "cancelled", "dead")
_FACT_STATES = frozenset({"assigned", "completed", "failed", "dead"})  # their notices need facts


@dataclass(frozen=True)
class Figures:
    """The toolbar's numbers, as read at `at`."""

    workers_up: int = 0
    workers_total: int = 0
    running: int = 0
    queued: int = 0
    held: int = 0
    dead: int = 0
    oldest_queued_at: float | None = None
    at: float = 0.0
    error: str | None = None  # the last read failed: the figures are older than `at`


class _Item(NamedTuple):
    event: Event
    facts: TaskFacts | None


_STOP = object()


class Watcher:
    def __init__(self, master: Any, announce: Callable[[list[Notice]], None],
                 clock: Callable[[], float] = time.time) -> None:
        self._master = master
        self._announce = announce
        self._clock = clock
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._ids: dict[str, int] = {}  # id -> seq, for "most recent first"
        self._queued: dict[str, float] = {}  # id -> queued_at, oldest first (insertion order)
        self._workers: dict[str, str] = {}  # name -> status, from the last worker views
        self._labels: list[str] = []
        self._images: dict[str, None] = {}
        self._locks: dict[str, None] = {}
        self._figures = Figures()
        self._changed = threading.Condition()
        self._worker_counts: dict[str, int] | None = None
        self._views_at = 0.0
        self._views_seen = False
        self._thread = threading.Thread(target=self._run, name="shell-watcher", daemon=True)

    # ------------------------------------------------------------------ life
    def start(self) -> Watcher:
        hooks = getattr(self._master, "hooks", None)
        if hooks is not None:  # first, so no move between the seed and the hook is missed
            hooks.on_event.append(self._on_event)
        self._seed()
        self._thread.start()
        return self

    def stop(self) -> None:
        hooks = getattr(self._master, "hooks", None)
        if hooks is not None:
            with contextlib.suppress(ValueError):
                hooks.on_event.remove(self._on_event)
        self._inbox.put(_STOP)
        self._thread.join(timeout=5)

    # ------------------------------------------------------------------ reads
    def figures(self) -> Figures:
        return self._figures

    def wait_figures(self, check: Callable[[Figures], bool], timeout: float) -> Figures | None:
        """The first figures read that pass `check`, or None after `timeout` (for tests and
        for callers that must see a change arrive)."""
        with self._changed:
            ok = self._changed.wait_for(lambda: check(self._figures), timeout)
            return self._figures if ok else None

    def live(self) -> Live:
        with self._lock:
            ids = sorted(self._ids, key=self._ids.__getitem__, reverse=True)
            return Live(task_ids=ids, workers=sorted(self._workers), labels=list(self._labels),
                        images=list(reversed(self._images)), locks=sorted(self._locks))

    def remember(self, command: str, args: Any) -> None:
        """A `task` line the operator entered: its image and locks are offered next time."""
        if command != "task":
            return
        with contextlib.suppress(Exception):  # a line the master refused: nothing to learn
            request = request_from_args(args)
            with self._lock:
                image = request["spec"].get("image")
                if image:
                    self._images.pop(image, None)
                    self._images[image] = None
                for lock in request.get("locks") or ():
                    self._locks[str(lock).partition(":")[0]] = None

    def learn_from_history(self, lines: Iterable[str]) -> None:
        parser = COMMANDS["task"].parser
        for line in lines:
            words = line.split()
            if words[:1] == ["task"]:
                with contextlib.suppress(Exception):
                    self.remember("task", parser.parse_args(shlex.split(line)[1:]))

    # ------------------------------------------------------------------ the hook
    def _on_event(self, event: Event) -> None:
        """Under the master's lock: copy what the notice needs, enqueue, nothing more."""
        facts = None
        if event.dst in _FACT_STATES:
            task = self._master.tasks.get(event.task)
            if task is not None:
                facts = TaskFacts(task.placement_attempts, task.queued_at, task.started_at,
                                  task.last_error, task.name)
        self._inbox.put(_Item(event, facts))

    # ------------------------------------------------------------------ the thread
    def _seed(self) -> None:
        try:
            self._read_figures()
            ids: list[str] = []
            for state in (None, *_FINAL_STATES):
                ids += self._master.listing_ids(state, 1000)
            queued = sorted(self._master.queued(), key=lambda t: t.queued_at or 0.0)
        except Exception as err:  # noqa: BLE001 - a shell without snapshots still works
            log.warning("the shell could not read the master's tasks: %s", err)
            return
        with self._lock:
            self._ids.update((task_id, _seq(task_id)) for task_id in ids)
            self._queued.update((task.id, task.queued_at or 0.0) for task in queued)

    def _run(self) -> None:
        next_tick = self._clock()
        while True:
            try:
                item = self._inbox.get(timeout=max(next_tick - self._clock(), 0.0))
            except queue.Empty:
                item = None
            if item is _STOP:
                return
            notices: list[Notice] = []
            taken = 0
            while item is not None and item is not _STOP and taken < MAX_BATCH:
                notice = self._apply(item)
                if notice is not None:
                    notices.append(notice)
                taken += 1
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    item = None
            if item is _STOP:
                return
            if item is not None:
                self._inbox.put(item)  # the rest of a long burst: the next round
            if self._clock() >= next_tick:
                notices += self._tick()
                next_tick = self._clock() + TICK_S
            if notices:
                self._announce(notices)

    def _apply(self, item: _Item) -> Notice | None:
        event = item.event
        with self._lock:
            if event.dst == "queued":
                self._queued.pop(event.task, None)
                self._queued[event.task] = event.time
            elif event.src == "queued":
                self._queued.pop(event.task, None)
            if event.task not in self._ids:
                self._ids[event.task] = _seq(event.task)
                if len(self._ids) > MAX_IDS:
                    for old in sorted(self._ids, key=self._ids.__getitem__)[:len(self._ids) - MAX_IDS]:
                        del self._ids[old]
        return task_notice(event, item.facts)

    def _tick(self) -> list[Notice]:
        try:
            counts = self._read_figures()
            now = self._clock()
            if counts == self._worker_counts and now - self._views_at < WORKER_VIEWS_EVERY_S:
                return []
            self._worker_counts = counts
            self._views_at = now
            views = self._master.worker_views()
        except Exception as err:  # noqa: BLE001 - the toolbar says so; the shell goes on
            self._figures = Figures(**{**self._figures.__dict__, "error": str(err)[:80]})
            return []
        notices = []
        if self._views_seen:  # the first read is what was there before the shell: no notices
            for view in views:
                notice = worker_notice(view, self._workers.get(view["name"]))
                if notice is not None:
                    notices.append(notice)
        self._views_seen = True
        statuses = {view["name"]: view["status"] for view in views}
        labels = sorted({f"{k}={v}" for view in views for k, v in (view.get("labels") or {}).items()})
        with self._lock:
            self._workers = statuses
            self._labels = labels
        return notices

    def _read_figures(self) -> dict[str, int]:
        summary = self._master.summary()
        tasks, workers = summary["tasks"], summary["workers"]
        with self._lock:
            oldest = next(iter(self._queued.values()), None)
        figures = Figures(
            workers_up=sum(n for status, n in workers.items() if status != "offline"),
            workers_total=sum(workers.values()), running=tasks.get("running", 0) + tasks.get("assigned", 0),
            queued=summary.get("queued", tasks.get("queued", 0)), held=tasks.get("held", 0),
            dead=tasks.get("dead", 0), oldest_queued_at=oldest, at=self._clock())
        with self._changed:
            self._figures = figures
            self._changed.notify_all()
        return dict(workers)


def _seq(task_id: str) -> int:
    digits = task_id[1:]
    return int(digits) if digits.isdigit() else 0
