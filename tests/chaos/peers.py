"""What the hostile-peer checks (hostile_rpc.py, flood.py) share: a TLS master with its
metrics port and a good worker, the master's refusal counters, percentiles, memory, and the
per-certificate slot check that finds a leaked connection slot."""

from __future__ import annotations

import contextlib
import math
import ssl
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
from prometheus_client.parser import text_string_to_metric_families

from cloudq import defaults
from cloudq.client import Client
from cloudq.errors import LimitError
from cloudq.rpc import tls
from cloudq.rpc.client import MasterClient
from tests.cluster.harness import MasterProc, Proc, WorkerProc
from tests.e2e.conftest import free_port

MIB = 1 << 20


@dataclass
class TlsCluster:
    """A master over TLS (the operator's client speaks as the admin) with one good worker."""

    master: MasterProc
    worker: WorkerProc
    certs: Path
    metrics_port: int

    def client(self) -> Client:
        return Client(self.master.address, self.certs)

    def rejections(self) -> dict[str, int]:
        """cloudq_rpc_rejected_total by reason, from one scrape of the metrics port (HTTPS with
        the master's certificate, checked against the cluster's CA)."""
        context = ssl.create_default_context(cafile=str(self.certs / "ca.pem"))
        url = f"https://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, context=context, timeout=10) as response:
            text = response.read().decode()
        return {sample.labels["reason"]: int(sample.value)
                for family in text_string_to_metric_families(text) if family.name == "cloudq_rpc_rejected"
                for sample in family.samples if sample.name == "cloudq_rpc_rejected_total"}

    def rss(self) -> int:
        return psutil.Process(self.master.proc.pid).memory_info().rss

    def threads(self) -> int:
        return psutil.Process(self.master.proc.pid).num_threads()

    def connections(self) -> int:
        """Established TCP connections the master holds on its RPC port."""
        return sum(1 for c in psutil.Process(self.master.proc.pid).net_connections("tcp")
                   if c.laddr and c.laddr.port == self.master.port and c.status == psutil.CONN_ESTABLISHED)

    def alive(self) -> bool:
        """The process runs and its listener answers a new operator connection."""
        if self.master.proc.poll() is not None:
            return False
        try:
            with MasterClient(self.master.address, self.certs, timeout_s=10) as admin:
                return admin.call("ping")["identity"] == tls.ADMIN_NAME
        except Exception:  # noqa: BLE001 - whatever the failure, the master does not answer
            return False

    def tracebacks(self) -> int:
        """Connection threads the master's log shows ended by an unhandled exception."""
        return sum(1 for line in self.master.lines if line.startswith("Exception in thread"))


@contextlib.contextmanager
def tls_cluster(tmp: Path, peers: list[str], *master_flags: str, worker: str = "good",
                worker_flags: tuple[str, ...] = ("--max-tasks", "2", "--cpu-cores", "4")) -> Iterator[TlsCluster]:
    """Certificates for `worker` and `peers`, a master (leases long enough that no one is
    expired during a check: a change would then not be the attacker's) and the good worker;
    both stopped afterwards, by PID."""
    certs = tmp / "certs"
    tls.init_cluster(certs, [worker, *peers], ["localhost", "127.0.0.1"])
    metrics_port = free_port()
    master = MasterProc(tmp / "data", "--tls-dir", str(certs), "--metrics-port", str(metrics_port),
                        "--lease", "600", "--heartbeat", "0.5", "--interval", "300", *master_flags)
    good: WorkerProc | None = None
    try:
        master._client = MasterClient(master.address, certs)  # the harness speaks as the operator
        good = WorkerProc(master.address, worker, tmp / "work", "--tls-dir", str(certs), *worker_flags)
        master.wait_worker(worker)
        yield TlsCluster(master, good, certs, metrics_port)
    finally:
        if good is not None:
            good.stop()
        master.stop()


def python_child(module: str, *args: str) -> Proc:
    """`python -m module args` in the repository, its output collected (Proc)."""
    return Proc([sys.executable, "-m", module, *args])


def held_slots(address: str, certs: Path, identity: str) -> int:
    """How many connections `identity` can hold at once now: it should be exactly the per-peer
    cap while it holds none (fewer: a slot leaked; more: no cap). One past the cap is tried."""
    clients: list[MasterClient] = []
    held = 0
    try:
        for _ in range(defaults.MAX_CONNECTIONS_PER_PEER + 1):
            client = MasterClient(address, certs, identity=identity, timeout_s=10)
            clients.append(client)
            try:
                client.call("ping")
                held += 1
            except LimitError:
                pass
    finally:
        for client in clients:
            client.close()
    return held


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]
