"""Events and the audit log against real master and worker processes: a task blocked on a
lock has an event naming the holder and its worker, workers' own changes are events, and
`--audit-log` holds the same events as `events --json`, one JSON object per line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cloudq.master.audit import AuditLog
from tests.cluster.harness import wait_until

pytestmark = pytest.mark.timeout(120)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_lock_wait_is_an_event_and_the_audit_log_holds_every_event(cluster, tmp_path):
    audit = tmp_path / "audit" / "events.jsonl"
    master = cluster.start_master("--audit-log", str(audit))
    cluster.start_worker("w1", "--max-tasks", "2")
    holder = master.ctl("task", "--exec", "sleep 30", "--lock", "model-x", "--name", "holder")["id"]
    master.wait_state(holder, "running")
    waiter = master.ctl("task", "--exec", "true", "--lock", "model-x", "--name", "waiter")["id"]
    blocked = wait_until(lambda: [e for e in master.ctl("events", waiter) if e["src"] == e["dst"]],
                         10, "a blocked event")
    assert [e["reason"] for e in blocked] == [f"blocked: lock model-x is held by {holder} on w1"]
    print(f"\n{waiter}: {blocked[0]['reason']}")
    master.ctl("cancel", holder)
    master.wait_state(waiter, "completed")
    master.ctl("drain", "w1")

    def same() -> list[dict] | None:
        events = master.ctl("events", "--limit", "10000")
        return events if _lines(audit) == events else None

    events = wait_until(same, 15, "the audit log to hold what `events` holds")
    print(f"{len(events)} events, the same in {audit}")
    kinds = {(e["task"] == "", e["dst"]) for e in events}
    assert {(True, "joined"), (True, "draining"), (False, "cancelled"), (False, "completed")} <= kinds


def test_the_audit_log_rotates_by_size_and_keeps_whole_lines(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, max_bytes=2_000, backups=3)
    batch = [("event", {"task": f"t{i}", "src": "queued", "dst": "assigned", "reason": "x" * 50,
                        "worker": "w1", "attempt": 1, "time": 1.0 + i}) for i in range(10)]
    for start in range(0, 200, 10):
        log.write([("put", {"ignored": True})] + [(kind, {**e, "task": f"t{start + i}"})
                                                 for i, (kind, e) in enumerate(batch)])
    log.close()
    parts = [path, *(path.with_name(f"{path.name}.{n}") for n in (1, 2, 3))]
    assert all(p.exists() for p in parts) and not path.with_name(f"{path.name}.4").exists()
    seen = [e["task"] for p in reversed(parts) for e in _lines(p)]  # oldest part first
    assert seen == [f"t{n}" for n in range(200 - len(seen), 200)]  # the newest, whole and in order
