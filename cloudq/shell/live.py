"""What the shell knows of the master between commands: the toolbar's figures, the names Tab
completes, and the changes the notices tell.

A thread of the shell's own (the watcher) reads the master's feed (Views.feed) every TICK_S,
through the link, so the master's own shell and a remote one (`cloudq shell --master`) are the
same code: the summary, the moves since the last read (a cursor into the master's event log),
and, when the workers' counts moved or every few seconds, the workers' views and the lock
names held or waited for. It keeps
snapshots and hands notices on. The toolbar and the completer read snapshots only: a redraw or
a Tab never waits for the master.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from cloudq.commands.registry import COMMANDS
from cloudq.commands.task_syntax import request_from_args
from cloudq.core.transitions import Event
from cloudq.shell.completion import Live
from cloudq.shell.link import MasterLink
from cloudq.shell.notices import Notice, TaskFacts, task_notice, worker_notice

log = logging.getLogger("cloudq.shell")

TICK_S = 0.5  # how often the feed is read: the notices' delay, at most
WORKER_VIEWS_EVERY_S = 5.0  # worker names and labels, even when no count moved
MAX_IDS = 10_000  # task ids kept for completion, the most recent


@dataclass(frozen=True)
class Figures:
    """The toolbar's numbers, as read at `at` (this machine's clock)."""

    workers_up: int = 0
    workers_total: int = 0
    running: int = 0
    queued: int = 0
    held: int = 0
    dead: int = 0
    oldest_wait_s: float | None = None  # of the longest-waiting queued task, at `at`
    at: float = 0.0
    error: str | None = None  # the last read failed: the figures are older than `at`


class Watcher:
    def __init__(self, link: MasterLink, announce: Callable[[list[Notice]], None],
                 clock: Callable[[], float] = time.time) -> None:
        self._link = link
        self._announce = announce
        self._clock = clock
        self._lock = threading.Lock()
        self._ids: dict[str, int] = {}  # id -> seq, for "most recent first"
        self._last_seq = 0  # the newest task id's number, as last read
        self._workers: dict[str, str] = {}  # name -> status, from the last worker views
        self._labels: list[str] = []
        self._images: dict[str, None] = {}
        self._locks: dict[str, None] = {}
        self._figures = Figures()
        self._changed = threading.Condition()
        self._cursor: int | None = None  # into the master's event log; None until seeded
        self._views_at = 0.0  # when the workers' views were last read
        self._views_counts: dict[str, int] = {}  # the workers' counts by status then
        self._views_wanted = False
        self._stop = threading.Event()
        self._reading = threading.Lock()  # one read at a time: the thread's, or read_now's
        self._thread = threading.Thread(target=self._run, name="shell-watcher", daemon=True)

    # ------------------------------------------------------------------ life
    def start(self) -> Watcher:
        with self._reading:
            self._read()  # the first read seeds the ids and the cursor: no notices of the past
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
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

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        while not self._stop.wait(TICK_S):
            self.read_now()

    def read_now(self) -> None:
        """Reads the feed at once (the shell calls it after each command, so the ids a
        command just made are offered by Tab without waiting for the next tick)."""
        with self._reading:
            notices = self._read()
        if notices:
            self._announce(notices)

    def _read(self) -> list[Notice]:
        now = self._clock()
        views_due = self._views_wanted or now - self._views_at >= WORKER_VIEWS_EVERY_S
        try:
            feed = self._link.feed(self._cursor, workers=views_due)
        except Exception as err:  # noqa: BLE001 - the toolbar says so; the shell goes on
            self._figures = Figures(**{**self._figures.__dict__, "error": str(err)[:80]})
            return []
        seeding = self._cursor is None
        self._cursor = feed["cursor"]
        summary = feed["summary"]
        self._take_figures(summary, now)
        notices: list[Notice] = []
        self._learn_ids(feed.get("recent_ids"), feed.get("last_id"))
        for raw in feed["events"]:
            notice = self._apply(raw)
            if notice is not None:
                notices.append(notice)
        if feed["missed"]:
            notices.append(Notice("missed", f"{feed['missed']} more moves not told: they came "
                                            f"faster than the shell reads", at=now))
        counts = dict(summary["workers"])
        if feed["workers"] is not None:
            self._views_at, self._views_counts, self._views_wanted = now, counts, False
            notices += self._take_workers(feed["workers"], tell=not seeding)
            with self._lock:  # held or waited for now, after those typed in this shell
                self._locks.update(dict.fromkeys(feed.get("locks") or ()))
        else:  # a worker joined, was lost...: its views at the next read, not in 5 s
            self._views_wanted = counts != self._views_counts
        return notices

    def _learn_ids(self, recent: list[str] | None, last_id: str | None) -> None:
        """Task ids for completion: those the master named at the start (`recent`), then every
        id after the newest known (ids are t1, t2, ... and never reused); the MAX_IDS newest."""
        last = _seq(last_id or "")
        with self._lock:
            for task_id in recent or ():
                self._ids[task_id] = _seq(task_id)
            if recent is None:
                for seq in range(max(self._last_seq + 1, last - MAX_IDS + 1), last + 1):
                    self._ids[f"t{seq}"] = seq
            self._last_seq = max(self._last_seq, last)
            if len(self._ids) > MAX_IDS:
                for old in sorted(self._ids, key=self._ids.__getitem__)[:len(self._ids) - MAX_IDS]:
                    del self._ids[old]

    def _apply(self, raw: dict[str, Any]) -> Notice | None:
        facts = raw.pop("facts", None)
        return task_notice(Event.from_dict(raw), TaskFacts(**facts) if facts else None)

    def _take_workers(self, views: list[dict[str, Any]], tell: bool) -> list[Notice]:
        notices = []
        if tell:  # the first read is what was there before the shell: no notices
            for view in views:
                notice = worker_notice(view, self._workers.get(view["name"]))
                if notice is not None:
                    notices.append(notice)
        statuses = {view["name"]: view["status"] for view in views}
        labels = sorted({f"{k}={v}" for view in views for k, v in (view.get("labels") or {}).items()})
        with self._lock:
            self._workers = statuses
            self._labels = labels
        return notices

    def _take_figures(self, summary: dict[str, Any], now: float) -> None:
        tasks, workers = summary["tasks"], summary["workers"]
        figures = Figures(
            workers_up=sum(n for status, n in workers.items() if status != "offline"),
            workers_total=sum(workers.values()), running=tasks.get("running", 0) + tasks.get("assigned", 0),
            queued=summary.get("queued", tasks.get("queued", 0)), held=tasks.get("held", 0),
            dead=tasks.get("dead", 0), oldest_wait_s=summary.get("oldest_wait_s"), at=now)
        with self._changed:
            self._figures = figures
            self._changed.notify_all()


def _seq(task_id: str) -> int:
    digits = task_id[1:]
    return int(digits) if digits.isdigit() else 0
