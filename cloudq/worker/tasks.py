"""The worker's task side: starting what the master assigns, running it, cancelling it, and
keeping each outcome until the master has acknowledged it.

An outcome stays ours (`_unreported`) until a fetch or report call that carried it returns:
registering again lists those tasks too, so after a lost connection the master re-adopts them
and takes the outcome instead of running the task a second time. A failure that is this
worker's doing (no task directory, a runner that crashed) carries fault `worker`, so the
master's quarantine blames the machine, not the task.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import shutil
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudq import defaults
from cloudq.worker.options import WorkerOptions
from cloudq.worker.runners import Fault, RunContext, RunResult, confine, is_instant, tail_log
from cloudq.worker.runners.base import fault_of, one_line
from cloudq.worker.runners.confine import TaskUser

log = logging.getLogger("cloudq.worker")

MIN_CONTAINER_MEM = 64 * 1024**2  # a smaller default limit would only fail containers
MAX_MEASURED_ENTRIES = 10_000  # a task directory is measured up to this many entries


@dataclass
class Running:
    task_id: str
    attempt: int
    cancel: threading.Event
    work_dir: Path
    kill: threading.Event = field(default_factory=threading.Event)  # cancel without a grace
    future: Future[None] | None = None
    user: TaskUser | None = None  # who its processes run as; None: the worker itself
    slot: int | None = None  # with a uid per slot: the slot it holds
    kind: str = ""
    progress: dict[str, Any] | None = None  # the runner's last progress report


@dataclass
class TaskCounts:
    """What this worker's tasks came to, for its metrics endpoint: counts that only grow,
    changed and read under the agent's lock."""

    finished: Counter[tuple[str, str]] = field(default_factory=Counter)  # (kind, status)
    runner_errors: Counter[str] = field(default_factory=Counter)  # the worker's faults, by kind
    bytes_written: int = 0  # of what tasks left in their directories, measured at their end

    def add(self, kind: str, result: dict[str, Any]) -> None:
        self.finished[kind, str(result.get("status"))] += 1
        if result.get("fault") == str(Fault.WORKER):
            self.runner_errors[kind] += 1


class TaskRunner:
    """Runs the master's assignments: instant ones on the calling thread, the rest on a pool.

    A part of WorkerAgent (agent.py), not an object of its own: the loops read `running`,
    `outbox` and `_at_hand` directly, and registration (connection.py) lists `running` and
    `_unreported` under the agent's one lock.
    """

    # Set by WorkerAgent; read here.
    options: WorkerOptions
    name: str
    _lock: threading.Lock
    container_mem_default: int
    # The agent's runner, looked up per task (agent.py says why).
    _run_task: Callable[[RunContext], RunResult]

    def _init_tasks(self) -> None:
        """Checks the task user, makes the work directory and readies the thread pool."""
        options = self.options
        # First, so a user that does not exist stops the worker before anything else happens.
        self.task_user = confine.task_user(options.exec_user)
        self._slots_used: set[int] = set()
        self.running: dict[str, Running] = {}
        self.outbox: queue.Queue[dict[str, Any]] = queue.Queue()
        self.counts = TaskCounts()
        # Outcomes not yet acknowledged by the master, by task: still ours when registering
        # again, so the master re-adopts those tasks and takes the outcome instead of
        # retrying a task that has already run.
        self._unreported: dict[str, int] = {}
        self._at_hand: list[dict[str, Any]] = []  # outcomes of instant tasks, for the next fetch
        # Threads are reused: a task costs a queue hand-off, not a thread start. Headroom beyond
        # max_tasks covers re-adopted tasks still finishing after a reconnect.
        self._pool = ThreadPoolExecutor(max_workers=options.max_tasks * 2, thread_name_prefix="task")
        options.work_dir.mkdir(parents=True, exist_ok=True)
        if self.task_user is not None:
            if problem := confine.unreachable(options.work_dir, self.task_user):
                log.warning("%s", problem)
            confine.become_subreaper()  # before any task: its orphans must come to us
            log.info("tasks run as %s%s", self.task_user.name,
                     "" if options.exec_uid_base is None
                     else f", uid {options.exec_uid_base} + slot each")  # fmt: skip
        else:
            log.info("not running as root: tasks run as this worker's own user")

    def _start(self, assignment: dict[str, Any]) -> None:
        task_id, attempt = assignment["id"], assignment["attempt"]
        work_dir = self.options.work_dir / f"{task_id}.{attempt}"
        entry = Running(task_id, attempt, threading.Event(), work_dir, kind=str(assignment["kind"]))
        if is_instant(assignment["kind"], assignment["spec"]):
            # Finishes at once and touches no disk: a thread hand-off would cost more than the
            # task, and a "running" report would be overtaken by the outcome anyway.
            outcome = self._run(assignment, entry, time.time())
            with self._lock:
                self._unreported[task_id] = attempt
            self._at_hand.append(outcome)
            return
        full = self._work_dir_full()
        if full:  # nothing would get far: fail it now, saying why (it is retried elsewhere)
            self._fail_at_once(entry, full, Fault.SPACE)
            return
        try:
            work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as err:  # a full or read-only disk: fail the task, saying why
            self._fail_at_once(entry, f"task directory {work_dir} cannot be created: {err.strerror}",
                               fault_of(err) if fault_of(err) is Fault.SPACE else Fault.WORKER)
            return
        with self._lock:
            self.running[task_id] = entry
            self._take_slot(entry)
        entry.future = self._pool.submit(self._execute, assignment, entry)

    def _take_slot(self, entry: Running) -> None:
        """The user the task runs as; with a uid per slot, the lowest free slot's (caller holds
        the lock). A slot is free again only once its task's last process has ended."""
        if self.task_user is None:
            return
        if self.options.exec_uid_base is not None:
            entry.slot = min(set(range(len(self._slots_used) + 1)) - self._slots_used)
            self._slots_used.add(entry.slot)
        entry.user = self.task_user.for_slot(self.options.exec_uid_base, entry.slot or 0)

    def _work_dir_full(self) -> str | None:
        """Why no task can run here now (the work directory's disk is full), or None."""
        try:
            free = shutil.disk_usage(self.options.work_dir).free
        except OSError:
            return None  # not measurable: the task's own set-up will say what is wrong
        if free >= defaults.WORK_DIR_MIN_FREE_MB << 20:
            return None
        return (f"no space left in the worker's work directory {self.options.work_dir} "
                f"({free / 2**20:.1f} MB free): free space there (this does not count against "
                "the worker)")

    def _fail_at_once(self, entry: Running, error: str, fault: Fault = Fault.WORKER) -> None:
        log.error("task %s not started: %s", entry.task_id, error)
        result = failed_result(time.time(), error, fault)
        result["started_at"] = time.time()
        with self._lock:
            self._unreported[entry.task_id] = entry.attempt
            self.counts.add(entry.kind, result)
        self.outbox.put({"task": entry.task_id, "attempt": entry.attempt, "state": "failed",
                         "result": result, "started_at": result["started_at"]})

    def _execute(self, assignment: dict[str, Any], entry: Running) -> None:
        """A task thread: announce the start, run, clean up, report the outcome."""
        started = time.time()
        self.outbox.put({"task": entry.task_id, "attempt": entry.attempt, "state": "running",
                         "started_at": started})
        outcome = self._run(assignment, entry, started)
        written = directory_bytes(entry.work_dir)
        with self._lock:
            self.running.pop(entry.task_id, None)
            self._unreported[entry.task_id] = entry.attempt
            if entry.slot is not None:
                self._slots_used.discard(entry.slot)
            self.counts.bytes_written += written
        if keeps_task_dir(self.options, assignment):
            output = outcome["result"].setdefault("output", {})
            if isinstance(output, dict):
                output["task_dir"] = str(entry.work_dir)  # where to look, on this worker
        elif entry.work_dir.exists():
            shutil.rmtree(entry.work_dir, ignore_errors=True)
        self.outbox.put(outcome)

    def _run(self, assignment: dict[str, Any], entry: Running, started: float) -> dict[str, Any]:
        """Runs the task to its end; returns its outcome report."""

        def progress(update: dict[str, Any]) -> None:
            entry.progress = update
            self.outbox.put({"task": entry.task_id, "attempt": entry.attempt, "state": "running",
                             "progress": update, "log_tail": tail_log(entry.work_dir, 4096)})

        ctx = RunContext(
            task_id=entry.task_id, attempt=entry.attempt, kind=assignment["kind"],
            spec=assignment["spec"], resources=assignment["resources"], work_dir=entry.work_dir,
            timeout_s=assignment.get("timeout_s"), cancel=entry.cancel, kill=entry.kill,
            on_progress=progress,
            gpu_indices=list(assignment.get("gpu_indices") or []),
            input_roots=list(self.options.input_roots), roots=dict(self.options.roots),
            allow_pull=self.options.allow_pull,
            worker_name=self.name, container_mem_default=self.container_mem_default,
            user=entry.user,
        )
        try:
            result = self._run_task(ctx).to_dict()
        except Exception as err:  # noqa: BLE001 - a runner bug fails the task, not the worker
            log.exception("runner crashed on %s", entry.task_id)
            result = failed_result(started, f"runner crashed: {type(err).__name__}: {err}")
        result["started_at"] = started
        if result["status"] == "failed" and result.get("fault") != str(Fault.SPACE):
            full = self._work_dir_full()
            if full:  # a task that could not write its output fails with an unhelpful code
                result["error"] = one_line(f"{result.get('error') or 'failed'}; {full}")
                result["fault"] = str(Fault.SPACE)
        with self._lock:
            self.counts.add(entry.kind, result)
        return {"task": entry.task_id, "attempt": entry.attempt, "state": result["status"],
                "result": result, "started_at": started}

    def _acknowledged(self, reports: list[dict[str, Any]]) -> None:
        """The master has these reports (taken or refused): their outcomes are no longer ours."""
        with self._lock:
            for report in reports:
                if "result" in report and self._unreported.get(report["task"]) == report["attempt"]:
                    del self._unreported[report["task"]]

    def _cancel(self, task_id: str, attempt: int | None) -> None:
        with self._lock:
            entry = self.running.get(task_id)
        if entry is not None and (attempt is None or attempt == entry.attempt):
            entry.cancel.set()

    def _cancel_all(self) -> list[Running]:
        with self._lock:
            entries = list(self.running.values())
        for entry in entries:
            entry.cancel.set()
        return entries

    def _end_all(self, kill: bool) -> list[Running]:
        """Cancels every running task, or with `kill` has it killed at once (no SIGTERM grace);
        returns those not told so before."""
        with self._lock:
            entries = list(self.running.values())
        told = []
        for entry in entries:
            event = entry.kill if kill else entry.cancel
            if not event.is_set():
                event.set()
                entry.cancel.set()  # the runners watch cancel; kill says how
                told.append(entry)
        return told

    def _stop_tasks(self) -> None:
        """On shutdown: running tasks are cancelled and reported; the master retries them."""
        entries = self._cancel_all()
        for entry in entries:
            if entry.future is not None:
                with contextlib.suppress(Exception):
                    entry.future.result(timeout=15)
        self._pool.shutdown(wait=False)


def keeps_task_dir(options: WorkerOptions, assignment: dict[str, Any]) -> bool:
    """The task directory stays after the task: the worker keeps all (keep_task_dirs), or the
    task asked for it (--keep-task-dir, for debugging)."""
    spec = assignment.get("spec")
    return options.keep_task_dirs or (isinstance(spec, dict) and spec.get("keep_task_dir") is True)


def container_mem_default(options: WorkerOptions, offered_gb: float) -> int:
    """Bytes of memory a container gets when its task asked for none: the flag, else an equal
    share of the memory this worker offers among the tasks it may run at once."""
    gb = options.container_mem_default_gb or float(offered_gb) / max(options.max_tasks, 1)
    return max(int(gb * 1024**3), MIN_CONTAINER_MEM)


def directory_bytes(path: Path, limit: int = MAX_MEASURED_ENTRIES) -> int:
    """Bytes of the regular files under `path`, never following a link (the task owns the
    directory and may have put anything there), over at most `limit` entries."""
    total, seen, pending = 0, 0, [path]
    while pending and seen < limit:
        try:
            with os.scandir(pending.pop()) as entries:
                for item in entries:
                    seen += 1
                    if seen > limit:
                        break
                    try:
                        info = item.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if stat.S_ISDIR(info.st_mode):
                        pending.append(Path(item.path))
                    elif stat.S_ISREG(info.st_mode):
                        total += info.st_size
        except OSError:
            continue
    return total


def failed_result(started: float, error: str, fault: Fault = Fault.WORKER) -> dict[str, Any]:
    """The result of a task this worker failed to run: by default the worker's fault, not the
    task's."""
    return {"status": "failed", "exit_code": None, "duration_s": time.time() - started,
            "error": one_line(error), "output": {}, "log_tail": "", "fault": str(fault)}
