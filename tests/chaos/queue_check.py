"""A Jepsen-style queue check against real processes: unique tasks submitted by concurrent
clients while the master is killed -9 at random moments, run by workers that record every
run; then count what was lost, duplicated, run twice at once, or run too often.

Each task is an exec task whose script appends `ID ATTEMPT start T` and `ID ATTEMPT end T`
to one file (bash's $EPOCHREALTIME, no extra process); a stopped run writes its end line from
its TERM trap. An attempt without an end line (killed outright) counts as running until the
end of the check, so it can only make an overlap more likely to be reported, never hide one.

Used by tests/chaos/test_chaos.py (short, in CI) and bench/chaos/run.py (the full figures).
"""

from __future__ import annotations

import contextlib
import itertools
import random
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudq.client import Client
from cloudq.errors import CloudqError, NotLeaderError
from tests.cluster.harness import MasterProc, WorkerProc, wait_until
from tests.e2e.conftest import free_port

MAX_RETRIES = 2
BATCH = 10  # tasks per submit call
# A worker lease that outlasts a master restart: running tasks are re-adopted, not retried.
MASTER_FLAGS = ("--lease", "10", "--heartbeat", "0.5", "--interval", "1")

SCRIPT = ('trap \'echo "$CLOUDQ_TASK_ID $CLOUDQ_ATTEMPT end $EPOCHREALTIME" >> {runs}; exit 143\' TERM; '
          'echo "$CLOUDQ_TASK_ID $CLOUDQ_ATTEMPT start $EPOCHREALTIME" >> {runs}; '
          'sleep 0.05 & wait $!; '
          'echo "$CLOUDQ_TASK_ID $CLOUDQ_ATTEMPT end $EPOCHREALTIME" >> {runs}')


@dataclass
class QueueCheck:
    trials: int
    killed: str = "master"  # or "leader" (standby masters)
    acknowledged: int = 0
    stored: int = 0
    lost: list[str] = field(default_factory=list)  # acknowledged, never present
    duplicated: list[str] = field(default_factory=list)  # one submission stored twice
    unexpected: list[str] = field(default_factory=list)  # present, never submitted
    overlapping: list[str] = field(default_factory=list)  # two attempts running at once
    too_many_runs: list[str] = field(default_factory=list)  # more than max_retries + 1
    not_final: list[str] = field(default_factory=list)
    runs: int = 0
    accept_s: list[float] = field(default_factory=list)  # kill -9 to the next acknowledged submit
    by_state: dict[str, int] = field(default_factory=dict)

    def failures(self) -> dict[str, int]:
        return {name: len(getattr(self, name)) for name in (
            "lost", "duplicated", "unexpected", "overlapping", "too_many_runs", "not_final")}

    def report(self) -> str:
        accept = sorted(self.accept_s)
        p = (lambda q: accept[min(len(accept) - 1, int(q * len(accept)))]) if accept else (lambda q: 0.0)
        return (f"queue check: {self.trials} kill -9 of the {self.killed}, {self.acknowledged} acknowledged "
                f"submissions, {self.stored} stored, {self.runs} runs; "
                + ", ".join(f"{k} {v}" for k, v in self.failures().items())
                + f"; final states {self.by_state}; accepting again after a kill: "
                f"p50 {statistics.median(accept) if accept else 0:.2f} s, p90 {p(0.9):.2f} s, "
                f"max {max(accept, default=0):.2f} s")


class OneMaster:
    """The master on its embedded store, killed -9 and started again on the same port."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.port = tmp, free_port()
        self.master = MasterProc(tmp / "data", *MASTER_FLAGS, port=self.port)
        self.address = self.master.address

    def kill(self) -> float:
        self.master.kill()
        killed_at = time.monotonic()
        self.master = MasterProc(self.tmp / "data", *MASTER_FLAGS, port=self.port)
        return killed_at

    def stop(self) -> None:
        self.master.stop()


class StandbyMasters:
    """Two masters on one PostgreSQL database: the leader is killed -9 and started again (as
    a standby, on the same port); workers and clients are given both."""

    def __init__(self, tmp: Path, url: str) -> None:
        self.tmp, self.url = tmp, url
        self.ports = [free_port(), free_port()]
        self.masters = [self._start(i) for i in range(2)]
        self.address = ",".join(m.address for m in self.masters)

    def _start(self, i: int) -> MasterProc:
        return MasterProc(self.tmp / f"m{i}", "--store", self.url, *MASTER_FLAGS, port=self.ports[i])

    def kill(self) -> float:
        leader = next(i for i, m in enumerate(self.masters) if _role(m.address) == "leader")
        self.masters[leader].kill()
        killed_at = time.monotonic()
        self.masters[leader] = self._start(leader)
        return killed_at

    def stop(self) -> None:
        for master in self.masters:
            master.stop()


def _role(address: str) -> str | None:
    try:
        with Client(address, timeout_s=2) as c:
            return c.ping()["role"]
    except (CloudqError, ConnectionError, OSError):
        return None


def run_queue_check(tmp: Path, runs_dir: Path, *, trials: int, submissions: int, clients: int = 3,
                    workers: int = 4, seed: int = 2026, store: str | None = None) -> QueueCheck:
    """`submissions` tasks in all from `clients` threads; `trials` kills of the master spread
    over them. `runs_dir` must be writable by the workers' task user. With `store` (a
    PostgreSQL URL), two masters share it and each kill is of the leader."""
    rng = random.Random(seed)
    runs = runs_dir / "runs.log"
    runs.touch()
    runs.chmod(0o666)
    masters: OneMaster | StandbyMasters = OneMaster(tmp) if store is None else StandbyMasters(tmp, store)
    address = masters.address
    procs = [WorkerProc(address, f"w{i}", tmp / "work", "--max-tasks", "4", "--cpu-cores", "4")
             for i in range(workers)]
    result = QueueCheck(trials, "master" if store is None else "leader of two masters on PostgreSQL")
    acked: list[str] = []
    lock = threading.Lock()
    per_client = submissions // clients
    try:
        with Client(address) as cq:
            wait_until(lambda: len(cq.workers()) == workers, 30, "the workers registered")
        threads = [threading.Thread(target=_client, args=(address, k, per_client, runs, acked, lock),
                                    daemon=True) for k in range(clients)]
        for thread in threads:
            thread.start()
        for trial in range(trials):
            target = submissions * (trial + 1) // (trials + 1)
            wait_until(lambda t=target: len(acked) >= t or not any(th.is_alive() for th in threads),
                       120, f"{target} acknowledged submissions")
            time.sleep(rng.uniform(0.0, 0.3))  # a random moment, not a submit boundary
            killed_at = masters.kill()
            result.accept_s.append(_accepts_again(address, trial) - killed_at)
        for thread in threads:
            thread.join(timeout=300)
        result.acknowledged = len(acked)
        _check(result, address, acked, runs)
    finally:
        for proc in procs:
            proc.stop()
        masters.stop()
    return result


def _client(address: str, k: int, count: int, runs: Path, acked: list[str], lock: threading.Lock) -> None:
    """Submits `count` tasks named c<k>-<n>. A name is sent again only after a refusal that
    says nothing was done (a standby's, during an election); after any other failure the
    batch may or may not have been stored, so it is not acknowledged and its names are never
    used again: a name stored twice is a duplicate made by cloudq."""
    spec = {"argv": ["bash", "-c", SCRIPT.format(runs=runs)]}
    n = 0
    client: Client | None = None
    while n < count:
        if client is None:
            try:
                client = Client(address, timeout_s=10)
            except (CloudqError, ConnectionError, OSError):
                time.sleep(0.05)
                continue
        names = [f"c{k}-{n + i}" for i in range(min(BATCH, count - n))]
        try:
            client.submit_many([{"kind": "exec", "name": name, "spec": spec, "max_retries": MAX_RETRIES}
                                for name in names])
        except NotLeaderError:
            time.sleep(0.05)  # no leader yet: nothing was done, the same names go again
            continue
        except (CloudqError, ConnectionError, OSError):
            n += len(names)
            client.close()
            client = None
            continue
        n += len(names)
        with lock:
            acked.extend(names)


def _accepts_again(address: str, trial: int) -> float:
    """When a submit to the restarted master was first acknowledged (monotonic time)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with Client(address, timeout_s=5) as probe:
                probe.submit(kind="noop", name=f"probe-{trial}")
                return time.monotonic()
        except (CloudqError, ConnectionError, OSError):
            time.sleep(0.02)
    raise AssertionError(f"the master did not accept work within 60 s of restart {trial}")


def _check(result: QueueCheck, address: str, acked: list[str], runs: Path) -> None:
    with Client(address, timeout_s=60) as cq:
        tasks = _every_task(cq)
        with contextlib.suppress(TimeoutError):  # counted below as not final
            cq.wait([t["id"] for t in tasks], timeout=300)
        tasks = _every_task(cq)
    result.stored = len(tasks)
    names: dict[str, list[dict[str, Any]]] = {}
    for task in tasks:
        names.setdefault(task["name"], []).append(task)
    result.lost = [n for n in acked if n not in names]
    result.duplicated = [n for n, found in names.items() if len(found) > 1]
    result.unexpected = [n for n in names if not n.startswith(("c", "probe-"))]
    final = {"completed", "failed", "cancelled", "dead"}
    result.not_final = [t["id"] for t in tasks if t["state"] not in final]
    for task in tasks:
        result.by_state[task["state"]] = result.by_state.get(task["state"], 0) + 1
    attempts = _attempts(runs)
    result.runs = sum(len(a) for a in attempts.values())
    for task_id, spans in attempts.items():
        if len(spans) > MAX_RETRIES + 1:
            result.too_many_runs.append(task_id)
        ordered = sorted(spans.values(), key=lambda span: span[0])
        if any(later[0] < (earlier[1] or float("inf")) for earlier, later in itertools.pairwise(ordered)):
            result.overlapping.append(task_id)


def _attempts(runs: Path) -> dict[str, dict[str, tuple[float, float | None]]]:
    """task id -> attempt -> (start, end or None) from the runs file."""
    starts: dict[tuple[str, str], float] = {}
    ends: dict[tuple[str, str], float] = {}
    for line in runs.read_text().splitlines():
        parts = line.split()
        if len(parts) != 4:
            continue
        task_id, attempt, what, when = parts
        (starts if what == "start" else ends)[(task_id, attempt)] = float(when)
    out: dict[str, dict[str, tuple[float, float | None]]] = {}
    for (task_id, attempt), start in starts.items():
        out.setdefault(task_id, {})[attempt] = (start, ends.get((task_id, attempt)))
    return out


def _every_task(cq: Client) -> list[dict[str, Any]]:
    tasks = cq.queue(limit=1_000_000)
    for state in ("completed", "failed", "cancelled", "dead"):
        tasks += cq.queue(state=state, limit=1_000_000)
    return tasks
