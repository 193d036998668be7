"""The master process: loads the store, serves RPC, runs the processor and metrics, starts local
workers, then either opens the `master>` shell or runs as a service until SIGTERM."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import logging
import os
import resource
import secrets
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudq import defaults
from cloudq.master.core import Master, MasterConfig
from cloudq.master.journal import StoreJournal
from cloudq.master.processor import Processor
from cloudq.master.seat import Seat
from cloudq.master.service import make_service
from cloudq.master.state import consume
from cloudq.rpc.client import join_address
from cloudq.rpc.server import ConnectionSlots, start_server
from cloudq.store import Store

log = logging.getLogger("cloudq.master")


@dataclass
class MasterOptions:
    bind: str
    port: int
    data_dir: Path
    config: MasterConfig
    metrics_port: int = 0
    local_workers: int = 0
    shell: bool = True
    tls_dir: Path | None = None
    http_tls: bool = False  # the HTTP port is HTTPS, with the master's certificate
    insecure: bool = False
    max_connections: int = defaults.MAX_CONNECTIONS
    max_connections_per_peer: int = defaults.MAX_CONNECTIONS_PER_PEER
    idle_timeout_s: float = defaults.IDLE_TIMEOUT_S
    worker_args: tuple[str, ...] = ()  # passed on to local workers
    audit_log: Path | None = None  # every event as a JSON line, once durable
    audit_log_max_mb: float = defaults.AUDIT_LOG_MAX_MB
    store_url: str | None = None  # postgresql://...: masters sharing it elect a leader
    leader_lease_s: float = defaults.LEADER_LEASE_S
    advertise: str | None = None  # HOST:PORT workers reach this master at (standbys name it)


class Term:
    """One master's time as leader over a store: the store loaded, the core rebuilt from it,
    the journal, the audit log and the processor. A master on the embedded store has one term
    for its whole life; masters sharing PostgreSQL start one each time they are elected."""

    def __init__(self, store: Any, options: MasterOptions, epoch: int = 0) -> None:
        self.store = store
        state = store.load()
        journal = StoreJournal(store)
        self.master = Master(journal, options.config)
        self.master.restore(consume(state.records), state.events, state.meta)
        journal.on_failure = self.master.roll_back
        self.epoch = epoch
        self.audit = None
        if options.audit_log is not None:
            from cloudq.master.audit import AuditLog

            self.audit = AuditLog(options.audit_log, int(options.audit_log_max_mb * (1 << 20)),
                                  defaults.AUDIT_LOG_BACKUPS)
            journal.on_durable.append(self.audit.write)
        del state
        _tune_gc()
        self.processor = Processor(self.master, options.config.processor_interval_s).start()

    def close(self) -> None:
        self.master.close()  # waiting long-polls end now, refused
        self.processor.stop()
        self.store.close()
        if self.audit is not None:  # after the store: its last commits are audited too
            self.audit.close()


class MasterProcess:
    def __init__(self, options: MasterOptions) -> None:
        self.options = options
        _raise_descriptor_limit()
        _return_large_frees()
        self.term: Term | None = None
        self.campaign = None
        self.metrics = None  # the HTTP server, once started
        self._http_app: Any = None
        self._term_lock = threading.Lock()  # one election or step-down at a time
        slots = ConnectionSlots(options.max_connections, options.max_connections_per_peer)
        self.seat = Seat(role="starting")
        if options.store_url is None:
            # The embedded store: load before listening, so no call ever finds it starting.
            self._lead(0, Store(options.data_dir, event_retention=options.config.event_retention,
                                checkpoint_every=defaults.CHECKPOINT_EVERY,
                                checkpoint_interval_s=defaults.CHECKPOINT_INTERVAL_S,
                                checkpoint_growth=defaults.CHECKPOINT_GROWTH))
        self.server = start_server(make_service(self.seat), options.bind, options.port,
                                   options.tls_dir, options.insecure, slots, options.idle_timeout_s)
        self.address = f"{options.bind}:{self.server.port}"
        self.seat.address = options.advertise or _reachable(options.bind, self.server.port)
        if self.term is not None:
            self.seat.lead(self.term.master, 0)
        if options.metrics_port:
            self.metrics = self._serve_http(options)
        if options.store_url is not None:
            self._campaign(options.store_url)
        self.workers = [self._start_worker(i) for i in range(1, options.local_workers + 1)]
        print(f"cloudq master listening on {self.address} ({self._standing()})",
              file=sys.stderr, flush=True)

    def _standing(self) -> str:
        """What the first line says after the address: what was loaded, and from where."""
        term = self.term
        if self.options.store_url is None:
            assert term is not None
            return f"{len(term.master.tasks)} tasks loaded from {self.options.data_dir}; {self._security()}"
        store = _redacted(self.options.store_url)
        if term is None:
            return (f"standby, the leader is {self.seat.leader or '(being elected)'}; store {store}; "
                    f"{self._security()}")
        return (f"leader, epoch {term.epoch}, {len(term.master.tasks)} tasks loaded from {store}; "
                f"{self._security()}")

    def _security(self) -> str:
        if self.options.tls_dir is None:
            return "no TLS (--insecure): anyone who can reach the port is an operator"
        return f"TLS, certificates in {self.options.tls_dir}"

    def _campaign(self, url: str) -> None:
        """Standby, then leader once elected: waits (a little) for the first election, so a
        master alone on its store starts as leader like one on the embedded store."""
        from cloudq.master.campaign import Campaign
        from cloudq.store.lease import LeaderLease

        holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        lease = LeaderLease(url, holder, self.seat.address, self.options.leader_lease_s)
        self.campaign = Campaign(lease, self.seat, self._elected, self._step_down).start()
        # So that the first line says what this master is: leader, or standby and who leads.
        self.campaign.first_round.wait(defaults.SYNC_REQUEST_TIMEOUT_S)

    def _elected(self, epoch: int) -> None:
        from cloudq.store.postgres import PostgresStore

        store = PostgresStore(self.options.store_url or "", epoch,
                              event_retention=self.options.config.event_retention,
                              hold_s=self.options.leader_lease_s)
        self._lead(epoch, store)

    def _lead(self, epoch: int, store: Any) -> None:
        with self._term_lock:
            term = Term(store, self.options, epoch)
            if self.options.store_url is not None:  # masters sharing a store: for `status`
                term.master.leadership = self.seat.describe
            self.term = term
            if self.metrics is not None:
                self._http_app = self._leader_http(term)
            self.seat.lead(term.master, epoch)

    def _step_down(self, why: str, leader: str | None) -> None:
        with self._term_lock:
            log.warning("stepping down to standby: %s", why)
            print(f"cloudq master stepping down to standby: {why}", file=sys.stderr, flush=True)
            self.seat.stand_by(leader)
            self._http_app = self._standby_http()
            term, self.term = self.term, None
            if term is not None:
                term.close()

    def _serve_http(self, options: MasterOptions) -> Any:
        """The HTTP port: /metrics for Prometheus, the status page and its JSON at / and
        /api/...; HTTPS with the master's certificate when the master has TLS. What answers
        changes with the term: a standby shows only its role."""
        from cloudq.rpc.tls import http_context
        from cloudq.web import serve_http

        if self._http_app is None:
            self._http_app = (self._leader_http(self.term) if self.term is not None
                              else self._standby_http())
        context = http_context(options.tls_dir) if options.tls_dir and options.http_tls else None
        return serve_http(lambda environ, start: self._http_app(environ, start), options.bind,
                          options.metrics_port, ssl_context=context)

    def _leader_http(self, term: Term) -> Any:
        from cloudq.metrics import metrics_app
        from cloudq.status import status_app
        from cloudq.web import route

        return route({"/metrics": metrics_app(term.master, self.server.rejections, self.seat)},
                     default=status_app(term.master))

    def _standby_http(self) -> Any:
        from cloudq.metrics import standby_app

        return standby_app(self.seat)

    def shell_link(self) -> Any:
        """What the master's own `master>` shell talks through: the core in this process; with
        standby masters, RPC to this master, which follows the leader wherever it is."""
        from cloudq.shell.link import LocalLink, RemoteLink

        if self.options.store_url is None:
            assert self.term is not None
            return LocalLink(self.term.master, self.address)
        return RemoteLink(self._local_address(), self.options.tls_dir)

    def _local_address(self) -> str:
        """This master's RPC address as seen from its own machine."""
        host = "127.0.0.1" if self.options.bind in ("0.0.0.0", "::") else self.options.bind
        return join_address(host, self.server.port)

    def _start_worker(self, index: int) -> subprocess.Popen:
        argv = [sys.executable, "-m", "cloudq", "worker", "--master", self._local_address(),
                "--name", f"worker-{index}"]
        if "--work-dir" not in self.options.worker_args:  # two masters must not share task folders
            argv += ["--work-dir", str(self.options.data_dir.resolve() / "work" / f"worker-{index}")]
        argv += self.options.worker_args
        if self.options.tls_dir:
            from cloudq.rpc.tls import ensure_worker

            ensure_worker(self.options.tls_dir, f"worker-{index}")
            argv += ["--tls-dir", str(self.options.tls_dir)]
        else:
            argv += ["--insecure"]
        log_path = self.options.data_dir / f"worker-{index}.log"
        with open(log_path, "ab") as out:
            # A session of their own: Ctrl-C at the master's terminal is not theirs to get. But
            # they end with the master, however it ends (kill -9 included): a restarted master
            # starts its own worker-1, and an orphan of the same name would fight it.
            return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, preexec_fn=_end_with_parent)

    def serve_forever(self) -> None:
        """Service mode: until SIGTERM or SIGINT."""
        done = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: done.set())
        done.wait()

    def stop(self) -> None:
        for proc in self.workers:
            proc.terminate()
        for proc in self.workers:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self.campaign is not None:
            self.campaign.stop()  # releases the lease after the term has ended
        self.server.close()
        if self.metrics is not None:
            self.metrics.shutdown()
        with self._term_lock:
            term, self.term = self.term, None
            if term is not None:
                term.close()
        if self.campaign is not None:
            self.campaign.release()
        print("cloudq master stopped", file=sys.stderr, flush=True)


def _redacted(url: str) -> str:
    from cloudq.store.postgres import redacted

    return redacted(url)


def _reachable(bind: str, port: int) -> str:
    """This master's address for others: its bind address, or its host name when it listens
    on every interface."""
    return join_address(socket.getfqdn() if bind in ("0.0.0.0", "::", "") else bind, port)


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _end_with_parent() -> None:
    """In a local worker, before exec: SIGTERM when the master (the forking thread) dies."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: stopped by stop() only
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


_PR_SET_PDEATHSIG = 1  # from linux/prctl.h


def _raise_descriptor_limit() -> None:
    """Every worker holds two connections and every scrape one: the usual soft limit of 1,024
    descriptors is too few for a few hundred workers, so take what the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = defaults.MAX_DESCRIPTORS if hard == resource.RLIM_INFINITY else min(hard, defaults.MAX_DESCRIPTORS)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as err:
            log.warning("cannot raise the descriptor limit from %d to %d: %s", soft, wanted, err)


def _return_large_frees() -> None:
    """glibc raises its mmap threshold after a large block is freed, so the next large frames
    come from the heap and their memory is never given back. A fixed threshold keeps every
    block over 1 MiB in its own mapping, returned to the system as soon as it is freed.

    glibc also gives threads arenas of their own, up to 8 per core, each keeping what it once
    held: a master whose connection threads come and go (workers reconnecting) kept growing
    long after its state had stopped (the soak of bench/chaos: +10.5% from the 10,000th task
    to the 100,000th, 75 MB; with two arenas +6.0%, 69 MB). Two are plenty for a process whose
    threads mostly wait on the GIL."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 1 << 20)
        libc.mallopt(_M_ARENA_MAX, 2)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


_M_MMAP_THRESHOLD = -3  # from malloc.h
_M_ARENA_MAX = -8


def _tune_gc() -> None:
    """A master keeps days of tasks in memory: millions of objects that Python's cycle
    collector would otherwise scan again and again as they age. Little of the state forms
    cycles (plain reference counting frees tasks), so what was loaded at start is frozen out
    of collections and young collections run every 50,000 allocations instead of 700.
    Measured with four no-op workers: about 20% less master CPU per task."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*defaults.GC_THRESHOLDS)


def run_master(options: MasterOptions) -> int:
    os.makedirs(options.data_dir, exist_ok=True)
    process = MasterProcess(options)
    try:
        if options.shell and sys.stdin.isatty():
            # SIGTERM leaves the shell through the same clean stop as `quit`.
            signal.signal(signal.SIGTERM, _exit_on_signal)
            from cloudq.shell import run_shell

            run_shell(process.shell_link())
        else:
            process.serve_forever()
    finally:
        process.stop()
    return 0
