"""Task listings in pages: a reply over RPC must stay well under the frame limit (64 MiB), and
a long listing (or a few tasks with 128 KiB argvs) would not.

Over RPC, a listing answers with as many tasks as fit in PAGE_BYTES and keeps the ids of the
rest, in order, as a snapshot under a random cursor; `queue --cursor C --offset N` serves the
next page from it (Result.next_argv carries that line, so a client needs to know nothing about
it). Every task is listed once, in the order of the first reply; each page shows the tasks as
they are when it is read. A task forgotten in between (pruned) is left out. The shell runs in
the master's process, with no frame to fit in, and gets the whole listing at once.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from cloudq.commands.columns import row
from cloudq.commands.gate import unwrap
from cloudq.commands.registry import Context, Result
from cloudq.errors import NotFoundError, ValidationError

PAGE_BYTES = 8 << 20  # encoded size of one page: an eighth of the frame limit
SNAPSHOT_IDLE_S = 300.0  # a cursor not read for this long is forgotten
MAX_SNAPSHOTS = 32  # cursors kept at once; a new one displaces the least recently read


@dataclass
class _Snapshot:
    master: Any
    ids: list[str]
    columns: list[str]
    read_at: float = field(default_factory=time.monotonic)


class Snapshots:
    """Cursors of listings being read page by page, shared by every connection."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, _Snapshot] = {}

    def keep(self, master: Any, ids: list[str], columns: list[str]) -> str:
        cursor = secrets.token_hex(12)  # never starts with "-", which argparse would take for a flag
        with self._lock:
            self._forget_idle()
            while len(self._items) >= MAX_SNAPSHOTS:
                oldest = min(self._items, key=lambda c: self._items[c].read_at)
                del self._items[oldest]
            self._items[cursor] = _Snapshot(unwrap(master), ids, columns)
        return cursor

    def get(self, master: Any, cursor: str) -> _Snapshot:
        with self._lock:
            self._forget_idle()
            snapshot = self._items.get(cursor)
            if snapshot is None or snapshot.master is not unwrap(master):
                raise ValidationError("this listing's cursor has expired or is unknown; "
                                      "run the command again")
            snapshot.read_at = time.monotonic()
            return snapshot

    def drop(self, cursor: str) -> None:
        with self._lock:
            self._items.pop(cursor, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def _forget_idle(self) -> None:
        now = time.monotonic()
        for cursor in [c for c, s in self._items.items() if now - s.read_at > SNAPSHOT_IDLE_S]:
            del self._items[cursor]


SNAPSHOTS = Snapshots()


def task_listing(ctx: Context, ids: list[str], columns: list[str], title: str,
                 status: str = "") -> Result:
    """A Result listing tasks (by id, in order) under `columns`: all of them in the shell, the
    first page over RPC (with the line for the next one when they do not all fit). Views are
    made as the page fills, so a long listing costs its first page, not all of it."""
    views = _current_views(ctx.master, ids)
    if ctx.local:
        return _result([v for v in views if v is not None], columns, title, status)
    page, read = _fill(views)
    if read == len(ids):
        return _result(page, columns, title, status)
    cursor = SNAPSHOTS.keep(ctx.master, ids, columns)
    return _result(page, columns, title, status, _next(cursor, read))


def next_page(ctx: Context, cursor: str, offset: int) -> Result:
    """The page of a kept listing that starts at `offset`."""
    snapshot = SNAPSHOTS.get(ctx.master, cursor)
    page, read = _fill(_current_views(ctx.master, snapshot.ids[offset:]))
    if offset + read >= len(snapshot.ids):
        SNAPSHOTS.drop(cursor)
        return _result(page, snapshot.columns, "", "")
    return _result(page, snapshot.columns, "", "", _next(cursor, offset + read))


def _current_views(master: Any, ids: Iterable[str]) -> Iterator[dict[str, Any] | None]:
    for task_id in ids:
        try:
            yield master.view(master.get(task_id))
        except NotFoundError:  # forgotten since the listing was made
            yield None


def _fill(views: Iterable[dict[str, Any] | None]) -> tuple[list[dict[str, Any]], int]:
    """As many views as fit in PAGE_BYTES (at least one), and how many items were read."""
    page: list[dict[str, Any]] = []
    size = read = 0
    for view in views:
        if view is not None:
            # A view travels twice, as data and as a row of its cells: counted twice.
            cost = 2 * len(orjson.dumps(view))
            if page and size + cost > PAGE_BYTES:
                break
            size += cost
            page.append(view)
        read += 1
    return page, read


def _next(cursor: str, offset: int) -> list[str]:
    return ["queue", f"--cursor={cursor}", f"--offset={offset}"]  # one word each, whatever the cursor


def _result(views: list[dict[str, Any]], columns: list[str], title: str, status: str,
            next_argv: list[str] | None = None) -> Result:
    rows = [row(view, columns) for view in views]
    return Result(title=title, headers=columns, rows=rows, data=views, status=status,
                  next_argv=next_argv)
