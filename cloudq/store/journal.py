"""The write-ahead journal: numbered segment files of checksummed JSON lines.

Line format (ASCII, one line per ``Store.append`` batch)::

    <crc32 of payload, 8 hex digits> <payload>\\n
    payload = [<lsn>,[<change>,...]]

``lsn`` (log sequence number) counts batches from 1 with no gaps. A segment is named after
the lsn of its first line (``journal-0000000000000042.log``) and holds consecutive lines;
a new segment starts when a checkpoint begins, so old segments can be deleted whole once a
checkpoint covers them. Lines at or below the checkpoint's lsn are skipped on replay, which
makes replay exact even where a segment straddles a checkpoint.
"""

from __future__ import annotations

import logging
import os
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cloudq.errors import StoreError

log = logging.getLogger("cloudq.store")

_PREFIX = "journal-"
_SUFFIX = ".log"


@dataclass
class Segment:
    base: int  # lsn of the first line the segment holds (or will hold)
    path: Path
    end: int | None = None  # lsn after its last line, once known (replayed or written)


def frame(lsn: int, body: str) -> bytes:
    """One journal line for the batch ``body`` (the JSON list made by encode_batch)."""
    payload = f"[{lsn},{body}]".encode("ascii")
    return b"%08x %s\n" % (zlib.crc32(payload), payload)


def segment_path(directory: Path, base: int) -> Path:
    return directory / f"{_PREFIX}{base:016d}{_SUFFIX}"


def list_segments(directory: Path) -> list[Segment]:
    segments = []
    for path in directory.glob(f"{_PREFIX}*{_SUFFIX}"):
        digits = path.name[len(_PREFIX) : -len(_SUFFIX)]
        if digits.isdigit():
            segments.append(Segment(int(digits), path))
    return sorted(segments, key=lambda s: s.base)


def fsync_dir(directory: Path) -> None:
    """Make created, renamed and deleted names in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- replay -------------------------------------------------------------------------------

Apply = Callable[[int, str], None]  # (lsn, payload text)


def replay(segments: list[Segment], after_lsn: int, apply: Apply) -> int:
    """Feed every batch with lsn > after_lsn to ``apply``, in order; return the next lsn.

    The journal must hold every lsn above ``after_lsn`` up to its end: a gap or a bad line
    anywhere but at the very end is a StoreError, never a silent loss. A torn or garbled
    last line of the last segment (a crash mid-write: it was never acknowledged) is cut off.
    """
    need = after_lsn + 1
    for index, segment in enumerate(segments):
        is_last = index == len(segments) - 1
        if not is_last and segments[index + 1].base - 1 <= after_lsn:
            continue  # wholly covered by the checkpoint; deleted by a later checkpoint
        if segment.base > need:
            raise StoreError(
                f"journal segment {segment.path} starts at change {segment.base}, but changes "
                f"{need}..{segment.base - 1} are in no checkpoint and no segment: refusing to "
                "load a state with acknowledged changes missing"
            )
        need = _replay_segment(segment, need, apply, is_last)
    return need


def _replay_segment(segment: Segment, need: int, apply: Apply, is_last: bool) -> int:
    """Replay one segment's lines from lsn ``need`` on; return the next lsn needed."""
    data = segment.path.read_bytes()
    lines = data.split(b"\n")
    lines.pop()  # the piece after the final newline: b"" or a torn line without newline
    torn_tail = not data.endswith(b"\n") and bool(data)
    offset = 0
    expected = segment.base
    for number, line in enumerate(lines, start=1):
        parsed = _parse(line)
        if parsed is None or parsed[0] != expected:
            if parsed is None and is_last and number == len(lines) and not torn_tail:
                _truncate(segment.path, offset, f"line {number} is garbled")
                break
            raise StoreError(_bad_line_message(segment.path, number, parsed, expected))
        lsn, payload = parsed
        if lsn >= need:
            _apply_line(segment.path, number, lsn, payload, apply)
            need = lsn + 1
        expected += 1
        offset += len(line) + 1
    else:
        if torn_tail:
            if not is_last:
                raise StoreError(f"{segment.path}: line {len(lines) + 1} is incomplete")
            _truncate(segment.path, offset, f"line {len(lines) + 1} is incomplete")
    segment.end = expected
    return need


def _parse(line: bytes) -> tuple[int, bytes] | None:
    """(lsn, payload) for a line whose checksum is right, else None."""
    if len(line) < 12 or line[8:9] != b" ":
        return None
    payload = line[9:]
    try:
        if int(line[:8], 16) != zlib.crc32(payload):
            return None
        # The lsn is read without parsing the whole line: covered lines are only skipped.
        return int(payload[1 : payload.index(b",")]), payload
    except ValueError:
        return None


def _apply_line(path: Path, number: int, lsn: int, payload: bytes, apply: Apply) -> None:
    try:
        apply(lsn, payload.decode("ascii"))
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise StoreError(
            f"{path}: line {number} has a valid checksum but cannot be read: {exc}"
        ) from exc


def _bad_line_message(
    path: Path, number: int, parsed: tuple[int, bytes] | None, expected: int
) -> str:
    if parsed is None:
        return (
            f"{path}: line {number} is corrupt (checksum mismatch or garbled) and is not the "
            "last line of the journal, so acknowledged changes may follow it; refusing to load"
        )
    return f"{path}: line {number} holds change {parsed[0]} where change {expected} was expected"


def _truncate(path: Path, offset: int, why: str) -> None:
    # Only a batch that was never acknowledged can be here: append() returns after the fsync
    # of a complete line, and every later write goes after it.
    log.warning("journal %s: %s (interrupted write); cutting it off at byte %d", path, why, offset)
    with open(path, "r+b") as handle:
        handle.truncate(offset)
        os.fsync(handle.fileno())


# -- writing ------------------------------------------------------------------------------


class JournalWriter:
    """Appends framed lines to the newest segment; rotates and deletes segments.

    ``write`` and ``rotate`` hold one lock so a rotation never splits a write.
    """

    def __init__(self, directory: Path, segments: list[Segment], next_lsn: int, fsync: bool):
        self._dir = directory
        self._fsync = fsync
        self._lock = threading.Lock()
        self._segments = segments
        self._next_lsn = next_lsn
        self._sizes = {s.base: s.path.stat().st_size for s in segments}
        self.fsyncs = 0
        last = segments[-1] if segments else None
        if last is not None and last.end == next_lsn:
            self._fd = os.open(last.path, os.O_WRONLY | os.O_APPEND)
        else:
            # No segment yet, or the last one ends before a checkpoint's lsn (its tail was
            # never written): start a fresh one so lines inside a segment stay consecutive.
            self._fd = self._create(next_lsn)

    def write(self, data: bytes, last_lsn: int) -> None:
        """Append complete lines up to ``last_lsn`` and make them durable."""
        with self._lock:
            size = self._sizes[self._segments[-1].base]
            try:
                self._write_all(data)
                if self._fsync:
                    os.fdatasync(self._fd)
                    self.fsyncs += 1
            except OSError:
                self._cut_back(size)
                raise
            self._next_lsn = last_lsn + 1
            self._sizes[self._segments[-1].base] += len(data)

    def _cut_back(self, size: int) -> None:
        """A failed write (a full disk) may have left part of its lines: cut the segment back
        to what was acknowledged, so a reload finds exactly that. Truncating frees space, so it
        works on a full disk; if even it fails, the reload drops the torn tail instead."""
        try:
            os.ftruncate(self._fd, size)
            if self._fsync:
                os.fdatasync(self._fd)
        except OSError as err:
            log.error("journal: cannot cut a failed write back to byte %d: %s", size, err)

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def rotate(self) -> None:
        """Start a new segment at the next lsn, unless the current one is still empty."""
        with self._lock:
            if self._segments[-1].base == self._next_lsn:
                return
            fd = self._create(self._next_lsn)  # first, so a failure leaves the old one in use
            os.close(self._fd)
            self._fd = fd

    def _create(self, base: int) -> int:
        path = segment_path(self._dir, base)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        try:
            if self._fsync:
                fsync_dir(self._dir)  # else a crash could lose the file with its fsynced lines
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        self._segments.append(Segment(base, path, end=base))
        self._sizes[base] = 0
        return fd

    def delete_covered(self, lsn: int) -> int:
        """Delete segments whose every line is at or below ``lsn``; return how many."""
        with self._lock:
            doomed = [
                segment
                for segment, successor in zip(self._segments, self._segments[1:], strict=False)
                if successor.base - 1 <= lsn
            ]
            self._segments = [s for s in self._segments if s not in doomed]
            for segment in doomed:
                self._sizes.pop(segment.base, None)
        # Unlinked outside the lock, so appends do not wait for the file system. A lost
        # unlink (crash before the directory is synced) is harmless: replay skips covered
        # segments, and the next checkpoint deletes them again.
        for segment in doomed:
            segment.path.unlink(missing_ok=True)
        return len(doomed)

    @property
    def bytes(self) -> int:
        return sum(self._sizes.values())

    @property
    def segment_count(self) -> int:
        return len(self._segments)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
