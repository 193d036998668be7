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

This module holds the loops; registration and reconnection are in connection.py, starting,
running and cancelling tasks and the outcomes not yet acknowledged in tasks.py, the settings in
options.py. WorkerAgent is the one object they make up, so their shared state stays under one
lock and is read in one place.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from typing import Any

from cloudq import defaults
from cloudq.worker import probes
from cloudq.worker.backoff import Backoff
from cloudq.worker.connection import LOST_MASTER, MasterConnection
from cloudq.worker.options import WorkerOptions
from cloudq.worker.runners import RunContext, RunResult, run_task, tail_log
from cloudq.worker.tasks import Running, TaskRunner, container_mem_default, failed_result

# The worker's public names stay importable from here, wherever they are defined.
__all__ = [
    "LEASE_SAFETY", "LOST_MASTER", "Running", "WorkerAgent", "WorkerOptions",
    "container_mem_default", "failed_result", "latest_per_task", "run_worker",
]

log = logging.getLogger("cloudq.worker")

LEASE_SAFETY = 0.8  # a cut-off worker stops its tasks (SIGTERM) at this fraction of the lease
LEASE_KILL = 0.9  # ...and kills those still running at this one, cutting their grace short
WATCHDOG_TICK_S = 0.05  # how often the watchdog looks: late by at most this


class WorkerAgent(MasterConnection, TaskRunner):
    """One worker: its connection to the master and its tasks, driven by the fetch loop, the
    report loop and the watchdog below."""

    def __init__(self, options: WorkerOptions) -> None:
        self.options = options
        self.name = options.name
        self._lock = threading.Lock()
        # Tasks first: a task user that does not exist stops the worker before anything else
        # happens; the work directory they make is measured with the facts.
        self._init_tasks()
        self.stopping = threading.Event()
        self._fetching = threading.Event()  # set while the fetch loop may still hand outcomes over
        self._init_connection()
        self._report_backoff = Backoff("report", log)
        self.gpu_energy = probes.GpuEnergy()
        self._sample_lock = threading.Lock()  # both loops take samples
        self._next_fetch_sample = 0.0
        self.container_mem_default = container_mem_default(options, self.facts["mem_gb"])

    def _run_task(self, ctx: RunContext) -> RunResult:
        """Hands one task to its runner. `run_task` is looked up in this module on every call,
        so a runner swapped in here (as the fault tests do with a crashing one) is the one used."""
        return run_task(ctx)

    # ------------------------------------------------------------------ loops
    def run(self) -> None:
        self._fetching.set()
        self.connect()
        reporter = threading.Thread(target=self._report_loop, name="reporter", daemon=True)
        reporter.start()
        threading.Thread(target=self._watchdog, name="watchdog", daemon=True).start()
        threading.Thread(target=self._leave_when_stopping, name="leaver", daemon=True).start()
        backoff = Backoff("fetch", log)
        while not self.stopping.is_set():
            generation = self._generation
            at_hand, self._at_hand = self._at_hand, []
            # Outcomes of the instant tasks this thread ran ride along: one call frees their
            # room and brings the next assignments. An idle worker's heartbeat rides along too.
            payload = {"name": self.name, "session": self._session, "reports": at_hand,
                       "wait_s": min(defaults.POLL_WAIT_S, self._lease_s)}
            if self._idle_heartbeat_due():
                payload["sample"] = self._live_sample()
            try:
                instructions = self._fetch_conn.call("fetch", payload)  # type: ignore[union-attr]
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
        self.outbox.put(_WAKE)  # the reporter sees the stop now, not at its next heartbeat
        reporter.join(timeout=10)  # it leaves once the last outcome is sent

    def _leave_when_stopping(self) -> None:
        """Tells the master when this worker starts to stop: it then answers the waiting
        fetch at once, so a stop does not wait out the long-poll (POLL_WAIT_S)."""
        self.stopping.wait()
        conn = self._report_conn
        if conn is not None:
            with contextlib.suppress(Exception):  # unheard, the fetch still ends by POLL_WAIT_S
                conn.call("leave", {"name": self.name, "session": self._session})

    def _watchdog(self) -> None:
        """Ends running tasks once the master has not heard from us for most of the lease.

        The master requeues a silent worker's tasks when its lease runs out; ours must be gone
        by then, so that two attempts of one task never run at the same time. At LEASE_SAFETY
        of the lease they are asked to stop (SIGTERM and the usual grace); at LEASE_KILL what
        is left is killed at once: a task that ignores SIGTERM would otherwise outlive the
        lease by up to the whole grace (runners/process.py, KILL_GRACE_S).
        """
        while not self.stopping.wait(WATCHDOG_TICK_S):
            silent = time.monotonic() - self._last_contact
            if silent <= LEASE_SAFETY * self._lease_s:
                continue
            kill = silent > LEASE_KILL * self._lease_s
            told = self._end_all(kill)
            if told:
                log.warning("master unheard for %.1fs of a %.1fs lease: %s %d task(s)", silent,
                            self._lease_s, "killing" if kill else "stopping", len(told))

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
                next_beat = time.monotonic() + self._heartbeat_s
                if batch or self.running or not self._fetch_heartbeat:
                    sample = self._live_sample()
                    batch = self._log_tails(batch)
                # else idle: the fetch long-poll is the heartbeat (_idle_heartbeat_due)
            if not batch and sample is None:
                continue
            self._send(batch, sample)

    def _idle_heartbeat_due(self) -> bool:
        """An idle worker sends no heartbeat reports: while its fetch waits on the master it
        counts as heard, and its live sample goes with the fetch, at most once a heartbeat
        (instant tasks make fetches far more often). Only with a master that says it reads
        them (`fetch_sample` at registration); an older one gets heartbeat reports as ever."""
        if not self._fetch_heartbeat or self.running:
            return False
        now = time.monotonic()
        if now < self._next_fetch_sample:
            return False
        self._next_fetch_sample = now + self._heartbeat_s
        return True

    def _live_sample(self) -> dict[str, Any]:
        """A live sample, with each GPU's energy so far; from the fetch or the report loop."""
        sample = probes.live_sample(self.options.work_dir)
        with self._sample_lock:
            self.gpu_energy.add(sample["gpus"])
        return sample

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
        return latest_per_task([item for item in items if item is not _WAKE])


_WAKE: dict[str, Any] = {}  # put in the outbox to wake the report loop; never sent


def run_worker(options: WorkerOptions) -> int:
    import signal

    agent = WorkerAgent(options)
    server = None
    if options.metrics_port:
        from cloudq.worker.metrics import serve_metrics

        server = serve_metrics(agent, options.metrics_bind, options.metrics_port)
    signal.signal(signal.SIGTERM, lambda *_: agent.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: agent.stopping.set())
    try:
        agent.run()
    finally:
        agent.close()
        if server is not None:
            server.shutdown()
    return 0


def latest_per_task(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest report per task attempt, except that an outcome always wins over progress."""
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    for item in items:
        key = (item["task"], item["attempt"])
        if "result" in latest.get(key, {}):
            continue
        latest[key] = item
    return list(latest.values())
