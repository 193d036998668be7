"""The master's durable state: journal for every change, TinyDB checkpoints in the background.

The master keeps its state in memory and calls ``append`` for every change before it
acknowledges it. ``append`` costs one journal line and a share of one fdatasync, whatever
the number of stored records. A background thread checkpoints every ``checkpoint_every``
changes (or ``checkpoint_growth`` times the number of records, if more) or
``checkpoint_interval_s`` seconds, from the store's own mirror of the state, so the master
never waits for a full rewrite.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudq.errors import StoreError
from cloudq.store import checkpoint
from cloudq.store.changes import Mirror, Snapshot, decode_payload, encode_batch
from cloudq.store.commit import GroupCommit
from cloudq.store.journal import JournalWriter, fsync_dir, list_segments, replay

log = logging.getLogger("cloudq.store")

_LOCK_NAME = "LOCK"


@dataclass
class LoadedState:
    """What was stored, as plain JSON values, for the master to rebuild its state from."""

    records: dict[str, dict] = field(default_factory=dict)  # id -> latest record
    events: list[dict] = field(default_factory=list)  # oldest first, at most event_retention
    meta: dict[str, object] = field(default_factory=dict)


class Store:
    def __init__(
        self,
        data_dir: Path,
        *,
        fsync: bool = True,
        checkpoint_every: int = 20_000,
        checkpoint_interval_s: float = 60.0,
        checkpoint_growth: float = 0.0,
        event_retention: int = 100_000,
    ):
        if checkpoint_every < 1 or checkpoint_interval_s <= 0 or event_retention < 0 or (
            checkpoint_growth < 0
        ):
            raise StoreError(
                "checkpoint_every must be >= 1, checkpoint_interval_s > 0 and "
                "checkpoint_growth and event_retention >= 0"
            )
        self._dir = Path(data_dir)
        self._fsync = fsync
        self._every = checkpoint_every
        # A checkpoint rewrites every record: with growth g it also waits for g x records
        # changes, so its cost per change stays bounded however many records are kept.
        self._growth = checkpoint_growth
        self._interval = checkpoint_interval_s
        self._mirror = Mirror(event_retention)
        self._writer: JournalWriter | None = None
        self._commit: GroupCommit | None = None
        self._lock_fd = -1
        self._state = "new"  # new -> open -> closed
        self._close_lock = threading.Lock()
        self._checkpoint_lock = threading.Lock()  # one checkpoint at a time
        self._wake = threading.Event()  # count threshold reached, or closing
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Which lsn the current and the .old checkpoint files cover (None: no such file
        # or not known); journal segments are deleted only once .old covers them.
        self._checkpoint_lsn: int | None = None
        self._old_lsn: int | None = None
        self._changes_since_checkpoint = 0
        self._last_checkpoint_mono = time.monotonic()
        self._counters = {"appends": 0, "changes": 0, "checkpoints": 0, "checkpoint_errors": 0}
        self._timings: dict[str, Any] = {"load_s": None, "last_checkpoint_s": None,
                                         "last_checkpoint_at": None, "loaded_from": None}
        # Test seam: called with the name of each checkpoint step ("rotated", "snapshot",
        # "tmp_written", "tmp_fsynced", "old_linked", "renamed", "dir_fsynced", "trimmed").
        self._step_hook: Callable[[str], None] | None = None

    # -- loading ----------------------------------------------------------------------------

    def load(self) -> LoadedState:
        """Recover the stored state; must be called once, before the first append()."""
        if self._state != "new":
            raise StoreError("Store.load() may be called only once per Store")
        started = time.perf_counter()
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
            self._lock_fd = _lock_directory(self._dir)
        except OSError as exc:
            self._state = "closed"
            raise StoreError(f"cannot use {self._dir} as the store's directory: {exc}") from exc
        try:
            with _gc_paused():
                state = self._recover()
        except OSError as exc:
            self._release_after_failed_load()
            raise StoreError(f"cannot load the store in {self._dir}: {exc}") from exc
        except BaseException:
            self._release_after_failed_load()
            raise
        self._state = "open"
        self._timings["load_s"] = time.perf_counter() - started
        self._last_checkpoint_mono = time.monotonic()
        self._thread = threading.Thread(target=self._background, name="store-checkpoint",
                                        daemon=True)
        self._thread.start()
        return state

    def _release_after_failed_load(self) -> None:
        self._state = "closed"  # half-recovered: a new Store must try again
        if self._writer is not None:
            self._writer.close()
        _unlock_directory(self._lock_fd)
        self._lock_fd = -1

    def _recover(self) -> LoadedState:
        _, _, tmp = checkpoint.paths(self._dir)
        tmp.unlink(missing_ok=True)  # an interrupted checkpoint; the journal still has it all
        loaded = checkpoint.load_newest(self._dir)
        state = LoadedState()
        events: deque[dict] = deque(maxlen=self._mirror.event_retention)
        after = 0
        if loaded is not None:
            after = loaded.lsn
            state.records, state.meta = loaded.records, loaded.meta
            events.extend(loaded.events)
            self._mirror.records = loaded.record_texts
            self._mirror.meta = loaded.meta_texts
            self._mirror.events.extend(loaded.event_texts)
            self._timings["loaded_from"] = loaded.path.name

        def apply(lsn: int, payload: str) -> None:
            for op, value in decode_payload(payload):
                self._apply_loaded(state, events, op, value)

        segments = list_segments(self._dir)
        next_lsn = replay(segments, after, apply)
        state.events = list(events)
        self._writer = JournalWriter(self._dir, segments, next_lsn, self._fsync)
        self._commit = GroupCommit(self._writer, next_lsn)
        self._adopt_checkpoint(loaded)
        return state

    def _apply_loaded(self, state: LoadedState, events: deque, op: tuple, value: Any) -> None:
        kind, key, _ = op
        self._mirror.apply((op,))
        if kind == "put":
            state.records[key] = value
        elif kind == "del":
            state.records.pop(key, None)
        elif kind == "event":
            events.append(value)
        else:
            state.meta[key] = value

    def _adopt_checkpoint(self, loaded: checkpoint.LoadedCheckpoint | None) -> None:
        if loaded is None:
            return
        if loaded.replaces is None and loaded.path.name == checkpoint.NAME:
            self._checkpoint_lsn = loaded.lsn
            return
        # Loaded from .old: the journal proved complete after it, so set the damaged or
        # missing current file aside (kept for inspection) and go on from .old.
        self._old_lsn = loaded.lsn
        if loaded.replaces is not None:
            aside = loaded.replaces.with_name(f"{checkpoint.NAME}.damaged-{int(time.time())}")
            os.replace(loaded.replaces, aside)
            log.warning("moved the damaged checkpoint to %s", aside)
            if self._fsync:
                fsync_dir(self._dir)

    # -- appending --------------------------------------------------------------------------

    def append(self, changes: list[tuple]) -> None:
        """Journal a batch of changes; durable when this returns. Thread-safe.

        The batch is atomic: after a crash it is replayed whole or not at all.
        """
        body, ops = encode_batch(changes)
        commit = self._require_open()

        def on_assigned() -> None:
            self._mirror.apply(ops)
            self._changes_since_checkpoint += len(ops)
            self._counters["appends"] += 1
            self._counters["changes"] += len(ops)

        commit.commit(body, on_assigned)
        if self._changes_since_checkpoint >= self._threshold():
            self._wake.set()

    def _require_open(self) -> GroupCommit:
        if self._state != "open" or self._commit is None:
            raise StoreError(
                "the store is closed" if self._state == "closed" else "call Store.load() first"
            )
        return self._commit

    # -- after a failed write ---------------------------------------------------------------

    def reload(self) -> LoadedState:
        """After a failed append (a full disk): the state as it is on disk, and a fresh journal
        writer to go on with. The failed batch was cut off (or is a torn tail that loading
        drops), so what comes back is exactly what was acknowledged. Raises StoreError if the
        files cannot be read; the store then stays refusing, and reload() may be tried again."""
        if self._state != "open":
            raise StoreError("the store is not open")
        with self._checkpoint_lock:
            if self._commit is not None:
                self._commit.abandon()
            if self._writer is not None:
                self._writer.close()
            self._mirror = Mirror(self._mirror.event_retention)
            self._changes_since_checkpoint = 0
            try:
                with _gc_paused():
                    return self._recover()
            except OSError as exc:
                raise StoreError(f"cannot reload the store in {self._dir}: {exc}") from exc

    def probe(self, size: int = 1 << 20) -> None:
        """Writes, syncs and removes `size` bytes beside the journal: OSError while the disk
        has no room (or cannot be written) for at least that much."""
        path = self._dir / ".space-probe"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, bytes(size))
                os.fsync(fd)
            finally:
                os.close(fd)
        finally:
            with contextlib.suppress(OSError):
                path.unlink()

    # -- checkpoints ------------------------------------------------------------------------

    def checkpoint(self) -> None:
        """Write a checkpoint now and trim the journal it makes redundant."""
        self._require_open()
        self._checkpoint()

    def _checkpoint(self, only_if_due: bool = False) -> None:
        assert self._writer is not None and self._commit is not None
        with self._checkpoint_lock:
            if only_if_due and not self._due():
                return  # an explicit checkpoint() ran while this one waited for the lock
            started = time.perf_counter()
            try:
                # Rotate first: the finished segment then ends at or below the snapshot's
                # lsn, so the next checkpoint can delete it whole.
                self._writer.rotate()
                self._step("rotated")
                snap = self._commit.locked(self._take_snapshot)
                self._step("snapshot")
                replaced = checkpoint.write(self._dir, snap, fsync=self._fsync, on_step=self._step)
                if replaced:
                    self._old_lsn = self._checkpoint_lsn
                self._checkpoint_lsn = snap.lsn
                self._writer.delete_covered(self._old_lsn or 0)
                self._step("trimmed")
            except OSError as exc:
                self._changes_since_checkpoint += 1  # still due: try again later
                raise StoreError(f"checkpoint in {self._dir} failed: {exc}") from exc
            self._counters["checkpoints"] += 1
            self._timings["last_checkpoint_s"] = time.perf_counter() - started
            self._timings["last_checkpoint_at"] = time.time()
            self._last_checkpoint_mono = time.monotonic()

    def _take_snapshot(self, lsn: int) -> Snapshot:
        self._changes_since_checkpoint = 0
        return self._mirror.snapshot(lsn)

    def _step(self, name: str) -> None:
        if self._step_hook is not None:
            self._step_hook(name)

    def _due(self) -> bool:
        changes = self._changes_since_checkpoint
        elapsed = time.monotonic() - self._last_checkpoint_mono
        return changes >= self._threshold() or (changes > 0 and elapsed >= self._interval)

    def _threshold(self) -> int:
        return max(self._every, int(self._growth * len(self._mirror.records)))

    def _background(self) -> None:
        while not self._stop.is_set():
            due = self._last_checkpoint_mono + self._interval
            self._wake.wait(max(0.0, due - time.monotonic()))
            self._wake.clear()
            if self._stop.is_set():
                return
            if self._due():
                self._checkpoint_in_background()
            elif time.monotonic() >= due:
                self._last_checkpoint_mono = time.monotonic()  # nothing changed: wait again

    def _checkpoint_in_background(self) -> None:
        try:
            self._checkpoint(only_if_due=True)
        except Exception as exc:  # the thread must survive whatever went wrong
            # The journal still holds everything, so nothing is lost; it just grows.
            self._counters["checkpoint_errors"] += 1
            log.error("background checkpoint failed: %s; retrying in %.0f s", exc, self._interval)
            self._stop.wait(self._interval)

    # -- closing and stats ------------------------------------------------------------------

    def close(self) -> None:
        """Stop the checkpoint thread, finish in-flight appends, release the directory."""
        with self._close_lock:
            if self._state == "closed":
                return
            was_open, self._state = self._state == "open", "closed"
        if not was_open:
            return
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        assert self._commit is not None and self._writer is not None
        self._commit.close()
        with self._checkpoint_lock:
            self._writer.close()
        _unlock_directory(self._lock_fd)
        self._lock_fd = -1

    def stats(self) -> dict[str, Any]:
        writer, commit = self._writer, self._commit
        return {
            "records": len(self._mirror.records),
            "events": len(self._mirror.events),
            "meta": len(self._mirror.meta),
            "lsn": commit.last_lsn if commit else 0,
            **self._counters,
            "commits": commit.commits if commit else 0,
            "fsyncs": writer.fsyncs if writer else 0,
            "journal_bytes": writer.bytes if writer else 0,
            "journal_segments": writer.segment_count if writer else 0,
            "checkpoint_lsn": self._checkpoint_lsn,
            "changes_since_checkpoint": self._changes_since_checkpoint,
            **self._timings,
        }

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _lock_directory(directory: Path) -> int:
    """Hold an exclusive lock on the data directory: two masters on one store corrupt it."""
    fd = os.open(directory / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        who = "another Store in this process" if holder == str(os.getpid()) else f"pid {holder}"
        raise StoreError(f"{directory} is in use by {who}; one store per directory") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode("ascii"))
    return fd


def _unlock_directory(fd: int) -> None:
    if fd >= 0:
        os.close(fd)  # closing the descriptor releases the flock


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Loading builds a few million containers; without this the cyclic collector runs
    over them again and again (about 40% of the load time for 100k records)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
