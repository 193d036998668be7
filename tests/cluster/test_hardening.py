"""Attacks on the master's listeners, against real processes: descriptor floods, connection
hoarding, idle connections and compressed-frame bombs. Each prints what it measured."""

from __future__ import annotations

import contextlib
import resource
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import psutil
import pytest

from cloudq import defaults
from cloudq.errors import LimitError
from cloudq.rpc import tls
from cloudq.rpc.client import MasterClient
from tests.cluster.harness import wait_until

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module", autouse=True)
def enough_descriptors():
    """The attacks below open hundreds of sockets from this process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _open_idle(port: int, count: int) -> list[socket.socket]:
    """Connections that never send a byte; stops early when this side runs out."""
    socks = []
    for _ in range(count):
        try:
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=2))
        except OSError:
            break
    return socks


def _close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        with contextlib.suppress(OSError):
            s.close()


def _status(address: str, tls_dir: Path | None = None) -> dict:
    with MasterClient(address, tls_dir) as client:
        return client.call("call", {"argv": ["status"]})


def test_descriptor_flood_does_not_close_the_rpc_listener(cluster):
    metrics_port = _free_port()
    # A master held to 256 descriptors (soft and hard, so it cannot raise them), as a master
    # on a default 1,024 limit is against four times as many connections.
    master = cluster.start_master("--metrics-port", str(metrics_port), prefix=("prlimit", "--nofile=256:256"))

    # 1. Idle connections to the metrics port: capped there, so RPC keeps its descriptors.
    flood = _open_idle(metrics_port, 1021)
    try:
        held = _count_connections(master.proc.pid, metrics_port)
        print(f"\nmetrics flood: {len(flood)} connections opened, master holds {held}")
        assert held <= 32 + 2
        assert _status(master.address)["data"]["tasks"] is not None  # RPC answers meanwhile
    finally:
        _close_all(flood)

    # 2. Idle connections to the RPC port itself, past the descriptor limit: accept() fails
    #    with EMFILE; the listener must stay open and recover once they go.
    flood = _open_idle(master.port, 600)
    try:
        wait_until(lambda: "accept() failed" in master.output(), 20, "the master to log accept() failures")
    finally:
        _close_all(flood)
    ended = time.monotonic()
    cluster.start_worker("w-after")  # registers: the listener is alive
    status = _status(master.address)
    recovered = time.monotonic() - ended
    print(f"rpc flood: {len(flood)} connections; a new worker registered and status answered "
          f"{recovered:.2f}s after the flood ended")
    assert status["data"]["workers"]
    assert master.proc.poll() is None


def _count_connections(pid: int, port: int) -> int:
    return sum(1 for c in psutil.Process(pid).net_connections("tcp")
               if c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tls")
    tls.init_cluster(directory, ["w1", "w2", "w3"], ["localhost", "127.0.0.1"])
    return directory


def test_one_certificate_cannot_hold_every_slot(cluster, certs):
    master = cluster.start_master("--tls-dir", str(certs), "--max-connections", "20",
                                  "--max-connections-per-peer", "4")
    held: list[MasterClient] = []
    refusals = []
    try:
        for identity in ("w1",) * 30 + ("w2",) * 10 + ("w3",) * 10:
            client = MasterClient(master.address, certs, identity=identity)
            try:
                client.call("ping")
                held.append(client)
            except LimitError as err:
                refusals.append(str(err))
                client.close()
        by_name = {name: sum(1 for c in held if c.call("ping")["identity"] == name) for name in ("w1", "w2", "w3")}
        print(f"\nslots held: {by_name}; {len(refusals)} refused, e.g. {refusals[0]!r}")
        assert by_name == {"w1": 4, "w2": 4, "w3": 4}  # 20 total, 8 kept for operators
        assert all("connection limit reached" in r for r in refusals)
        # The operator still gets in, within the reserve.
        assert _status(master.address, certs)
        admins = [MasterClient(master.address, certs) for _ in range(8)]
        try:
            assert all(a.call("ping")["identity"] == tls.ADMIN_NAME for a in admins)
        finally:
            for a in admins:
                a.close()
    finally:
        for client in held:
            client.close()
    # Slots come back when their holders leave: a worker registers.
    master._client = MasterClient(master.address, certs)  # the harness speaks as the operator
    cluster.start_worker("w1", "--tls-dir", str(certs))


def test_sockets_that_never_handshake_cannot_shut_out_other_addresses(cluster, certs):
    """One address holding 3x the listener's cap of silent sockets: it keeps at most
    MAX_HANDSHAKES_PER_ADDRESS of them in their handshake, the rest are closed at once, and an
    operator and a worker connecting from another address get straight in."""
    master = cluster.start_master("--tls-dir", str(certs), "--max-connections", "64")
    flood: list[socket.socket] = []
    try:
        for _ in range(3 * 2 * 64):
            with contextlib.suppress(OSError):
                flood.append(socket.create_connection(("127.0.0.1", master.port), timeout=2,
                                                      source_address=("127.0.0.2", 0)))
        started = time.monotonic()
        assert _status(master.address, certs)  # the operator, from 127.0.0.1
        operator_s = time.monotonic() - started
        with MasterClient(master.address, certs, identity="w1") as worker:
            assert worker.call("ping")["identity"] == "w1"
        closed = sum(1 for s in flood if _closed_by_master(s))
    finally:
        _close_all(flood)
    print(f"\n{len(flood)} silent sockets from 127.0.0.2: {closed} closed at once by the master; "
          f"an operator from 127.0.0.1 answered in {operator_s * 1000:.0f} ms")
    assert closed >= len(flood) - defaults.MAX_HANDSHAKES_PER_ADDRESS


def _closed_by_master(sock: socket.socket) -> bool:
    """The master closed this socket without a word (it is readable, with nothing to read)."""
    sock.settimeout(0.2)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False  # still held, waiting for a handshake
    except OSError:
        return True


def test_a_silent_connection_is_closed(cluster):
    master = cluster.start_master("--idle-timeout", "1")
    sock = socket.create_connection(("127.0.0.1", master.port), timeout=10)
    started = time.monotonic()
    try:
        while sock.recv(4096):  # at most rpyc's close message, then the end
            pass
    finally:
        sock.close()
    waited = time.monotonic() - started
    print(f"\nidle connection closed after {waited:.2f}s (idle timeout 1s)")
    assert waited < 8
    # A worker that polls is never idle that long and stays.
    worker = cluster.start_worker("w1")
    task = master.ctl("task", "--exec", "true")
    assert master.wait_state(task["id"], "completed")
    assert worker.proc.poll() is None


def _bomb(inflated: int) -> bytes:
    """One RPyC frame, flagged compressed, that inflates to `inflated` bytes."""
    body = zlib.compress(b"\x01" + bytes(inflated - 1), 9)
    return struct.pack("!LB", len(body), 1) + body + b"\n"


def test_compressed_frames_cannot_exhaust_memory(cluster):
    master = cluster.start_master()
    proc = psutil.Process(master.proc.pid)
    before = proc.memory_info().rss
    frame = _bomb(63 << 20)
    peak = [before]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            with contextlib.suppress(psutil.Error):
                peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    socks = _open_idle(master.port, 10)  # 630 MiB if all were inflated at once
    try:
        for s in socks:
            s.sendall(frame)
        for s in socks:  # the master reads, inflates, refuses and closes each one
            s.settimeout(30)
            with contextlib.suppress(OSError):
                while s.recv(65536):
                    pass
    finally:
        _close_all(socks)
        stop.set()
        watcher.join()
    after = wait_until(lambda: (rss := proc.memory_info().rss) < before + (64 << 20) and rss, 20,
                       "the master to give the memory back")
    sent = len(frame) * len(socks)
    print(f"\n{len(socks)} frames, {sent / 1e6:.1f} MB sent, each inflating to 63 MiB: master RSS "
          f"{before / 2**20:.0f} MiB before, peak {peak[0] / 2**20:.0f} MiB, {after / 2**20:.0f} MiB after")
    assert peak[0] - before < 400 << 20  # the inflate budget is 160 MiB
    assert _status(master.address)
