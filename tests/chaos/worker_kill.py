"""Workers killed -9 in the middle of a task, trial after trial: the task is requeued within
the lease and finishes elsewhere as its next attempt, and every worker's ledger is back to its
totals afterwards (promise 3 of docs/reliability.md).

Two workers: `a-victim` takes each task first (placement packs onto the first fitting worker
by name) and is killed -9 while it runs; `z-spare` takes the retry. The task sleeps only in
its first attempt, so the retry ends at once. The requeue time is from the kill to the
master moving the task off the dead worker; with a lease of L seconds it is at most L plus
the master's noticing.

Used by tests/chaos/test_chaos.py (short, in CI) and bench/chaos/run.py (100 trials).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from cloudq.client import Client
from tests.cluster.harness import MasterProc, WorkerProc, task_processes, wait_until

LEASE_S = 3.0
SCRIPT = 'if [ "$CLOUDQ_ATTEMPT" = 1 ]; then exec sleep 60; fi'


@dataclass
class WorkerKills:
    trials: int
    requeue_s: list[float] = field(default_factory=list)
    late: list[str] = field(default_factory=list)  # requeued after the lease and a second
    wrong_attempts: list[str] = field(default_factory=list)  # not completed as attempt 2
    leaked: list[str] = field(default_factory=list)  # a ledger not back to its totals

    def failures(self) -> dict[str, int]:
        return {"late": len(self.late), "wrong_attempts": len(self.wrong_attempts),
                "leaked": len(self.leaked)}

    def report(self) -> str:
        times = sorted(self.requeue_s)
        p99 = times[min(len(times) - 1, int(0.99 * len(times)))] if times else 0.0
        return (f"worker kills: {self.trials} trials, lease {LEASE_S:g} s; requeued after the kill "
                f"p50 {statistics.median(times) if times else 0:.2f} s, p99 {p99:.2f} s, "
                f"max {max(times, default=0):.2f} s; "
                + ", ".join(f"{k} {v}" for k, v in self.failures().items()))


def run_worker_kills(tmp: Path, *, trials: int) -> WorkerKills:
    master = MasterProc(tmp / "data", "--lease", str(LEASE_S), "--heartbeat", "0.5",
                        "--interval", "300")
    spare = WorkerProc(master.address, "z-spare", tmp / "work", "--max-tasks", "1", "--cpu-cores", "1")
    result = WorkerKills(trials)
    try:
        master.wait_worker("z-spare")
        with Client(master.address) as cq:
            for trial in range(trials):
                _trial(cq, master, tmp, trial, result)
    finally:
        spare.stop()
        master.stop()
    return result


def _trial(cq: Client, master: MasterProc, tmp: Path, trial: int, result: WorkerKills) -> None:
    victim = WorkerProc(master.address, "a-victim", tmp / "work", "--max-tasks", "1", "--cpu-cores", "1")
    try:
        master.wait_worker("a-victim")
        task_id = cq.submit(kind="exec", name=f"trial{trial}", max_retries=3, retry_backoff_s=0, resources={"cpu_cores": 1},
                            spec={"argv": ["sh", "-c", SCRIPT]}).id
        wait_until(lambda: (t := cq.get(task_id))["state"] == "running" and t["worker"] == "a-victim",
                   30, f"trial {trial} running on the victim")
    except BaseException:
        victim.stop()
        raise
    victim.kill()
    killed_at = time.monotonic()
    for orphan in task_processes(task_id):  # a machine that dies takes its tasks along
        orphan.kill()
    # Requeued: the master took the task back from the dead worker (it then waits out its
    # retry back-off, its own policy, before it runs again).
    wait_until(lambda: cq.get(task_id)["state"] not in ("running", "assigned"), LEASE_S + 30,
               f"trial {trial} requeued", every=0.02)
    requeue_s = time.monotonic() - killed_at
    result.requeue_s.append(requeue_s)
    if requeue_s > LEASE_S + 1.0:
        result.late.append(task_id)
    done = cq.wait([task_id], timeout=60)[task_id]
    if done["state"] != "completed" or done["attempt"] != 2 or done["worker"] != "z-spare":
        result.wrong_attempts.append(task_id)
    for worker in cq.workers():
        if worker["cpu_free"] != worker["cpu_cores"] or worker["running"]:
            result.leaked.append(f"{task_id}: {worker['name']}")
