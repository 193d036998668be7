"""A real worker process against a master whose calls fail for a while the way a real master's
do (a full store, a connection limit, a refusal): the worker stays up, logs each distinct error
once, backs off, and every outcome arrives once the master recovers.

The master here is a small RPyC service in the test process, speaking the real wire protocol
(JSON envelopes): it is the only way to make fetch and report fail on cue.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import rpyc
from rpyc.utils.server import ThreadedServer

from cloudq.errors import AuthError, CloudqError, StoreError, ValidationError
from cloudq.rpc.protocol import PROTOCOL_CONFIG, decode_argument, failure, ok
from tests.cluster.harness import WorkerProc

RESOURCES = {"cpu_cores": 0.1, "mem_gb": 0.0, "storage_gb": 0.0, "gpus": 0, "gpu_mem_gb": 0.0}
FETCH_ERRORS: list[CloudqError] = [
    StoreError("store full: journal append failed (No space left on device)"),
    StoreError("store full: journal append failed (No space left on device)"),
    AuthError("connection limit reached"),
    ValidationError("'session' must be int"),
]
REPORT_ERRORS: list[CloudqError] = [StoreError("store full: checkpoint failed")] * 3
REGISTER_ERRORS: list[CloudqError] = [AuthError("connection limit reached")]


def assignment(task_id: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"assign": {"id": task_id, "attempt": 1, "kind": "noop", "spec": spec,
                       "resources": RESOURCES, "timeout_s": 60}}


class FlakyMaster(rpyc.Service):
    """Hands out two no-op tasks, then fails fetch and report calls as scripted, then works.

    One instance serves every connection, so it sees the worker's whole conversation."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.sessions = 0
        self.fetch_errors = list(FETCH_ERRORS)
        self.report_errors = list(REPORT_ERRORS)
        self.register_errors = list(REGISTER_ERRORS)
        self.failed_at: list[tuple[str, float]] = []  # (call, time) of every failure we gave
        self.outcomes: dict[str, list[dict[str, Any]]] = {}  # task -> outcomes we took
        self.handed_out = False

    def _fail_next(self, errors: list[CloudqError], call: str) -> str | None:
        with self.changed:
            if not errors:
                return None
            self.failed_at.append((call, time.monotonic()))
            return failure(errors.pop(0))

    def _take(self, reports: list[dict[str, Any]]) -> None:
        with self.changed:
            for report in reports:
                if "result" in report:
                    self.outcomes.setdefault(report["task"], []).append(report)
            self.changed.notify_all()

    def exposed_register(self, raw: str) -> str:
        decode_argument(raw)
        if refused := self._fail_next(self.register_errors, "register"):
            return refused
        with self.changed:
            self.sessions += 1
            return ok({"session": self.sessions, "heartbeat_s": 0.2, "lease_s": 60.0, "stop": []})

    def exposed_fetch(self, raw: str) -> str:
        payload = decode_argument(raw)
        with self.changed:
            if not self.handed_out:
                self.handed_out = True
                # One instant task (its outcome rides on the next fetch), one that reports.
                return ok([assignment("instant", {"sleep_s": 0}),
                           assignment("short", {"sleep_s": 0.2})])
        if refused := self._fail_next(self.fetch_errors, "fetch"):
            return refused
        self._take(payload.get("reports") or [])
        with self.changed:
            self.changed.wait(min(float(payload.get("wait_s") or 0), 0.5))
        return ok([])

    def exposed_report(self, raw: str) -> str:
        payload = decode_argument(raw)
        reports = payload.get("reports") or []
        outcomes = any("result" in r for r in reports)
        if outcomes and (refused := self._fail_next(self.report_errors, "report")):
            return refused
        self._take(reports)
        return ok({"refused": []})

    def wait_for(self, tasks: set[str], worker: WorkerProc, timeout: float) -> bool:
        """Until every task's outcome arrived, or the worker exited (then at once)."""

        def exited() -> None:
            worker.proc.wait()
            with self.changed:
                self.changed.notify_all()

        threading.Thread(target=exited, daemon=True).start()
        with self.changed:
            return self.changed.wait_for(
                lambda: tasks <= self.outcomes.keys() or worker.proc.poll() is not None, timeout)


@pytest.fixture
def flaky_master() -> Iterator[tuple[FlakyMaster, str]]:
    service = FlakyMaster()
    server = ThreadedServer(service, hostname="127.0.0.1", port=0,
                            protocol_config=dict(PROTOCOL_CONFIG), listener_timeout=0.5)
    server._listen()
    threading.Thread(target=server.start, daemon=True).start()
    try:
        yield service, f"127.0.0.1:{server.port}"
    finally:
        server.close()


def test_worker_survives_master_errors_and_its_outcomes_arrive(flaky_master, tmp_path: Path):
    master, address = flaky_master
    worker = WorkerProc(address, "sturdy", tmp_path / "work")
    try:
        master.wait_for({"instant", "short"}, worker, timeout=60)
        assert worker.proc.poll() is None, "the worker exited:\n" + worker.output()
        assert {"instant", "short"} <= master.outcomes.keys(), worker.output()
        # Every scripted failure was given, and the worker came back after each.
        assert not master.fetch_errors and not master.report_errors and not master.register_errors
        for task in ("instant", "short"):
            (outcome,) = master.outcomes[task]  # taken once: no duplicate, none lost
            assert outcome["state"] == "completed", outcome
        # Each distinct message logged once per outage, however often it came.
        text = "\n".join(worker.lines)
        assert text.count("journal append failed") == 1, text
        assert text.count("checkpoint failed") == 1, text
        assert text.count("connection limit reached") == 2, text  # register, then fetch
        fetch_times = [t for call, t in master.failed_at if call == "fetch"]
        gaps = [round(b - a, 2) for a, b in zip(fetch_times, fetch_times[1:], strict=False)]
        assert all(0.15 <= gap <= 5.5 for gap in gaps), gaps
        assert gaps == sorted(gaps), f"the back-off should grow: {gaps}"
        print(f"\nfailed calls given: {len(master.failed_at)}; gaps between failed fetches "
              f"{gaps} s; worker still running (pid {worker.proc.pid})")
    finally:
        worker.stop()
