"""State changes: validation, their JSON encoding, and the mirror they are applied to.

A batch of changes passed to ``Store.append`` is encoded once, here, into the text of one
journal line. The same serialized strings (one per record, event and meta value) are kept in
the :class:`Mirror`, so a checkpoint is a string join and never re-serializes the state.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from cloudq.errors import StoreError

_ascii_encoder = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def dumps(value: Any) -> str:
    """Compact, ASCII-only JSON text (journal and checkpoint offsets are counted in bytes).

    orjson first: encoding is the store's hottest step (every change of every task) and it is
    several times faster than json; text with non-ASCII characters, which is rare, is encoded
    again with escapes. NaN and Infinity, which are not JSON, become null: the task model
    refuses them on submit, but a worker's result may still hold one.
    """
    text = orjson.dumps(value).decode()
    return text if text.isascii() else _ascii_encoder.encode(orjson.loads(text))


class Encoded(NamedTuple):
    """A record its owner already encoded with :func:`dumps` (a JSON object), stored as given.

    For owners that can build the text cheaper than from a whole dict, e.g. by keeping the
    encoding of the fields that never change."""

    id: str
    text: str


# One encoded change, ready to apply to a Mirror: (kind, key, json_text).
#   ("put", record_id, record_json) | ("del", record_id, "") | ("event", "", event_json)
#   ("meta", key, value_json)
Op = tuple[str, str, str]


def encode_batch(changes: Sequence[tuple]) -> tuple[str, list[Op]]:
    """Validate a batch and return (JSON text of the change list, ops for the mirror).

    Everything is checked before anything is journalled, so a bad change in a batch leaves
    the store untouched.
    """
    if not isinstance(changes, (list, tuple)) or not changes:
        raise StoreError(f"append() takes a non-empty list of changes, got {changes!r:.80}")
    parts: list[str] = []
    ops: list[Op] = []
    for index, change in enumerate(changes):
        part, op = _encode_change(index, change)
        parts.append(part)
        ops.append(op)
    return "[" + ",".join(parts) + "]", ops


def _encode_change(index: int, change: Any) -> tuple[str, Op]:
    kind = change[0] if isinstance(change, (tuple, list)) and change else None
    try:
        # Most frequent first: every task operation journals events and records.
        if kind == "event" and len(change) == 2 and isinstance(change[1], dict):
            text = dumps(change[1])
            return f'["event",{text}]', ("event", "", text)
        if kind == "put" and len(change) == 2:
            if type(change[1]) is Encoded:
                record_id, text = _checked_encoded(change[1])
            else:
                record_id, text = _record_id(change[1]), dumps(change[1])
            return f'["put",{text}]', ("put", record_id, text)
        if kind == "del" and len(change) == 2 and isinstance(change[1], str):
            return f'["del",{dumps(change[1])}]', ("del", change[1], "")
        if kind == "meta" and len(change) == 3 and isinstance(change[1], str):
            text = dumps(change[2])
            return f'["meta",{dumps(change[1])},{text}]', ("meta", change[1], text)
    except (TypeError, ValueError, orjson.JSONEncodeError) as exc:
        raise StoreError(f"change #{index} ({kind}) is not storable as JSON: {exc}") from exc
    raise StoreError(
        f"change #{index} is malformed: {change!r:.120}; expected ('put', record or Encoded), "
        "('del', id), ('event', event) or ('meta', key, value)"
    )


def _checked_encoded(record: Encoded) -> Encoded:
    """The cheap checks: the text is not parsed again (it came from dumps)."""
    record_id, text = record
    if not (isinstance(record_id, str) and isinstance(text, str) and text[:1] == "{"
            and text[-1:] == "}" and text.isascii()):
        raise StoreError(f"an encoded record must be an id and ASCII JSON object text, got {record!r:.120}")
    return record


def _record_id(record: Any) -> str:
    if not isinstance(record, dict) or not isinstance(record.get("id"), str):
        raise StoreError(f"a stored record must be a dict with a string 'id', got {record!r:.120}")
    return record["id"]


_scan = json.JSONDecoder().scan_once


def decode_payload(payload: str) -> list[tuple[Op, Any]]:
    """Decode a journal payload ``[lsn,[change,...]]`` into (op, value) pairs.

    The value is the record or event dict, or the meta value, for the LoadedState; the op
    carries the exact JSON text of it for the mirror. Scanning the line value by value gives
    both from one parse, instead of parsing the line and serializing every record again.
    Raises ValueError on anything encode_batch does not write.
    """
    try:
        return _decode_changes(payload)
    except (StopIteration, IndexError, KeyError, TypeError) as exc:
        raise ValueError(f"unexpected change layout near {exc!r}") from None


def _decode_changes(payload: str) -> list[tuple[Op, Any]]:
    pos = payload.index(",[") + 2  # past "[<lsn>,["
    decoded: list[tuple[Op, Any]] = []
    while True:
        _expect(payload, pos, "[")
        kind, pos = _scan(payload, pos + 1)
        key = ""
        if kind in ("del", "meta"):
            _expect(payload, pos, ",")
            key, pos = _scan(payload, pos + 1)
        if kind == "del":
            value, text = None, ""
        else:
            _expect(payload, pos, ",")
            value, end = _scan(payload, pos + 1)
            text, pos = payload[pos + 1 : end], end
        if kind == "put":
            key = value["id"]
        elif kind not in ("del", "event", "meta") or not isinstance(key, str):
            raise ValueError(f"unknown change {kind!r}")
        decoded.append(((kind, key, text), value))
        _expect(payload, pos, "]")
        if payload[pos + 1] == "]":
            return decoded
        _expect(payload, pos + 1, ",")
        pos += 2


def _expect(payload: str, pos: int, char: str) -> None:
    if payload[pos] != char:
        raise ValueError(f"expected {char!r} at offset {pos}")


@dataclass
class Snapshot:
    """A consistent copy of the mirror, taken under the store's lock."""

    lsn: int
    records: list[str]
    events: list[str]
    meta: list[tuple[str, str]]


@dataclass
class Mirror:
    """The latest serialized state, kept so checkpoints need nothing from the master.

    Holds JSON text rather than dicts: about 4x less memory than parsed records, and a
    checkpoint can be written by joining strings.
    """

    event_retention: int
    records: dict[str, str] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)
    events: deque[str] = field(init=False)

    def __post_init__(self) -> None:
        self.events = deque(maxlen=self.event_retention)

    def apply(self, ops: Iterable[Op]) -> None:
        for kind, key, text in ops:
            if kind == "put":
                self.records[key] = text
            elif kind == "del":
                self.records.pop(key, None)
            elif kind == "event":
                self.events.append(text)
            else:
                self.meta[key] = text

    def snapshot(self, lsn: int) -> Snapshot:
        # Plain C-level copies: a few milliseconds for 100k records, so appends wait little.
        records, events = list(self.records.values()), list(self.events)
        return Snapshot(lsn, records, events, list(self.meta.items()))
