"""The PostgreSQL store and the leader lease against a real server: the store's contract,
fencing by epoch, the lease's expiry by the database's clock, and a server restart."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from cloudq.errors import StoreError
from cloudq.store import Encoded, dumps
from cloudq.store.lease import LeaderLease
from cloudq.store.postgres import (
    SCHEMA_VERSION,
    Fenced,
    PostgresStore,
    close_quietly,
    connect,
    ensure_schema,
)
from tests.postgres import PostgresServer
from tests.store.taskdata import make_event, make_task


@pytest.fixture
def url(postgres: PostgresServer) -> str:
    return postgres.new_database()


def lead(url: str, name: str = "m1", lease_s: float = 5.0) -> tuple[LeaderLease, int]:
    lease = LeaderLease(url, name, f"{name}:18861", lease_s)
    epoch = lease.try_acquire()
    assert epoch is not None
    return lease, epoch


def test_round_trip_of_puts_deletes_events_and_meta(url: str) -> None:
    lease, epoch = lead(url)
    with PostgresStore(url, epoch) as store:
        assert store.load().records == {}
        record = {**make_task(1), "name": "naïve \u0000 zero"}
        store.append([("put", record), ("put", make_task(2)), ("event", make_event(1))])
        store.append([("put", Encoded("t-0000002", dumps({**make_task(2), "state": "done"}))),
                      ("put", make_task(3)), ("del", "t-0000003"), ("del", "no-such-id")])
        store.append([("meta", "cluster", {"name": "farm"}), ("meta", "next", 4)])
    with PostgresStore(url, epoch) as store:
        state = store.load()
    assert state.records == {"t-0000001": record, "t-0000002": {**make_task(2), "state": "done"}}
    assert state.events == [make_event(1)]
    assert state.meta == {"cluster": {"name": "farm"}, "next": 4}


def test_a_malformed_batch_writes_nothing(url: str) -> None:
    _, epoch = lead(url)
    with PostgresStore(url, epoch) as store:
        store.load()
        with pytest.raises(StoreError, match="malformed"):
            store.append([("put", make_task(1)), ("bogus",)])
        with pytest.raises(StoreError, match="not storable"):
            store.append([("put", make_task(2)), ("event", {"x": float("nan"), "y": {1, 2}})])
        assert store.reload().records == {}


def test_events_keep_the_newest_retention(url: str) -> None:
    _, epoch = lead(url)
    with PostgresStore(url, epoch, event_retention=10) as store:
        store.load()
        for start in range(0, 1100, 100):  # passes a trim, which keeps the newest ten
            store.append([("event", make_event(i)) for i in range(start, start + 100)])
        assert store.reload().events == [make_event(i) for i in range(1090, 1100)]
    with psycopg.connect(url) as conn:
        kept = conn.execute("SELECT count(*) FROM cloudq_events").fetchone()[0]
    assert kept < 200  # trimmed in the database, not only on load


def test_the_lease_is_taken_once_and_goes_up_by_one_epoch_per_holder(url: str) -> None:
    ensure_schema(url)
    leases = [LeaderLease(url, f"m{i}", f"host{i}:18861", 0.5) for i in range(4)]
    won: list[int | None] = [None] * 4
    start = threading.Barrier(4)

    def compete(i: int) -> None:
        start.wait()
        won[i] = leases[i].try_acquire()

    threads = [threading.Thread(target=compete, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, epoch in enumerate(won) if epoch is not None]
    assert len(winners) == 1 and won[winners[0]] == 1
    holder = leases[winners[0]]
    other = leases[(winners[0] + 1) % 4]
    assert other.try_acquire() is None
    assert holder.renew(1)
    leader = other.leader()
    assert leader is not None and leader.address == holder.address and not leader.expired
    # Not renewed: it expires by the database's clock, and the next holder gets epoch 2.
    deadline = time.monotonic() + 5
    while (epoch := other.try_acquire()) is None:
        assert time.monotonic() < deadline, "the lease never expired"
        time.sleep(0.05)
    assert epoch == 2
    assert not holder.renew(1)  # the old holder learns it lost the lease
    other.release(2)
    assert holder.try_acquire() == 3  # released: taken at once


def test_a_deposed_epoch_writes_nothing(url: str) -> None:
    old_lease, old_epoch = lead(url, "old", lease_s=0.3)
    old = PostgresStore(url, old_epoch)
    old.load()
    old.append([("put", make_task(1))])
    new_lease = LeaderLease(url, "new", "new:18861", 5)
    while (new_epoch := new_lease.try_acquire()) is None:
        time.sleep(0.05)
    with pytest.raises(Fenced, match="no longer leads"):
        old.append([("put", {**make_task(1), "state": "done"}), ("put", make_task(2))])
    with pytest.raises(Fenced):
        old.probe()
    old.close()
    with PostgresStore(url, new_epoch) as new:
        assert new.load().records == {"t-0000001": make_task(1)}


def test_a_takeover_waits_for_the_leaders_write_in_flight(url: str) -> None:
    """The share lock of cloudq_fence: the new epoch is made after the old leader's
    transaction ends, never during it."""
    _, epoch = lead(url, "old", lease_s=0.2)
    time.sleep(0.3)  # expired, not yet taken
    with psycopg.connect(url) as conn:  # a write of the old leader, held open
        conn.execute("SELECT cloudq_fence(%s)", (epoch,))
        conn.execute("INSERT INTO cloudq_meta VALUES ('inflight', '1')")
        taken: list[int | None] = []
        taker = threading.Thread(target=lambda: taken.append(
            LeaderLease(url, "new", "new:1", 5).try_acquire()))
        taker.start()
        taker.join(0.5)
        assert taker.is_alive() and not taken  # waits for the write in flight
        conn.commit()
    taker.join(5)
    assert taken == [epoch + 1]


def test_a_leader_stopped_mid_write_does_not_block_the_takeover(url: str) -> None:
    """A leader frozen inside a transaction (SIGSTOP, a paused VM) holds the fence's share
    lock: the server ends its session after hold_s idle, so the takeover goes through."""
    _, epoch = lead(url, "old", lease_s=0.3)
    frozen = connect(url, hold_s=0.5)  # as PostgresStore opens its connection
    frozen.execute("SELECT cloudq_fence(%s)", (epoch,))  # ...and then nothing more
    time.sleep(0.4)  # the lease has expired
    started = time.monotonic()
    taken = LeaderLease(url, "new", "new:1", 5).try_acquire()
    waited = time.monotonic() - started
    while taken is None:  # the lock wait may time out once before the session is ended
        taken = LeaderLease(url, "new", "new:1", 5).try_acquire()
        waited = time.monotonic() - started
    assert taken == epoch + 1 and waited < 3.0
    with pytest.raises(psycopg.Error, match="idle-in-transaction timeout"):
        frozen.execute("INSERT INTO cloudq_meta VALUES ('late', '1')")  # its session is gone
    close_quietly(frozen)


def test_the_schema_is_versioned_and_a_newer_one_refused(url: str) -> None:
    ensure_schema(url)
    ensure_schema(url)  # idempotent
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT version FROM cloudq_schema").fetchone() == (SCHEMA_VERSION,)
        conn.execute("UPDATE cloudq_schema SET version = version + 1")
    with pytest.raises(StoreError, match="upgrade cloudq"):
        ensure_schema(url)


def test_an_unreachable_server_is_a_clear_error() -> None:
    store = PostgresStore("postgresql://nobody@127.0.0.1:1/none", 1)
    with pytest.raises(StoreError, match="cannot reach PostgreSQL at .*127.0.0.1:1"):
        store.load()


def test_writes_fail_while_the_server_is_down_and_resume_after(url: str, postgres: PostgresServer) -> None:
    _, epoch = lead(url, lease_s=60)
    store = PostgresStore(url, epoch)
    store.load()
    store.append([("put", make_task(1))])
    postgres.stop()
    try:
        with pytest.raises(StoreError, match="did not commit|cannot reach"):
            store.append([("put", make_task(2))])
        with pytest.raises(StoreError):
            store.probe()
    finally:
        postgres.start()
    store.probe()
    assert store.reload().records == {"t-0000001": make_task(1)}
    store.append([("put", make_task(3))])
    assert set(store.reload().records) == {"t-0000001", "t-0000003"}
    store.close()
