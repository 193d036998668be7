"""`cloudq store migrate --from DATA_DIR --to postgresql://...`: moves an embedded store into
an empty PostgreSQL database, for masters that are to share it.

The embedded store is opened (and so locked: a master still running on it is refused) and
loaded as a master would; the database must hold no tasks yet. The migration takes the leader
lease for its duration, so no master can start leading a half-copied store; it writes records,
events and meta in batches, each a fenced transaction, then reads the database back and
compares before it gives the lease up.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

from cloudq.errors import StoreError
from cloudq.store.lease import LeaderLease
from cloudq.store.postgres import PostgresStore, redacted
from cloudq.store.store import Store

BATCH = 2000  # changes per transaction
LEASE_S = 60.0  # renewed after every batch


def migrate(data_dir: Path, url: str, *, event_retention: int = 100_000) -> dict[str, Any]:
    """Copies the store in `data_dir` into the database at `url`; returns what was copied."""
    if not Path(data_dir).is_dir() or not any(Path(data_dir).iterdir()):
        raise StoreError(f"{data_dir} holds no cloudq store")
    started = time.perf_counter()
    source = Store(Path(data_dir), event_retention=event_retention)
    state = source.load()
    try:
        lease = LeaderLease(url, f"migrate:{socket.gethostname()}:{os.getpid()}",
                            "(store migrate)", LEASE_S)
        epoch = lease.try_acquire()
        if epoch is None:
            leader = lease.leader()
            raise StoreError(f"a master leads the store at {redacted(url)} "
                             f"({leader.address if leader else 'unknown'}): stop every master "
                             "on it before migrating into it")
        try:
            copied = _copy(state, PostgresStore(url, epoch, event_retention=event_retention),
                           lease, epoch)
        finally:
            lease.release(epoch)
            lease.close()
    finally:
        source.close()
    return {**copied, "from": str(data_dir), "to": redacted(url),
            "seconds": round(time.perf_counter() - started, 2)}


def _copy(state: Any, target: PostgresStore, lease: LeaderLease, epoch: int) -> dict[str, int]:
    with target:
        existing = target.load()
        if existing.records or existing.events:
            raise StoreError(f"the database at {redacted(target.url)} already holds "
                             f"{len(existing.records)} tasks and {len(existing.events)} events; "
                             "migrate into an empty one")
        changes: list[tuple] = [("put", record) for record in state.records.values()]
        changes += [("event", event) for event in state.events]
        changes += [("meta", key, value) for key, value in state.meta.items()]
        for start in range(0, len(changes), BATCH):
            target.append(changes[start:start + BATCH])
            if not lease.renew(epoch):
                raise StoreError("lost the leader lease during the migration; the database "
                                 "is partly written: empty it and run the migration again")
        copied = target.reload()
    if copied.records != state.records or copied.meta != state.meta or copied.events != state.events:
        raise StoreError("the database read back differs from the store: the migration is "
                         "not complete; empty the database and run it again")
    return {"tasks": len(state.records), "events": len(state.events), "meta": len(state.meta)}
