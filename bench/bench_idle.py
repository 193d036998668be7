"""Benchmark of an idle master's CPU with many workers connected.

    .venv/bin/python bench/bench_idle.py                 # 200 workers, 60 s
    .venv/bin/python bench/bench_idle.py --workers 50 --seconds 20

A real master process (durable store, no shell). The workers are simulated in this process,
over real RPC connections, doing what an idle `cloudq worker` does: two connections each, a
`fetch` long-poll renewed every POLL_WAIT_S on one, carrying the live sample when the master
says it reads it there (`fetch_sample` at registration); otherwise, as with older masters, a
`report` with a live sample every heartbeat (2 s) on the other. The master's CPU (user + system, from /proc) is measured over
the window once every worker has registered; the figure is the share of one core.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cloudq import defaults  # noqa: E402
from cloudq.rpc.client import MasterClient  # noqa: E402
from cloudq.worker import probes  # noqa: E402
from tests.cluster.harness import MasterProc, wait_until  # noqa: E402


class SimulatedWorker:
    """The RPC traffic of one idle worker; its fetch loop runs in a thread of its own."""

    def __init__(self, address: str, name: str, facts: dict, stop: threading.Event,
                 poll_wait_s: float) -> None:
        self.name = name
        self.poll_wait_s = poll_wait_s
        self.stop = stop
        self.fetch_conn = MasterClient(address, None, name)
        self.report_conn = MasterClient(address, None, name)
        reply = self.fetch_conn.call("register", {"facts": {**facts, "name": name}, "running": []})
        self.session = int(reply["session"])
        # As `cloudq worker` does: with a master that reads samples from fetch, an idle worker
        # sends no heartbeat reports; its fetch carries the sample.
        self.fetch_heartbeat = reply.get("fetch_sample") is True
        self.sample: dict = {}
        self.calls = 0
        self.thread = threading.Thread(target=self._fetch_loop, name=f"fetch-{name}", daemon=True)

    def _fetch_loop(self) -> None:
        while not self.stop.is_set():
            payload = {"name": self.name, "session": self.session, "wait_s": self.poll_wait_s,
                       "reports": []}
            if self.fetch_heartbeat:
                payload["sample"] = self.sample
            self.fetch_conn.call("fetch", payload)
            self.calls += 1

    def heartbeat(self, sample: dict) -> None:
        self.report_conn.call("report", {"name": self.name, "session": self.session,
                                         "reports": [], "sample": sample})
        self.calls += 1

    def close(self) -> None:
        for conn in (self.fetch_conn, self.report_conn):
            conn.close()


def _heartbeats(workers: list[SimulatedWorker], sample: dict, stop: threading.Event) -> None:
    """Every worker that sends heartbeat reports sends one per heartbeat, spread evenly over
    it, as 200 machines would."""
    workers = [worker for worker in workers if not worker.fetch_heartbeat]
    if not workers:
        return
    gap = defaults.HEARTBEAT_S / len(workers)
    next_at = time.monotonic()
    while not stop.is_set():
        for worker in workers:
            next_at += gap
            stop.wait(max(next_at - time.monotonic(), 0.0))
            if stop.is_set():
                return
            worker.heartbeat(sample)


def _cpu_s(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--poll-wait", type=float, default=defaults.POLL_WAIT_S,
                        help="seconds each fetch long-poll waits (the worker's POLL_WAIT_S)")
    parser.add_argument("--windows", type=int, default=3, help="measurement windows (median reported)")
    args = parser.parse_args()
    facts = {**probes.static_facts("."), "cpu_cores": 8, "mem_gb": 32.0, "storage_gb": 100.0,
             "max_tasks": 8, "labels": {}, "capabilities": [], "tools": {}}
    sample = probes.live_sample(".")
    stop = threading.Event()
    with tempfile.TemporaryDirectory(prefix="cloudq-bench-idle-") as tmp:
        master = MasterProc(Path(tmp) / "data", "--interval", "5",
                            "--max-connections-per-peer", "8", "--max-connections", "1024")
        workers: list[SimulatedWorker] = []
        try:
            workers = [SimulatedWorker(master.address, f"sim{i}", facts, stop, args.poll_wait) for i in range(args.workers)]
            for worker in workers:
                worker.sample = sample
                worker.thread.start()
            threading.Thread(target=_heartbeats, args=(workers, sample, stop), daemon=True).start()
            wait_until(lambda: master.client().call("call", {"argv": ["status"], "files": {},
                                                                 "read_only": True}) is not None,
                       30, "status")
            time.sleep(defaults.HEARTBEAT_S * 2)  # settle: every worker has fetched and reported
            shares = []
            for _ in range(args.windows):
                calls_before = sum(w.calls for w in workers)
                cpu_before, started = _cpu_s(master.proc.pid), time.monotonic()
                time.sleep(args.seconds / args.windows)
                elapsed = time.monotonic() - started
                share = (_cpu_s(master.proc.pid) - cpu_before) / elapsed
                calls = (sum(w.calls for w in workers) - calls_before) / elapsed
                shares.append(share)
                print(f"window of {elapsed:.0f} s: master CPU {share * 100:.2f}% of one core, "
                      f"{calls:.0f} calls/s from {len(workers)} workers")
            shares.sort()
            print(f"idle master with {len(workers)} workers: median {shares[len(shares) // 2] * 100:.2f}% "
                  f"of one core ({shares[0] * 100:.2f}-{shares[-1] * 100:.2f}%)")
        finally:
            stop.set()
            for worker in workers:
                worker.close()
            master.stop()


if __name__ == "__main__":
    main()
