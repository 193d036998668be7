"""The master killed -9 and restarted with tasks in every state: a before/after diff of every
task's view (`queue --json` and the final states) may show only what a restart is allowed to
change (docs/operations.md, "Master restart"), as HTCondor's schedd restart test does.

Allowed: what is recomputed rather than stored (the reason shown, time in queue and when the
task was queued, placement attempts since its last move, live progress); a running task
either re-adopted unchanged or requeued with a reason. Everything else, queue order
included, must be identical.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cloudq.client import Client
from tests.cluster.harness import MasterProc, WorkerProc, wait_until
from tests.e2e.conftest import free_port

FLAGS = ("--lease", "10", "--heartbeat", "0.5", "--interval", "300")
RECOMPUTED = {"reason", "in_queue_s", "queued_at", "placement_attempts", "progress", "never_fits"}
FINAL = ("completed", "failed", "cancelled", "dead")


def run_restart_diff(tmp: Path) -> dict[str, Any]:
    port = free_port()
    master = MasterProc(tmp / "data", *FLAGS, port=port)
    workers = [WorkerProc(master.address, f"w{i}", tmp / "work", "--max-tasks", "2", "--cpu-cores", "2")
               for i in range(2)]
    try:
        for worker in workers:
            master.wait_worker(worker.name)
        with Client(master.address) as cq:
            ids = _tasks_in_every_state(cq)
            before = _views(cq)
            order_before = [t["id"] for t in cq.queue(state="queued", limit=1000)]
        master.kill()
        master = MasterProc(tmp / "data", *FLAGS, port=port)
        with Client(master.address) as cq:
            wait_until(lambda: sorted(w["name"] for w in cq.workers() if w["status"] != "offline")
                       == ["w0", "w1"], 30, "both workers back")
            wait_until(lambda: all("re-adopted after reconnect" in [e["reason"] for e in cq.get(i)["events"]]
                                   for i in ids["running"]), 30, "running tasks re-adopted")
            after = _views(cq)
            order_after = [t["id"] for t in cq.queue(state="queued", limit=1000)]
    finally:
        for worker in workers:
            worker.stop()
        master.stop()
    return {"ids": ids, "diff": _diff(before, after), "tasks": len(before),
            "order_kept": order_before == order_after, "missing": sorted(set(before) - set(after)),
            "new": sorted(set(after) - set(before))}


def _tasks_in_every_state(cq: Client) -> dict[str, list[str]]:
    sleep = {"argv": ["sleep", "30"]}
    ids: dict[str, list[str]] = {}
    ids["running"] = [cq.submit(kind="exec", name=f"run{n}", spec=sleep).id for n in range(3)]
    wait_until(lambda: all(cq.get(i)["state"] == "running" for i in ids["running"]), 30, "running")
    ids["queued"] = [cq.submit(kind="noop", name=f"big{n}", resources={"cpu_cores": 64}).id
                     for n in range(3)]
    held = cq.submit(kind="noop", name="held", resources={"cpu_cores": 64}).id
    cq.hold(held)
    ids["held"] = [held]
    ids["pending"] = [cq.submit(kind="noop", name="after", after=[ids["running"][0]]).id]
    done = cq.submit(kind="noop", name="done").id
    failed = cq.submit(kind="exec", name="fails", spec={"argv": ["false"]}, max_retries=0).id
    cancelled = cq.submit(kind="noop", name="cancel-me", resources={"cpu_cores": 64}).id
    cq.cancel(cancelled)
    cq.wait([done, failed, cancelled], timeout=30)
    ids["final"] = [done, failed, cancelled]
    return ids


def _views(cq: Client) -> dict[str, dict[str, Any]]:
    tasks = cq.queue(limit=1000)
    for state in FINAL:
        tasks += cq.queue(state=state, limit=1000)
    return {t["id"]: t for t in tasks}


def _diff(before: dict[str, dict], after: dict[str, dict]) -> dict[str, list[str]]:
    """task id -> the fields that changed and may not have (empty: none)."""
    out = {}
    for task_id, old in before.items():
        new = after.get(task_id)
        if new is None:
            continue
        changed = sorted(k for k in old.keys() | new.keys() if k not in RECOMPUTED and old.get(k) != new.get(k))
        requeued = (old["state"] == "running" and new["state"] in ("queued", "retrying")
                    and new.get("reason"))
        if requeued:  # allowed, with its reason: the attempt and worker move with it
            changed = [k for k in changed if k not in ("state", "attempt", "worker", "started_at")]
        if changed:
            out[task_id] = changed
    return out
