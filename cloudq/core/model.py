"""The task model: what a task asks for and the bookkeeping the master keeps about it.

Everything here is plain data with no I/O. `Task.to_dict()` / `Task.from_dict()` give the
JSON-able form that is journalled, sent over RPC and printed with `--json`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from cloudq import defaults
from cloudq.errors import ValidationError
from cloudq.specs import KINDS, capabilities_of, validate_spec
from cloudq.specs.fields import comma_separated


class TaskState(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    ASSIGNED = "assigned"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    HELD = "held"
    RETRYING = "retrying"
    DEAD = "dead"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES

    @property
    def is_active(self) -> bool:
        """On a worker: it holds a reservation there."""
        return self in (TaskState.ASSIGNED, TaskState.RUNNING)


FINAL_STATES = frozenset({TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED, TaskState.DEAD})


class QueueClass(StrEnum):
    """Listed best first: live work beats default work beats batch work."""

    LIVE = "live"
    DEFAULT = "default"
    BATCH = "batch"

    @property
    def rank(self) -> int:
        return _QUEUE_RANK[self]


class Priority(StrEnum):
    """Listed best first; priority orders tasks within one queue class."""

    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"

    @property
    def rank(self) -> int:
        return _PRIORITY_RANK[self]


_QUEUE_RANK = {q: i for i, q in enumerate(QueueClass)}
_PRIORITY_RANK = {p: i for i, p in enumerate(Priority)}

TASK_KINDS = KINDS  # the one list, kept with the specs

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@/-]{0,127}$")
_LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,62}$")
_LABEL_VALUE_RE = re.compile(r"^[A-Za-z0-9_.\-/]{0,63}$")
MAX_CPU_CORES = 4096.0
MAX_MEM_GB = 1 << 20  # 1 PiB: bigger than any machine, small enough to catch typos in bytes
MAX_GPUS = 64
MAX_SECONDS = 366 * 24 * 3600.0


def check_name(what: str, value: Any) -> str:
    """A name operators type and read: worker names, lock names, owners, task names."""
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ValidationError(
            f"{what} must be 1-128 characters of letters, digits and _.:@/- "
            f"starting with a letter or digit, got {value!r}"
        )
    return value


def check_number(
    what: str, value: Any, *, low: float = 0.0, high: float, integer: bool = False
) -> float | int:
    """A finite number in [low, high]; bools and strings are refused, ints promoted to float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(f"{what} must be a number, got {value!r}")
    if integer and not (isinstance(value, int) or float(value).is_integer()):
        raise ValidationError(f"{what} must be a whole number, got {value!r}")
    if not math.isfinite(value):
        raise ValidationError(f"{what} must be finite, got {value!r}")
    if not low <= value <= high:
        raise ValidationError(f"{what} must be between {low:g} and {high:g}, got {value!r}")
    return int(value) if integer else float(value)


def _optional_seconds(what: str, value: Any) -> float | None:
    if value is None:
        return None
    seconds = check_number(what, value, high=MAX_SECONDS)
    if seconds <= 0:
        raise ValidationError(f"{what} must be greater than 0 seconds, got {value!r}")
    return seconds


def choice(cls: type[StrEnum], what: str, value: Any) -> Any:
    """A member of `cls` from its value, or a ValidationError listing the choices."""
    return _enum(cls, what, value)


def _enum(cls: type[StrEnum], what: str, value: Any) -> Any:
    try:
        return cls(value)
    except ValueError:
        choices = ", ".join(m.value for m in cls)
        raise ValidationError(f"unknown {what} {value!r}; choose one of: {choices}") from None


@dataclass(frozen=True, slots=True)
class Resources:
    """What a task needs on one worker, and (for a worker) what it has."""

    cpu_cores: float = 1.0
    mem_gb: float = 0.0
    storage_gb: float = 0.0
    gpus: int = 0
    gpu_mem_gb: float = 0.0  # per GPU

    @classmethod
    def parse(cls, raw: Any) -> Resources:
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise ValidationError(f"resources must be an object, got {raw!r}")
        _refuse_unknown("resources", raw, {f.name for f in fields(cls)})
        base = cls()
        return cls(
            cpu_cores=check_number("cpu_cores", raw.get("cpu_cores", base.cpu_cores), high=MAX_CPU_CORES),
            mem_gb=check_number("mem_gb", raw.get("mem_gb", base.mem_gb), high=MAX_MEM_GB),
            storage_gb=check_number("storage_gb", raw.get("storage_gb", base.storage_gb), high=MAX_MEM_GB),
            gpus=check_number("gpus", raw.get("gpus", base.gpus), high=MAX_GPUS, integer=True),
            gpu_mem_gb=check_number("gpu_mem_gb", raw.get("gpu_mem_gb", base.gpu_mem_gb), high=MAX_MEM_GB),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"cpu_cores": self.cpu_cores, "mem_gb": self.mem_gb, "storage_gb": self.storage_gb,
                "gpus": self.gpus, "gpu_mem_gb": self.gpu_mem_gb}


@dataclass(frozen=True, slots=True)
class LockSpec:
    """A cluster-wide named lock: at most `holders` tasks holding it run at once."""

    name: str
    holders: int = 1

    @classmethod
    def parse(cls, raw: Any) -> LockSpec:
        """Accepts "model-x", "model-x:2" or {"name": "model-x", "holders": 2}."""
        if isinstance(raw, str):
            name, _, count = raw.partition(":")
            holders: Any = 1
            if count:
                if not count.isdigit():
                    raise ValidationError(f"lock {raw!r}: holders after ':' must be a whole number")
                holders = int(count)
        elif isinstance(raw, dict):
            _refuse_unknown("lock", raw, {"name", "holders"})
            name, holders = raw.get("name"), raw.get("holders", 1)
        else:
            raise ValidationError(f"a lock is NAME or NAME:N, got {raw!r}")
        holders = check_number(f"lock {name!r} holders", holders, low=1, high=1_000_000, integer=True)
        return cls(check_name("lock name", name), int(holders))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "holders": self.holders}


# The fields a submitter may set, with their defaults. Everything else is bookkeeping.
REQUEST_FIELDS = {
    "name", "kind", "spec", "owner", "queue", "priority", "resources", "target_worker",
    "labels", "locks", "max_retries", "retry_backoff_s", "timeout_s", "ttl_s", "after", "after_any",
}
MAX_DEPENDENCIES = 1000  # tasks one task may wait for


NO_LABELS: Mapping[str, str] = MappingProxyType({})
NO_RESOURCES = Resources()  # what a task that asks for nothing gets


@dataclass(slots=True)
class Task:
    id: str
    kind: str
    spec: dict[str, Any]
    name: str = ""
    owner: str = "default"
    queue: QueueClass = QueueClass.DEFAULT
    priority: Priority = Priority.MEDIUM
    resources: Resources = field(default_factory=lambda: NO_RESOURCES)  # frozen: one shared
    target_worker: str | None = None
    labels: Mapping[str, str] = field(default_factory=lambda: NO_LABELS)  # one shared when empty
    locks: tuple[LockSpec, ...] = ()
    max_retries: int = defaults.MAX_RETRIES
    retry_backoff_s: float = defaults.RETRY_BACKOFF_S
    timeout_s: float | None = None  # run time limit, once started
    ttl_s: float | None = None  # how long it may wait in the queue before it expires
    after: tuple[str, ...] = ()  # tasks that must complete before this one is queued
    after_any: tuple[str, ...] = ()  # tasks that must end, in any way, before it is queued
    # --- bookkeeping, owned by the master ---
    group: str | None = None  # the workflow (wfN) or array (arN) it belongs to, set at submit
    state: TaskState = TaskState.PENDING
    seq: int = 0  # submission order: FIFO within queue class and priority
    attempt: int = 0  # fencing token: bumped on every assignment
    placement_attempts: int = 0
    unstarted: int = 0  # attempts its worker never started: they do not use up retries
    last_error: str | None = None
    reason: str | None = None  # why it is waiting, in words
    worker: str | None = None
    tried_workers: tuple[str, ...] = ()
    created_at: float = 0.0
    updated_at: float = 0.0
    queued_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    not_before: float | None = None  # a retrying task waits until then
    progress: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    # request_dict() as stored JSON, kept by the master's journal so that a change of state
    # re-encodes only the bookkeeping. Memory only; never part of to_dict().
    request_json: str | None = field(default=None, repr=False, compare=False)

    @property
    def order_key(self) -> int:
        """Queue order: class, then priority, then FIFO, packed into one int (smaller than a
        tuple, and every queued task's heap entry holds one). Ids stay below 10**18 < 2**60."""
        return (self.queue.rank * 4 + self.priority.rank) << 60 | self.seq

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (the enums are str)."""
        return self.request_dict() | self.state_dict()

    # Both halves are written out field by field: they are on the hot path (every state change
    # is journalled) and a literal is several times faster than asdict().
    def request_dict(self) -> dict[str, Any]:
        """What was submitted, plus the identity the master gave it: fixed from then on."""
        return {
            "id": self.id, "kind": self.kind, "spec": self.spec, "name": self.name,
            "owner": self.owner, "queue": self.queue, "priority": self.priority,
            "resources": self.resources.to_dict(), "target_worker": self.target_worker,
            "labels": dict(self.labels), "locks": [lock.to_dict() for lock in self.locks],
            "max_retries": self.max_retries, "retry_backoff_s": self.retry_backoff_s,
            "timeout_s": self.timeout_s, "ttl_s": self.ttl_s, "seq": self.seq,
            "created_at": self.created_at, "after": list(self.after), "after_any": list(self.after_any),
            "group": self.group,
        }

    def state_dict(self) -> dict[str, Any]:
        """The master's bookkeeping: what changes as the task moves."""
        return {
            "state": self.state, "attempt": self.attempt, "placement_attempts": self.placement_attempts,
            "unstarted": self.unstarted,
            "last_error": self.last_error, "reason": self.reason, "worker": self.worker,
            "tried_workers": list(self.tried_workers), "updated_at": self.updated_at,
            "queued_at": self.queued_at, "started_at": self.started_at, "finished_at": self.finished_at,
            "not_before": self.not_before, "progress": self.progress, "result": self.result,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Task:
        """Rebuilds a stored task. Trusts the shape (it was written by us) but not blindly."""
        # Runs for every stored task at every start: lookups in prebuilt tables, and only the
        # fields the record holds (the stored form leaves out those at their defaults).
        data = {key: value for key, value in raw.items() if key in _STORED_FIELDS}
        try:
            if "queue" in data:
                data["queue"] = _QUEUE_CLASSES[data["queue"]]
            if "priority" in data:
                data["priority"] = _PRIORITIES[data["priority"]]
            data["state"] = _STATES[data.get("state", "pending")]
        except KeyError as err:
            raise ValueError(f"unknown value {err} in stored task {raw.get('id')!r}") from None
        if "resources" in data:
            data["resources"] = Resources(**data["resources"] or {})
        if "locks" in data:
            data["locks"] = tuple(LockSpec(**lock) for lock in data["locks"] or ())
        for key in ("after", "after_any", "tried_workers"):
            if key in data:
                data[key] = tuple(data[key] or ())
        return cls(**data)

    @property
    def dependencies(self) -> tuple[str, ...]:
        return self.after + self.after_any


_STORED_FIELDS = frozenset(f.name for f in fields(Task)) - {"request_json"}
_QUEUE_CLASSES = {member.value: member for member in QueueClass}
_PRIORITIES = {member.value: member for member in Priority}
_STATES = {member.value: member for member in TaskState}

# Stored records leave out every field at its default (a no-op task's record is about a fifth
# of its full form): the journal, the checkpoint and the master's memory all hold less, and
# Task.from_dict fills the rest in. These fields are always written, whatever their value.
ALWAYS_STORED = frozenset({"id", "kind", "spec", "seq", "created_at", "state"})
_BLANK = Task(id="", kind="", spec={})
REQUEST_DEFAULTS = _BLANK.request_dict()
STATE_DEFAULTS = _BLANK.state_dict()
del _BLANK


def without_defaults(values: dict[str, Any], defaults_: dict[str, Any]) -> dict[str, Any]:
    """`values` less the keys whose value is the default (ALWAYS_STORED ones are kept)."""
    return {key: value for key, value in values.items()
            if key in ALWAYS_STORED or value != defaults_[key]}


def parse_request(raw: Any) -> dict[str, Any]:
    """Validates a submission and returns the request fields, normalised.

    Raises ValidationError naming the first bad field. The kind's spec is checked by
    cloudq.specs, so a hostile ffmpeg input or container option is refused here, before
    anything is stored or run. Fields left out take their defaults unchecked: this runs for
    every task of a batch submit, and most tasks set only a few fields.
    """
    if not isinstance(raw, dict):
        raise ValidationError(f"a task must be an object of fields, got {type(raw).__name__}")
    if not REQUEST_FIELDS.issuperset(raw):
        _refuse_unknown("task", raw, REQUEST_FIELDS)
    kind = raw.get("kind")
    if kind not in TASK_KINDS:
        raise ValidationError(f"unknown task kind {kind!r}; choose one of: {', '.join(TASK_KINDS)}")
    spec = validate_spec(kind, raw.get("spec") or {})
    out: dict[str, Any] = {"kind": kind, "spec": spec}
    get = raw.get
    if name := get("name"):
        out["name"] = check_name("task name", name)
    if (owner := get("owner")) is not None:
        out["owner"] = check_name("owner", owner)
    if (queue := get("queue")) is not None:
        out["queue"] = _enum(QueueClass, "queue class", queue)
    if (priority := get("priority")) is not None:
        out["priority"] = _enum(Priority, "priority", priority)
    if (resources := get("resources")) is not None:
        out["resources"] = Resources.parse(resources)
    if (target := get("target_worker")) not in (None, ""):
        out["target_worker"] = check_name("target worker", target)
    if (labels := get("labels")) is not None:
        out["labels"] = parse_labels(labels)
    if (locks := get("locks")) is not None:
        out["locks"] = _parse_locks(locks)
    if (retries := get("max_retries")) is not None:
        out["max_retries"] = check_number("max_retries", retries, high=1000, integer=True)
    if (backoff := get("retry_backoff_s")) is not None:
        out["retry_backoff_s"] = check_number("retry_backoff_s", backoff, high=MAX_SECONDS)
    for key in ("timeout_s", "ttl_s"):
        if (seconds := get(key)) is not None:
            out[key] = _optional_seconds(key, seconds)
    for key in ("after", "after_any"):
        if (ids := get(key)) is not None:
            out[key] = parse_task_ids(key, ids)
    gpus = out["resources"].gpus if "resources" in out else 0
    if gpus < 1 and "gpu" in capabilities_of(kind, spec):
        raise ValidationError(f"this {kind} task runs on a GPU: ask for at least one (-gpu 1)")
    return out


def new_task(raw: Any, *, task_id: str, seq: int, now: float) -> Task:
    """A validated, not yet queued task."""
    request = parse_request(raw)
    return Task(id=task_id, seq=seq, created_at=now, updated_at=now, **request)


_TASK_ID_RE = re.compile(r"^t[1-9][0-9]{0,17}$")


def parse_task_ids(what: str, raw: Any) -> tuple[str, ...]:
    """Task ids a task waits for: ["t4", "t5"] or "t4,t5"; in order, without repeats."""
    raw = comma_separated(raw)
    if not isinstance(raw, list | tuple):
        raise ValidationError(f"{what} must be task ids like t4,t5, got {raw!r:.60}")
    if len(raw) > MAX_DEPENDENCIES:
        raise ValidationError(f"{what}: at most {MAX_DEPENDENCIES} tasks, got {len(raw)}")
    for task_id in raw:
        if not isinstance(task_id, str) or not _TASK_ID_RE.match(task_id):
            raise ValidationError(f"{what}: {task_id!r:.40} is not a task id (t1, t2, ...)")
    return tuple(dict.fromkeys(raw))


MAX_ARRAY = 100_000  # tasks in one array
GROUP_PREFIX = {"workflow": "wf", "array": "ar"}  # a group's id is its prefix and first task's number


def group_kind(group: str) -> str:
    """`workflow` for wfN, `array` for arN."""
    return "workflow" if group.startswith("wf") else "array"


def is_group_id(text: str) -> bool:
    return text[:2] in ("wf", "ar") and text[2:].isdigit()
INDEX = "{index}"


def expand_array(request: dict[str, Any], count: int) -> list[dict[str, Any]]:
    """`count` copies of a request, with {index} (0 to count-1) put in every string of its
    spec and in its name: the command, the output path, the input."""
    if not 1 <= count <= MAX_ARRAY:
        raise ValidationError(f"--count must be from 1 to {MAX_ARRAY}, not {count}")

    def put(value: Any, index: str) -> Any:
        if isinstance(value, str):
            return value.replace(INDEX, index)
        if isinstance(value, list):
            return [put(item, index) for item in value]
        if isinstance(value, dict):
            return {key: put(item, index) for key, item in value.items()}
        return value

    return [{**request, "spec": put(request.get("spec") or {}, str(i)),
             **({"name": put(request["name"], str(i))} if request.get("name") else {})}
            for i in range(count)]


def parse_labels(raw: Any) -> dict[str, str]:
    """Labels as given on a command line ("k=v,k2=v2") or as an object."""
    if raw is None:
        return {}
    if isinstance(raw, str):  # "gpu=a100,zone=eu"
        raw = dict(_split_label(item) for item in raw.split(",") if item)
    if not isinstance(raw, dict):
        raise ValidationError(f"labels must be k=v pairs, got {raw!r}")
    if len(raw) > 64:
        raise ValidationError(f"at most 64 labels, got {len(raw)}")
    for key, value in raw.items():
        if not isinstance(key, str) or not _LABEL_KEY_RE.match(key):
            raise ValidationError(f"label key {key!r} must be letters, digits and _.-/")
        if not isinstance(value, str) or not _LABEL_VALUE_RE.match(value):
            raise ValidationError(f"label {key}={value!r}: value must be letters, digits and _.-/")
    return dict(raw)


def _split_label(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep:
        raise ValidationError(f"label {item!r} must be written k=v")
    return key.strip(), value.strip()


def _parse_locks(raw: Any) -> tuple[LockSpec, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str | dict):
        raw = [raw]
    if not isinstance(raw, list | tuple):
        raise ValidationError(f"locks must be a list of NAME[:N], got {raw!r}")
    if len(raw) > 16:
        raise ValidationError(f"at most 16 locks per task, got {len(raw)}")
    locks = tuple(LockSpec.parse(item) for item in raw)
    names = [lock.name for lock in locks]
    if len(set(names)) != len(names):
        raise ValidationError(f"lock names repeat: {names}")
    return locks


def _refuse_unknown(what: str, raw: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(str(k) for k in raw if k not in allowed)
    if unknown:
        raise ValidationError(
            f"unknown {what} field(s): {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )
