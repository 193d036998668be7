"""PostgreSQL as the store of record, for masters that stand in for each other.

Same contract as the embedded Store (load, append, reload, probe, stats, close): a batch passed
to ``append`` is one transaction, and ``append`` returns only once it is committed. Group
commit happens above, in the master's journal, which hands every change buffered meanwhile to
one ``append``.

Every write is fenced: the transaction starts with ``cloudq_fence(epoch)``, which holds a
share lock on the leader's lease row and aborts the transaction unless the lease's epoch is
still the one this store was opened with. A standby taking over must update that row, so it
waits for a write in flight to commit, and every write after it fails: a deposed leader (a
process that was stopped, or cut off, past its lease) cannot change anything.

Tables (schema version 1, created and migrated by ``ensure_schema``):
  cloudq_schema(version)                     one row
  cloudq_tasks(id, record json)             the latest record of each task
  cloudq_events(seq, event json)            the newest `event_retention` events
  cloudq_meta(key, value json)
  cloudq_lease(name, holder, address, epoch, expires_at)   see cloudq.store.lease
  cloudq_masters(holder, address, role, epoch, seen_at)    the masters that share the store
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import psycopg

from cloudq.errors import StoreError
from cloudq.store.changes import Op, encode_batch
from cloudq.store.store import LoadedState

log = logging.getLogger("cloudq.store")

SCHEMA_VERSION = 1
CONNECT_TIMEOUT_S = 5
FENCED = "CQ001"  # the SQLSTATE cloudq_fence raises: this master's epoch is over
_TRIM_EVERY = 1024  # events appended between two trims of the events table

_SCHEMA_V1 = """
CREATE TABLE cloudq_tasks (id text PRIMARY KEY, record json NOT NULL);
CREATE TABLE cloudq_events (seq bigserial PRIMARY KEY, event json NOT NULL);
CREATE TABLE cloudq_meta (key text PRIMARY KEY, value json NOT NULL);
CREATE TABLE cloudq_lease (
    name text PRIMARY KEY, holder text NOT NULL, address text NOT NULL,
    epoch bigint NOT NULL, expires_at timestamptz NOT NULL);
CREATE TABLE cloudq_masters (
    holder text PRIMARY KEY, address text NOT NULL, role text NOT NULL,
    epoch bigint NOT NULL, seen_at timestamptz NOT NULL);
CREATE FUNCTION cloudq_fence(expected bigint) RETURNS void AS $$
BEGIN
    PERFORM 1 FROM cloudq_lease WHERE name = 'leader' AND epoch = expected FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'epoch % no longer holds the leader lease', expected
            USING ERRCODE = 'CQ001';
    END IF;
END $$ LANGUAGE plpgsql;
"""
_MIGRATIONS = {1: _SCHEMA_V1}  # version -> the SQL that brings version - 1 to it


class Fenced(StoreError):
    """This master's epoch is over: another master leads the store now."""


def redacted(url: str) -> str:
    """The URL without its password, for logs and `status`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def connect(url: str, *, autocommit: bool = False, hold_s: float | None = None) -> psycopg.Connection:
    """A connection, or StoreError naming the server and why.

    `hold_s` bounds how long this session may hold locks without moving: the server ends it
    when it sits idle inside a transaction that long, and a statement waits at most that long
    for a lock. A leader stopped in the middle of a write (SIGSTOP, a frozen VM) would
    otherwise keep its share lock on the lease row, and with it every standby from taking
    over, for as long as it stays stopped."""
    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                               application_name="cloudq")
        if hold_s is not None:
            ms = max(int(hold_s * 1000), 1)
            conn.execute(f"SET idle_in_transaction_session_timeout = {ms}")
            conn.execute(f"SET lock_timeout = {ms}")
        conn.autocommit = autocommit
        return conn
    except psycopg.Error as err:
        raise StoreError(f"cannot reach PostgreSQL at {redacted(url)}: {_first_line(err)}") from err


def ensure_schema(url: str) -> None:
    """Creates the tables, or migrates them to SCHEMA_VERSION; refuses a newer schema.

    Masters starting together serialize on an advisory lock, so one creates and the others
    find it made."""
    with connect(url, autocommit=True) as conn:
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(7318925)")  # 'cloudq' schema lock
                conn.execute("CREATE TABLE IF NOT EXISTS cloudq_schema (version int NOT NULL)")
                row = conn.execute("SELECT version FROM cloudq_schema").fetchone()
                version = row[0] if row else 0
                if version > SCHEMA_VERSION:
                    raise StoreError(f"the store at {redacted(url)} has schema version {version};"
                                     f" this cloudq knows up to {SCHEMA_VERSION}: upgrade cloudq")
                for step in range(version + 1, SCHEMA_VERSION + 1):
                    conn.execute(_MIGRATIONS[step])
                    log.info("store schema migrated to version %d", step)
                if version == 0:
                    conn.execute("INSERT INTO cloudq_schema VALUES (%s)", (SCHEMA_VERSION,))
                elif version < SCHEMA_VERSION:
                    conn.execute("UPDATE cloudq_schema SET version = %s", (SCHEMA_VERSION,))
        except psycopg.Error as err:
            raise StoreError(f"cannot set up the store's tables at {redacted(url)}: "
                             f"{_first_line(err)}") from err


class PostgresStore:
    """The store of record on PostgreSQL, written by the master that holds `epoch`."""

    backend = "postgresql"

    def __init__(self, url: str, epoch: int, *, event_retention: int = 100_000,
                 hold_s: float = 3.0) -> None:
        if event_retention < 0:
            raise StoreError("event_retention must be >= 0")
        self.url = url
        self.epoch = epoch
        self.hold_s = hold_s  # see connect(): the leader lease's length
        self.event_retention = event_retention
        self._conn: psycopg.Connection | None = None
        self._lock = threading.Lock()  # one transaction at a time on the one connection
        self._state = "new"
        self._events_since_trim = 0
        self._counters = {"appends": 0, "changes": 0, "reconnects": 0}
        self._load_s: float | None = None

    # -- loading ----------------------------------------------------------------------------

    def load(self) -> LoadedState:
        if self._state != "new":
            raise StoreError("load() may be called only once per store")
        ensure_schema(self.url)
        started = time.perf_counter()
        state = self._read()
        self._load_s = time.perf_counter() - started
        self._state = "open"
        return state

    def _read(self) -> LoadedState:
        with self._lock:
            conn = self._connection()
            try:
                with conn.transaction():  # one snapshot of all three tables
                    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    records = {key: orjson.loads(text) for key, text in conn.execute(
                        "SELECT id, record::text FROM cloudq_tasks")}
                    events = [orjson.loads(text) for (text,) in conn.execute(
                        "SELECT event::text FROM (SELECT seq, event FROM cloudq_events "
                        "ORDER BY seq DESC LIMIT %s) newest ORDER BY seq",
                        (self.event_retention,))]
                    meta = {key: orjson.loads(text) for key, text in conn.execute(
                        "SELECT key, value::text FROM cloudq_meta")}
            except psycopg.Error as err:
                self._drop_connection()
                raise StoreError(f"cannot load the store from {redacted(self.url)}: "
                                 f"{_first_line(err)}") from err
        return LoadedState(records=records, events=events, meta=meta)

    # -- writing ----------------------------------------------------------------------------

    def append(self, changes: list[tuple]) -> None:
        """One transaction, fenced by this store's epoch; returns once it is committed."""
        _, ops = encode_batch(changes)
        if self._state != "open":
            raise StoreError("the store is closed" if self._state == "closed"
                             else "call load() first")
        trim = False
        with self._lock:
            conn = self._connection()
            events = sum(1 for kind, _, _ in ops if kind == "event")
            if self._events_since_trim + events >= _TRIM_EVERY:
                trim = True
            try:
                # No pipeline: between statements the session is "idle in transaction", which
                # the server times out (connect's hold_s). Mid-pipeline it is not, so a leader
                # stopped there would hold the fence's lock, and every takeover, indefinitely.
                with conn.transaction():
                    conn.execute("SELECT cloudq_fence(%s)", (self.epoch,))
                    _write(conn, ops)
                    if trim:
                        conn.execute(
                            "DELETE FROM cloudq_events WHERE seq <= "
                            "(SELECT max(seq) FROM cloudq_events) - %s", (self.event_retention,))
            except psycopg.Error as err:
                if err.sqlstate == FENCED:
                    raise Fenced(f"not written: epoch {self.epoch} no longer leads the store "
                                 "(another master took over)") from err
                self._drop_connection()
                raise StoreError(f"PostgreSQL at {redacted(self.url)} did not commit: "
                                 f"{_first_line(err)}") from err
            self._events_since_trim = 0 if trim else self._events_since_trim + events
            self._counters["appends"] += 1
            self._counters["changes"] += len(ops)

    # -- after a failed write ---------------------------------------------------------------

    def reload(self) -> LoadedState:
        """What is committed: the state a failed write rolls the master back to. A commit
        whose answer was lost with the connection may be in it, or not: the database says."""
        if self._state != "open":
            raise StoreError("the store is not open")
        return self._read()

    def probe(self) -> None:
        """Raises StoreError until the server answers and this epoch still leads."""
        with self._lock:
            conn = self._connection()
            try:
                with conn.transaction():
                    conn.execute("SELECT cloudq_fence(%s)", (self.epoch,))
            except psycopg.Error as err:
                if err.sqlstate == FENCED:
                    raise Fenced(f"epoch {self.epoch} no longer leads the store") from err
                self._drop_connection()
                raise StoreError(f"PostgreSQL at {redacted(self.url)}: {_first_line(err)}") from err

    # -- the connection ---------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.url, hold_s=self.hold_s)
            self._counters["reconnects"] += 1
        return self._conn

    def _drop_connection(self) -> None:
        """After an error the connection may be broken or mid-transaction: start afresh."""
        close_quietly(self._conn)
        self._conn = None

    def close(self) -> None:
        with self._lock:
            self._state = "closed"
            self._drop_connection()

    def stats(self) -> dict[str, Any]:
        return {"backend": self.backend, "database": redacted(self.url), "epoch": self.epoch,
                "load_s": self._load_s, **self._counters}

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _write(conn: psycopg.Connection, ops: list[Op]) -> None:
    """The batch as a few set-based statements, whatever its size. One transaction shows only
    its end state, so the last put or delete of each task and the last value of each meta key
    are all that is written; events go in, in their order."""
    records: dict[str, str | None] = {}  # id -> record text, None: deleted
    events: list[str] = []
    meta: dict[str, str] = {}
    for kind, key, text in ops:
        if kind == "put":
            records[key] = text
        elif kind == "del":
            records[key] = None
        elif kind == "event":
            events.append(text)
        else:
            meta[key] = text
    puts = [(key, text) for key, text in records.items() if text is not None]
    deleted = [key for key, text in records.items() if text is None]
    if deleted:
        conn.execute("DELETE FROM cloudq_tasks WHERE id = ANY(%b::text[])", (deleted,))
    if puts:
        conn.execute("INSERT INTO cloudq_tasks (id, record) SELECT id, record::json "
                     "FROM unnest(%b::text[], %b::text[]) AS batch(id, record) "
                     "ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record",
                     ([key for key, _ in puts], [text for _, text in puts]))
    if events:
        conn.execute("INSERT INTO cloudq_events (event) SELECT event::json FROM "
                     "unnest(%b::text[]) WITH ORDINALITY AS batch(event, n) ORDER BY n", (events,))
    if meta:
        conn.execute("INSERT INTO cloudq_meta (key, value) SELECT key, value::json "
                     "FROM unnest(%b::text[], %b::text[]) AS batch(key, value) "
                     "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                     (list(meta), list(meta.values())))


def close_quietly(conn: psycopg.Connection | None) -> None:
    if conn is not None:
        with contextlib.suppress(psycopg.Error):
            conn.close()


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
