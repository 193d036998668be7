"""Checkpoints: the whole state in one TinyDB-readable JSON file, replaced atomically.

Layout (valid TinyDB JSONStorage data; one table item per line so the loader can take each
record's JSON text without re-serializing it)::

    {"records": {
    "1": {...record...},
    "2": {...record...}
    }, "events": {
    "1": {...event...}
    }, "meta": {
    "1": {"key": "...", "value": ...}
    }, "_store": {"1": {"format": 1, "lsn": 42, ..., "crc32": 123}}}

The last line is a header whose crc32 covers every byte before it, so a damaged file is
detected even where it still parses as JSON.

Replacement: write ``checkpoint.json.tmp`` in one pass, fsync it, hard-link the current
checkpoint to ``checkpoint.json.old``, rename the temporary file over ``checkpoint.json``,
fsync the directory. At every instant ``checkpoint.json`` is a complete, fsynced checkpoint
(the old or the new one), and ``.old`` is the one before it.

Checkpoints are read and written through TinyDB's storage extension point,
:class:`CheckpointStorage`: ``TinyDB(path, storage=CheckpointStorage)`` opens one (read-only
unless ``access_mode="r+"``), with the checksum verified on read and every write atomic as
above. The store hands the same ``write`` its snapshot of already-encoded texts, so a
checkpoint is a string join and never a re-serialization of the state.
"""

from __future__ import annotations

import json
import logging
import os
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from tinydb.storages import Storage

from cloudq.errors import StoreError
from cloudq.store.changes import Snapshot, dumps
from cloudq.store.journal import fsync_dir

log = logging.getLogger("cloudq.store")

NAME = "checkpoint.json"
FORMAT = 1
_HEADER_PREFIX = '}, "_store": {"1": '
_CHUNK = 2000  # items joined per write: bounds how long a checkpoint holds the GIL at a time
_SYNC_EVERY = 4 << 20  # bytes written between flushes of the temporary file (see _Output)


class CorruptCheckpoint(ValueError):
    """The file is not a complete checkpoint written by this module."""


@dataclass
class LoadedCheckpoint:
    path: Path
    lsn: int
    records: dict[str, dict] = field(default_factory=dict)
    record_texts: dict[str, str] = field(default_factory=dict)
    events: list[dict] = field(default_factory=list)
    event_texts: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    meta_texts: dict[str, str] = field(default_factory=dict)
    replaces: Path | None = None  # the corrupt newer checkpoint this one stands in for


def paths(directory: Path) -> tuple[Path, Path, Path]:
    """(current, old, temporary) checkpoint paths."""
    current = directory / NAME
    return current, directory / (NAME + ".old"), directory / (NAME + ".tmp")


# -- TinyDB's storage extension point -----------------------------------------------------


class CheckpointStorage(Storage):
    """A TinyDB storage for cloudq checkpoints.

    ``read`` returns TinyDB's document (a table per name: records, events, meta and the
    ``_store`` header) after checking the file's checksum; a damaged file raises
    CorruptCheckpoint instead of showing a part of the state. ``write`` replaces the file
    atomically (temporary file, fsync, ``.old`` link, rename, directory fsync). It takes
    TinyDB's document, or the store's :class:`Snapshot`. Opened read-only by default: a
    checkpoint written behind a running master's back would be replaced by its next one, so
    write only to the checkpoint of a stopped master.
    """

    def __init__(self, path: str | Path, access_mode: str = "r", *, fsync: bool = True,
                 on_step: Callable[[str], None] | None = None) -> None:
        if access_mode not in ("r", "r+"):
            raise ValueError("access_mode is 'r' (read only, the default) or 'r+'")
        self.path = Path(path)
        self.access_mode = access_mode
        self.fsync = fsync
        self.on_step = on_step or (lambda step: None)
        self.replaced = False  # the last write made the previous checkpoint `.old`

    def read(self) -> dict[str, dict[str, Any]] | None:
        """TinyDB's document; None when there is no checkpoint yet (an empty database)."""
        if not self.path.exists():
            return None
        raw = self._raw()
        _verify(raw)
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise CorruptCheckpoint(f"not valid JSON: {exc}") from exc

    def load(self) -> LoadedCheckpoint:
        """The checkpoint as the store loads it: each item parsed, and its JSON text kept."""
        raw = self._raw()
        header = _verify(raw)
        try:
            text = raw.decode("ascii")
            doc = orjson.loads(raw)  # several times faster than json on 100k tasks
            del raw
        except ValueError as exc:  # UnicodeDecodeError and orjson.JSONDecodeError are ValueErrors
            raise CorruptCheckpoint(f"not valid JSON: {exc}") from exc
        try:
            return _build(self.path, header, doc, text)
        except CorruptCheckpoint:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CorruptCheckpoint(f"unexpected layout: {exc!r}") from exc

    def write(self, data: dict[str, dict[str, Any]] | Snapshot) -> None:
        if self.access_mode != "r+":
            raise PermissionError(f"{self.path} is opened read-only: pass access_mode='r+', "
                                  "and write only to the checkpoint of a stopped master")
        snap = data if isinstance(data, Snapshot) else self._snapshot(data)
        self.replaced = write_file(self.path, snap, fsync=self.fsync, on_step=self.on_step)

    def close(self) -> None:
        pass  # no handle is kept between calls

    def _raw(self) -> bytes:
        try:
            return self.path.read_bytes()
        except OSError as exc:
            raise StoreError(f"cannot read checkpoint {self.path}: {exc}") from exc

    def _snapshot(self, doc: dict[str, dict[str, Any]]) -> Snapshot:
        """A TinyDB document as a snapshot; the position in the journal it covers is kept."""
        store = doc.get("_store") or {}
        header = next(iter(store.values()), None) if isinstance(store, dict) else None
        if header is None and self.path.exists():
            header = _verify(self._raw())
        lsn = int(header["lsn"]) if isinstance(header, dict) else 0
        meta = [(item["key"], dumps(item["value"])) for item in doc.get("meta", {}).values()]
        return Snapshot(lsn, [dumps(r) for r in doc.get("records", {}).values()],
                        [dumps(e) for e in doc.get("events", {}).values()], meta)


# -- writing ------------------------------------------------------------------------------


def write(directory: Path, snap: Snapshot, *, fsync: bool, on_step: Callable[[str], None]) -> bool:
    """Write ``snap`` as the new current checkpoint of the store in ``directory``, through
    its TinyDB storage. Returns True when the previous current checkpoint became ``.old``
    (False on the first checkpoint, when ``.old`` is left as it was). ``on_step`` is called
    after each step, so tests can crash the process there."""
    storage = CheckpointStorage(paths(directory)[0], "r+", fsync=fsync, on_step=on_step)
    storage.write(snap)
    return storage.replaced


def write_file(current: Path, snap: Snapshot, *, fsync: bool,
               on_step: Callable[[str], None]) -> bool:
    """The atomic replacement itself (see the module's docstring)."""
    directory = current.parent
    old, tmp = current.with_name(current.name + ".old"), current.with_name(current.name + ".tmp")
    with open(tmp, "wb") as handle:
        out = _Output(handle, fsync, on_step)
        spans = _write_document(out, snap)
        out.write(_header(snap, out.crc, spans))
        handle.flush()
        on_step("tmp_written")
        if fsync:
            os.fsync(handle.fileno())
    on_step("tmp_fsynced")
    linked = current.exists()
    if linked:
        old.unlink(missing_ok=True)
        os.link(current, old)
    on_step("old_linked")
    os.replace(tmp, current)
    on_step("renamed")
    if fsync:
        fsync_dir(directory)
    on_step("dir_fsynced")
    return linked


class _Output:
    """The temporary file being written: tracks offset and checksum, syncs as it goes.

    On ext4 (data=ordered) a journal fdatasync has to wait for the data of every file with
    unflushed new blocks; flushing the checkpoint every few MB bounds that wait for the
    appends running alongside, instead of letting one final fsync stall them for the whole
    file.
    """

    def __init__(self, handle: BinaryIO, fsync: bool, on_step: Callable[[str], None]):
        self._handle = handle
        self._fsync = fsync
        self._on_step = on_step
        self._unsynced = 0
        self.offset = 0
        self.crc = 0

    def write(self, text: str) -> None:
        data = text.encode("ascii")
        self.crc = zlib.crc32(data, self.crc)
        self._handle.write(data)
        self.offset += len(data)
        self._unsynced += len(data)
        if self._fsync and self._unsynced >= _SYNC_EVERY:
            self._handle.flush()
            os.fdatasync(self._handle.fileno())
            self._unsynced = 0
        self._on_step("tmp_chunk")


def _write_document(out: _Output, snap: Snapshot) -> dict[str, list[int]]:
    """Write the three tables; return each one's [start, end) offsets of its items."""
    meta = [f'{{"key":{dumps(key)},"value":{value}}}' for key, value in snap.meta]
    spans = {}
    for name, items in (("records", snap.records), ("events", snap.events), ("meta", meta)):
        out.write(("{" if name == "records" else "}, ") + f'"{name}": {{\n')
        start = out.offset
        for text in _table(items):
            out.write(text)
        spans[name] = [start, out.offset - 1 if items else start]  # without the last newline
    return spans


def _table(items: Sequence[str]) -> Iterator[str]:
    for start in range(0, len(items), _CHUNK):
        chunk = items[start : start + _CHUNK]
        separator = ",\n" if start else ""
        yield separator + ",\n".join([f'"{n}": {text}' for n, text in enumerate(chunk, start + 1)])
    if items:
        yield "\n"


def _header(snap: Snapshot, crc: int, spans: dict[str, list[int]]) -> str:
    header = {
        "format": FORMAT,
        "lsn": snap.lsn,
        "records": len(snap.records),
        "events": len(snap.events),
        "meta": len(snap.meta),
        "spans": spans,
        "written_at": time.time(),
        "crc32": crc,
    }
    return f"{_HEADER_PREFIX}{dumps(header)}}}}}\n"


# -- reading ------------------------------------------------------------------------------


def load_newest(directory: Path) -> LoadedCheckpoint | None:
    """The current checkpoint, else ``.old`` when the current one is damaged or missing.

    None only when neither file exists. Falling back is lossless as long as the journal
    segments after the ``.old`` checkpoint are still there, which the store guarantees
    (it deletes only segments that ``.old`` covers); the caller's replay checks it.
    """
    current, old, _ = paths(directory)
    if current.exists():
        try:
            return read(current)
        except CorruptCheckpoint as exc:
            problem = f"{current} is damaged ({exc})"
    elif old.exists():
        problem = f"{current} is missing"
    else:
        return None
    if not old.exists():
        raise StoreError(
            f"{problem} and there is no {old.name} to fall back on; refusing to start with "
            "an empty state. Restore the checkpoint from a backup."
        )
    log.warning("%s; loading %s and replaying the journal after it", problem, old.name)
    try:
        loaded = read(old)
    except CorruptCheckpoint as exc:
        raise StoreError(f"{problem}, and {old} is damaged too ({exc}); cannot load") from exc
    loaded.replaces = current if current.exists() else None
    return loaded


def read(path: Path) -> LoadedCheckpoint:
    """Parse and verify one checkpoint file. Raises CorruptCheckpoint or StoreError."""
    return CheckpointStorage(path).load()


def _verify(raw: bytes) -> dict:
    """Check the header line and the checksum of everything before it; return the header."""
    if not raw.endswith(b"}}\n"):
        raise CorruptCheckpoint("truncated (no header at the end)")
    cut = raw.rfind(b"\n", 0, len(raw) - 1) + 1
    tail = raw[cut:]
    prefix = _HEADER_PREFIX.encode("ascii")
    if not tail.startswith(prefix):
        raise CorruptCheckpoint("no store header on the last line")
    try:
        header = json.loads(tail[len(prefix) : -3])
        expected = header["crc32"], header["format"], header["lsn"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptCheckpoint(f"unreadable header: {exc}") from exc
    if expected[1] != FORMAT:
        raise CorruptCheckpoint(f"format {expected[1]!r}, this version reads {FORMAT}")
    if zlib.crc32(raw[:cut]) != expected[0]:
        raise CorruptCheckpoint("checksum mismatch")
    return header


def _build(path: Path, header: dict, doc: dict, text: str) -> LoadedCheckpoint:
    n, m, k = header["records"], header["events"], header["meta"]
    records, events, meta = doc["records"], doc["events"], doc["meta"]
    if (len(records), len(events), len(meta)) != (n, m, k):
        raise CorruptCheckpoint("table sizes disagree with the header")
    loaded = LoadedCheckpoint(path, header["lsn"])
    ids = [record["id"] for record in records.values()]
    loaded.records = dict(zip(ids, records.values(), strict=True))
    texts = _item_texts(text, header["spans"]["records"], n)
    loaded.record_texts = dict(zip(ids, texts, strict=True))
    loaded.events = list(events.values())
    loaded.event_texts = _item_texts(text, header["spans"]["events"], m)
    for item in meta.values():
        loaded.meta[item["key"]] = item["value"]
        loaded.meta_texts[item["key"]] = dumps(item["value"])
    return loaded


def _item_texts(text: str, span: list[int], count: int) -> list[str]:
    """The JSON texts of the ``count`` items of a table, whose lines fill ``span``.

    Items sit one per line and JSON text never holds a raw newline, so a C-level split
    on ",\\n" separates them; only the ``"17": `` prefix is cut off item by item.
    """
    lines = text[span[0] : span[1]].split(",\n") if count else []
    items = [line.partition(": ")[2] for line in lines]
    if len(items) != count:
        raise CorruptCheckpoint(f"a table does not have the {count} items its header says")
    return items
