"""Hostile RPC calls from an authenticated worker, while a good worker heartbeats.

A real master over TLS, a good worker process (`good`) running a task, and an attacker: a
separate process holding a real worker certificate (`evil`, registered and drained by the
operator, so it has a session but is never given work). The attacker sends N calls drawn by a
seeded generator from the categories below, each with what the master must do with it:

- unknown_methods: names that are not exposed (private methods, attributes, dunders, junk),
  and rpyc requests other than a call (get/set/delete attribute, call the root, pickle,
  iterate, unknown handler numbers);
- wrong_types: every field of every method given the wrong type;
- nan_and_specials: NaN, Infinity and 1e400 in JSON (not JSON: orjson refuses them), text that
  is not JSON, NaN as a raw float argument;
- negative_numbers and huge_numbers: sessions, attempts, times, resources, sizes;
- nested: payloads nested up to 50,000 deep, and nested values inside fields;
- oversized: arguments of megabytes, lists over their caps, and frames over the frame limit
  (the master closes that connection; the attacker dials again);
- netrefs: arguments that are not JSON text (dicts, lists and objects travel as remote
  references, which the master must never use: each use is counted on the attacker's side),
  and JSON shaped like rpyc's references;
- other_workers: acting as another worker, and results for another worker's running task;
- old_attempts: results for finished tasks, old attempts and unknown ids; stale sessions;
- operator_commands: submit, cancel, drain, quit... from a worker's certificate;
- malformed_frames: frames that are not rpyc messages.

A call is refused when the master answers with an error envelope or an rpyc exception; a
worker's report is refused item by item ({"refused": [ids]}), which counts when every item
is. Measured:

- crashes: the master process exited, or its listener stopped answering new connections;
- state_changes: what differs between the master's views (`status`, every task's `show`
  with its history, `queue` in every state, `workers`, `events`) before and after the attack,
  less the fields that move by themselves (uptime, waits, last heartbeat, live samples). The
  same comparison over the baseline window, with no attack, must find nothing: it proves
  the views are stable enough to tell;
- unexpected_answers: a call that should have been refused was accepted; also unexpected
  refusals, internal errors, connections dropped on a call the master should answer, calls
  that hung, uses of the attacker's objects, a connection slot not given back;
- the good worker's heartbeat round trip: a measuring client with the good worker's
  certificate, in the worker's session (from the worker's log), sends the heartbeat the
  worker sends (`report` with no items and a live sample, which the master applies under its
  core lock) every 20 ms; p50 and p99 over a baseline window, then while the attack runs,
  and their ratio.

Used by tests/chaos/test_hostile_scale.py (short, in CI) and, at full size (10,000 calls),
by bench/chaos/run.py. `python -m tests.chaos.hostile_rpc attack CONFIG` is the attacker.
"""

from __future__ import annotations

import base64
import json
import random
import re
import string
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from rpyc.core import brine, consts
from rpyc.core.netref import syncreq

from cloudq import defaults
from cloudq.client import Client
from cloudq.errors import LimitError
from cloudq.rpc.client import MasterClient
from cloudq.rpc.protocol import PEER_MAX_FRAME_BYTES
from tests.chaos.peers import MIB, TlsCluster, held_slots, percentile, python_child, tls_cluster
from tests.cluster.harness import wait_until

ATTACKER = "evil"
GOOD = "good"
PROBE_EVERY_S = 0.02
CALL_TIMEOUT_S = 15.0  # an attack call not answered by then counts as hung
# Fields that change by themselves between two views of an untouched master.
VOLATILE = frozenset({"uptime_s", "oldest_wait_s", "in_queue_s", "last_seen", "sample",
                      "heartbeat_age_s", "last_checkpoint_age_s"})
FINAL_STATES = ("completed", "failed", "cancelled", "dead")


# ---------------------------------------------------------------------------------- the calls
@dataclass(frozen=True)
class Targets:
    """What the attacker aims at, found by the harness before the attack."""

    me: str  # the attacker's own worker name (its certificate's)
    session: int  # its current session
    good: str  # the good worker
    running: str  # the good worker's task, running its attempt 1
    old: str  # completed as attempt 2, attempt 1 having failed
    completed: str  # completed as attempt 1
    queued: str  # queued; fits no worker


@dataclass
class Call:
    """One hostile call. `shape`: "json" (one JSON text argument, as clients send), "args"
    (raw Python arguments and keyword arguments), "handler" (an rpyc request on the master's
    root object other than a call by name), "frame" (raw bytes as one frame).

    `expect`: "refused"; "answered" (harmless, e.g. ping); "any"; "refused_reports" (a
    worker's report: answered, but every one of its `items` refused); "no_instructions"
    (a fetch answered with nothing to do); "may_drop" (the master may close the connection)."""

    category: str
    method: Any
    shape: str
    payload: Any
    expect: str = "refused"
    items: int = 0
    kwargs: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        if self.shape == "args":  # by type only: a Spy's repr would count as a use of it
            text = "(" + ", ".join(type(arg).__name__ for arg in self.payload) + ")"
            text += " " + ", ".join(f"{k}={type(v).__name__}" for k, v in self.kwargs.items())
        else:
            text = self.payload if isinstance(self.payload, str) else repr(self.payload)
        return f"{self.category}: {str(self.method)[:60]!r} ({self.shape}) {text[:160]!r}"


class Spy:
    """An attacker's object that travels as a remote reference: every use the master makes
    of it is counted here. It should make none: arguments must be JSON text."""

    touched = 0

    def _touch(self, *args: Any) -> Any:
        Spy.touched += 1
        return "{}"

    __str__ = __repr__ = __format__ = __getitem__ = __call__ = __iter__ = _touch  # type: ignore[assignment]

    def __len__(self) -> int:
        Spy.touched += 1
        return 2

    def __eq__(self, other: object) -> bool:
        Spy.touched += 1
        return False

    __hash__ = object.__hash__


class TextLike(str):
    """A str subclass: it travels as a remote reference too, posing as text."""


WORKER_METHODS = ("register", "fetch", "report", "leave")
OPERATOR_METHODS = ("submit", "call", "wait", "feed")
REAL_METHODS = frozenset({*WORKER_METHODS, *OPERATOR_METHODS, "ping", "get_service_name",
                          "get_service_aliases"})
NOT_EXPOSED = (
    "shutdown", "stop", "exec", "eval", "seat", "identity", "master", "registered", "on_connect",
    "on_disconnect", "_as_admin", "_as_worker", "_connect", "__init__", "__class__", "__dict__",
    "__reduce_ex__", "__getattribute__", "__setattr__", "__new__", "__subclasshook__", "exposed_",
    "exposed_exposed_ping", "exposed_seat", "_rpyc_getattr", "_rpyc_setattr", "_protocol",
    "ALIASES", "drain", "cancel", "tick", "place", "close", "store", "journal", "Ping", "PING",
    "ping ", "ping\x00", "submit_many", "register_worker", "__call__", "__getitem__", "__iter__",
    "__len__", "__enter__", "__exit__",
)


def _text(value: Any) -> str:
    """JSON text; json rather than orjson, as it writes integers of any size."""
    return json.dumps(value)


def _valid_facts(me: str) -> dict[str, Any]:
    return {"name": me, "cpu_cores": 1.0, "mem_gb": 1.0, "max_tasks": 1}


# One bad field makes a registration refused, whatever else it says.
WRONG_TYPE_FACTS = (("cpu_cores", "4"), ("cpu_cores", True), ("cpu_cores", [4]), ("mem_gb", {"gb": 8}),
                    ("max_tasks", "2"), ("max_tasks", 1.5), ("max_tasks", True), ("gpus", "all"),
                    ("gpus", [1]), ("gpus", {"0": {}}), ("capabilities", "ffmpeg"), ("capabilities", [1]),
                    ("labels", 5), ("labels", ["a"]), ("labels", {"k": 5}), ("storage_gb", "lots"),
                    ("cpu_cores", None), ("mem_gb", None))
NEGATIVE_FACTS = (("cpu_cores", -1), ("mem_gb", -0.5), ("storage_gb", -1), ("max_tasks", 0),
                  ("max_tasks", -1), ("gpus", [{"mem_gb": -1}]), ("cpu_cores", -1e308))
HUGE_FACTS = (("cpu_cores", 1e308), ("cpu_cores", 65537), ("mem_gb", 2**24 + 1), ("storage_gb", 2**31),
              ("max_tasks", 4097), ("max_tasks", 2**62), ("max_tasks", 2**64 - 1), ("gpus", [{}] * 65),
              ("capabilities", ["x"] * 257), ("capabilities", ["x" * 65]),
              ("labels", {f"k{i}": "v" for i in range(65)}), ("gpus", [{"mem_gb": 2**21}]))


def _poisoned(me: str, poisons: tuple[tuple[str, Any], ...], rng: random.Random,
              **extra: Any) -> dict[str, Any]:
    key, value = rng.choice(poisons)
    return {**_valid_facts(me), **extra, key: value}


def _result_report(task: str, attempt: Any, state: str = "completed", **result: Any) -> dict[str, Any]:
    outcome = {"status": state, "exit_code": 0, "duration_s": 0.5, **result}
    return {"task": task, "attempt": attempt, "state": state,
            **({"result": outcome} if state != "running" else {})}


def _reports(t: Targets, reports: list[Any]) -> Call:
    """A report as the attacker itself, in its current session: answered, each item refused."""
    return Call("", "report", "json", _text({"name": t.me, "session": t.session, "reports": reports}),
                "refused_reports", items=len(reports))


def _any_task(rng: random.Random, t: Targets) -> str:
    return rng.choice([t.running, t.old, t.completed, t.queued, "t999999", "nope", "t0"])


def _unknown_methods(rng: random.Random, t: Targets) -> Call:
    roll = rng.random()
    if roll < 0.45:
        return Call("", rng.choice(NOT_EXPOSED), "json", rng.choice(["null", "{}", _text({"name": t.me})]))
    if roll < 0.6:
        while (name := "".join(rng.choices(string.ascii_letters + "_", k=rng.randint(1, 40)))) in REAL_METHODS:
            pass
        return Call("", name, "json", "{}")
    if roll < 0.63:
        return Call("", "x" * rng.choice([1000, 100_000]), "json", "{}")
    if roll < 0.66:  # a name that is not text at all
        return Call("", "callattr", "handler", (consts.HANDLE_CALLATTR, (rng.choice([5, 1.5, None]), ("{}",), ())))
    handler, args, expect = rng.choice([
        (consts.HANDLE_GETATTR, ("seat",), "refused"), (consts.HANDLE_GETATTR, ("identity",), "refused"),
        (consts.HANDLE_GETATTR, ("_config",), "refused"), (consts.HANDLE_GETATTR, ("__class__",), "refused"),
        (consts.HANDLE_GETATTR, ("__dict__",), "refused"), (consts.HANDLE_GETATTR, ("_conn",), "refused"),
        (consts.HANDLE_SETATTR, ("identity", "cloudq-admin"), "refused"),
        (consts.HANDLE_SETATTR, ("exposed_ping", None), "refused"),
        (consts.HANDLE_DELATTR, ("seat",), "refused"), (consts.HANDLE_DELATTR, ("exposed_submit",), "refused"),
        (consts.HANDLE_CALL, (("null",), ()), "refused"), (consts.HANDLE_PICKLE, (2,), "refused"),
        (consts.HANDLE_BUFFITER, (3,), "refused"), (consts.HANDLE_CTXEXIT, (None,), "refused"),
        (consts.HANDLE_INSTANCECHECK, (("builtins.dict", 1, 0),), "refused"),
        (consts.HANDLE_OLDSLICING, ("__getitem__", "__getslice__", 0, 1, ()), "refused"),
        (consts.HANDLE_INSPECT, (("builtins.object", 1, 1),), "refused"),
        (99, (), "refused"), (0, (), "refused"),
        # Harmless reads rpyc always answers: the object's repr, hash, attribute names.
        (consts.HANDLE_REPR, (), "any"), (consts.HANDLE_STR, (), "any"), (consts.HANDLE_HASH, (), "any"),
        (consts.HANDLE_DIR, (), "any"), (consts.HANDLE_CMP, ("x", "__lt__"), "any"),
        (consts.HANDLE_GETATTR, ("exposed_ping",), "any"), (consts.HANDLE_GETATTR, ("__doc__",), "any"),
    ])
    return Call("", f"handler {handler}", "handler", (handler, args), expect)


def _wrong_types(rng: random.Random, t: Targets) -> Call:
    method = rng.choice((*WORKER_METHODS, *WORKER_METHODS, *OPERATOR_METHODS, "ping"))
    not_an_object = rng.choice([[1], "evil", 3.5, True, [], [[]], 7])
    if method == "ping":
        return Call("", method, "json", _text(not_an_object), "answered")  # ping reads nothing
    if method in OPERATOR_METHODS or rng.random() < 0.2:
        return Call("", method, "json", _text(not_an_object))
    name_wrong = rng.choice([5, [t.me], {"n": t.me}, True])
    session_wrong = rng.choice(["1", str(t.session), 1.5, float(t.session), [t.session], True, {"s": 1}])
    if method == "register":
        payload = rng.choice([
            {"facts": _poisoned(t.me, WRONG_TYPE_FACTS, rng)},
            {"facts": rng.choice(["x", [1], 5, True])},
            {"facts": _valid_facts(t.me), "running": rng.choice(["x", {"a": 1}, 5, True])},
            {"facts": {**_valid_facts(t.me), "name": name_wrong}},
        ])
    elif method == "fetch":
        payload = rng.choice([
            {"name": t.me, "session": t.session, "wait_s": rng.choice(["0", [0], {"s": 0}, True, False])},
            {"name": name_wrong, "session": t.session, "wait_s": 0},
            {"name": t.me, "session": session_wrong, "wait_s": 0},
            {"name": t.me, "session": t.session, "wait_s": 0, "reports": rng.choice(["x", 5, {"task": "t1"}, True])},
        ])
    elif method == "report":
        payload = rng.choice([
            {"name": name_wrong, "session": t.session, "reports": []},
            {"name": t.me, "session": session_wrong, "reports": []},
            {"name": t.me, "session": t.session, "reports": rng.choice(["x", 5, {"task": "t1"}, True])},
        ])
        if rng.random() < 0.3:  # items of the wrong type: each one refused
            return _reports(t, [rng.choice([1, "x", None, [], True, 2.5]) for _ in range(rng.randint(1, 5))])
    else:
        payload = rng.choice([{"name": t.me, "session": session_wrong}, {"name": name_wrong, "session": t.session},
                              {"name": t.me}])
    return Call("", method, "json", _text(payload))


NAN_TEXTS = ('{"name": "%(me)s", "session": NaN}', '{"name": "%(me)s", "session": %(s)d, "wait_s": Infinity}',
             '{"facts": {"name": "%(me)s", "cpu_cores": NaN, "mem_gb": 1}}',
             '{"name": "%(me)s", "session": %(s)d, "reports": [{"task": "t1", "attempt": NaN}]}',
             "NaN", "-Infinity", "[NaN]", "1e400", '{"name": "%(me)s", "session": 1e400}',
             '{"facts": {"name": "%(me)s", "cpu_cores": -1e999, "mem_gb": 1}}', '{"after": Infinity}',
             '{"name": "%(me)s", "session": %(s)d, "reports": [], "sample": {"cpu_percent": NaN}}')
NOT_JSON = ("", " ", "{", "}", "{'name': 'evil'}", "undefined", "None", "\x00", "[1,]", '{"a":1}}',
            "0x10", "--", '{"name": "evil",}', "nul", "tru", '"unterminated')


def _nan_and_specials(rng: random.Random, t: Targets) -> Call:
    roll = rng.random()
    if roll < 0.5:
        text = rng.choice(NAN_TEXTS) % {"me": t.me, "s": t.session}
        return Call("", rng.choice((*WORKER_METHODS, *OPERATOR_METHODS, "ping")), "json", text)
    if roll < 0.8:
        return Call("", rng.choice((*WORKER_METHODS, *OPERATOR_METHODS, "ping")), "json", rng.choice(NOT_JSON))
    if roll < 0.9:  # a real NaN, as rpyc carries floats: not JSON text, so refused
        return Call("", rng.choice((*WORKER_METHODS, "ping")), "args",
                    (rng.choice([float("nan"), float("inf"), float("-inf"), -0.0]),))
    return Call("", rng.choice(WORKER_METHODS[1:]), "json",  # NUL and control characters in a name
                _text({"name": t.me + rng.choice(["\x00", "\n", "\u202e", "\t"]), "session": t.session}))


def _negative_numbers(rng: random.Random, t: Targets) -> Call:
    roll = rng.random()
    stale = rng.choice([-1, -t.session, -(2**63), -(2**31)])
    if roll < 0.25:
        return Call("", "register", "json", _text({"facts": _poisoned(t.me, NEGATIVE_FACTS, rng)}))
    if roll < 0.45:
        method = rng.choice(WORKER_METHODS[1:])
        return Call("", method, "json", _text({"name": t.me, "session": stale, "wait_s": -1, "reports": []}))
    if roll < 0.8:
        task = _any_task(rng, t)
        item = rng.choice([
            _result_report(task, rng.choice([-1, 0, -(2**31)])),
            {**_result_report(task, 1, "running"), "started_at": rng.choice([-1.0, -1e12, 0.0])},
            _result_report(task, 1, duration_s=rng.choice([-5, -1e300])),
            _result_report(task, 1, exit_code=-(2**40)),
            _result_report(task, 1, started_at=-1.0),
            {**_result_report(task, 1, "running"), "progress": {"frame": -1, "speed": -1e308}},
        ])
        return _reports(t, [item])
    if roll < 0.9:  # a fetch in its own session: the refused items are not returned, no work either
        return Call("", "fetch", "json", _text({"name": t.me, "session": t.session, "wait_s": -1,
                                                "reports": [_result_report(t.running, -1)]}), "no_instructions")
    return Call("", rng.choice(OPERATOR_METHODS), "json",
                _text(rng.choice([{"after": -1}, {"ids": [t.running], "wait_s": -1}, {"tasks": [{"priority": -1}]}])))


def _huge_numbers(rng: random.Random, t: Targets) -> Call:
    roll = rng.random()
    huge_session = rng.choice([2**63 - 1, 2**64 - 1, 10**30, 1e308, t.session + 2**40])
    if roll < 0.25:
        return Call("", "register", "json", _text({"facts": _poisoned(t.me, HUGE_FACTS, rng)}))
    if roll < 0.45:
        method = rng.choice(WORKER_METHODS[1:])  # a stale session is refused before any wait
        return Call("", method, "json", _text({"name": t.me, "session": huge_session, "wait_s": 1e308}))
    if roll < 0.85:
        task = _any_task(rng, t)
        item = rng.choice([
            _result_report(task, rng.choice([2**31, 2**62, 2**64 - 1, 10**20])),
            {**_result_report(task, 1, "running"), "started_at": 1e300},
            _result_report(task, 1, duration_s=1e300),
            _result_report(task, 1, exit_code=2**40),
            {**_result_report(task, 1, "running"), "progress": {"frame": 1e308, "pct": 2**63}},
        ])
        return _reports(t, [item])
    return Call("", rng.choice(OPERATOR_METHODS), "json",
                _text(rng.choice([{"after": 2**64 - 1}, {"ids": [t.running], "wait_s": 1e308},
                                  {"argv": ["queue", "--limit", str(10**30)]}])))


def _nested(rng: random.Random, t: Targets) -> Call:
    depth = rng.choice([10, 100, 500, 1000, 1025, 5000, 50_000])
    array = "[" * depth + "]" * depth
    obj = '{"a":' * depth + "1" + "}" * depth
    roll = rng.random()
    if roll < 0.4:  # the whole argument: refused as too deep, or as not an object
        return Call("", rng.choice((*WORKER_METHODS, *OPERATOR_METHODS)), "json", rng.choice([array, obj]))
    inner: Any = []
    for _ in range(min(depth, 200)):  # as values inside fields (json.dumps recurses)
        inner = [inner]
    if roll < 0.75:
        task = _any_task(rng, t)
        return _reports(t, [rng.choice([
            inner, {"task": task, "attempt": 1, "state": "running", "progress": {"p": inner}},
            _result_report(task, 1, output={"nested": inner}), {"task": inner, "attempt": 1},
        ])])
    if roll < 0.9:
        return Call("", "register", "json", _text({"facts": _poisoned(
            t.me, (("labels", {"k": inner}), ("name", inner), ("gpus", inner)), rng, tools={"deep": inner})}))
    return Call("", "fetch", "json", _text({"name": inner, "session": t.session, "wait_s": 0}))


def _oversized(rng: random.Random, t: Targets) -> Call:
    roll = rng.random()
    if roll < 0.12:  # over the frame limit: the connection is closed
        size = PEER_MAX_FRAME_BYTES + rng.randint(1, 4 * MIB)
        text = ("a" * size if rng.random() < 0.5
                else base64.b64encode(rng.randbytes(size * 3 // 4 + 3)).decode()[:size])
        return Call("", rng.choice(WORKER_METHODS), "json", text, "may_drop")
    megabytes = rng.randint(1, 6) * MIB
    choice = rng.randrange(5)
    if choice == 0:
        return Call("", rng.choice(WORKER_METHODS[1:]), "json",
                    _text({"name": "x" * megabytes, "session": t.session, "wait_s": 0}))
    if choice == 1:  # one more report than a call may carry
        return Call("", "report", "json", _text({"name": t.me, "session": t.session,
                                                 "reports": [{"task": "t1", "attempt": 1}] * 10_001}))
    if choice == 2:
        return Call("", rng.choice(WORKER_METHODS), "json", "{" + "x" * megabytes)
    if choice == 3:
        return Call("", "register", "json", _text({"facts": _poisoned(t.me, WRONG_TYPE_FACTS, rng,
                                                                     host="h" * megabytes)}))
    return Call("", "submit", "json", _text({"tasks": [{"kind": "noop"}] * 50_000}))


def _netrefs(rng: random.Random, t: Targets) -> Call:
    method = rng.choice((*WORKER_METHODS, *OPERATOR_METHODS, "ping"))
    roll = rng.random()
    if roll < 0.55:
        args = rng.choice([
            lambda: ({"name": t.me, "session": t.session},), lambda: ([1, 2],), lambda: (Spy(),),
            lambda: (TextLike(_text({"name": t.me, "session": t.session})),), lambda: (42,),
            lambda: (b"{}",), lambda: (("a", "b"),), lambda: (None,), lambda: (True,), lambda: (1.5,),
            lambda: (frozenset({"x"}),), lambda: ("{}", "{}"), lambda: ("{}", Spy()),
        ])()
        return Call("", method, "args", args)
    if roll < 0.7:
        return Call("", method, "args", (), kwargs=rng.choice([{"raw": Spy()}, {"payload": "{}"},
                                                               {"raw": "{}", "extra": 1}]))
    if roll < 0.8 and method != "ping":
        return Call("", method, "args", ())  # no argument at all: "null"
    shaped = rng.choice([
        {"____id_pack__": ["builtins.dict", 94_000_000, 0]},
        {"facts": {"____conn__": "x", "____id_pack__": ["builtins.dict", 1, 1]}},
        ["builtins.str", 140_000_000, 2], {"__class__": "MasterService", "identity": "cloudq-admin"},
    ])
    if method in ("report", "ping"):  # ping reads nothing: aim the shaped JSON at a report
        return _reports(t, [shaped])
    return Call("", method, "json", _text(shaped))


def _other_workers(rng: random.Random, t: Targets) -> Call:
    roll = rng.random()
    other = rng.choice([t.good, t.good, "cloudq-admin", "cloudq-master", "w-nobody", t.good.upper(),
                        t.good + " ", ""])
    if roll < 0.4:  # acting as another worker
        method = rng.choice(WORKER_METHODS)
        payload: dict[str, Any] = {
            "register": {"facts": _valid_facts(other), "running": [[t.running, 1]]},
            "fetch": {"name": other, "session": 1, "wait_s": 0},
            "report": {"name": other, "session": 1, "reports": [_result_report(t.running, 1)]},
            "leave": {"name": other, "session": 1},
        }[method]
        return Call("", method, "json", _text(payload))
    if roll < 0.85:  # in its own name, results for the good worker's running task
        states = ["running", "completed", "failed", "cancelled", "timed_out"]
        items = [_result_report(t.running, rng.choice([1, 1, 2]), rng.choice(states), fault=rng.choice(["task", "worker"]))
                 for _ in range(rng.randint(1, 4))]
        if rng.random() < 0.3:
            items += [_result_report(task, 1) for task in (t.old, t.completed, t.queued)]
        return _reports(t, items)
    return Call("", "fetch", "json", _text({"name": t.me, "session": t.session, "wait_s": 0,
                                            "reports": [_result_report(t.running, 1)]}), "no_instructions")


def _old_attempts(rng: random.Random, t: Targets) -> Call:
    roll = rng.random()
    if roll < 0.6:
        task, attempt = rng.choice([(t.old, 1), (t.old, 2), (t.completed, 1), (t.queued, 1), (t.running, 2),
                                    ("t999999", 1), ("".join(rng.choices(string.ascii_lowercase, k=8)), 1)])
        return _reports(t, [_result_report(task, attempt, rng.choice(["completed", "failed", "running"]))])
    if roll < 0.9:
        stale = rng.choice([t.session - 1, t.session + 1, 0])
        method = rng.choice(WORKER_METHODS[1:])
        return Call("", method, "json", _text({"name": t.me, "session": stale, "wait_s": 0,
                                               "reports": [_result_report(t.running, 1)]}))
    return Call("", "report", "json", _text({"name": t.good, "session": 1, "reports": [_result_report(t.old, 1)]}))


def _operator_commands(rng: random.Random, t: Targets) -> Call:
    method, payload = rng.choice([
        ("submit", {"tasks": [{"kind": "noop"}]}),
        ("submit", {"tasks": [{"kind": "exec", "spec": {"argv": ["rm", "-rf", "/"]}}]}),
        ("call", {"argv": ["cancel", t.running]}), ("call", {"argv": ["drain", t.good]}),
        ("call", {"argv": ["release", t.me]}), ("call", {"argv": ["quit"]}), ("call", {"argv": ["hold", t.queued]}),
        ("call", {"argv": ["retry", t.old]}), ("call", {"argv": ["priority", t.queued, "high"]}),
        ("call", {"argv": ["status"]}), ("call", {"argv": ["task", "--exec", "true"]}),
        ("call", {"argv": ["workers"], "read_only": True}),
        ("wait", {"ids": [t.running], "wait_s": 0}), ("feed", {"after": None}),
    ])
    return Call("", method, "json", _text(payload))


def _malformed_frames(rng: random.Random, t: Targets) -> Call:
    frame = rng.choice([
        lambda: bytes([consts.MSG_REQUEST]) + rng.randbytes(rng.randint(1, 64)),
        lambda: bytes([rng.choice([0, 4, 7, 200, 255])]) + rng.randbytes(rng.randint(0, 64)),
        lambda: b"",
        lambda: bytes([consts.MSG_REPLY]) + brine.dump((999_999, (consts.LABEL_VALUE, 1))),
        lambda: bytes([consts.MSG_REQUEST]) + brine.dump((1, "not a request")),
    ])()
    return Call("", "frame", "frame", frame, "may_drop")


CATEGORIES: dict[str, tuple[float, Callable[[random.Random, Targets], Call]]] = {
    "unknown_methods": (12, _unknown_methods),
    "wrong_types": (16, _wrong_types),
    "nan_and_specials": (9, _nan_and_specials),
    "negative_numbers": (10, _negative_numbers),
    "huge_numbers": (10, _huge_numbers),
    "nested": (8, _nested),
    "oversized": (1.5, _oversized),
    "netrefs": (10, _netrefs),
    "other_workers": (12, _other_workers),
    "old_attempts": (8, _old_attempts),
    "operator_commands": (3, _operator_commands),
    "malformed_frames": (0.5, _malformed_frames),
}


def hostile_calls(rng: random.Random, targets: Targets, count: int,
                  categories: tuple[str, ...] = tuple(CATEGORIES)) -> Iterator[Call]:
    """`count` calls, drawn by category weight from `categories`; the same seed gives the
    same calls."""
    names = list(categories)
    weights = [CATEGORIES[name][0] for name in names]
    for _ in range(count):
        category = rng.choices(names, weights)[0]
        call = CATEGORIES[category][1](rng, targets)
        call.category = category
        yield call


# ---------------------------------------------------------------------------- the attacker
class Attacker:
    """One connection with a worker's certificate, dialled again when the master closes it."""

    def __init__(self, address: str, certs: Path, identity: str) -> None:
        self.address, self.certs, self.identity = address, certs, identity
        self.client: MasterClient | None = None
        self.reconnects = 0
        self._connect()

    def _connect(self) -> None:
        """Until a connection is let in: the one just closed may still hold its slot."""
        deadline = time.monotonic() + 30
        while True:
            client = MasterClient(self.address, self.certs, identity=self.identity, timeout_s=CALL_TIMEOUT_S)
            try:
                client.call("ping")
                self.client = client
                return
            except LimitError:
                client.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def reconnect(self) -> None:
        if self.client is not None:
            self.client._drop()
        self.reconnects += 1
        self._connect()

    def send(self, call: Call) -> Any:
        """The master's reply; an rpyc exception raised as such; EOFError/OSError when the
        connection was closed, TimeoutError when no answer came."""
        assert self.client is not None and self.client.conn is not None
        root = self.client._root
        if call.shape == "json":
            return syncreq(root, consts.HANDLE_CALLATTR, call.method, (call.payload,), ())
        if call.shape == "args":
            return syncreq(root, consts.HANDLE_CALLATTR, call.method, call.payload, tuple(call.kwargs.items()))
        if call.shape == "handler":
            handler, args = call.payload
            return syncreq(root, handler, *args)
        self.client.conn._channel.send(call.payload)
        # No reply comes to a frame that is no request: a ping tells whether it was let be.
        return syncreq(root, consts.HANDLE_CALLATTR, "ping", ("null",), ())


@dataclass
class Tally:
    """What the attacker saw, by category and in total."""

    by_category: dict[str, Counter[str]] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)  # failure kind -> a few calls
    seconds: Counter[str] = field(default_factory=Counter)  # by category: sending and the answer

    def add(self, category: str, outcome: str) -> None:
        self.by_category.setdefault(category, Counter())[outcome] += 1

    def fail(self, kind: str, call: Call, detail: str) -> None:
        self.add(call.category, kind)
        found = self.examples.setdefault(kind, [])
        if len(found) < 5:
            found.append(f"{call.describe()} -> {detail[:200]}")


FAILURE_KINDS = ("unexpected_answers", "unexpected_refusals", "internal_errors", "unexpected_drops", "hung")


def classify(call: Call, reply: Any) -> tuple[str, str]:
    """(outcome, detail): outcome is "refused", "answered", or a failure kind."""
    envelope = None
    if type(reply) is str:  # noqa: E721 - isinstance() would ask a remote reference for its class
        try:
            envelope = orjson.loads(reply)
        except orjson.JSONDecodeError:
            envelope = None
    if isinstance(envelope, dict) and "ok" in envelope:
        if not envelope["ok"]:
            error = str(envelope.get("error") or "")
            if not error or "internal error" in error:
                return "internal_errors", error or "an error without a message"
            if call.expect == "answered":
                return "unexpected_refusals", error
            return "refused", error
        value = envelope.get("value")
        if call.expect == "refused_reports":
            refused = value.get("refused") if isinstance(value, dict) else None
            if isinstance(refused, list) and len(refused) == call.items:
                return "refused", f"{call.items} items refused"
            return "unexpected_answers", f"report items accepted: {value!r}"
        if call.expect == "no_instructions":
            return ("refused", "nothing to do") if value == [] else ("unexpected_answers", repr(value))
        if call.expect == "refused":
            return "unexpected_answers", repr(value)
        return "answered", ""
    if call.expect in ("refused", "refused_reports", "no_instructions"):
        return "unexpected_answers", f"rpyc answered {reply!r}"
    return "answered", ""


def attack(address: str, certs: Path, targets: Targets, calls: int, seed: int,
           categories: tuple[str, ...] = tuple(CATEGORIES),
           connected: Callable[[], None] = lambda: None) -> dict[str, Any]:
    rng = random.Random(seed)
    attacker = Attacker(address, certs, targets.me)
    connected()
    tally = Tally()
    started = time.perf_counter()
    for call in hostile_calls(rng, targets, calls, categories):
        sent = time.perf_counter()
        try:
            outcome, detail = classify(call, attacker.send(call))
        except TimeoutError:
            outcome, detail = "hung", f"no answer within {CALL_TIMEOUT_S:g} s"
            attacker.reconnect()
        except (EOFError, OSError) as err:  # closed by the master (ConnectionError is an OSError)
            outcome = "dropped" if call.expect == "may_drop" else "unexpected_drops"
            detail = f"{type(err).__name__}: {err}"
            attacker.reconnect()
        except Exception as err:
            if not hasattr(err, "_remote_tb"):  # raised here, not by the master: a fault of this check
                raise
            outcome, detail = ("unexpected_refusals", repr(err)) if call.expect == "answered" else ("refused", "")
        if outcome in FAILURE_KINDS:
            tally.fail(outcome, call, detail)
        else:
            tally.add(call.category, outcome)
        tally.seconds[call.category] += time.perf_counter() - sent
    seconds = time.perf_counter() - started
    if attacker.client is not None:
        attacker.client.close()
    return {"seconds": seconds, "reconnects": attacker.reconnects, "touched": Spy.touched,
            "by_category": {k: dict(v) for k, v in tally.by_category.items()}, "examples": tally.examples,
            "seconds_by_category": dict(tally.seconds)}


# ------------------------------------------------------------------------------ the harness
@dataclass
class HostileCalls:
    calls: int
    seed: int
    seconds: float = 0.0  # the attack, first call to last answer
    by_category: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds_by_category: dict[str, float] = field(default_factory=dict)  # waiting for the answers
    examples: dict[str, list[str]] = field(default_factory=dict)
    crashes: int = 0
    state_changes: list[str] = field(default_factory=list)  # paths in the views that changed
    view_noise: list[str] = field(default_factory=list)  # ...that changed with no attack at all
    touched: int = 0  # uses the master made of the attacker's objects
    slot_leaks: int = 0  # the attacker's certificate could not hold its cap of connections after
    probe_errors: int = 0
    reconnects: int = 0
    tracebacks: int = 0  # master connection threads ended by an unhandled exception (logged)
    rejections: dict[str, int] = field(default_factory=dict)  # the master's counts, during the attack
    rtt_baseline_ms: list[float] = field(default_factory=list)
    rtt_attack_ms: list[float] = field(default_factory=list)

    def outcome(self, kind: str) -> int:
        return sum(counts.get(kind, 0) for counts in self.by_category.values())

    def failures(self) -> dict[str, int]:
        return {"crashes": self.crashes, "state_changes": len(self.state_changes),
                **{kind: self.outcome(kind) for kind in FAILURE_KINDS},
                "objects_touched": self.touched, "slot_leaks": self.slot_leaks,
                "view_noise": len(self.view_noise), "probe_errors": self.probe_errors}

    def rtt_ratio(self) -> float:
        """The good worker's heartbeat round trip under attack over its baseline, at p50."""
        base = percentile(self.rtt_baseline_ms, 0.5)
        return percentile(self.rtt_attack_ms, 0.5) / base if base else float("inf")

    def report(self) -> str:
        sent = sum(sum(c.values()) for c in self.by_category.values())
        lines = [f"hostile calls: {sent} from a worker's certificate in {self.seconds:.1f} s "
                 f"({sent / self.seconds if self.seconds else 0:.0f} calls/s, seed {self.seed}); "
                 f"refused {self.outcome('refused')}, answered harmlessly {self.outcome('answered')}, "
                 f"connection closed by the master {self.outcome('dropped')} (redialled {self.reconnects} times)"]
        for category, counts in sorted(self.by_category.items()):
            lines.append(f"  {category:18} {sum(counts.values()):6} calls in "
                         f"{self.seconds_by_category.get(category, 0):5.1f} s: "
                         + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        base, attack = self.rtt_baseline_ms, self.rtt_attack_ms
        lines.append(f"good worker's heartbeat round trip: baseline p50 {percentile(base, 0.5):.2f} ms, "
                     f"p99 {percentile(base, 0.99):.2f} ms ({len(base)} beats); under attack p50 "
                     f"{percentile(attack, 0.5):.2f} ms, p99 {percentile(attack, 0.99):.2f} ms "
                     f"({len(attack)} beats); ratio p50 {self.rtt_ratio():.2f}, p99 "
                     f"{percentile(attack, 0.99) / (percentile(base, 0.99) or 1):.2f}")
        lines.append("master refusals counted during the attack: "
                     + (", ".join(f"{k} {v}" for k, v in self.rejections.items() if v) or "none")
                     + f"; connection threads ended by an unhandled exception: {self.tracebacks}")
        lines.append("failures: " + ", ".join(f"{k} {v}" for k, v in self.failures().items()))
        for kind, found in self.examples.items():
            lines += [f"  e.g. {kind}: {example}" for example in found]
        lines += [f"  changed: {path}" for path in self.state_changes[:20]]
        lines += [f"  noise: {path}" for path in self.view_noise[:20]]
        return "\n".join(lines)


def run_hostile_calls(tmp: Path, *, calls: int = 10_000, seed: int = 2026, baseline_s: float = 3.0,
                      categories: tuple[str, ...] = tuple(CATEGORIES)) -> HostileCalls:
    """The check at any size; `categories`: only those (all by default)."""
    result = HostileCalls(calls, seed)
    with tls_cluster(tmp, [ATTACKER], worker=GOOD) as cluster, cluster.client() as cq:
        targets = _prepare(cluster, cq)
        probe = HeartbeatProbe(cluster, GOOD)
        try:
            before = _settled_view(cq)
            probe.start()
            time.sleep(baseline_s)  # the baseline window: heartbeats at their pace, nothing else
            result.rtt_baseline_ms = probe.take()
            result.view_noise = diff(before, before := cluster_view(cq))
            rejected = cluster.rejections()
            _attack_from_another_process(cluster, targets, calls, seed, categories, result, probe)
        finally:
            probe.stop()
        result.probe_errors = probe.errors
        result.rejections = {k: v - rejected.get(k, 0) for k, v in cluster.rejections().items()}
        result.state_changes = diff(before, cluster_view(cq))
        result.crashes = int(not cluster.alive())
        result.tracebacks = cluster.tracebacks()
        result.slot_leaks = _slot_leaks(cluster, ATTACKER)
        # Still serving: the good worker takes and finishes a new task.
        done = cq.wait([cq.submit(kind="noop", name="after-attack").id], timeout=30)
        result.crashes += int(next(iter(done.values()))["state"] != "completed")
    return result


def _prepare(cluster: TlsCluster, cq: Client) -> Targets:
    """Tasks in the states the attack aims at, and the attacker registered then drained."""
    completed = cq.submit(kind="noop", name="completed").id
    old = cq.submit(kind="exec", name="old-attempt", max_retries=1, retry_backoff_s=0,
                    spec={"argv": ["sh", "-c", '[ "$CLOUDQ_ATTEMPT" != 1 ]']}).id
    ended = cq.wait([completed, old], timeout=60)
    assert ended[old]["state"] == "completed" and ended[old]["attempt"] == 2, ended[old]
    running = cq.submit(kind="exec", name="running", spec={"argv": ["sleep", "3600"]}).id
    wait_until(lambda: cq.get(running)["state"] == "running", 30, "the good worker's task to run")
    with MasterClient(cluster.master.address, cluster.certs, identity=ATTACKER) as own:
        session = own.call("register", {"facts": _valid_facts(ATTACKER), "running": []})["session"]
    cq.command(["drain", ATTACKER])  # it holds a session, but is never given work
    # Queued after the drain, so the reason it shows is final from its first placement pass.
    queued = cq.submit(kind="noop", name="fits-nowhere", resources={"cpu_cores": 64}).id
    return Targets(ATTACKER, session, GOOD, running, old, completed, queued)


def _attack_from_another_process(cluster: TlsCluster, targets: Targets, calls: int, seed: int,
                                 categories: tuple[str, ...], result: HostileCalls,
                                 probe: HeartbeatProbe) -> None:
    """The attacker runs in a process of its own, so that the probe's timings are not spent
    waiting for this interpreter's lock."""
    config = cluster.certs.parent / "attack.json"
    config.write_text(json.dumps({"address": cluster.master.address, "certs": str(cluster.certs),
                                  "targets": targets.__dict__, "calls": calls, "seed": seed,
                                  "categories": list(categories)}))
    attacker = python_child("tests.chaos.hostile_rpc", "attack", str(config))
    try:
        attacker.wait_for_line(_STARTED, timeout=60)
        probe.take()  # beats before the first call are not the attack's
        code = attacker.proc.wait(timeout=max(600, calls * 0.2))
    finally:
        attacker.stop()
    result.rtt_attack_ms = probe.take()
    summary = next((line for line in reversed(attacker.lines) if line.startswith("RESULT ")), None)
    if code != 0 or summary is None:
        raise AssertionError(f"the attacker failed (exit {code}):\n" + attacker.output())
    found = json.loads(summary.removeprefix("RESULT "))
    result.seconds, result.reconnects, result.touched = found["seconds"], found["reconnects"], found["touched"]
    result.by_category, result.examples = found["by_category"], found["examples"]
    result.seconds_by_category = found["seconds_by_category"]


_STARTED = re.compile(r"^ATTACKING")  # the attacker is connected and starts its calls
_REGISTERED = re.compile(r"registered with \S+ as \S+ \(session (\d+)\)")  # a worker's log


class HeartbeatProbe:
    """The good worker's heartbeat, timed: with its certificate, the call its report loop
    makes (no items, a live sample; applied under the master's core lock), every 20 ms on a
    connection of its own, as the worker holds one."""

    SAMPLE = {"cpu_percent": 10.0, "load1": 0.5, "mem_free_gb": 8.0, "disk_free_gb": 50.0, "gpus": []}

    def __init__(self, cluster: TlsCluster, worker: str) -> None:
        self.client = MasterClient(cluster.master.address, cluster.certs, identity=worker, timeout_s=10)
        session = int(cluster.worker.wait_for_line(_REGISTERED, timeout=10).group(1))
        self.payload = {"name": worker, "session": session, "reports": [], "sample": self.SAMPLE}
        self.errors = 0
        self._rtt_ms: list[float] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat-probe", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def take(self) -> list[float]:
        """The round trips measured since the last take."""
        with self._lock:
            taken, self._rtt_ms = self._rtt_ms, []
        return taken

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=15)
        self.client.close()

    def _run(self) -> None:
        while not self._stop.wait(PROBE_EVERY_S):
            started = time.perf_counter()
            try:
                self.client.call("report", self.payload)
            except Exception:  # noqa: BLE001 - counted: the good worker's heartbeat failed
                self.errors += 1
                continue
            with self._lock:
                self._rtt_ms.append((time.perf_counter() - started) * 1000)


def cluster_view(cq: Client) -> dict[str, Any]:
    """What the master shows of its state, less what moves by itself (VOLATILE)."""
    listed = cq.queue(limit=1000) + [t for state in FINAL_STATES for t in cq.queue(state=state, limit=1000)]
    return _stable({
        "status": cq.command(["status"]).data,
        "queue": listed,
        "tasks": {t["id"]: cq.get(t["id"]) for t in listed},  # every field, and the task's history
        "workers": {w["name"]: w for w in cq.workers()},
        "events": list(cq.events(limit=10_000)),
    })


def _settled_view(cq: Client) -> dict[str, Any]:
    """The view once it holds still: two in a row, half a second apart, the same. (A reason
    shown on a queued task is recomputed at the next placement pass after the workers
    change, e.g. after the drain.)"""
    views = [cluster_view(cq)]

    def settled() -> bool:
        views.append(cluster_view(cq))
        return views[-1] == views[-2]

    wait_until(settled, 20, "the master's views to hold still", every=0.5)
    return views[-1]


def _stable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def diff(before: Any, after: Any, path: str = "") -> list[str]:
    """Every path whose value differs, e.g. `tasks.t3.state: 'running' -> 'completed'`."""
    if isinstance(before, dict) and isinstance(after, dict):
        return [change for key in sorted(before.keys() | after.keys(), key=str)
                for change in diff(before.get(key), after.get(key), f"{path}.{key}" if path else str(key))]
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [change for index, (old, new) in enumerate(zip(before, after, strict=True))
                for change in diff(old, new, f"{path}[{index}]")]
    return [] if before == after else [f"{path}: {str(before)[:80]!r} -> {str(after)[:80]!r}"]


def _slot_leaks(cluster: TlsCluster, identity: str) -> int:
    """0 when `identity` holds exactly its cap of connections again once the attack is over
    (the master may take a moment to see the last connection close)."""
    cap = defaults.MAX_CONNECTIONS_PER_PEER
    try:
        wait_until(lambda: held_slots(cluster.master.address, cluster.certs, identity) == cap, 15,
                   f"{identity} to hold {cap} connections again", every=0.5)
    except AssertionError:
        return 1
    return 0


def main(argv: list[str]) -> int:
    """`attack CONFIG`: the attacker process."""
    if argv[:1] != ["attack"] or len(argv) != 2:
        print("usage: python -m tests.chaos.hostile_rpc attack CONFIG.json", file=sys.stderr)
        return 2
    config = json.loads(Path(argv[1]).read_text())
    found = attack(config["address"], Path(config["certs"]), Targets(**config["targets"]),
                   config["calls"], config["seed"], tuple(config["categories"]),
                   lambda: print("ATTACKING", flush=True))
    print("RESULT " + json.dumps(found), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
