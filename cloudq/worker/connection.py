"""The worker's connection to the master: registering, and registering again after a loss.

Registration tells the master what this worker offers (its facts) and what it still holds:
the tasks it runs and those whose outcomes the master has not acknowledged, so the master
re-adopts them instead of retrying tasks that have already run. Nothing the master does may
end the worker: a failed registration is retried after a bounded, doubling wait (backoff.py),
at most a second apart while tasks are held, so the worker is back before their lease ends.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from typing import Any

from cloudq import defaults
from cloudq.errors import NotFoundError
from cloudq.rpc.client import MasterClient
from cloudq.rpc.protocol import LeaderView
from cloudq.specs.roots import worker_capabilities
from cloudq.worker import probes
from cloudq.worker.backoff import Backoff
from cloudq.worker.options import WorkerOptions
from cloudq.worker.runners import capability_set, detect_capabilities
from cloudq.worker.tasks import Running

log = logging.getLogger("cloudq.worker")

# Errors after which the worker registers again: the connection is gone, or the master no
# longer knows our session. Any other error is answered by waiting and asking again.
LOST_MASTER = (ConnectionError, EOFError, OSError, NotFoundError)


class MasterConnection:
    """The two channels to the master and the session they belong to.

    A part of WorkerAgent (agent.py), not an object of its own: the fetch and report loops
    read the channels, session and lease directly, and registration reads what the task side
    (tasks.py) holds, all under the agent's one lock.
    """

    # Set by WorkerAgent and its task side; read here.
    options: WorkerOptions
    name: str
    stopping: threading.Event
    _lock: threading.Lock
    running: dict[str, Running]
    _unreported: dict[str, int]
    _cancel: Callable[[str, int | None], None]

    def _init_connection(self) -> None:
        """Not connected yet. The facts are measured here, so the work directory must exist."""
        self._reconnecting = threading.Lock()
        self._session = 0
        self._leaders = LeaderView()  # newest epoch and last leader seen, kept across reconnections
        self._generation = 0  # bumped on every (re)connection
        self._fetch_conn: MasterClient | None = None
        self._report_conn: MasterClient | None = None
        self._heartbeat_s = defaults.HEARTBEAT_S
        self._fetch_heartbeat = False  # the master reads an idle worker's sample from its fetch
        self._lease_s = defaults.LEASE_S
        self._last_contact = time.monotonic()
        self.facts = self._facts()

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
            "capabilities": sorted(capability_set(caps, len(gpus)) | worker_capabilities(
                (root.name, root.writable) for root in self.options.roots.values())),
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
            # A list of masters sharing a store: both channels find the leader themselves.
            # Calls time out soon after they should have been answered, so that a master that
            # hangs (stopped, cut off) is left for another well within the lease.
            fetch = MasterClient(self.options.master, self.options.tls_dir, identity,
                                 timeout_s=defaults.POLL_WAIT_S + defaults.WORKER_CALL_TIMEOUT_S,
                                 view=self._leaders)
            report = MasterClient(self.options.master, self.options.tls_dir, identity,
                                  timeout_s=defaults.WORKER_CALL_TIMEOUT_S, view=self._leaders)
            with self._lock:
                running = [[r.task_id, r.attempt] for r in self.running.values()]
                running += [[task_id, attempt] for task_id, attempt in self._unreported.items()]
            reply = fetch.call("register", {"facts": self.facts, "running": running})
            session = int(reply["session"])
            heartbeat_s = float(reply.get("heartbeat_s") or defaults.HEARTBEAT_S)
            fetch_heartbeat = reply.get("fetch_sample") is True
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
            self._fetch_heartbeat = fetch_heartbeat
            self._lease_s = lease_s
            self._last_contact = time.monotonic()
            self._generation += 1
        for task_id in reply.get("stop") or []:
            self._cancel(task_id, None)
        log.info("registered with %s as %s (session %d)", fetch.address, self.name, self._session)

    def close(self) -> None:
        self.stopping.set()
        self._close_connections()

    def _close_connections(self) -> None:
        for conn in (self._fetch_conn, self._report_conn):
            if conn is not None:
                conn.close()

    def _lost_master(self, generation: int, err: Exception) -> None:
        with self._reconnecting:  # both loops notice a lost master; one reconnects
            if generation != self._generation:
                return  # the other loop already reconnected
            log.warning("lost the master (%s); tasks keep running, reconnecting", err)
            self.connect()
