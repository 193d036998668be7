"""What crosses the wire, and how: JSON text only, in a bounded RPyC channel with every unsafe
protocol option off.

Every exposed call takes one JSON string and returns one JSON envelope,
{"ok": true, "value": ...} or {"ok": false, "error": "...", "type": "ValidationError"}, so
errors arrive as plain values and no exception class or traceback is ever sent or rebuilt.
A dict argument would travel as a remote reference (a netref): slower, and a way for a peer to
run code in our process, so anything that is not exactly `str` is refused.
"""

from __future__ import annotations

import threading
import time
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

MAX_FRAME_BYTES = 64 << 20  # one RPC message from an operator or a trusted peer, inflated
PEER_MAX_FRAME_BYTES = 16 << 20  # ...from a worker's certificate (reports and registrations)
INFLATE_BUDGET_BYTES = 160 << 20  # bytes being inflated at once, across all connections
INFLATE_WAIT_S = 10.0  # a frame waits this long for room in the budget, then is refused
MAX_ARGUMENT_CHARS = 32 << 20  # one JSON argument
_INFLATE_CHUNK = 1 << 20


class FrameTooLarge(EOFError):
    """A frame over the limit arrived. The connection cannot be read any further (the rest of
    the frame is unread), so it is an EOFError to rpyc; callers can still tell the cause."""


class InflateBudgetSpent(FrameTooLarge):
    """A compressed frame found no room in the process's inflate budget in time."""


class Budget:
    """Bytes that may be held at once, shared by every connection. A frame takes room as it
    inflates and gives it back once it has been handled, so many peers each sending a small
    compressed frame that inflates to tens of MiB cannot add up to gigabytes."""

    def __init__(self, limit: int, large_at_once: int = 1) -> None:
        self.limit = limit
        self.used = 0
        self._cv = threading.Condition()
        # Frames inflating past their first step at once. Such a frame holds what it has while
        # it asks for more: unbounded, several could each hold part of the budget and all wait
        # for the rest until they time out. At most this many (each at most a frame's limit,
        # together within the budget), the one-step frames around them always finish.
        self.large = threading.BoundedSemaphore(large_at_once)

    def take(self, amount: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cv:
            while self.used + amount > self.limit:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(left)
            self.used += amount
            return True

    def give(self, amount: int) -> None:
        if amount:
            with self._cv:
                self.used -= amount
                self._cv.notify_all()


INFLATE_BUDGET = Budget(INFLATE_BUDGET_BYTES, large_at_once=INFLATE_BUDGET_BYTES // MAX_FRAME_BYTES)


class WireBytes:
    """Bytes this process's RPC channels have received and sent, frame headers included, as
    they crossed the wire (compressed): counts that only grow, read by the metrics endpoints.

    Each channel counts into a tally of its own, [received, sent], with no lock: rpyc lets
    one thread at a time send on a connection, and one receive. A tally is registered here
    when its channel opens and folded into the closed channels' totals when it closes, so a
    frame costs two list updates, and a scrape a sum over the open channels."""

    def __init__(self) -> None:
        self._open: dict[int, list[int]] = {}  # by id of the tally
        self._closed = [0, 0]
        self._lock = threading.Lock()

    def tally(self) -> list[int]:
        """A new channel's [received, sent]."""
        counts = [0, 0]
        with self._lock:
            self._open[id(counts)] = counts
        return counts

    def closed(self, counts: list[int]) -> None:
        with self._lock:
            if self._open.pop(id(counts), None) is not None:
                self._closed[0] += counts[0]
                self._closed[1] += counts[1]

    def counts(self) -> dict[str, int]:
        with self._lock:
            received, sent = self._closed
            for tally in self._open.values():
                received += tally[0]
                sent += tally[1]
        return {"received": received, "sent": sent}


WIRE_BYTES = WireBytes()


class BoundedChannel(Channel):
    """An RPyC channel that refuses frames over `max_frame` bytes, compressed or not, so a peer
    cannot make us allocate gigabytes with a few bytes (a zlib bomb or a huge length).

    A compressed frame inflates in steps of 1 MiB, each taken from INFLATE_BUDGET; the room is
    held until `release()` (the server calls it once the request is handled) or the next frame.
    """

    max_frame = MAX_FRAME_BYTES
    budget: Budget | None = None  # the server sets INFLATE_BUDGET; clients trust their master
    _held = 0
    _large = False  # holds one of the budget's large-frame places

    def __init__(self, stream: Any, compress: bool = True) -> None:
        super().__init__(stream, compress)
        self._wire = WIRE_BYTES.tally()

    def recv(self) -> bytes:
        try:
            return self._recv_frame()
        except FrameTooLarge:
            # The rest of the frame is unread, so the connection is over. Closed here: rpyc
            # answers an EOFError by saying goodbye and waiting the whole request timeout for a
            # reply this peer may never send, holding a thread and a slot that long.
            self.close()
            raise

    def _recv_frame(self) -> bytes:
        self.release()
        header = self.stream.read(self.FRAME_HEADER.size)
        length, compressed = self.FRAME_HEADER.unpack(header)
        if length > self.max_frame:
            self._wire[0] += len(header)
            raise FrameTooLarge(f"frame of {length} bytes refused (limit {self.max_frame})")
        data = self.stream.read(length + len(self.FLUSHER))
        self._wire[0] += len(header) + len(data)
        data = data[: -len(self.FLUSHER)]
        if not compressed:
            return data
        inflater = zlib.decompressobj()
        parts, size, pending = [], 0, data
        while pending and size <= self.max_frame:
            step = min(_INFLATE_CHUNK, self.max_frame + 1 - size)
            if self.budget is not None:
                if parts and not self._large:
                    if not self.budget.large.acquire(timeout=INFLATE_WAIT_S):
                        raise InflateBudgetSpent("too many large frames are being inflated at once; refused")
                    self._large = True
                if not self.budget.take(step, INFLATE_WAIT_S):
                    raise InflateBudgetSpent("too many large frames are being inflated at once; refused")
                self._held += step
            part = inflater.decompress(pending, step)
            parts.append(part)
            size += len(part)
            pending = inflater.unconsumed_tail
        if size > self.max_frame:
            raise FrameTooLarge(f"compressed frame inflates past {self.max_frame} bytes; refused")
        return b"".join(parts)

    def send(self, data: bytes) -> None:
        """rpyc's Channel.send, counting the bytes of the frame as it goes out."""
        compressed = 0
        if self.compress and len(data) > self.COMPRESSION_THRESHOLD:
            compressed = 1
            data = zlib.compress(data, self.COMPRESSION_LEVEL)
        header = self.FRAME_HEADER.pack(len(data), compressed)
        size = len(header) + len(data) + len(self.FLUSHER)
        if size <= self.stream.MAX_IO_CHUNK:
            self.stream.write(header + data + self.FLUSHER)  # one write for the usual small frame
        else:
            first = self.stream.MAX_IO_CHUNK - len(header)
            self.stream.write(header + data[:first])
            self.stream.write(data[first:])
            self.stream.write(self.FLUSHER)
        self._wire[1] += size

    def release(self) -> None:
        """Gives back the budget the last frame took."""
        if self._held and self.budget is not None:
            self.budget.give(self._held)
        self._held = 0
        if self._large and self.budget is not None:
            self.budget.large.release()
        self._large = False

    def close(self) -> None:
        self.release()
        WIRE_BYTES.closed(self._wire)
        super().close()


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


def ok(value: Any, epoch: int = 0) -> str:
    """The reply envelope; `epoch` is the leader's when masters share a store (0: one master)."""
    if epoch:
        return dumps({"ok": True, "value": value, "epoch": epoch})
    return dumps({"ok": True, "value": value})


class LeaderView:
    """What the clients of one process know of the leader, when masters share a store: the
    newest epoch seen (a reply from an older one comes from a master deposed since: it is
    refused with NotLeaderError, never acted on), and the master a new connection tries first:
    the one that led, or answered, last."""

    def __init__(self) -> None:
        self.newest = 0
        self.prefer: tuple[str, int] | None = None

    def check(self, epoch: Any) -> None:
        if type(epoch) is not int:  # noqa: E721 - bool is no epoch
            return
        if epoch < self.newest:
            raise errors.NotLeaderError(f"a reply from leader epoch {epoch}, older than epoch "
                                        f"{self.newest} seen before: that master was deposed")
        self.newest = epoch


def failure(err: CloudqError) -> str:
    envelope = {"ok": False, "error": str(err), "type": type(err).__name__}
    if isinstance(err, errors.NotLeaderError) and err.leader:
        envelope["leader"] = err.leader  # where the caller goes instead
    return dumps(envelope)


def unwrap(reply: Any, epochs: LeaderView | None = None) -> Any:
    """The client side of the envelope: the value, or the CloudqError the server raised."""
    if type(reply) is not str:  # noqa: E721
        raise CloudqError("the master sent a reply that is not JSON text")
    envelope = orjson.loads(reply)
    if epochs is not None and "epoch" in envelope:
        epochs.check(envelope["epoch"])
    if envelope.get("ok"):
        return envelope.get("value")
    kind = getattr(errors, str(envelope.get("type")), CloudqError)
    if not (isinstance(kind, type) and issubclass(kind, CloudqError)):
        kind = CloudqError
    message = envelope.get("error") or "the master refused the call"
    if kind is errors.NotLeaderError:
        leader = envelope.get("leader")
        raise errors.NotLeaderError(message, leader if isinstance(leader, str) else None)
    raise kind(message)


def dumps(value: Any) -> str:
    """JSON text (orjson: several times faster than json, and RPC sits on the hot path)."""
    return orjson.dumps(value).decode()
