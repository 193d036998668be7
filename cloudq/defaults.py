"""Every tunable constant in one place, each with what it means. Flags and environment override."""

from __future__ import annotations

# --- network -------------------------------------------------------------------------------
BIND = "127.0.0.1"  # the master listens on loopback unless told otherwise
PORT = 18861  # RPyC endpoint of the master
METRICS_PORT = 0  # Prometheus endpoint; 0 = off
MAX_CONNECTIONS = 512  # authenticated connections in total; beyond twice this, closed at once
MAX_CONNECTIONS_PER_PEER = 8  # connections one certificate (a worker) may hold at once
ADMIN_RESERVED_CONNECTIONS = 8  # of MAX_CONNECTIONS, kept for operators (admin certificate)
IDLE_TIMEOUT_S = 300.0  # a connection that sends nothing this long is closed
HTTP_MAX_CONNECTIONS = 32  # open connections to the metrics port; more get 503 and are closed
HTTP_IDLE_TIMEOUT_S = 10.0  # a metrics connection silent this long is closed
AUDIT_LOG_MAX_MB = 100  # --audit-log rotates past this size
AUDIT_LOG_BACKUPS = 5  # rotated parts kept: FILE.1 to FILE.5
SYNC_REQUEST_TIMEOUT_S = 30.0  # an RPC call that takes longer fails instead of hanging
HANDSHAKE_TIMEOUT_S = 5.0  # a peer that does not finish TLS + RPyC setup by then is dropped
# Connections from one address still in their handshake; more are closed at once. Far above
# what a worker (2) or an operator's tools need, far below the listener's cap.
MAX_HANDSHAKES_PER_ADDRESS = 64

MAX_DESCRIPTORS = 65_536  # the master raises its soft descriptor limit toward this at start

# --- master ---------------------------------------------------------------------------------
DATA_DIR = "data"  # where the journal and checkpoints live (relative to the working dir)
PROCESSOR_INTERVAL_S = 5.0  # the safety-net processor: retries, expiry, timeouts
MAX_QUEUED = 1_000_000  # submissions beyond this many queued tasks are refused
PLACEMENT_STRATEGY = "pack"  # "pack" fills one worker before the next; "spread" balances
AGING_S = 600.0  # a blocked head task older than this reserves a worker (no backfill onto it)
EVENT_RETENTION = 100_000  # newest audit events kept in the store
CHECKPOINT_EVERY = 100_000  # journalled changes between checkpoints (a longer tail loads slower)
CHECKPOINT_INTERVAL_S = 300.0  # ...or this long, whichever comes first
GC_THRESHOLDS = (50_000, 20, 100)  # the master's cycle collector (see master/app.py)
CHECKPOINT_GROWTH = 1.0  # ...but with many records kept, not before as many changes as records
KEEP_FINISHED_S = 7 * 24 * 3600.0  # finished tasks are forgotten this long after they end; 0 = never
MAX_WORKERS = 4096  # registered workers at most; a new one first displaces the longest offline
FORGET_OFFLINE_S = 24 * 3600.0  # an offline worker holding no task is forgotten after this; 0 = never
MAX_WORKERS_PER_CONNECTION = 4  # distinct worker names one connection may register
START_DEADLINE_S = 60.0  # an assigned task its worker has not started by then goes back to the queue
STALL_TIMEOUT_S = 600.0  # a transcode whose progress has not moved this long is killed and retried
QUARANTINE_AFTER = 5  # consecutive task failures on one worker before it is quarantined

# --- workers and leases --------------------------------------------------------------------
HEARTBEAT_S = 2.0  # how often a worker reports a live sample
LEASE_S = 10.0  # a worker silent this long is offline; its tasks are requeued
# Masters sharing a PostgreSQL store: the leader renews its lease every second, and a standby
# takes over once it has gone unrenewed this long (by the database's clock).
LEADER_LEASE_S = 3.0
# Longest a worker's fetch call waits for work before asking again. Work, a cancel and the
# worker's own stop (it says `leave`) all answer it at once, so this only sets how often an
# idle worker calls: each call costs the master about 0.2-0.4 ms of CPU, and 200 idle workers
# asking every second took 8% of a core for this alone.
POLL_WAIT_S = 10.0
# A worker's call the master has not answered this long after it should have (a report, or a
# fetch past its long-poll) means the master hangs: the worker leaves it for another master.
WORKER_CALL_TIMEOUT_S = 5.0
MAX_TASKS = 2  # tasks a worker runs at once unless --max-tasks says otherwise
# A worker whose work directory has less free space than this fails a task at once, saying
# so (and a failed task's error says it when the disk is this full after it ran); neither
# counts against the worker, which takes tasks again as soon as space is freed.
WORK_DIR_MIN_FREE_MB = 4

# --- tasks ------------------------------------------------------------------------------------
MAX_RETRIES = 3  # a task runs at most max_retries + 1 times
RETRY_BACKOFF_S = 5.0  # base of the exponential back-off between attempts
RETRY_BACKOFF_MAX_S = 300.0  # the back-off never grows beyond this
RETRY_JITTER = 0.2  # +/- this fraction of the back-off, so retries don't stampede
TIMEOUT_GRACE_S = 5.0  # a task past its run timeout is given up on this much later
