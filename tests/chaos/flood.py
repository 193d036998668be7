"""A connection flood from one client, while a good worker keeps getting tasks done.

A real master over TLS (default connection caps: 512 in all, 8 per certificate, beyond twice
the total closed at once) and a good worker process. The flood is a separate process that
opens N connections and holds them: half complete the TLS handshake with one real worker
certificate (`hog`) and then send nothing; half are plain TCP sockets that never start a
handshake. Whatever the master closes is dialled again at once, so N stay open from the
client's side for the whole window. The flood comes from 127.0.0.2, the operator and the
worker from 127.0.0.1, as on a network where the attacker is another machine. Meanwhile:

- tasks: the operator submits no-op tasks one after another and times each from submit to
  its end as the master reports it (`wait`), before the flood (baseline) and during it;
- `ctl status`: every second an operator connects afresh (as `cloudq ctl status` does) and
  asks for the status; each time and each failure is kept;
- the master's RSS, threads and established connections are sampled every 0.25 s.

After the flood the client closes everything; the master's connection count must go back to
what it was before, its certificate `hog` must again hold exactly its cap of connections (a
slot not given back would show), and the good worker must still be there and take a task.
Refusals by reason are the master's own counts (cloudq_rpc_rejected_total), during the flood.

Used by tests/chaos/test_hostile_scale.py (short, in CI) and, at full size (1,000
connections), by bench/chaos/run.py. `python -m tests.chaos.flood hold CONFIG` is the flood.
"""

from __future__ import annotations

import contextlib
import errno
import json
import re
import resource
import selectors
import signal
import socket
import ssl
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudq import defaults
from cloudq.client import Client
from cloudq.rpc import tls
from cloudq.rpc.client import MasterClient
from tests.chaos.peers import MIB, TlsCluster, held_slots, percentile, python_child, tls_cluster
from tests.cluster.harness import wait_until

HOG = "hog"
GOOD = "good"
FLOOD_ADDRESS = "127.0.0.2"  # the flooding client's own source address
DIAL_TIMEOUT_S = 5.0
SAMPLE_EVERY_S = 0.25
STATUS_EVERY_S = 1.0
TASK_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 30.0  # the master has this long to let go of the flood's connections
RSS_GROWTH_LIMIT = 512 * MIB  # what the master may take on for the flood (threads, TLS, buffers)
_UP = re.compile(r"^UP (\d+)")


# ------------------------------------------------------------------------------- the flood
class Holder:
    """The flood's side: N sockets, half TLS with one certificate, half plain; each one the
    master closes is dialled again."""

    def __init__(self, host: str, port: int, certs: Path, identity: str, connections: int,
                 tls_share: float) -> None:
        self.host, self.port, self.connections = host, port, connections
        self.context = tls.client_context(certs, identity)
        self.kinds = ["tls" if int((i + 1) * tls_share) > int(i * tls_share) else "plain"
                      for i in range(connections)]
        self.selector = selectors.DefaultSelector()
        self.open: dict[socket.socket, str] = {}
        self.counts: Counter[str] = Counter()
        self.stopping = threading.Event()

    def dial(self, kind: str) -> None:
        try:
            # From an address of its own, as a client on another machine would be: the master
            # limits connections in their handshake per address (operators use 127.0.0.1).
            sock = socket.create_connection((self.host, self.port), timeout=DIAL_TIMEOUT_S,
                                            source_address=(FLOOD_ADDRESS, 0))
        except OSError as err:
            self.counts[f"{kind}_connect_failed:{errno.errorcode.get(err.errno or 0, str(err))}"] += 1
            return
        if kind == "tls":
            try:
                sock = self.context.wrap_socket(sock, server_hostname=tls.MASTER_NAME)
            except (ssl.SSLError, OSError) as err:
                sock.close()
                self.counts[f"tls_handshake_failed:{type(err).__name__}"] += 1
                return
        sock.setblocking(False)
        self.selector.register(sock, selectors.EVENT_READ)
        self.open[sock] = kind
        self.counts[f"{kind}_dialled"] += 1
        self.counts["most_open"] = max(self.counts["most_open"], len(self.open))

    def closed_by_master(self, sock: socket.socket) -> bool:
        """Reads what is there: True when the master has closed this connection."""
        try:
            data = sock.recv(4096)
        except (ssl.SSLWantReadError, BlockingIOError):
            return False  # e.g. TLS 1.3 session tickets: the connection lives
        except (ssl.SSLError, OSError):
            return True
        return data == b""

    def run(self, up: Any) -> None:
        for kind in self.kinds:
            self.dial(kind)
        up(len(self.open))
        while not self.stopping.is_set():
            for key, _ in self.selector.select(timeout=0.2):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if not self.closed_by_master(sock):
                    continue
                kind = self.open.pop(sock)
                self.selector.unregister(sock)
                sock.close()
                self.counts[f"{kind}_closed_by_master"] += 1
                if not self.stopping.is_set():
                    self.dial(kind)  # held: what the master closes is opened again

    def close(self) -> None:
        for sock in list(self.open):
            with contextlib.suppress(OSError):
                sock.close()
        self.open.clear()


def raise_descriptor_limit(wanted: int) -> int:
    """This process's soft limit raised toward `wanted` (no further than the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def hold(config: dict[str, Any]) -> dict[str, Any]:
    connections = int(config["connections"])
    limit = raise_descriptor_limit(connections + 256)
    if limit < connections + 64:
        raise SystemExit(f"the descriptor limit ({limit}) is too low for {connections} connections")
    holder = Holder(config["host"], int(config["port"]), Path(config["certs"]), config["identity"],
                    connections, float(config["tls_share"]))
    signal.signal(signal.SIGTERM, lambda *_: holder.stopping.set())
    started = time.monotonic()
    try:
        holder.run(lambda count: print(f"UP {count} in {time.monotonic() - started:.2f} s", flush=True))
    finally:
        holder.close()
    return {"counts": dict(holder.counts), "seconds": time.monotonic() - started}


# ----------------------------------------------------------------------------- the harness
@dataclass
class Usage:
    """The master's process, sampled."""

    rss: int
    threads: int
    connections: int


@dataclass
class Flood:
    connections: int
    hold_s: float
    tls_share: float = 0.5  # of the connections, those that complete a TLS handshake
    opened_s: float = 0.0  # for the flood to open all its connections
    client: dict[str, int] = field(default_factory=dict)  # what the flood saw
    before: Usage | None = None
    peak: Usage | None = None
    after: Usage | None = None
    drain_s: float | None = None  # for the master's connections to go back down (None: they did not)
    rejections: dict[str, int] = field(default_factory=dict)  # the master's counts, during the flood
    latency_baseline_ms: list[float] = field(default_factory=list)
    latency_flood_ms: list[float] = field(default_factory=list)
    status_ms: list[float] = field(default_factory=list)
    task_failures: list[str] = field(default_factory=list)
    status_failures: list[str] = field(default_factory=list)
    worker_lost: list[str] = field(default_factory=list)  # the good worker seen in another state
    crashes: int = 0
    slot_leaks: int = 0

    def failures(self) -> dict[str, int]:
        grew = (self.peak.rss - self.before.rss) if self.peak and self.before else 0
        return {"crashes": self.crashes, "task_failures": len(self.task_failures),
                "status_failures": len(self.status_failures), "worker_lost": len(self.worker_lost),
                "not_drained": int(self.drain_s is None), "slot_leaks": self.slot_leaks,
                "memory_unbounded": int(grew > RSS_GROWTH_LIMIT)}

    def report(self) -> str:
        counts = self.client
        dialled = counts.get("tls_dialled", 0) + counts.get("plain_dialled", 0)
        base, flood = self.latency_baseline_ms, self.latency_flood_ms

        def usage(u: Usage | None) -> str:
            return f"{u.rss / MIB:.0f} MiB, {u.threads} threads, {u.connections} conns" if u else "?"

        drained = f"after {self.drain_s:.1f} s" if self.drain_s is not None else "NEVER"
        lines = [
            f"flood: {self.connections} connections held by one client for {self.hold_s:g} s "
            f"({self.tls_share:.0%} TLS with one worker certificate, the rest plain TCP never "
            f"handshaking), opened in "
            f"{self.opened_s:.1f} s; {dialled} dialled in all as the master closed them; "
            + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if not k.endswith("_dialled")),
            f"master: before {usage(self.before)}; peak {usage(self.peak)}; after {usage(self.after)}; "
            f"connections back down {drained}",
            "refused by the master during the flood: "
            + (", ".join(f"{k} {v}" for k, v in self.rejections.items() if v) or "none"),
            f"task latency (submit to end, one at a time): baseline p50 {percentile(base, 0.5):.0f} ms, "
            f"p99 {percentile(base, 0.99):.0f} ms ({len(base)} tasks); during the flood p50 "
            f"{percentile(flood, 0.5):.0f} ms, p99 {percentile(flood, 0.99):.0f} ms, max "
            f"{max(flood, default=0):.0f} ms ({len(flood)} tasks)",
            f"ctl status on a new connection during the flood: {len(self.status_ms)} answered, p50 "
            f"{percentile(self.status_ms, 0.5):.0f} ms, max {max(self.status_ms, default=0):.0f} ms",
            "failures: " + ", ".join(f"{k} {v}" for k, v in self.failures().items()),
        ]
        lines += [f"  e.g. {text}" for text in (self.task_failures + self.status_failures + self.worker_lost)[:10]]
        return "\n".join(lines)


def run_flood(tmp: Path, *, connections: int = 1000, hold_s: float = 20.0, tls_share: float = 0.5,
              baseline_tasks: int = 20, master_flags: tuple[str, ...] = ()) -> Flood:
    """`master_flags`: e.g. ("--max-connections", "64"), to run the flood against lower caps."""
    result = Flood(connections, hold_s, tls_share)
    with tls_cluster(tmp, [HOG], *master_flags, worker=GOOD) as cluster, cluster.client() as cq:
        for _ in range(baseline_tasks):
            result.latency_baseline_ms.append(_one_task(cq, result))
        _status(cluster, result, during=False)
        sampler = Sampler(cluster)
        result.before = sampler.sample()
        rejected = cluster.rejections()
        config = cluster.certs.parent / "flood.json"
        config.write_text(json.dumps({"host": cluster.master.host, "port": cluster.master.port,
                                      "certs": str(cluster.certs), "identity": HOG,
                                      "connections": connections, "tls_share": tls_share}))
        flood = python_child("tests.chaos.flood", "hold", str(config))
        try:
            sampler.start()
            started = time.monotonic()
            flood.wait_for_line(_UP, timeout=120)
            result.opened_s = time.monotonic() - started
            _during(cluster, cq, result, hold_s)
        finally:
            flood.stop(timeout=30)
            sampler.stop()
        result.peak = sampler.peak
        summary = next((line for line in reversed(flood.lines) if line.startswith("RESULT ")), None)
        if summary is None:
            raise AssertionError("the flood did not finish:\n" + flood.output())
        result.client = json.loads(summary.removeprefix("RESULT "))["counts"]
        result.drain_s = _drained(cluster, result.before.connections)
        result.after = sampler.sample()
        result.rejections = {k: v - rejected.get(k, 0) for k, v in cluster.rejections().items()}
        result.slot_leaks = int(held_slots(cluster.master.address, cluster.certs, HOG)
                                != defaults.MAX_CONNECTIONS_PER_PEER)
        result.crashes = int(not cluster.alive())
        _one_task(cq, result)  # the good worker still takes work
    return result


class Sampler:
    """The master's RSS, threads and connections every SAMPLE_EVERY_S; the peak of each."""

    def __init__(self, cluster: TlsCluster) -> None:
        self.cluster = cluster
        self.peak = Usage(0, 0, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def sample(self) -> Usage:
        return Usage(self.cluster.rss(), self.cluster.threads(), self.cluster.connections())

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY_S):
            with contextlib.suppress(Exception):  # the process may be gone: `alive` says so
                now = self.sample()
                self.peak = Usage(max(self.peak.rss, now.rss), max(self.peak.threads, now.threads),
                                  max(self.peak.connections, now.connections))


def _during(cluster: TlsCluster, cq: Client, result: Flood, hold_s: float) -> None:
    """Tasks one after another for `hold_s`, an operator's status every second, and the good
    worker's state checked with each."""
    ends = time.monotonic() + hold_s
    next_status = 0.0
    while time.monotonic() < ends:
        result.latency_flood_ms.append(_one_task(cq, result))
        if time.monotonic() >= next_status:
            next_status = time.monotonic() + STATUS_EVERY_S
            _status(cluster, result, during=True)


def _one_task(cq: Client, result: Flood) -> float:
    """Milliseconds from submitting one no-op to the master reporting it ended."""
    started = time.perf_counter()
    try:
        task = cq.submit(kind="noop", name="probe")
        ended = cq.wait([task.id], timeout=TASK_TIMEOUT_S)[task.id]
    except Exception as err:  # noqa: BLE001 - counted: a task the good worker did not get done
        result.task_failures.append(f"task: {type(err).__name__}: {err}")
        return (time.perf_counter() - started) * 1000
    if ended["state"] != "completed" or ended["worker"] != GOOD:
        result.task_failures.append(f"task {task.id} ended {ended['state']} on {ended['worker']}")
    return (time.perf_counter() - started) * 1000


def _status(cluster: TlsCluster, result: Flood, *, during: bool) -> None:
    """What `cloudq ctl status` does: a new operator connection, one call."""
    started = time.perf_counter()
    try:
        with MasterClient(cluster.master.address, cluster.certs, timeout_s=30) as operator:
            status = operator.call("call", {"argv": ["status"]})["data"]
            good = next((w for w in operator.call("call", {"argv": ["workers"]})["data"] if w["name"] == GOOD), None)
    except Exception as err:  # noqa: BLE001 - counted: the operator was not answered
        result.status_failures.append(f"status: {type(err).__name__}: {err}")
        return
    if during:
        result.status_ms.append((time.perf_counter() - started) * 1000)
    if status["workers"].get("offline") or good is None or good["status"] not in ("available", "busy"):
        result.worker_lost.append(f"good worker: {good and good['status']}")


def _drained(cluster: TlsCluster, before: int) -> float | None:
    """Seconds until the master holds no more connections than before the flood."""
    started = time.monotonic()
    try:
        wait_until(lambda: cluster.connections() <= before, DRAIN_TIMEOUT_S,
                   "the master to let go of the flood's connections", every=0.1)
    except AssertionError:
        return None
    return time.monotonic() - started


def main(argv: list[str]) -> int:
    """`hold CONFIG`: the flood process, until SIGTERM."""
    if argv[:1] != ["hold"] or len(argv) != 2:
        print("usage: python -m tests.chaos.flood hold CONFIG.json", file=sys.stderr)
        return 2
    found = hold(json.loads(Path(argv[1]).read_text()))
    print("RESULT " + json.dumps(found), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
