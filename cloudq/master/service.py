"""The master's RPC surface: thin exposed methods that check who is calling, validate the
JSON they were sent, call the core, and answer with a JSON envelope. Nothing else is exposed."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import rpyc

from cloudq import __version__, defaults
from cloudq.commands import Context, parse
from cloudq.commands.gate import Gate, Guard
from cloudq.commands.registry import run
from cloudq.errors import AuthError, CloudqError, LimitError, NotLeaderError, ValidationError
from cloudq.master.core import Master
from cloudq.master.seat import Seat
from cloudq.rpc.protocol import MAX_FRAME_BYTES, decode_argument, failure, ok
from cloudq.rpc.server import Identity

log = logging.getLogger("cloudq.master")


def endpoint(method: Callable[..., Any]) -> Callable[[Any, Any], str]:
    """Decodes the one JSON argument, runs the method, and never lets an exception escape."""

    @functools.wraps(method)
    def wrapper(self: MasterService, raw: Any = "null") -> str:
        try:
            epoch = self.seat.epoch  # the term the reply comes from (or an older one)
            reply = ok(method(self, decode_argument(raw)), epoch)
            if len(reply) > MAX_REPLY_CHARS:  # over the peer's frame limit: say so, don't drop
                raise LimitError(f"the reply of {len(reply) >> 20} MiB is over the "
                                 f"{MAX_REPLY_CHARS >> 20} MiB limit; ask for less (e.g. --limit)")
            return reply
        except NotLeaderError as err:
            return failure(NotLeaderError(str(err), err.leader or self.seat.leader))
        except CloudqError as err:
            return failure(err)
        except Exception as err:  # noqa: BLE001 - a peer must never crash the master
            log.exception("internal error in %s", method.__name__)
            return failure(CloudqError(f"internal error in {method.__name__}: {type(err).__name__}"))

    return wrapper


def _field(payload: Any, key: str, kind: type) -> Any:
    if not isinstance(payload, dict):
        raise ValidationError("the argument must be a JSON object")
    value = payload.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValidationError(f"{key!r} must be {kind.__name__}")
    return value


def _reports(payload: dict[str, Any]) -> list[dict[str, Any]]:
    reports = payload.get("reports") or []
    if not isinstance(reports, list) or len(reports) > MAX_REPORTS:
        raise ValidationError(f"'reports' must be a list of at most {MAX_REPORTS} reports")
    return reports


MAX_WAIT_IDS = 10_000  # tasks one wait call may ask about
MAX_WAIT_S = 50.0  # the longest one wait call holds an RPC thread; a client asks for less than its timeout
MAX_REPORTS = 10_000  # one call's reports (a worker sends at most 1,000 and its running tasks)
MAX_REPLY_CHARS = MAX_FRAME_BYTES - (1 << 20)  # room for the frame's own encoding


class MasterService(rpyc.Service):
    """One instance per connection (see make_service), so `identity` is the caller's."""

    def __init__(self, seat: Seat) -> None:
        self.seat = seat
        self.identity = Identity(None)
        self.registered: set[str] = set()  # worker names this connection registered

    @property
    def master(self) -> Master:
        """The leader's core; on a standby, NotLeaderError naming the leader."""
        return self.seat.current()

    def on_connect(self, conn: rpyc.Connection) -> None:
        credentials = conn._config.get("credentials")
        self.identity = credentials if isinstance(credentials, Identity) else Identity(None)

    def _as_worker(self, payload: Any) -> str:
        name = _field(payload, "name", str)
        if not self.identity.may_act_as_worker(name):
            raise AuthError(f"certificate {self.identity.name!r} may not act as worker {name!r}")
        return name

    def _as_admin(self) -> None:
        if not self.identity.is_admin:
            raise AuthError(f"certificate {self.identity.name!r} may not run operator commands")

    @endpoint
    def exposed_ping(self, payload: Any) -> dict[str, Any]:
        return {"version": __version__, "identity": self.identity.name, "role": self.seat.role,
                "epoch": self.seat.epoch, "leader": self.seat.leader}

    @endpoint
    def exposed_register(self, payload: Any) -> dict[str, Any]:
        facts = _field(payload, "facts", dict)
        name = self._as_worker(facts)
        running = payload.get("running") or []
        if not isinstance(running, list) or len(running) > MAX_REPORTS:
            raise ValidationError(f"'running' must be a list of at most {MAX_REPORTS} [task, attempt]")
        if name not in self.registered and len(self.registered) >= defaults.MAX_WORKERS_PER_CONNECTION:
            raise LimitError(f"one connection may register at most "
                             f"{defaults.MAX_WORKERS_PER_CONNECTION} workers")
        reply = self.master.register(facts, running)
        self.registered.add(name)
        return reply

    @endpoint
    def exposed_fetch(self, payload: Any) -> list[dict[str, Any]]:
        name = self._as_worker(payload)
        wait_s = payload.get("wait_s", 0.0)
        if isinstance(wait_s, bool) or not isinstance(wait_s, int | float):
            raise ValidationError("'wait_s' must be a number")
        return self.master.fetch(name, _field(payload, "session", int), wait_s, _reports(payload),
                                 payload.get("sample"))

    @endpoint
    def exposed_leave(self, payload: Any) -> None:
        self.master.leave(self._as_worker(payload), _field(payload, "session", int))

    @endpoint
    def exposed_report(self, payload: Any) -> dict[str, Any]:
        name = self._as_worker(payload)
        session = _field(payload, "session", int)
        reports = _reports(payload)
        sample = payload.get("sample")
        if reports:  # one operation for both
            return {"refused": self.master.report(name, session, reports, sample)}
        self.master.heartbeat(name, sample, session)  # its session checked, as for any report
        return {"refused": []}

    @endpoint
    def exposed_submit(self, payload: Any) -> list[dict[str, Any]]:
        self._as_admin()
        tasks = self.master.submit(_field(payload, "tasks", list))
        # A script may send thousands: answer with what it needs to follow them, not whole records.
        return [{"id": t.id, "name": t.name, "state": t.state.value, "worker": t.worker,
                 "attempt": t.attempt} for t in tasks]

    @endpoint
    def exposed_call(self, payload: Any) -> dict[str, Any]:
        """Runs one operator command from the shared registry (what `cloudq ctl` sends)."""
        self._as_admin()
        argv = _field(payload, "argv", list)
        files = payload.get("files") or {}
        if not all(isinstance(a, str) for a in argv) or not isinstance(files, dict):
            raise ValidationError("'argv' must be a list of strings and 'files' an object")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
            raise ValidationError("'files' must map paths to text")
        cmd, args = parse(argv)
        # A command that says it only reads runs read-only, and so does any the caller asks
        # to (the remote shell's watch): a change is refused before it starts.
        guard = Guard(read_only=not cmd.changes_master(args) or payload.get("read_only") is True)
        ctx = Context(Gate(self.master, guard), files=files, local=False)
        return run(ctx, cmd, args).to_dict()

    @endpoint
    def exposed_wait(self, payload: Any) -> dict[str, Any]:
        """Answers when every task in `ids` has ended (durably) or `wait_s` has passed, at most
        MAX_WAIT_S: a client waiting longer asks again (cloudq.client.Client.wait)."""
        self._as_admin()
        ids = _field(payload, "ids", list)
        if not ids or len(ids) > MAX_WAIT_IDS or not all(isinstance(i, str) for i in ids):
            raise ValidationError(f"'ids' must be a list of 1 to {MAX_WAIT_IDS} task ids")
        wait_s = payload.get("wait_s", 0.0)
        if isinstance(wait_s, bool) or not isinstance(wait_s, int | float) or not wait_s >= 0:
            raise ValidationError("'wait_s' must be a number of seconds, 0 or more")
        return self.master.wait_ended(ids, min(float(wait_s), MAX_WAIT_S))

    @endpoint
    def exposed_feed(self, payload: Any) -> dict[str, Any]:
        """What the remote shell shows between commands (Views.feed): one call a second."""
        self._as_admin()
        if not isinstance(payload, dict):
            raise ValidationError("the argument must be a JSON object")
        after = payload.get("after")
        if after is not None and (isinstance(after, bool) or not isinstance(after, int) or after < 0):
            raise ValidationError("'after' must be a cursor from an earlier feed, or null")
        return self.master.feed(after, workers=payload.get("workers") is True)


def make_service(seat: Seat) -> Any:
    """A service class whose instances share `seat`: one instance per connection."""
    return rpyc.utils.helpers.classpartial(MasterService, seat)
