"""A soak: many short exec tasks through four workers while one of them is killed -9 every few
seconds and started again at once under the same name; then prove every task reached a final
state, and watch the master's memory and its data directory for anything that only grows.

The master keeps finished tasks for `keep_finished_s` only (30 s by default, against 7 days
on a farm): what is measured is what the master leaks, not what it was told to retain, so
it must forget the finished tasks as a long-running farm would. A submitter keeps the queue
fed in batches, with at most `window` tasks submitted and not yet ended; a killer kills one
worker every `kill_every_s` seconds, round robin, with its task processes (a machine that
dies takes its tasks along). Each task is `true` with max_retries 5 and no back-off, so a task
on a killed worker is retried at once and only a run of six kills under the same task could
make it dead.

The proof is the master's audit log (`--audit-log`: every event as a JSON line, written once
durable): read again from its start (rotated parts included) after the master stopped, each
submitted id must have exactly one terminal move (to completed, failed, cancelled or dead),
and no assignment may wait past START_LIMIT_S to be started or taken back (a restarted
worker that never gets what it was given sits idle until --start-deadline). The master's
metrics must show no task still queued, running or waiting to retry at the end, and none
held at all once keep_finished_s has passed.

Figures: the master's RSS when the first `baseline_at` tasks (10,000, or half of a smaller
run) had ended, at every tenth of the run and when the last one had; the journal segments'
and checkpoints' sizes, sampled every `sample_every_s`, at their largest and at the end.

What a leak would show is growth once the master is in its steady state, and for memory
that begins only when its event history is full: the newest --keep-events (100,000) events
are kept, in the master's memory and in the store's mirror and checkpoint, so until then RSS
grows with every task by design (about 1.7 KB a task, 4 events each: the history fills at
about 25,000 tasks; the full run keeps 20,000, full at about 5,000). Growth is therefore
judged (Soak.growth) for RSS from the baseline, or from the moment the audit log passed
--keep-events lines if that came later, to the end, and for the journal and the checkpoints
(a sawtooth: the journal grows until a checkpoint lets its old segments go) from the largest
size in the first half of the run to the largest in the second, once each half saw at least
two checkpoints written (the store writes one per 100,000 changes, about 15,000 tasks).

Used by tests/chaos/test_soak.py (short, in CI) and the chaos campaign (100,000 tasks).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil
from prometheus_client.parser import text_string_to_metric_families

from cloudq.client import Client
from cloudq.defaults import EVENT_RETENTION
from cloudq.store import checkpoint
from cloudq.store.journal import list_segments
from tests.cluster.harness import MasterProc, WorkerProc, wait_until
from tests.e2e.conftest import free_port

WORKERS = 4
TASKS_PER_WORKER = 4
MAX_RETRIES = 5
BATCH = 200  # tasks per submit call
LEASE_S = 3.0
FINAL = frozenset({"completed", "failed", "cancelled", "dead"})
ACTIVE = ("pending", "queued", "assigned", "running", "retrying", "held")
# An assigned task is started by a live worker within a moment, and taken back from a killed
# one when it registers again (a second or two) or at its lease: far within this.
START_LIMIT_S = 10.0
# Room enough that the audit log never rotates: about 150 bytes an event, 5 to 6 events a task.
AUDIT_LOG_MAX_MB = 4096


@dataclass
class Soak:
    tasks: int
    kill_every_s: float
    keep_finished_s: float
    growth_limit_pct: float | None = None  # past it, growth (Soak.growth) is a broken promise
    keep_events: int = EVENT_RETENTION  # the master's --keep-events: its history's length
    submitted: int = 0
    kills: int = 0
    elapsed_s: float = 0.0  # from the first submit to the last task's end
    outcomes: Counter[str] = field(default_factory=Counter)  # terminal state -> tasks
    retried: int = 0  # tasks whose terminal move was of a later attempt than the first
    retries_by_cause: dict[str, int] = field(default_factory=dict)  # the master's counter
    baseline_at: int = 0  # ended tasks at the baseline RSS sample
    rss_mb: dict[int, float] = field(default_factory=dict)  # tasks ended -> master RSS, MB
    rss_max_mb: float = 0.0
    # Tasks ended when the master's event history (the newest EVENT_RETENTION events, kept in
    # memory and in the store) was full, and its RSS then: from there on, the steady state.
    history_full_at: int | None = None
    rss_history_full_mb: float = 0.0
    held_max: int = 0  # tasks the master held (any state), at most, over the run
    held_end: int = 0  # ...and once every task had ended
    journal_max_mb: float = 0.0
    journal_end_mb: float = 0.0
    checkpoint_max_mb: float = 0.0  # checkpoint.json and its .old together
    checkpoint_end_mb: float = 0.0
    checkpoints_seen: int = 0  # times a new checkpoint file was seen
    assigned_max_s: float = 0.0  # longest an assignment waited to be started or taken back
    # (tasks ended, master RSS MB, tasks held, journal MB, checkpoints MB, checkpoints written
    # so far), every sample_every_s
    samples: list[tuple[int, float, int, float, float, int]] = field(default_factory=list)
    # Broken promises:
    not_final: list[str] = field(default_factory=list)  # submitted, no terminal move
    ended_twice: list[str] = field(default_factory=list)  # more than one terminal move
    not_completed: list[str] = field(default_factory=list)  # `true` that did not complete
    slow_starts: list[str] = field(default_factory=list)  # assigned past START_LIMIT_S
    still_active: dict[str, int] = field(default_factory=dict)  # state -> tasks at the end
    not_forgotten: int = 0  # tasks the master still held keep_finished_s after the last end
    crashed: list[str] = field(default_factory=list)  # processes that exited unasked
    workers_missing: list[str] = field(default_factory=list)  # not available at the end
    errors: list[str] = field(default_factory=list)  # a refused submit, a stall

    @property
    def tasks_per_s(self) -> float:
        return self.submitted / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def rss_baseline_mb(self) -> float:
        return self.rss_mb.get(self.baseline_at, 0.0)

    @property
    def rss_end_mb(self) -> float:
        return self.rss_mb.get(self.tasks, 0.0)

    @property
    def rss_growth_pct(self) -> float:
        """From the baseline (the 10,000th task's end) to the end."""
        return _growth(self.rss_baseline_mb, self.rss_end_mb)

    def growth(self) -> dict[str, tuple[float, float, float]]:
        """What can be judged of this run, by name: (before, after, growth in %). RSS, from
        the baseline (or, if later, from when the event history was full) to the end; the journal and checkpoints, from the
        largest sample in the first half of the run to the largest in the second, if each
        half saw two checkpoints written (a peak of the sawtooth in each)."""
        out = {}
        if self.history_full_at is not None and self.history_full_at <= self.baseline_at < self.submitted:
            out["rss"] = (self.rss_baseline_mb, self.rss_end_mb, self.rss_growth_pct)  # the rule
        elif self.history_full_at is not None and self.history_full_at < self.submitted:
            out["rss"] = (self.rss_history_full_mb, self.rss_end_mb,
                          _growth(self.rss_history_full_mb, self.rss_end_mb))
        half = len(self.samples) // 2
        first, second = self.samples[:half], self.samples[half:]
        if first and second and first[-1][5] >= 2 and second[-1][5] - first[-1][5] >= 2:
            for name, column in (("journal", 3), ("checkpoints", 4)):
                before, after = max(s[column] for s in first), max(s[column] for s in second)
                out[name] = (before, after, _growth(before, after))
        return out

    def failures(self) -> dict[str, int]:
        counts = {name: len(getattr(self, name)) for name in (
            "not_final", "ended_twice", "not_completed", "slow_starts", "crashed", "workers_missing",
            "errors")}
        counts["still_active"] = sum(self.still_active.values())
        counts["not_forgotten"] = self.not_forgotten
        if self.growth_limit_pct is not None:
            for name, (_, _, growth) in self.growth().items():
                counts[f"{name}_grew"] = int(growth >= self.growth_limit_pct)
        return counts

    def report(self) -> str:
        by_tasks = ", ".join(f"{n:,}: {mb:.0f}" for n, mb in sorted(self.rss_mb.items()))
        growth = self.growth()
        full = ("event history never full" if self.history_full_at is None
                else f"event history full at {self.history_full_at:,} ended")
        judged = ", ".join(f"{name} {a:.1f} -> {b:.1f} MB ({g:+.1f}%)" for name, (a, b, g) in growth.items())
        steady_text = f"{full}; growth judged: {judged or 'none (too short)'}"
        return (f"soak: {self.submitted:,} of {self.tasks:,} tasks through {WORKERS} workers, "
                f"{self.kills} kill -9 (one every {self.kill_every_s:g} s), keep-finished "
                f"{self.keep_finished_s:g} s; {self.elapsed_s:.0f} s, {self.tasks_per_s:.0f} tasks/s; "
                f"outcomes {dict(self.outcomes)}, retried {self.retried} (retries by cause "
                f"{self.retries_by_cause}), longest wait in assigned {self.assigned_max_s:.1f} s; master RSS {self.rss_baseline_mb:.1f} MB at "
                f"{self.baseline_at:,} ended, {self.rss_end_mb:.1f} MB at the end "
                f"({self.rss_growth_pct:+.1f}%), max {self.rss_max_mb:.1f} MB [MB by tasks ended: "
                f"{by_tasks}]; tasks held max {self.held_max:,}, at the end {self.held_end:,}; "
                f"journal max {self.journal_max_mb:.1f} MB, end {self.journal_end_mb:.1f} MB; "
                f"checkpoints max {self.checkpoint_max_mb:.1f} MB, end {self.checkpoint_end_mb:.1f} MB "
                f"({self.checkpoints_seen} written); {steady_text}; "
                + ", ".join(f"{k} {v}" for k, v in self.failures().items()))


def _growth(before: float, after: float) -> float:
    return 100.0 * (after - before) / before if before else 0.0


def run_soak(tmp: Path, *, tasks: int, kill_every_s: float, keep_finished_s: float = 30.0,
             window: int = 500, baseline_at: int = 10_000, sample_every_s: float = 1.0,
             stall_s: float = 60.0, growth_limit_pct: float | None = None,
             keep_events: int = EVENT_RETENTION) -> Soak:
    """`tasks` tasks in all; a worker killed every `kill_every_s` seconds. `tmp` must be
    enterable by the workers' task user (a root worker runs tasks as nobody). The run gives
    up when no task has ended for `stall_s` seconds; what had not ended is reported. With
    `growth_limit_pct`, growth of the master's RSS, journal or checkpoints at or past it
    (Soak.growth: only what a run this long can judge) is a failure. `keep_events`: the
    master's --keep-events; the full run keeps 20,000, so its history is full (about 5,000
    tasks in) before the 10,000th task and RSS is judged from there, as the rule says."""
    result = Soak(tasks, kill_every_s, keep_finished_s, baseline_at=min(baseline_at, tasks // 2),
                  growth_limit_pct=growth_limit_pct, keep_events=keep_events)
    data_dir, audit_path = tmp / "data", tmp / "audit.jsonl"
    metrics_port = free_port()
    master = MasterProc(data_dir, "--lease", str(LEASE_S), "--heartbeat", "0.5", "--interval", "1",
                        "--keep-finished", str(keep_finished_s), "--keep-events", str(keep_events),
                        "--metrics-port", str(metrics_port),
                        "--audit-log", str(audit_path), "--audit-log-max-mb", str(AUDIT_LOG_MAX_MB))
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        workers = Workers(master.address, tmp / "work")
    except BaseException:
        master.stop()
        raise
    follower = AuditFollower(audit_path, master.proc.pid, result)
    sampler = Sampler(data_dir, master.proc.pid, metrics_url, follower, result, sample_every_s)
    killer = Killer(workers, kill_every_s, result)
    submitted: list[str] = []
    try:
        with Client(master.address, timeout_s=60) as cq:
            wait_until(lambda: sum(w["status"] == "available" for w in cq.workers()) == WORKERS,
                       60, "the workers registered")
            follower.start()
            sampler.start()
            started = time.monotonic()
            killer.start()
            _submit(cq, tasks, window, stall_s, follower, submitted, result)
            if not follower.wait_ended(len(submitted), stall_s):
                result.errors.append(f"stalled: {len(submitted) - follower.ended} tasks had not "
                                     f"ended {stall_s:g} s after the last one did")
            result.elapsed_s = time.monotonic() - started
            killer.stop()
            sampler.stop()
            sampler.sample()  # the sizes and the held tasks once every task had ended
            result.held_end = sampler.held
            _check_master(cq, metrics_url, result)
            # Then every finished task is forgotten, the next processor tick (1 s) after
            # keep_finished_s: what bounds the master's memory on a farm.
            with contextlib.suppress(AssertionError):
                wait_until(lambda: not sum(_gauges(metrics_url, "cloudq_tasks").values()),
                           keep_finished_s + 10, "every task forgotten", every=0.2)
            result.not_forgotten = int(sum(_gauges(metrics_url, "cloudq_tasks").values()))
    finally:
        killer.stop()
        sampler.stop()
        follower.stop()
        result.crashed += workers.stop_all()
        if master.proc.poll() is not None:
            result.crashed.append(f"master (exit status {master.proc.returncode})")
        master.stop()
    result.submitted = len(submitted)
    _check_audit(audit_path, submitted, result)
    return result


class Workers:
    """The four worker processes, each killed -9 and started again under its name."""

    def __init__(self, address: str, work_dir: Path) -> None:
        self.address, self.work_dir = address, work_dir
        self.names = [f"w{i}" for i in range(WORKERS)]
        self.procs = {name: self._start(name) for name in self.names}
        self.crashed: list[str] = []

    def _start(self, name: str) -> WorkerProc:
        return WorkerProc(self.address, name, self.work_dir, "--max-tasks", str(TASKS_PER_WORKER),
                          "--cpu-cores", str(TASKS_PER_WORKER))

    def kill_and_restart(self, name: str) -> None:
        victim = self.procs[name]
        if victim.proc.poll() is not None:  # it died before we came for it
            self.crashed.append(f"{name} (exit status {victim.proc.returncode})\n{victim.output()}")
        try:
            orphans = psutil.Process(victim.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            orphans = []
        victim.kill()
        for orphan in orphans:  # a machine that dies takes its tasks along
            with contextlib.suppress(psutil.NoSuchProcess):
                orphan.kill()
        self.procs[name] = self._start(name)

    def stop_all(self) -> list[str]:
        """Stops every worker; returns those that had exited on their own."""
        for name, proc in self.procs.items():
            if proc.proc.poll() is not None:
                self.crashed.append(f"{name} (exit status {proc.proc.returncode})\n{proc.output()}")
            with contextlib.suppress(Exception):
                proc.stop(timeout=10)
        return self.crashed


class Killer:
    """Kills one worker every `every_s` seconds, round robin: a real interval, not an event."""

    def __init__(self, workers: Workers, every_s: float, result: Soak) -> None:
        self.workers, self.every_s, self.result = workers, every_s, result
        self._stop = threading.Event()
        self._lock = threading.Lock()  # a kill is finished (its worker restarted) before stop returns
        self._thread = threading.Thread(target=self._run, name="soak-killer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        turn = 0
        while not self._stop.wait(self.every_s):
            with self._lock:
                if self._stop.is_set():
                    return
                try:
                    self.workers.kill_and_restart(self.workers.names[turn % WORKERS])
                except Exception as exc:  # noqa: BLE001 - reported, and the kills stop
                    self.result.errors.append(f"kill {self.result.kills + 1} failed: {exc!r}")
                    return
                self.result.kills += 1
                turn += 1

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            pass


def _submit(cq: Client, tasks: int, window: int, stall_s: float, follower: AuditFollower,
            submitted: list[str], result: Soak) -> None:
    """Batches of `true` until `tasks` were submitted, keeping at most `window` not yet ended."""
    while len(submitted) < tasks:
        count = min(BATCH, tasks - len(submitted))
        if not follower.wait_ended(len(submitted) + count - window, stall_s):
            result.errors.append(f"stalled: no task ended for {stall_s:g} s with "
                                 f"{len(submitted) - follower.ended} not yet ended")
            return
        batch = [{"kind": "exec", "name": f"soak-{len(submitted) + i}", "spec": {"argv": ["true"]},
                  "max_retries": MAX_RETRIES, "retry_backoff_s": 0} for i in range(count)]
        try:
            handles = cq.submit_many(batch)
        except Exception as exc:  # noqa: BLE001 - the master is never killed: any refusal is a finding
            result.errors.append(f"submit refused after {len(submitted)} tasks: {exc!r}")
            return
        submitted.extend(handle.id for handle in handles)


class _Loop:
    """A daemon thread running `_run` until stop()."""

    name = "soak-loop"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)


class AuditFollower(_Loop):
    """Follows the audit log as the master writes it, counting tasks' first terminal moves:
    the submitter's window and the RSS samples at given counts of ended tasks. The proof at
    the end reads the log again from its start (_check_audit)."""

    name = "soak-audit"

    def __init__(self, path: Path, master_pid: int, result: Soak) -> None:
        self.path, self.result = path, result
        self.master = psutil.Process(master_pid)
        self.ended = 0
        self.events = 0
        self._seen: set[str] = set()
        self._changed = threading.Condition()
        step = max(1, result.tasks // 10)
        self._rss_at = sorted({result.baseline_at, result.tasks, *range(step, result.tasks, step)})
        super().__init__()

    def wait_ended(self, count: int, stall_s: float) -> bool:
        """Waits until `count` tasks have ended; False when none ended for `stall_s` seconds."""
        with self._changed:
            while self.ended < count:
                before = self.ended
                self._changed.wait(stall_s)
                if self.ended == before:
                    return False
        return True

    def _run(self) -> None:
        handle = self.path.open("rb")
        try:
            while not self._stop.is_set():
                line = handle.readline()
                if line.endswith(b"\n"):
                    self._read(line)
                    continue
                handle.seek(-len(line), os.SEEK_CUR)  # a line the master is still writing
                with contextlib.suppress(FileNotFoundError):
                    if os.stat(self.path).st_ino != os.fstat(handle.fileno()).st_ino:
                        handle.close()  # rotated, and the old part was read to its end
                        handle = self.path.open("rb")
                        continue
                self._stop.wait(0.05)  # a file gives no event to wait on
        finally:
            handle.close()

    def _read(self, line: bytes) -> None:
        event = orjson.loads(line)
        self.events += 1
        if self.events == self.result.keep_events:
            self.result.history_full_at = self.ended
            self.result.rss_history_full_mb = self.master.memory_info().rss / 2**20
        task = event.get("task")
        if not task or event["dst"] not in FINAL or event["src"] == event["dst"] or task in self._seen:
            return
        self._seen.add(task)
        with self._changed:
            self.ended += 1
            self._changed.notify_all()
        while self._rss_at and self.ended >= self._rss_at[0]:
            self.result.rss_mb[self._rss_at.pop(0)] = self.master.memory_info().rss / 2**20


class Sampler(_Loop):
    """Every `every_s`: the master's RSS, the tasks it holds, the journal's and checkpoints' sizes."""

    name = "soak-sampler"

    def __init__(self, data_dir: Path, master_pid: int, metrics_url: str, follower: AuditFollower,
                 result: Soak, every_s: float) -> None:
        self.data_dir, self.metrics_url, self.follower = data_dir, metrics_url, follower
        self.result, self.every_s = result, every_s
        self.master = psutil.Process(master_pid)
        self.held = 0
        self._checkpoint_mtime = 0.0
        super().__init__()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.sample()
            except Exception as exc:  # noqa: BLE001 - reported, and the sampling stops
                self.result.errors.append(f"sampling failed: {exc!r}")
                return

    def sample(self) -> None:
        result = self.result
        rss = self.master.memory_info().rss / 2**20
        result.rss_max_mb = max(result.rss_max_mb, rss)
        self.held = int(sum(_gauges(self.metrics_url, "cloudq_tasks").values()))
        result.held_max = max(result.held_max, self.held)
        journal = sum(_size(segment.path) for segment in list_segments(self.data_dir)) / 2**20
        # The two whole checkpoints; not the .tmp of one being written, which a sample
        # finds or misses by chance.
        current, old, _ = checkpoint.paths(self.data_dir)
        checkpoints = (_size(current) + _size(old)) / 2**20
        result.journal_max_mb, result.journal_end_mb = max(result.journal_max_mb, journal), journal
        result.checkpoint_max_mb = max(result.checkpoint_max_mb, checkpoints)
        result.checkpoint_end_mb = checkpoints
        with contextlib.suppress(FileNotFoundError):
            mtime = current.stat().st_mtime
            if mtime != self._checkpoint_mtime:
                self._checkpoint_mtime = mtime
                result.checkpoints_seen += 1
        result.samples.append((self.follower.ended, rss, self.held, journal, checkpoints,
                               result.checkpoints_seen))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # deleted between listing and stat: a checkpoint covered it
        return 0


def _gauges(url: str, name: str) -> dict[str, float]:
    """One metric's samples from the master's endpoint, by their first label's value."""
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    for family in text_string_to_metric_families(text):
        if family.name == name:
            return {next(iter(s.labels.values()), ""): s.value for s in family.samples
                    if s.name in (name, f"{name}_total")}
    return {}


def _check_master(cq: Client, metrics_url: str, result: Soak) -> None:
    """Nothing left unfinished, every worker back, and what the master counted as retries."""
    tasks = _gauges(metrics_url, "cloudq_tasks")
    result.still_active = {state: int(tasks.get(state, 0)) for state in ACTIVE if tasks.get(state)}
    result.retries_by_cause = {cause: int(n) for cause, n in
                               _gauges(metrics_url, "cloudq_task_retries").items() if n}
    workers = {w["name"]: w["status"] for w in cq.workers()}
    result.workers_missing = [f"w{i}: {workers.get(f'w{i}', 'unknown')}" for i in range(WORKERS)
                              if workers.get(f"w{i}") not in ("available", "busy")]


def _check_audit(path: Path, submitted: list[str], result: Soak) -> None:
    """Every submitted id has exactly one terminal move, and no assignment waited past
    START_LIMIT_S to be started or taken back, read from the whole audit log, its rotated
    parts (FILE.N, the oldest, to FILE.1) first."""
    ends: dict[str, list[dict[str, Any]]] = {task_id: [] for task_id in submitted}
    assigned_at: dict[str, float] = {}
    parts = sorted((p for p in path.parent.glob(path.name + ".*") if p.suffix[1:].isdigit()),
                   key=lambda p: -int(p.suffix[1:]))
    for part in [*parts, path]:
        with part.open("rb") as lines:
            for line in lines:
                event = orjson.loads(line)
                task_id = event.get("task")
                found = ends.get(task_id)
                if found is None or event["src"] == event["dst"]:
                    continue  # a worker's event, or a note
                if event["dst"] in FINAL:
                    found.append(event)
                if event["src"] == "assigned" and task_id in assigned_at:
                    waited = event["time"] - assigned_at.pop(task_id)
                    result.assigned_max_s = max(result.assigned_max_s, waited)
                    if waited > START_LIMIT_S:
                        result.slow_starts.append(f"{task_id} attempt {event['attempt']} on "
                                                  f"{event['worker']}: {waited:.1f} s, then "
                                                  f"{event['dst']} ({event['reason']})")
                if event["dst"] == "assigned":
                    assigned_at[task_id] = event["time"]
    for task_id, moves in ends.items():
        if not moves:
            result.not_final.append(task_id)
            continue
        if len(moves) > 1:
            result.ended_twice.append(task_id)
        result.outcomes[moves[-1]["dst"]] += 1
        if moves[-1]["dst"] != "completed":
            result.not_completed.append(f"{task_id}: {moves[-1]['dst']} ({moves[-1]['reason']})")
        if moves[-1]["attempt"] > 1:
            result.retried += 1
