"""`cloudq master | worker | certs | ctl | shell`: flags, environment, then hand over to the process."""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import signal
import sys
from pathlib import Path

from cloudq import __version__, defaults
from cloudq.errors import CloudqError


def _env(name: str, default: object) -> str:
    """CLOUDQ_<NAME> overrides a default; flags override both."""
    return os.environ.get(f"CLOUDQ_{name.upper()}", str(default))


def _env_path(name: str) -> Path | None:
    raw = os.environ.get(f"CLOUDQ_{name.upper()}")
    return Path(raw) if raw else None


def _env_int(name: str, default: int) -> int:
    raw = _env(name, default)
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"cloudq: CLOUDQ_{name.upper()}={raw!r} is not a whole number") from None


def _master_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("master", help="run the master (shell, RPC endpoint, processor)")
    p.add_argument("--bind", default=_env("bind", defaults.BIND), help="address to listen on")
    p.add_argument("--port", type=int, default=_env_int("port", defaults.PORT), help="RPC port (0: any free)")
    p.add_argument("--data-dir", type=Path, default=Path(_env("data_dir", defaults.DATA_DIR)))
    p.add_argument("--store", default=os.environ.get("CLOUDQ_STORE") or None, metavar="postgresql://...",
                   help="keep the state in PostgreSQL, shared with standby masters (default: "
                        "the embedded store in --data-dir)")
    p.add_argument("--leader-lease", type=float, default=defaults.LEADER_LEASE_S, metavar="S",
                   help="with --store: seconds an unrenewed leader keeps the lease")
    p.add_argument("--advertise", default=None, metavar="HOST:PORT",
                   help="with --store: the address workers reach this master at (default: "
                        "--bind and the port, or the host name when bound to all interfaces)")
    p.add_argument("--interval", type=float, default=defaults.PROCESSOR_INTERVAL_S,
                   help="seconds between safety-net processor runs")
    p.add_argument("--metrics-port", type=int, default=_env_int("metrics_port", defaults.METRICS_PORT),
                   help="Prometheus endpoint port (0: off)")
    p.add_argument("--local-workers", type=int, default=0, help="start N workers on this machine")
    p.add_argument("--local-worker-args", default="", help="extra flags for local workers, one string")
    p.add_argument("--no-shell", action="store_true", help="run as a service: log to stderr, stop on SIGTERM")
    p.add_argument("--tls-dir", type=Path, default=_env_path("tls_dir"),
                   help="cluster certificates (cloudq certs init); default: made on first start "
                        "in DATA_DIR/tls")
    p.add_argument("--insecure", action="store_true",
                   help="no TLS: anyone who can reach the port is an operator")
    p.add_argument("--lease", type=float, default=defaults.LEASE_S, help="seconds a silent worker keeps its tasks")
    p.add_argument("--heartbeat", type=float, default=defaults.HEARTBEAT_S, help="seconds between worker heartbeats")
    p.add_argument("--strategy", choices=("pack", "spread"), default=defaults.PLACEMENT_STRATEGY)
    p.add_argument("--max-queued", type=int, default=defaults.MAX_QUEUED)
    p.add_argument("--aging", type=float, default=defaults.AGING_S,
                   help="seconds a blocked task waits before it reserves a worker")
    p.add_argument("--quarantine-after", type=int, default=defaults.QUARANTINE_AFTER)
    p.add_argument("--keep-finished", type=float, default=defaults.KEEP_FINISHED_S,
                   help="seconds a finished task is kept before it is forgotten (0: forever)")
    p.add_argument("--keep-events", type=int, default=defaults.EVENT_RETENTION, metavar="N",
                   help="newest events kept, in memory and in the store, for `events` and `show`")
    p.add_argument("--max-connections", type=int, default=defaults.MAX_CONNECTIONS,
                   help="RPC connections in total (the last few kept for operators)")
    p.add_argument("--max-connections-per-peer", type=int, default=defaults.MAX_CONNECTIONS_PER_PEER,
                   help="RPC connections one certificate may hold")
    p.add_argument("--idle-timeout", type=float, default=defaults.IDLE_TIMEOUT_S,
                   help="seconds an RPC connection may send nothing before it is closed")
    p.add_argument("--max-workers", type=int, default=defaults.MAX_WORKERS,
                   help="registered workers at most (the longest offline are forgotten first)")
    p.add_argument("--forget-offline", type=float, default=defaults.FORGET_OFFLINE_S,
                   help="seconds an offline worker with no tasks is kept in `workers` (0: forever)")
    p.add_argument("--start-deadline", type=float, default=defaults.START_DEADLINE_S,
                   help="seconds an assigned task may wait for its worker to start it")
    p.add_argument("--stall-timeout", type=float, default=defaults.STALL_TIMEOUT_S, metavar="S",
                   help="kill and retry a transcode whose progress stood still this long (0: never)")
    p.add_argument("--max-run", default="", metavar="CLASS=S,...",
                   help="longest run of a task without its own --timeout, by queue class, "
                        "e.g. live=1800,batch=86400")
    p.add_argument("--unschedulable-ttl", type=float, default=0.0, metavar="S",
                   help="fail a queued task no registered worker could ever run after S (0: never)")
    p.add_argument("--audit-log", type=Path, metavar="FILE",
                   help="append every event to FILE as JSON lines, once durable (rotated by size)")
    p.add_argument("--audit-log-max-mb", type=float, default=defaults.AUDIT_LOG_MAX_MB,
                   help=f"rotate the audit log past this size; {defaults.AUDIT_LOG_BACKUPS} old parts kept")


def _worker_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="run a worker that connects to the master")
    p.add_argument("--master", default=_env("master", f"127.0.0.1:{defaults.PORT}"), help="HOST:PORT")
    p.add_argument("--name", default=None, help="worker name (default: host name)")
    p.add_argument("--max-tasks", type=int, default=defaults.MAX_TASKS)
    p.add_argument("--labels", default="", help="k=v,k2=v2")
    p.add_argument("--cpu-cores", type=float, help="cores to offer (default: all)")
    p.add_argument("--mem-gb", type=float, help="memory to offer (default: all)")
    p.add_argument("--work-dir", type=Path, default=None, help="where task directories live")
    _client_tls_flags(p)
    p.add_argument("--allow-pull", action="store_true", help="pull missing container images")
    p.add_argument("--input-root", action="append", default=[], metavar="NAME=PATH",
                   help="a storage root tasks read as NAME:PATH (repeatable); a plain PATH is a "
                        "directory plain FFmpeg input paths may be read from")
    p.add_argument("--output-root", action="append", default=[], metavar="NAME=PATH",
                   help="a storage root tasks write outputs to as NAME:PATH (repeatable)")
    p.add_argument("--container-mem-default", type=float, default=None, metavar="GB",
                   help="memory limit of a container whose task asks for none "
                        "(default: offered memory / max tasks)")
    p.add_argument("--exec-user", default="nobody",
                   help="user a root worker runs exec and ffmpeg tasks as (default: nobody)")
    p.add_argument("--exec-uid-base", type=int, default=None, metavar="UID",
                   help="give each running task its own uid, UID + slot (default: all share "
                        "--exec-user's)")
    p.add_argument("--metrics-port", type=int, default=0, metavar="N",
                   help="serve this worker's Prometheus metrics on port N (default 0: off)")
    p.add_argument("--metrics-bind", default=defaults.BIND, metavar="ADDR",
                   help=f"address the metrics port listens on (default {defaults.BIND})")


def _certs_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("certs", help="cluster CA and certificates")
    certs = p.add_subparsers(dest="certs_command", required=True)
    init = certs.add_parser("init", help="make a CA plus master, admin and worker certificates")
    init.add_argument("dir", type=Path)
    init.add_argument("--workers", default="", help="worker names, comma-separated")
    init.add_argument("--hosts", default="", help="extra names/addresses of the master, comma-separated")
    issue = certs.add_parser("issue", help="add a worker certificate to an existing CA")
    issue.add_argument("dir", type=Path)
    issue.add_argument("name")
    revoke = certs.add_parser("revoke", help="revoke a worker's certificate: the master refuses "
                                             "it at once and closes its connections")
    revoke.add_argument("dir", type=Path)
    revoke.add_argument("name")


def _store_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("store", help="the master's store: move it to PostgreSQL")
    actions = p.add_subparsers(dest="action", required=True)
    move = actions.add_parser("migrate", help="copy an embedded store into an empty PostgreSQL "
                                             "database (every master on it stopped)")
    move.add_argument("--from", dest="source", type=Path, required=True, metavar="DATA_DIR")
    move.add_argument("--to", dest="target", required=True, metavar="postgresql://...")


def _ctl_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ctl", help="run one operator command against a running master")
    p.add_argument("--master", default=_env("master", f"127.0.0.1:{defaults.PORT}"), help="HOST:PORT")
    _client_tls_flags(p)
    p.add_argument("--json", action="store_true", help="print the data as JSON")
    p.add_argument("--timeout", type=float, default=defaults.SYNC_REQUEST_TIMEOUT_S,
                   help="seconds to wait for the master's answer")
    p.add_argument("words", nargs=argparse.REMAINDER, help="the command and its arguments")


def _shell_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("shell", help="the master> shell, against a master running elsewhere")
    p.add_argument("--master", default=_env("master", f"127.0.0.1:{defaults.PORT}"), help="HOST:PORT")
    _client_tls_flags(p)
    p.add_argument("--timeout", type=float, default=defaults.SYNC_REQUEST_TIMEOUT_S,
                   help="seconds to wait for the master's answer")


def _client_tls_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tls-dir", type=Path, default=_env_path("tls_dir"),
                   help="the cluster's certificates (default: DATA_DIR/tls when readable, as a "
                        "master started without --tls-dir makes it)")
    p.add_argument("--insecure", action="store_true",
                   help="connect without TLS, to a master started with --insecure")
    p.add_argument("--data-dir", type=Path, default=Path(_env("data_dir", defaults.DATA_DIR)),
                   help="the master's data directory on this machine: the default --tls-dir "
                        "is its tls/ folder")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cloudq", description="A cluster task queue.")
    parser.add_argument("--version", action="version", version=f"cloudq {__version__}")
    parser.add_argument("--log-level", default=os.environ.get("CLOUDQ_LOG_LEVEL"),
                        help="DEBUG, INFO, WARNING... (default: INFO; WARNING under the master> shell)")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_master_parser, _worker_parser, _certs_parser, _store_parser, _ctl_parser,
                _shell_parser):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # How long a busy thread may keep the GIL before a waiting one gets it. Python's 5 ms is
    # kept by default: shorter intervals measured 20% more CPU per task under load.
    if "CLOUDQ_SWITCH_INTERVAL" in os.environ:
        sys.setswitchinterval(float(os.environ["CLOUDQ_SWITCH_INTERVAL"]))
    quiet_shell = args.command == "shell" or (args.command == "master" and not args.no_shell)
    level = (args.log_level or ("WARNING" if quiet_shell else "INFO")).upper()
    if level not in logging.getLevelNamesMapping():
        raise SystemExit(f"cloudq: unknown log level {args.log_level!r}")
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # `kill -USR1 PID` prints every thread's stack to stderr: what a hung process is waiting
    # for, without stopping it.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        return _run(args)
    except CloudqError as err:
        print(f"cloudq: {err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.command == "master":
        return _master(args)
    if args.command == "worker":
        return _worker(args)
    if args.command == "certs":
        return _certs(args)
    if args.command == "shell":
        return _shell(args)
    if args.command == "store":
        return _store(args)
    return _ctl(args)


def _client_tls(args: argparse.Namespace) -> Path | None:
    """The certificates a client presents: --tls-dir, or none with --insecure, or those a
    master on this machine made in its data directory, when they can be read (by the user who
    started it); otherwise none, and a master using TLS will say it needs them."""
    if args.insecure:
        if args.tls_dir is not None:
            raise CloudqError("--insecure connects without TLS: leave out --tls-dir (or CLOUDQ_TLS_DIR)")
        return None
    if args.tls_dir is not None:
        return args.tls_dir
    from cloudq.rpc import tls

    found = tls.default_dir(args.data_dir)
    return found if os.access(found / "ca.pem", os.R_OK) else None


def _master_tls(args: argparse.Namespace) -> tuple[Path | None, bool]:
    """The master's certificates, and whether its HTTP port uses them. By default they are
    made in DATA_DIR/tls on the first start, and the HTTP port stays plain on loopback (a
    browser or Prometheus there would not know this CA); off loopback, or with certificates
    of the operator's own (--tls-dir), it is HTTPS."""
    from cloudq.rpc import tls
    from cloudq.rpc.server import is_loopback

    if args.insecure:
        if args.tls_dir is not None:
            raise CloudqError("--insecure means no TLS: leave out --tls-dir (or CLOUDQ_TLS_DIR)")
        return None, False
    if args.tls_dir is not None:
        return args.tls_dir, True
    if args.store is not None:
        raise CloudqError("masters sharing --store need one CA between them: give each the same "
                          "--tls-dir (`cloudq certs init DIR`), or --insecure")
    directory = tls.default_dir(args.data_dir)
    hosts = ["localhost", "127.0.0.1", "::1"]
    if args.bind not in ("0.0.0.0", "::", *hosts):
        hosts.append(args.bind)
    if tls.ensure_cluster(directory, hosts):
        print(f"cloudq: made the cluster's CA and certificates in {directory} (TLS on every "
              f"connection; add a worker's with `cloudq certs issue {directory} NAME`)",
              file=sys.stderr, flush=True)
    return directory, not is_loopback(args.bind)


def _store(args: argparse.Namespace) -> int:
    from cloudq.store.migrate import migrate

    if not args.target.startswith(("postgresql://", "postgres://")):
        raise CloudqError(f"--to {args.target!r}: give a PostgreSQL URL, postgresql://USER@HOST/DB")
    done = migrate(args.source, args.target)
    print(f"copied {done['tasks']} tasks, {done['events']} events and {done['meta']} settings "
          f"from {done['from']} to {done['to']} in {done['seconds']:g} s; start the masters "
          f"with --store {done['to']}")
    return 0


def _master(args: argparse.Namespace) -> int:
    import shlex

    from cloudq.master.app import MasterOptions, run_master
    from cloudq.master.core import MasterConfig

    config = MasterConfig(
        processor_interval_s=args.interval, lease_s=args.lease, heartbeat_s=args.heartbeat,
        max_queued=args.max_queued, strategy=args.strategy, aging_s=args.aging,
        quarantine_after=args.quarantine_after, keep_finished_s=args.keep_finished,
        max_workers=args.max_workers, forget_offline_s=args.forget_offline,
        start_deadline_s=args.start_deadline, stall_timeout_s=args.stall_timeout,
        max_run_s=_max_run(args.max_run), unschedulable_ttl_s=args.unschedulable_ttl,
        event_retention=args.keep_events,
    )
    for flag, value in (("--max-connections", args.max_connections),
                        ("--max-connections-per-peer", args.max_connections_per_peer),
                        ("--max-workers", args.max_workers)):
        if value < 1:
            raise CloudqError(f"{flag} must be at least 1")
    if args.keep_events < 100:
        raise CloudqError("--keep-events must be at least 100")
    if args.stall_timeout < 0 or args.unschedulable_ttl < 0:
        raise CloudqError("--stall-timeout and --unschedulable-ttl must be 0 (off) or more seconds")
    if not args.audit_log_max_mb > 0:
        raise CloudqError("--audit-log-max-mb must be a size in MB above 0")
    if args.store is not None and not args.store.startswith(("postgresql://", "postgres://")):
        raise CloudqError(f"--store {args.store!r}: give a PostgreSQL URL, "
                          "postgresql://USER@HOST:PORT/DATABASE (leave it out for the embedded store)")
    if not 0.5 <= args.leader_lease <= 600:
        raise CloudqError("--leader-lease must be 0.5 to 600 seconds")
    if args.max_connections <= defaults.ADMIN_RESERVED_CONNECTIONS:
        raise CloudqError(f"--max-connections must be over the {defaults.ADMIN_RESERVED_CONNECTIONS} "
                          f"connections kept for operators")
    tls_dir, http_tls = _master_tls(args)
    return run_master(MasterOptions(
        bind=args.bind, port=args.port, data_dir=args.data_dir, config=config,
        metrics_port=args.metrics_port, local_workers=args.local_workers, shell=not args.no_shell,
        tls_dir=tls_dir, http_tls=http_tls, insecure=args.insecure, max_connections=args.max_connections,
        max_connections_per_peer=args.max_connections_per_peer, idle_timeout_s=args.idle_timeout,
        worker_args=tuple(shlex.split(args.local_worker_args)),
        audit_log=args.audit_log, audit_log_max_mb=args.audit_log_max_mb,
        store_url=args.store, leader_lease_s=args.leader_lease, advertise=args.advertise,
    ))


def _max_run(text: str) -> dict[str, float]:
    """--max-run live=1800,batch=86400: seconds by queue class."""
    from cloudq.core.model import QueueClass

    out: dict[str, float] = {}
    for item in (part.strip() for part in text.split(",") if part.strip()):
        name, sep, value = item.partition("=")
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if not sep or name not in {q.value for q in QueueClass} or not seconds > 0:
            raise CloudqError(f"--max-run {item!r}: give CLASS=SECONDS, CLASS one of live, default, "
                              f"batch, and seconds above 0")
        out[name] = seconds
    return out


def _worker(args: argparse.Namespace) -> int:
    import socket
    import tempfile

    from cloudq.core.model import check_name, parse_labels
    from cloudq.worker.agent import WorkerOptions, run_worker
    from cloudq.worker.runners.storage import parse_root_flags

    name = check_name("worker name", args.name or socket.gethostname())
    if args.max_tasks < 1:
        raise CloudqError("--max-tasks must be at least 1")
    if args.container_mem_default is not None and not args.container_mem_default > 0:
        raise CloudqError("--container-mem-default must be a number of GB above 0")
    if args.exec_uid_base is not None and not 1000 <= args.exec_uid_base <= 2**32 - 2**16:
        raise CloudqError("--exec-uid-base must be an unused uid range start, 1000 to 4294901760")
    if not 0 <= args.metrics_port <= 65535:
        raise CloudqError("--metrics-port must be a port number, 1 to 65535 (0: off)")
    input_roots, roots = parse_root_flags(args.input_root, args.output_root)
    work_dir = args.work_dir or Path(tempfile.gettempdir()) / "cloudq-work" / name
    tls_dir = _client_tls(args)
    if tls_dir is not None:
        _worker_certificate(tls_dir, name)
    return run_worker(WorkerOptions(
        master=args.master, name=name, max_tasks=args.max_tasks, labels=parse_labels(args.labels or None),
        cpu_cores=args.cpu_cores, mem_gb=args.mem_gb, work_dir=work_dir, tls_dir=tls_dir,
        allow_pull=args.allow_pull, input_roots=tuple(input_roots), roots=roots,
        container_mem_default_gb=args.container_mem_default, exec_user=args.exec_user,
        exec_uid_base=args.exec_uid_base, metrics_port=args.metrics_port,
        metrics_bind=args.metrics_bind,
    ))


def _worker_certificate(tls_dir: Path, name: str) -> None:
    """A worker whose --tls-dir holds the CA's key (on the master's machine, using the
    master's own directory) gets a certificate issued in its name when it has none; elsewhere
    the operator issues it (`cloudq certs issue`) and copies it over."""
    from cloudq.rpc import tls

    if tls.ensure_worker(tls_dir, name):
        print(f"cloudq: issued a worker certificate for {name!r} in {tls_dir}", file=sys.stderr, flush=True)


def _certs(args: argparse.Namespace) -> int:
    from cloudq.rpc import tls

    if args.certs_command == "init":
        workers = [w for w in args.workers.split(",") if w]
        hosts = [h for h in args.hosts.split(",") if h] or ["localhost", "127.0.0.1"]
        written = tls.init_cluster(args.dir, workers, hosts)
    elif args.certs_command == "revoke":
        from cloudq.rpc.revocation import CRL_FILE, revoke

        serial = revoke(args.dir, args.name)
        print(f"revoked {args.name!r} (serial {serial:x}) in {args.dir / CRL_FILE}; a master using "
              f"{args.dir} refuses it from now on and closes its connections")
        return 0
    else:
        written = tls.issue_worker(args.dir, args.name)
    for path in written:
        print(path)
    return 0


def _shell(args: argparse.Namespace) -> int:
    from cloudq.shell import run_shell
    from cloudq.shell.link import RemoteLink

    if not args.timeout > 0:
        raise CloudqError("--timeout must be a number of seconds above 0")
    if not sys.stdin.isatty():
        raise CloudqError("the shell needs a terminal; from a script, use `cloudq ctl`")
    try:
        link = RemoteLink(args.master, _client_tls(args), args.timeout)
    except ConnectionError as err:
        raise CloudqError(f"cannot reach the master at {args.master}: {err}") from None
    try:
        run_shell(link)
    finally:
        link.close()
    return 0


def _ctl(args: argparse.Namespace) -> int:
    from cloudq.ctl import run_ctl

    words = [w for w in args.words if w != "--json"]
    if not words:
        raise CloudqError("ctl needs a command, e.g. `cloudq ctl status`")
    if not args.timeout > 0:
        raise CloudqError("--timeout must be a number of seconds above 0")
    return run_ctl(args.master, _client_tls(args), words, args.json or "--json" in args.words, args.timeout)
