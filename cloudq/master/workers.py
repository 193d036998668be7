"""What the master knows about each worker: facts from registration, the latest live sample,
its status, its ledger, and the instructions waiting for its next fetch."""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from cloudq.core.ledger import Ledger
from cloudq.core.model import check_name, check_number, parse_labels
from cloudq.errors import ValidationError


class WorkerStatus(StrEnum):
    AVAILABLE = "available"  # connected, has room for another task
    BUSY = "busy"  # connected, at its task limit
    DRAINING = "draining"  # finishes what it runs, takes nothing new
    QUARANTINED = "quarantined"  # failed too many tasks in a row; an operator must release it
    OFFLINE = "offline"  # missed its lease, or not seen since the master started


@dataclass
class WorkerRecord:
    name: str
    host: str = ""
    facts: dict[str, Any] = field(default_factory=dict)
    sample: dict[str, Any] = field(default_factory=dict)
    ledger: Ledger = field(default_factory=lambda: Ledger("", 0.0, 0.0, 0.0))
    connected: bool = False
    draining: bool = False
    leaving: bool = False  # its process is stopping (it said so): nothing new, fetch answered at once
    quarantined: bool = False
    quarantine_reason: str = ""
    consecutive_failures: int = 0
    last_seen: float = 0.0
    polling: int = 0  # its fetch calls waiting on the master now
    registered_at: float = 0.0
    session: int = 0  # bumped on every registration: a fetch from an older session is stale
    outbox: deque[dict[str, Any]] = field(default_factory=deque)  # instructions not yet fetched
    outbox_ticket: int = 0  # journal ticket of the newest instruction: durable before it is sent

    @property
    def status(self) -> WorkerStatus:
        if not self.connected:
            return WorkerStatus.OFFLINE
        if self.quarantined:
            return WorkerStatus.QUARANTINED
        if self.draining or self.leaving:
            return WorkerStatus.DRAINING
        return WorkerStatus.AVAILABLE if self.ledger.slots_free > 0 else WorkerStatus.BUSY

    @property
    def schedulable(self) -> bool:
        return self.status in (WorkerStatus.AVAILABLE, WorkerStatus.BUSY)

    def unavailable_because(self) -> str:
        """Why it takes no task, in the operator's words (for `why`)."""
        status = self.status
        if status is WorkerStatus.QUARANTINED:
            return f"quarantined ({self.quarantine_reason or 'by an operator'}); `release {self.name}`"
        if status is WorkerStatus.DRAINING and self.leaving and not self.draining:
            return "stopping: its worker process is shutting down"
        if status is WorkerStatus.DRAINING:
            return "draining: finishes what it runs, takes nothing new"
        if status is WorkerStatus.OFFLINE:
            return "offline since " + time.strftime("%H:%M:%S", time.localtime(self.last_seen)) \
                if self.last_seen else "offline: not seen since the master started"
        return status.value

    def to_dict(self) -> dict[str, Any]:
        ledger = self.ledger
        return {
            "name": self.name,
            "status": self.status.value,
            "host": self.host,
            "cpu_cores": ledger.cpu_cores,
            "mem_gb": ledger.mem_gb,
            "storage_gb": ledger.storage_gb,
            "gpus": len(ledger.gpu_mem_gb),
            "max_tasks": ledger.max_tasks,
            "labels": dict(ledger.labels),
            "capabilities": sorted(ledger.capabilities),
            "running": sorted(ledger.bookings),
            "consecutive_failures": self.consecutive_failures,
            "quarantine_reason": self.quarantine_reason or None,
            "last_seen": self.last_seen,
            "sample": self.sample,
            "facts": self.facts,
            **ledger.usage(),
        }


def parse_registration(raw: Any) -> dict[str, Any]:
    """Checks what a worker says about itself; a bad field is refused, never half-applied."""
    if not isinstance(raw, dict):
        raise ValidationError("registration must be an object")
    name = check_name("worker name", raw.get("name"))
    gpus = raw.get("gpus") or []
    if not isinstance(gpus, list) or len(gpus) > 64:
        raise ValidationError("gpus must be a list of at most 64 GPUs")
    gpu_mem = tuple(
        check_number("gpu mem_gb", (g or {}).get("mem_gb", 0.0) if isinstance(g, dict) else None,
                     high=1 << 20)
        for g in gpus
    )
    capabilities = raw.get("capabilities") or []
    if not isinstance(capabilities, list) or len(capabilities) > 256 or not all(
        isinstance(c, str) and len(c) <= 64 for c in capabilities
    ):
        raise ValidationError("capabilities must be a list of at most 256 short names")
    return {
        "name": name,
        "host": str(raw.get("host") or "")[:255],
        "cpu_cores": check_number("cpu_cores", raw.get("cpu_cores"), high=1 << 16),
        "mem_gb": check_number("mem_gb", raw.get("mem_gb"), high=1 << 24),
        "storage_gb": check_number("storage_gb", raw.get("storage_gb", 0.0), high=1 << 30),
        "gpu_mem_gb": gpu_mem,
        "max_tasks": int(check_number("max_tasks", raw.get("max_tasks", 1), low=1, high=4096, integer=True)),
        "labels": parse_labels(raw.get("labels")),
        "capabilities": frozenset(capabilities),
        "facts": bounded(raw, FACT_KEYS),
    }


# What a worker may say about itself and in each heartbeat; anything else is dropped, and what
# is kept is cut to size, so `workers` always fits in a reply however a peer pads its facts.
FACT_KEYS = ("name", "host", "cpu_cores", "mem_gb", "disk_gb", "storage_gb", "gpus", "nvml",
             "nvml_error", "max_tasks", "labels", "capabilities", "tools")
SAMPLE_KEYS = ("cpu_percent", "load1", "mem_free_gb", "disk_free_gb", "gpus")
_MAX_TEXT = 256
_MAX_ITEMS = 64
_MAX_DEPTH = 3


def parse_sample(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ValidationError("a heartbeat sample must be an object")
    return bounded(raw, SAMPLE_KEYS)


def bounded(raw: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """The known keys of `raw`, each value plain JSON cut to size (text, items, depth)."""
    return {key: _plain(raw[key], _MAX_DEPTH) for key in keys if key in raw}


def _plain(value: Any, depth: int) -> Any:
    if value is None or isinstance(value, bool | int):
        return value if not isinstance(value, int) or abs(value) < 1 << 53 else None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return value[:_MAX_TEXT]
    if depth <= 0:
        return None
    if isinstance(value, list):
        return [_plain(item, depth - 1) for item in value[:_MAX_ITEMS]]
    if isinstance(value, dict):
        items = [(k, v) for k, v in value.items() if isinstance(k, str)][:_MAX_ITEMS]
        return {k[:_MAX_TEXT]: _plain(v, depth - 1) for k, v in items}
    return None
