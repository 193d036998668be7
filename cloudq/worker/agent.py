"""The worker process: registers with the master, fetches instructions, runs tasks, reports.

Two connections, so a long-poll never delays a result:
  - the fetch loop blocks in `fetch` until the master has an assignment or a cancel for us;
    tasks that finish at once (no-ops) run right there, and their outcomes go with the next
    `fetch`;
  - the report loop sends progress, other outcomes and the heartbeat sample, batched.
When the master goes away the tasks keep running; the agent reconnects, registers again with
what it still runs and what it has outcomes for that the master has not acknowledged (the
master re-adopts those), and sends the outcomes it kept.
Every error a master call ends with is transient to the worker (backoff.py): an error answer
(a full store, a refusal) is retried on the same connection after a bounded, doubling wait; a
lost connection or a stale session means registering again. The worker never exits over it.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import shutil
import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudq import defaults
from cloudq.errors import NotFoundError
from cloudq.rpc.client import MasterClient
from cloudq.worker import probes
from cloudq.worker.backoff import Backoff
from cloudq.worker.runners import (
    Fault,
    RunContext,
    capability_set,
    confine,
    detect_capabilities,
    is_instant,
    run_task,
    tail_log,
)
from cloudq.worker.runners.base import one_line
from cloudq.worker.runners.confine import TaskUser

log = logging.getLogger("cloudq.worker")

LEASE_SAFETY = 0.8  # a cut-off worker stops its tasks at this fraction of the lease
MIN_CONTAINER_MEM = 64 * 1024**2  # a smaller default limit would only fail containers
# Errors after which the worker registers again: the connection is gone, or the master no
# longer knows our session. Any other error is answered by waiting and asking again.
LOST_MASTER = (ConnectionError, EOFError, OSError, NotFoundError)


@dataclass
class WorkerOptions:
    master: str
    name: str = field(default_factory=socket.gethostname)
    max_tasks: int = defaults.MAX_TASKS
    labels: dict[str, str] = field(default_factory=dict)
    cpu_cores: float | None = None  # default: what the machine has
    mem_gb: float | None = None
    work_dir: Path = Path("/tmp/cloudq-work")
    tls_dir: Path | None = None
    allow_pull: bool = False
    input_roots: tuple[Path, ...] = ()
    keep_task_dirs: bool = False
    container_mem_default_gb: float | None = None  # default: offered memory / max_tasks
    exec_user: str = "nobody"  # who a root worker runs exec and ffmpeg tasks as
    exec_uid_base: int | None = None  # given: task slot N runs as uid exec_uid_base + N


@dataclass
class Running:
    task_id: str
    attempt: int
    cancel: threading.Event
    work_dir: Path
    future: Future[None] | None = None
    user: TaskUser | None = None  # who its processes run as; None: the worker itself
    slot: int | None = None  # with a uid per slot: the slot it holds


class WorkerAgent:
    def __init__(self, options: WorkerOptions) -> None:
        self.options = options
        # First, so a user that does not exist stops the worker before anything else happens.
        self.task_user = confine.task_user(options.exec_user)
        self._slots_used: set[int] = set()
        self.name = options.name
        self.running: dict[str, Running] = {}
        self.outbox: queue.Queue[dict[str, Any]] = queue.Queue()
        # Outcomes not yet acknowledged by the master, by task: still ours when registering
        # again, so the master re-adopts those tasks and takes the outcome instead of
        # retrying a task that has already run.
        self._unreported: dict[str, int] = {}
        self._at_hand: list[dict[str, Any]] = []  # outcomes of instant tasks, for the next fetch
        self.stopping = threading.Event()
        self._fetching = threading.Event()  # set while the fetch loop may still hand outcomes over
        self._lock = threading.Lock()
        self._reconnecting = threading.Lock()
        self._session = 0
        self._generation = 0  # bumped on every (re)connection
        self._fetch_conn: MasterClient | None = None
        self._report_conn: MasterClient | None = None
        self._heartbeat_s = defaults.HEARTBEAT_S
        self._lease_s = defaults.LEASE_S
        self._last_contact = time.monotonic()
        self._report_backoff = Backoff("report", log)
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
        self.facts = self._facts()
        self.container_mem_default = container_mem_default(options, self.facts["mem_gb"])

    # ------------------------------------------------------------------ registration
    def _facts(self) -> dict[str, Any]:
        static = probes.static_facts(self.options.work_dir)
        caps = detect_capabilities()
        gpus = static.get("gpus") or []
        return {
            **static,
            "name": self.name,
            "cpu_cores": self.options.cpu_cores if self.options.cpu_cores is not None else static["cpu_cores"],
            "mem_gb": self.options.mem_gb if self.options.mem_gb is not None else static["mem_gb"],
            "storage_gb": round(shutil.disk_usage(self.options.work_dir).free / 2**30, 2),
            "max_tasks": self.options.max_tasks,
            "labels": self.options.labels,
            "capabilities": sorted(capability_set(caps, len(gpus))),
            "tools": caps,
        }

    def connect(self) -> None:
        """(Re)connects both channels and registers, retrying whatever goes wrong (no master, a
        refusal, a full store, a malformed answer) until the master takes us."""
        backoff = Backoff(f"registering with {self.options.master}", log)
        while not self.stopping.is_set():
            try:
                self._connect_once()
                backoff.succeeded()
                return
            except Exception as err:  # noqa: BLE001 - nothing the master does may end the worker
                hurry = self.running or self._unreported  # back before the lease ends: re-adopt
                self.stopping.wait(backoff.failed(err, max_s=1.0 if hurry else None))

    def _connect_once(self) -> None:
        self._close_connections()
        identity = self.name
        fetch = report = None
        try:
            fetch = MasterClient(self.options.master, self.options.tls_dir, identity)
            report = MasterClient(self.options.master, self.options.tls_dir, identity)
            with self._lock:
                running = [[r.task_id, r.attempt] for r in self.running.values()]
                running += [[task_id, attempt] for task_id, attempt in self._unreported.items()]
            reply = fetch.call("register", {"facts": self.facts, "running": running})
            session = int(reply["session"])
            heartbeat_s = float(reply.get("heartbeat_s") or defaults.HEARTBEAT_S)
            lease_s = float(reply.get("lease_s") or defaults.LEASE_S)
        except BaseException:
            for conn in (fetch, report):  # a failed attempt must not leak its sockets
                if conn is not None:
                    conn.close()
            raise
        with self._lock:
            self._fetch_conn, self._report_conn = fetch, report
            self._session = session
            self._heartbeat_s = heartbeat_s
            self._lease_s = lease_s
            self._last_contact = time.monotonic()
            self._generation += 1
        for task_id in reply.get("stop") or []:
            self._cancel(task_id, None)
        log.info("registered with %s as %s (session %d)", self.options.master, self.name, self._session)

    def close(self) -> None:
        self.stopping.set()
        self._close_connections()

    def _close_connections(self) -> None:
        for conn in (self._fetch_conn, self._report_conn):
            if conn is not None:
                conn.close()

    # ------------------------------------------------------------------ loops
    def run(self) -> None:
        self._fetching.set()
        self.connect()
        reporter = threading.Thread(target=self._report_loop, name="reporter", daemon=True)
        reporter.start()
        threading.Thread(target=self._watchdog, name="watchdog", daemon=True).start()
        backoff = Backoff("fetch", log)
        while not self.stopping.is_set():
            generation = self._generation
            at_hand, self._at_hand = self._at_hand, []
            try:
                # Outcomes of the instant tasks this thread ran ride along: one call frees
                # their room and brings the next assignments.
                instructions = self._fetch_conn.call(  # type: ignore[union-attr]
                    "fetch", {"name": self.name, "session": self._session,
                              "wait_s": defaults.POLL_WAIT_S, "reports": at_hand})
            except LOST_MASTER as err:
                self._at_hand = at_hand + self._at_hand  # sent again once registered again
                self._lost_master(generation, err)
                continue
            except Exception as err:  # noqa: BLE001 - a master-side error: wait, ask again
                self._at_hand = at_hand + self._at_hand
                self.stopping.wait(backoff.failed(err))
                continue
            backoff.succeeded()
            self._last_contact = time.monotonic()
            self._acknowledged(at_hand)
            for instruction in instructions:
                self._obey(instruction)
        for outcome in self._at_hand:  # the reporter sends what is left before it stops
            self.outbox.put(outcome)
        self._fetching.clear()
        self._stop_tasks()
        reporter.join(timeout=10)  # it leaves once the last outcome is sent

    def _watchdog(self) -> None:
        """Kills running tasks once the master has been unreachable for most of the lease.

        The master requeues a silent worker's tasks when its lease runs out; stopping ours a
        little before that keeps two attempts of one task from ever running at the same time.
        """
        while not self.stopping.wait(0.2):
            silent = time.monotonic() - self._last_contact
            if silent > LEASE_SAFETY * self._lease_s and self.running:
                log.warning("master unreachable for %.1fs of a %.1fs lease: stopping %d task(s)",
                            silent, self._lease_s, len(self.running))
                self._cancel_all()

    def _lost_master(self, generation: int, err: Exception) -> None:
        with self._reconnecting:  # both loops notice a lost master; one reconnects
            if generation != self._generation:
                return  # the other loop already reconnected
            log.warning("lost the master (%s); tasks keep running, reconnecting", err)
            self.connect()

    def _obey(self, instruction: dict[str, Any]) -> None:
        try:
            if "assign" in instruction:
                self._start(instruction["assign"])
            elif "cancel" in instruction:
                self._cancel(instruction["cancel"], instruction.get("attempt"))
        except Exception:  # noqa: BLE001 - one malformed instruction must not end the worker
            log.exception("cannot follow the master's instruction %.200r", instruction)

    def _report_loop(self) -> None:
        next_beat = 0.0
        while self._fetching.is_set() or self.running or not self.outbox.empty():
            batch = self._drain(timeout=max(next_beat - time.monotonic(), 0.0))
            sample = None
            if time.monotonic() >= next_beat:
                sample = probes.live_sample(self.options.work_dir)
                next_beat = time.monotonic() + self._heartbeat_s
                batch = self._log_tails(batch)
            if not batch and sample is None:
                continue
            self._send(batch, sample)

    def _send(self, batch: list[dict[str, Any]], sample: dict[str, Any] | None) -> None:
        """Sends until the master takes the batch; what was queued meanwhile joins it."""
        while True:
            generation = self._generation
            try:
                reply = self._report_conn.call(  # type: ignore[union-attr]
                    "report", {"name": self.name, "session": self._session, "reports": batch,
                               "sample": sample})
            except Exception as err:  # noqa: BLE001 - every master error is transient to us
                if self.stopping.is_set():
                    return
                if isinstance(err, LOST_MASTER):
                    self._lost_master(generation, err)
                else:
                    self.stopping.wait(self._report_backoff.failed(err))
                # Newer progress replaces older in the retried batch; outcomes always stay.
                batch = latest_per_task(batch + self._drain(timeout=0))
                continue
            self._report_backoff.succeeded()
            self._last_contact = time.monotonic()
            self._acknowledged(batch)
            for task_id in reply.get("refused") or []:
                self._cancel(task_id, None)  # the master gave it to someone else: stop it here
            return

    def _acknowledged(self, reports: list[dict[str, Any]]) -> None:
        """The master has these reports (taken or refused): their outcomes are no longer ours."""
        with self._lock:
            for report in reports:
                if "result" in report and self._unreported.get(report["task"]) == report["attempt"]:
                    del self._unreported[report["task"]]

    def _log_tails(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """With each heartbeat, the output tail of every running task, so `logs ID` is live."""
        reported = {item["task"] for item in batch}
        with self._lock:
            entries = [e for e in self.running.values() if e.task_id not in reported]
        for entry in entries:
            if entry.work_dir.exists():
                batch.append({"task": entry.task_id, "attempt": entry.attempt, "state": "running",
                              "log_tail": tail_log(entry.work_dir, 4096)})
        return batch

    def _drain(self, timeout: float) -> list[dict[str, Any]]:
        """Everything waiting in the outbox; only the newest report per task is kept, except
        that an outcome always wins over progress."""
        try:
            first = self.outbox.get(timeout=timeout) if timeout > 0 else self.outbox.get_nowait()
        except queue.Empty:
            return []
        items = [first]
        with contextlib.suppress(queue.Empty):
            while len(items) < 1000:
                items.append(self.outbox.get_nowait())
        return latest_per_task(items)

    # ------------------------------------------------------------------ tasks
    def _start(self, assignment: dict[str, Any]) -> None:
        task_id, attempt = assignment["id"], assignment["attempt"]
        work_dir = self.options.work_dir / f"{task_id}.{attempt}"
        entry = Running(task_id, attempt, threading.Event(), work_dir)
        if is_instant(assignment["kind"], assignment["spec"]):
            # Finishes at once and touches no disk: a thread hand-off would cost more than the
            # task, and a "running" report would be overtaken by the outcome anyway.
            outcome = self._run(assignment, entry, time.time())
            with self._lock:
                self._unreported[task_id] = attempt
            self._at_hand.append(outcome)
            return
        try:
            work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as err:  # a full or read-only disk: fail the task, blame the worker
            self._fail_at_once(entry, f"task directory {work_dir} cannot be created: {err.strerror}")
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

    def _fail_at_once(self, entry: Running, error: str) -> None:
        log.error("task %s not started: %s", entry.task_id, error)
        result = failed_result(time.time(), error)
        result["started_at"] = time.time()
        with self._lock:
            self._unreported[entry.task_id] = entry.attempt
        self.outbox.put({"task": entry.task_id, "attempt": entry.attempt, "state": "failed",
                         "result": result, "started_at": result["started_at"]})

    def _execute(self, assignment: dict[str, Any], entry: Running) -> None:
        """A task thread: announce the start, run, clean up, report the outcome."""
        started = time.time()
        self.outbox.put({"task": entry.task_id, "attempt": entry.attempt, "state": "running",
                         "started_at": started})
        outcome = self._run(assignment, entry, started)
        with self._lock:
            self.running.pop(entry.task_id, None)
            self._unreported[entry.task_id] = entry.attempt
            if entry.slot is not None:
                self._slots_used.discard(entry.slot)
        if not self.options.keep_task_dirs and entry.work_dir.exists():
            shutil.rmtree(entry.work_dir, ignore_errors=True)
        self.outbox.put(outcome)

    def _run(self, assignment: dict[str, Any], entry: Running, started: float) -> dict[str, Any]:
        """Runs the task to its end; returns its outcome report."""

        def progress(update: dict[str, Any]) -> None:
            self.outbox.put({"task": entry.task_id, "attempt": entry.attempt, "state": "running",
                             "progress": update, "log_tail": tail_log(entry.work_dir, 4096)})

        ctx = RunContext(
            task_id=entry.task_id, attempt=entry.attempt, kind=assignment["kind"],
            spec=assignment["spec"], resources=assignment["resources"], work_dir=entry.work_dir,
            timeout_s=assignment.get("timeout_s"), cancel=entry.cancel, on_progress=progress,
            gpu_indices=list(assignment.get("gpu_indices") or []),
            input_roots=list(self.options.input_roots), allow_pull=self.options.allow_pull,
            worker_name=self.name, container_mem_default=self.container_mem_default,
            user=entry.user,
        )
        try:
            result = run_task(ctx).to_dict()
        except Exception as err:  # noqa: BLE001 - a runner bug fails the task, not the worker
            log.exception("runner crashed on %s", entry.task_id)
            result = failed_result(started, f"runner crashed: {type(err).__name__}: {err}")
        result["started_at"] = started
        return {"task": entry.task_id, "attempt": entry.attempt, "state": result["status"],
                "result": result, "started_at": started}

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

    def _stop_tasks(self) -> None:
        """On shutdown: running tasks are cancelled and reported; the master retries them."""
        entries = self._cancel_all()
        for entry in entries:
            if entry.future is not None:
                with contextlib.suppress(Exception):
                    entry.future.result(timeout=15)
        self._pool.shutdown(wait=False)


def run_worker(options: WorkerOptions) -> int:
    import signal

    agent = WorkerAgent(options)
    signal.signal(signal.SIGTERM, lambda *_: agent.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: agent.stopping.set())
    try:
        agent.run()
    finally:
        agent.close()
    return 0


def container_mem_default(options: WorkerOptions, offered_gb: float) -> int:
    """Bytes of memory a container gets when its task asked for none: the flag, else an equal
    share of the memory this worker offers among the tasks it may run at once."""
    gb = options.container_mem_default_gb or float(offered_gb) / max(options.max_tasks, 1)
    return max(int(gb * 1024**3), MIN_CONTAINER_MEM)


def failed_result(started: float, error: str) -> dict[str, Any]:
    """The result of a task this worker failed to run: the worker's fault, not the task's."""
    return {"status": "failed", "exit_code": None, "duration_s": time.time() - started,
            "error": one_line(error), "output": {}, "log_tail": "", "fault": str(Fault.WORKER)}


def latest_per_task(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest report per task attempt, except that an outcome always wins over progress."""
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    for item in items:
        key = (item["task"], item["attempt"])
        if "result" in latest.get(key, {}):
            continue
        latest[key] = item
    return list(latest.values())
