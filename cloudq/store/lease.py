"""The leader lease in PostgreSQL: which of the masters sharing a store leads, and its epoch.

One row, `cloudq_lease` 'leader': holder, address, epoch, expires_at. Expiry is judged by the
database's clock only (``clock_timestamp()``), so the masters' clocks never need to agree. A
master takes the lease when it is free or expired, and the epoch goes up by one with every
new holder; the holder renews it every second. Taking it is an UPDATE of that row, which waits
for the share lock a write of the old leader holds (``cloudq_fence``): a write either commits
before the new epoch exists or fails.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import psycopg

from cloudq.errors import StoreError
from cloudq.store.postgres import _first_line, close_quietly, connect, ensure_schema, redacted

_ACQUIRE = """
INSERT INTO cloudq_lease AS lease (name, holder, address, epoch, expires_at)
VALUES ('leader', %(holder)s, %(address)s, 1, clock_timestamp() + %(lease_s)s * interval '1 second')
ON CONFLICT (name) DO UPDATE
    SET holder = EXCLUDED.holder, address = EXCLUDED.address, epoch = lease.epoch + 1,
        expires_at = clock_timestamp() + %(lease_s)s * interval '1 second'
    WHERE lease.expires_at < clock_timestamp()
RETURNING epoch
"""
_RENEW = """
UPDATE cloudq_lease SET expires_at = clock_timestamp() + %(lease_s)s * interval '1 second'
WHERE name = 'leader' AND epoch = %(epoch)s AND holder = %(holder)s RETURNING epoch
"""
_RELEASE = """
UPDATE cloudq_lease SET expires_at = clock_timestamp() - interval '1 second'
WHERE name = 'leader' AND epoch = %(epoch)s AND holder = %(holder)s
"""
_LEADER = """
SELECT holder, address, epoch, extract(epoch FROM expires_at - clock_timestamp())
FROM cloudq_lease WHERE name = 'leader'
"""
_ANNOUNCE = """
INSERT INTO cloudq_masters AS m (holder, address, role, epoch, seen_at)
VALUES (%(holder)s, %(address)s, %(role)s, %(epoch)s, clock_timestamp())
ON CONFLICT (holder) DO UPDATE SET address = EXCLUDED.address, role = EXCLUDED.role,
    epoch = EXCLUDED.epoch, seen_at = EXCLUDED.seen_at
"""
_MASTERS = """
SELECT holder, address, role, epoch, extract(epoch FROM clock_timestamp() - seen_at)
FROM cloudq_masters WHERE seen_at > clock_timestamp() - %(within_s)s * interval '1 second'
ORDER BY address, holder
"""
_FORGET = "DELETE FROM cloudq_masters WHERE seen_at < clock_timestamp() - interval '1 day'"


@dataclass(frozen=True)
class Leader:
    holder: str
    address: str
    epoch: int
    expires_in_s: float  # negative once expired

    @property
    def expired(self) -> bool:
        return self.expires_in_s < 0


class LeaderLease:
    """One master's view of the lease, on a connection of its own (autocommit).

    `holder` names this master process uniquely (host, pid and a random part): a restarted
    master is a new holder and waits for the old lease to expire, unless it was released."""

    def __init__(self, url: str, holder: str, address: str, lease_s: float) -> None:
        self.url = url
        self.holder = holder
        self.address = address
        self.lease_s = lease_s
        self._conn: psycopg.Connection | None = None
        self._lock = threading.Lock()
        self._schema_ready = False

    def try_acquire(self) -> int | None:
        """The new epoch if this master now holds the lease; None while another holds it."""
        row = self._one(_ACQUIRE, holder=self.holder, address=self.address, lease_s=self.lease_s)
        return int(row[0]) if row else None

    def renew(self, epoch: int) -> bool:
        """False once `epoch` is no longer this master's (another took the lease)."""
        return self._one(_RENEW, epoch=epoch, holder=self.holder, lease_s=self.lease_s) is not None

    def release(self, epoch: int) -> None:
        """On a clean stop: a standby may take over at once instead of after the lease."""
        self._execute(_RELEASE, epoch=epoch, holder=self.holder)

    def leader(self) -> Leader | None:
        row = self._one(_LEADER)
        return Leader(row[0], row[1], int(row[2]), float(row[3])) if row else None

    def announce(self, role: str, epoch: int) -> None:
        """Says this master is alive and what it is, for the others' `status`."""
        self._execute(_ANNOUNCE, holder=self.holder, address=self.address, role=role, epoch=epoch)

    def masters(self, within_s: float) -> list[dict[str, Any]]:
        """The masters that announced themselves within `within_s` seconds."""
        rows = self._all(_MASTERS, within_s=within_s)
        return [{"address": a, "role": r, "epoch": int(e), "seen_s_ago": round(float(s), 1),
                 "self": h == self.holder} for h, a, r, e, s in rows]

    def forget_old(self) -> None:
        self._execute(_FORGET)

    def close(self) -> None:
        with self._lock:
            self._drop()

    # -- the connection ---------------------------------------------------------------------

    def _one(self, sql: str, **params: Any) -> tuple | None:
        rows = self._all(sql, **params)
        return rows[0] if rows else None

    def _all(self, sql: str, **params: Any) -> list[tuple]:
        with self._lock:
            cur = self._run(sql, params)
            return cur.fetchall() if cur.description else []

    def _execute(self, sql: str, **params: Any) -> None:
        with self._lock:
            self._run(sql, params)

    def _run(self, sql: str, params: dict[str, Any]) -> psycopg.Cursor:
        if not self._schema_ready:
            ensure_schema(self.url)
            self._schema_ready = True
        if self._conn is None or self._conn.closed:
            # A takeover waits for the old leader's write in flight, but no longer than a lease.
            self._conn = connect(self.url, autocommit=True, hold_s=self.lease_s)
        try:
            return self._conn.execute(sql, params)
        except psycopg.Error as err:
            self._drop()
            raise StoreError(f"lease at {redacted(self.url)}: {_first_line(err)}") from err

    def _drop(self) -> None:
        close_quietly(self._conn)
        self._conn = None
