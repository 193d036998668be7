"""Network partitions between a worker and the master, trial after trial (promise 3 of
docs/reliability.md, with the worker alive but unreachable instead of killed).

The master listens in the root namespace on its veth address; `z-spare` runs beside it;
`a-victim` runs inside a network namespace behind a router namespace where the link is cut
(tests/chaos/netns.py: packets silently dropped, no reset). Placement packs onto the first
fitting worker by name, so each trial's task goes to the victim first.

A long partition (LONG_CUT times the lease) of a worker running a task:
  - the victim stops its attempt on its own before the lease runs out (measured as the moment
    the attempt's whole process group is gone, against cut + lease);
  - the master requeues the task when the lease runs out (the requeue time is from the cut
    to the master's "missed its lease" event) and the spare runs it as attempt 2, which
    starts only after attempt 1 has ended;
  - the link comes back while attempt 2 still runs: the victim registers again (the rejoin
    time is from the restore to the master listing it `available`), the master re-adopts
    nothing, and the victim's late outcome for attempt 1 is refused: once the victim has
    run a new task (its reports go in order, so the late one went first), the task is still
    attempt 2 running on the spare, and it ends with attempt 2's result;
  - every ledger is back to its totals, the victim never exited and logged no traceback.
A short partition (SHORT_CUT of the lease) of a worker running a task: nothing is noticed,
the task is never requeued and runs once, as attempt 1 on the victim.

A stubborn task (one that logs SIGTERM and goes on) may be given to the victim instead, in
every other long trial (`stubborn`): the worker must end it within the lease all the same.

Each task runs `SCRIPT`, which appends `ID ATTEMPT start T PID` and `ID ATTEMPT end T` lines
to a runs file (as tests/chaos/queue_check.py does) and holds until the test creates its
release file. Times are wall-clock (the runs file's $EPOCHREALTIME, the master's events and
the test's own clock are all this machine's).

Used by tests/chaos/test_partition.py (short, in CI); `run_partitions(tmp, trials=20)` is the
full run (for bench/chaos/run.py). Needs root, `ip` and `iptables`.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudq.client import Client
from tests.chaos.netns import LinkedNamespaces, linked_namespaces
from tests.cluster.harness import MasterProc, WorkerProc, wait_until

LEASE_S = 3.0
HEARTBEAT_S = 0.5
LONG_CUT = 1.5  # a long partition lasts at least this many leases (and until attempt 2 runs)
SHORT_CUT = 0.3  # a short one, this fraction of the lease
VICTIM, SPARE = "a-victim", "z-spare"
WORKER_FLAGS = ("--max-tasks", "1", "--cpu-cores", "1")

# {runs}: the runs file; {release}: the file whose creation lets every attempt end. With
# {on_term} the polite trap (log the end, exit) or the stubborn one (log it, carry on).
SCRIPT = ('trap {on_term} TERM; '
          'echo "$CLOUDQ_TASK_ID $CLOUDQ_ATTEMPT start $EPOCHREALTIME $$" >> {runs}; '
          'while [ ! -e {release} ]; do sleep 0.05 & wait $!; done; '
          'echo "$CLOUDQ_TASK_ID $CLOUDQ_ATTEMPT end $EPOCHREALTIME" >> {runs}')
POLITE = '\'echo "$CLOUDQ_TASK_ID $CLOUDQ_ATTEMPT end $EPOCHREALTIME" >> {runs}; exit 143\''
STUBBORN = '\'echo "$CLOUDQ_TASK_ID $CLOUDQ_ATTEMPT term $EPOCHREALTIME" >> {runs}\''


@dataclass
class Partitions:
    trials: int  # long partitions
    short_trials: int
    lease_s: float = LEASE_S
    heartbeat_s: float = HEARTBEAT_S
    stubborn_trials: int = 0  # of the long ones, with a task that carries on after SIGTERM
    leftovers: list[str] = field(default_factory=list)  # namespaces or devices not removed
    requeue_s: list[float] = field(default_factory=list)  # cut -> the master's "missed its lease"
    stop_margin_s: list[float] = field(default_factory=list)  # attempt 1 gone by cut + lease - this
    gap_s: list[float] = field(default_factory=list)  # attempt 1 gone -> attempt 2 started
    rejoin_s: list[float] = field(default_factory=list)  # link back -> the victim `available`
    # Long partitions: the broken promises, each a list of what broke it.
    late: list[str] = field(default_factory=list)  # requeued over a second after cut + lease
    outlived_lease: list[str] = field(default_factory=list)  # attempt 1 still alive at cut + lease
    overlapping: list[str] = field(default_factory=list)  # attempt 2 started before attempt 1 ended
    stale_accepted: list[str] = field(default_factory=list)  # attempt 1's late outcome taken
    wrong_attempts: list[str] = field(default_factory=list)  # not completed as attempt 2 on the spare
    not_rejoined: list[str] = field(default_factory=list)  # not back, not running work, or broken
    leaked: list[str] = field(default_factory=list)  # a ledger not back to its totals
    # Short partitions.
    requeued: list[str] = field(default_factory=list)  # noticed: lease missed, or attempt 2
    ran_twice: list[str] = field(default_factory=list)  # more than one run of the task

    def failures(self) -> dict[str, int]:
        return {name: len(getattr(self, name)) for name in (
            "late", "outlived_lease", "overlapping", "stale_accepted", "wrong_attempts",
            "not_rejoined", "leaked", "requeued", "ran_twice")}

    def report(self) -> str:
        return (f"partitions: {self.trials} cut for over {LONG_CUT:g} leases ({self.stubborn_trials} "
                f"with a task that ignores SIGTERM), {self.short_trials} cut for {SHORT_CUT:.0%} of "
                f"one; lease {self.lease_s:g} s, heartbeat {self.heartbeat_s:g} s; "
                f"requeued after the cut {_figures(self.requeue_s)}; "
                f"attempt 1 gone before cut + lease by {_figures(self.stop_margin_s, low=True)}; "
                f"attempt 2 started after attempt 1 ended by {_figures(self.gap_s, low=True)}; "
                f"rejoined after the link came back {_figures(self.rejoin_s)}; "
                + ", ".join(f"{k} {v}" for k, v in self.failures().items()))


def _figures(values: list[float], low: bool = False) -> str:
    """p50 and the worst: the max, or for a margin (`low`) the min."""
    if not values:
        return "n/a"
    worst = ("min", min(values)) if low else ("max", max(values))
    return f"p50 {statistics.median(values):.2f} s, {worst[0]} {worst[1]:.2f} s"


class Trials:
    """The cluster of one run: the master, the spare and the victim behind the link."""

    def __init__(self, tmp: Path, runs_dir: Path, link: LinkedNamespaces, result: Partitions,
                 seed: int) -> None:
        self.tmp, self.runs_dir, self.link, self.result = tmp, runs_dir, link, result
        self.rng = random.Random(seed)
        self.runs = runs_dir / "runs.log"
        self.runs.touch()
        self.runs.chmod(0o666)  # the workers' task user appends to it
        # Off loopback, so plain RPC must be asked for; the processor tick is rare so that the
        # requeue comes from the lease timer alone.
        self.master = MasterProc(tmp / "data", "--bind", link.master_ip, "--insecure",
                                 "--lease", str(result.lease_s), "--heartbeat", str(result.heartbeat_s),
                                 "--interval", "300")
        self.procs: list[WorkerProc] = []
        try:
            self.spare = self._worker(SPARE)
            self.victim = self._worker(VICTIM, prefix=link.prefix)
        except BaseException:
            self.stop()
            raise

    def _worker(self, name: str, prefix: tuple[str, ...] = ()) -> WorkerProc:
        worker = WorkerProc(self.master.address, name, self.tmp / "work", *WORKER_FLAGS, prefix=prefix)
        self.procs.append(worker)
        self.master.wait_worker(name)
        return worker

    def stop(self) -> None:
        for proc in [*reversed(self.procs), self.master]:
            with contextlib.suppress(Exception):
                proc.stop(timeout=20)

    # ------------------------------------------------------------------ tasks
    def submit(self, cq: Client, name: str, stubborn: bool = False) -> str:
        on_term = (STUBBORN if stubborn else POLITE).format(runs=self.runs)
        release = self.runs_dir / f"release-{name}"
        script = SCRIPT.format(on_term=on_term, runs=self.runs, release=release)
        return cq.submit(kind="exec", name=name, max_retries=3, retry_backoff_s=0,
                         resources={"cpu_cores": 1}, spec={"argv": ["bash", "-c", script]}).id

    def release(self, name: str) -> None:
        (self.runs_dir / f"release-{name}").touch()

    def runs_of(self, task_id: str) -> dict[int, dict[str, Any]]:
        """attempt -> {"start": T, "pid": P, "end": T (when logged), "starts": N}."""
        out: dict[int, dict[str, Any]] = {}
        for line in self.runs.read_text().splitlines():
            parts = line.split()
            if len(parts) < 4 or parts[0] != task_id:
                continue
            run = out.setdefault(int(parts[1]), {"starts": 0})
            if parts[2] == "start":
                run.update(start=float(parts[3]), pid=int(parts[4]), starts=run["starts"] + 1)
            elif parts[2] == "end":
                run["end"] = float(parts[3])
        return out

    def running_on(self, cq: Client, task_id: str, worker: str, attempt: int) -> dict[str, Any]:
        """Waits until the task's attempt runs on `worker` and has logged its start."""
        wait_until(lambda: (t := cq.get(task_id))["state"] == "running" and t["worker"] == worker
                   and t["attempt"] == attempt, 30, f"{task_id} attempt {attempt} running on {worker}")
        return wait_until(lambda: self.runs_of(task_id).get(attempt, {}).get("pid") and
                          self.runs_of(task_id)[attempt], 10, f"{task_id} attempt {attempt} started")

    def victim_events(self, since: float) -> list[dict[str, Any]]:
        return [e for e in self.master.ctl("events", "--worker", VICTIM, "--limit", "1000")
                if e["time"] >= since and not e["task"]]

    # ------------------------------------------------------------------ trials
    def long_partition(self, cq: Client, trial: int, stubborn: bool) -> None:
        result, lease = self.result, self.result.lease_s
        name = f"long{trial}"
        task_id = self.submit(cq, name, stubborn)
        run = self.running_on(cq, task_id, VICTIM, 1)
        # A random moment: anywhere between two heartbeats, and in the long-poll of a fetch.
        time.sleep(self.rng.uniform(0, lease))
        with group_watch(run["pid"]) as gone:
            self.link.cut()
            cut_at = time.time()
            try:
                # The spare runs attempt 2 while the victim is still cut off.
                second = self.running_on(cq, task_id, SPARE, 2)
                time.sleep(max(0.0, cut_at + LONG_CUT * lease - time.time()))  # the rest of the cut
            finally:
                self.link.restore()
            restored_at = time.time()
            wait_until(lambda: gone.is_set(), 30, f"{name} attempt 1 gone")
        ended_1 = gone.at
        requeued_at = next((e["time"] for e in cq.get(task_id)["events"]
                            if "missed its lease" in e["reason"]), None)
        if requeued_at is None:
            result.late.append(f"{task_id}: never requeued for a missed lease")
        else:
            result.requeue_s.append(requeued_at - cut_at)
            if requeued_at - cut_at > lease + 1.0:
                result.late.append(f"{task_id}: requeued {requeued_at - cut_at:.2f} s after the cut")
        result.stop_margin_s.append(cut_at + lease - ended_1)
        if ended_1 > cut_at + lease:
            result.outlived_lease.append(f"{task_id}: attempt 1 alive {ended_1 - cut_at:.2f} s "
                                         "after the cut")
        result.gap_s.append(second["start"] - ended_1)
        if second["start"] < ended_1:
            result.overlapping.append(f"{task_id}: attempt 2 started {ended_1 - second['start']:.2f} s "
                                      "before attempt 1 ended")
        self._rejoin(cq, trial, task_id, restored_at)
        self.release(name)
        done = cq.wait([task_id], timeout=30)[task_id]
        runs = self.runs_of(task_id)
        if (done["state"] != "completed" or done["attempt"] != 2 or done["worker"] != SPARE
                or sorted(runs) != [1, 2] or any(r["starts"] != 1 for r in runs.values())):
            result.wrong_attempts.append(f"{task_id}: {done['state']} as attempt {done['attempt']} on "
                                         f"{done['worker']}; runs {runs}")
        elif abs((done.get("result") or {}).get("started_at", 0) - runs[2]["start"]) > 1.0:
            result.stale_accepted.append(f"{task_id}: its result is not attempt 2's: "
                                         f"{done.get('result')}")
        self._ledgers(cq, task_id)

    def _rejoin(self, cq: Client, trial: int, task_id: str, restored_at: float) -> None:
        """The victim is back: registered, re-adopting nothing, running new work; meanwhile its
        late outcome for attempt 1 has been refused (the task is still attempt 2 on the spare)."""
        result = self.result
        try:
            self.master.wait_worker(VICTIM, timeout=30)
        except AssertionError:
            result.not_rejoined.append(f"trial {trial}: not available 30 s after the link came back\n"
                                       + self.victim.output())
            return
        result.rejoin_s.append(time.time() - restored_at)
        joined = [e for e in self.victim_events(restored_at - 1)
                  if e["dst"] in ("joined", "re-registered")]
        if not joined or "re-adopted 0 running" not in joined[-1]["reason"]:
            result.not_rejoined.append(f"trial {trial}: registration {joined} re-adopted what the "
                                       "master gave to another")
        # The spare is busy with attempt 2, so the new task can only go to the victim. Its
        # reports follow the late one for attempt 1 on the same channel, in order.
        fresh = self.submit(cq, f"after{trial}")
        self.release(f"after{trial}")
        try:
            after = cq.wait([fresh], timeout=30)[fresh]
        except TimeoutError:
            after = cq.get(fresh)
        if after["state"] != "completed" or after["worker"] != VICTIM:
            result.not_rejoined.append(f"trial {trial}: the new task {fresh} {after['state']} on "
                                       f"{after['worker']}")
        now = cq.get(task_id)
        if not (now["state"] == "running" and now["attempt"] == 2 and now["worker"] == SPARE):
            result.stale_accepted.append(f"{task_id}: after the victim's late report it is "
                                         f"{now['state']} as attempt {now['attempt']} on {now['worker']}")
        broken = any("Traceback" in line for line in self.victim.lines)
        if self.victim.proc.poll() is not None or broken:
            result.not_rejoined.append(f"trial {trial}: the victim exited or logged a traceback\n"
                                       + self.victim.output())

    def short_partition(self, cq: Client, trial: int) -> None:
        result, lease = self.result, self.result.lease_s
        name = f"short{trial}"
        task_id = self.submit(cq, name)
        self.running_on(cq, task_id, VICTIM, 1)
        time.sleep(self.rng.uniform(0, lease))  # a random moment, as for a long partition
        since = time.time()
        self.link.cut()
        try:
            time.sleep(SHORT_CUT * lease)  # the partition itself: a span of time, not an event
        finally:
            self.link.restore()
        # Long enough after the restore for anything the cut set off to show: the master's
        # lease and the victim's own 80 % deadline would both have run out by a lease after it.
        time.sleep(max(0.0, since + 1.5 * lease - time.time()))
        self.release(name)
        done = cq.wait([task_id], timeout=30)[task_id]
        lost = [e for e in self.victim_events(since) if e["dst"] == "lost"]
        if done["attempt"] != 1 or done["worker"] != VICTIM or done["state"] != "completed" or lost:
            result.requeued.append(f"{task_id}: {done['state']} as attempt {done['attempt']} on "
                                   f"{done['worker']}; victim lost: {lost}")
        runs = self.runs_of(task_id)
        if sorted(runs) != [1] or runs[1]["starts"] != 1 or "end" not in runs[1]:
            result.ran_twice.append(f"{task_id}: runs {runs}")
        self._ledgers(cq, task_id)

    def _ledgers(self, cq: Client, task_id: str) -> None:
        def settled() -> list[str]:
            return [f"{task_id}: {w['name']} cpu_free {w['cpu_free']} of {w['cpu_cores']}, running "
                    f"{w['running']}" for w in cq.workers()
                    if w["cpu_free"] != w["cpu_cores"] or w["running"]]

        with contextlib.suppress(AssertionError):
            wait_until(lambda: not settled(), 10, "ledgers back to their totals")
        self.result.leaked += settled()


class _Gone(threading.Event):
    at: float = 0.0


@contextlib.contextmanager
def group_watch(pgid: int) -> Iterator[_Gone]:
    """Set (with the wall time in .at) once no process of the group `pgid` is left: the end of
    an attempt, whether its script logged one or was killed outright. Polled every 10 ms, so
    the time is at most that late (never early)."""
    gone = _Gone()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                gone.at = time.time()
                gone.set()
                return
            stop.wait(0.01)

    thread = threading.Thread(target=watch, name=f"watch-{pgid}", daemon=True)
    thread.start()
    try:
        yield gone
    finally:
        stop.set()
        thread.join(timeout=5)


def run_partitions(tmp: Path, *, trials: int, short_trials: int = 1, stubborn: bool = True,
                   lease_s: float = LEASE_S, heartbeat_s: float = HEARTBEAT_S,
                   runs_dir: Path | None = None, seed: int = 2026) -> Partitions:
    """`trials` long partitions, then `short_trials` short ones; with `stubborn`, every other
    long one (the second, fourth...) gives the victim a task that carries on after SIGTERM.
    `runs_dir` must be writable by the workers' task user; by default one is made (and removed)
    under the system's temporary folder."""
    result = Partitions(trials, short_trials, lease_s=lease_s, heartbeat_s=heartbeat_s)
    own_runs = runs_dir is None
    if runs_dir is None:
        runs_dir = Path(tempfile.mkdtemp(prefix="cloudq-partition-"))
        runs_dir.chmod(0o777)
    try:
        with linked_namespaces() as link:
            cluster = Trials(tmp, runs_dir, link, result, seed)
            try:
                with Client(cluster.master.address) as cq:
                    for trial in range(trials):
                        hard = stubborn and trial % 2 == 1
                        result.stubborn_trials += hard
                        cluster.long_partition(cq, trial, hard)
                    for trial in range(short_trials):
                        cluster.short_partition(cq, trial)
            finally:
                cluster.stop()
        result.leftovers = link.leftovers()
    finally:
        if own_runs:
            shutil.rmtree(runs_dir, ignore_errors=True)
    return result
