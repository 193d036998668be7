"""What crosses the wire, and how: JSON text only, in a bounded RPyC channel with every unsafe
protocol option off.

Every exposed call takes one JSON string and returns one JSON envelope,
{"ok": true, "value": ...} or {"ok": false, "error": "...", "type": "ValidationError"}, so
errors arrive as plain values and no exception class or traceback is ever sent or rebuilt.
A dict argument would travel as a remote reference (a netref): slower, and a way for a peer to
run code in our process, so anything that is not exactly `str` is refused.
"""

from __future__ import annotations

import zlib
from typing import Any

import orjson
from rpyc.core.channel import Channel

from cloudq import defaults, errors
from cloudq.errors import CloudqError, ValidationError

# Asserted by a test; see the hardening checklist in docs/security.md.
PROTOCOL_CONFIG: dict[str, Any] = {
    "allow_pickle": False,
    "allow_public_attrs": False,
    "allow_all_attrs": False,
    "allow_setattr": False,
    "allow_delattr": False,
    "import_custom_exceptions": False,
    "instantiate_custom_exceptions": False,
    "instantiate_oldstyle_exceptions": False,
    "include_local_traceback": False,
    "include_local_version": False,
    "propagate_SystemExit_locally": False,
    "sync_request_timeout": defaults.SYNC_REQUEST_TIMEOUT_S,
    "log_exceptions": False,
}

MAX_FRAME_BYTES = 64 << 20  # one RPC message, before or after decompression
MAX_ARGUMENT_CHARS = 32 << 20  # one JSON argument


class FrameTooLarge(EOFError):
    """A frame over the limit arrived. The connection cannot be read any further (the rest of
    the frame is unread), so it is an EOFError to rpyc; callers can still tell the cause."""


class BoundedChannel(Channel):
    """An RPyC channel that refuses frames over MAX_FRAME_BYTES, compressed or not, so a peer
    cannot make us allocate gigabytes with a few bytes (a zlib bomb or a huge length)."""

    def recv(self) -> bytes:
        header = self.stream.read(self.FRAME_HEADER.size)
        length, compressed = self.FRAME_HEADER.unpack(header)
        if length > MAX_FRAME_BYTES:
            raise FrameTooLarge(f"frame of {length} bytes refused (limit {MAX_FRAME_BYTES})")
        data = self.stream.read(length + len(self.FLUSHER))[: -len(self.FLUSHER)]
        if compressed:
            inflater = zlib.decompressobj()
            data = inflater.decompress(data, MAX_FRAME_BYTES)
            if inflater.unconsumed_tail:
                raise FrameTooLarge(f"compressed frame inflates past {MAX_FRAME_BYTES} bytes; refused")
        return data


def decode_argument(raw: Any) -> Any:
    """Parses a peer's argument: exactly a str holding JSON, or ValidationError."""
    if type(raw) is not str:  # noqa: E721 - isinstance() would accept a netref posing as str
        raise ValidationError("arguments must be JSON text")
    if len(raw) > MAX_ARGUMENT_CHARS:
        raise ValidationError(f"argument of {len(raw)} characters is over the {MAX_ARGUMENT_CHARS} limit")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise ValidationError(f"argument is not valid JSON: {err}") from None


def ok(value: Any) -> str:
    return dumps({"ok": True, "value": value})


def failure(err: CloudqError) -> str:
    return dumps({"ok": False, "error": str(err), "type": type(err).__name__})


def unwrap(reply: Any) -> Any:
    """The client side of the envelope: the value, or the CloudqError the server raised."""
    if type(reply) is not str:  # noqa: E721
        raise CloudqError("the master sent a reply that is not JSON text")
    envelope = orjson.loads(reply)
    if envelope.get("ok"):
        return envelope.get("value")
    kind = getattr(errors, str(envelope.get("type")), CloudqError)
    if not (isinstance(kind, type) and issubclass(kind, CloudqError)):
        kind = CloudqError
    raise kind(envelope.get("error") or "the master refused the call")


def dumps(value: Any) -> str:
    """JSON text (orjson: several times faster than json, and RPC sits on the hot path)."""
    return orjson.dumps(value).decode()
