"""Unit tests of Store: round trips through close and reload, checkpoints, retention, stats."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from tinydb import Query, TinyDB

from cloudq.errors import StoreError
from cloudq.store import Encoded, LoadedState, Store, dumps
from cloudq.store.checkpoint import CheckpointStorage, CorruptCheckpoint
from tests.store.taskdata import make_event, make_task, submit

OpenStore = Callable[..., Store]


def reload(open_store: OpenStore, **options: object) -> tuple[Store, LoadedState]:
    store = open_store(**options)
    return store, store.load()


def test_empty_directory_loads_empty_and_is_created(open_store: OpenStore, data_dir: Path) -> None:
    store, state = reload(open_store)
    assert state == LoadedState(records={}, events=[], meta={})
    assert data_dir.is_dir()
    assert store.stats()["records"] == 0


def test_put_del_event_meta_round_trip(open_store: OpenStore) -> None:
    store, _ = reload(open_store)
    store.append([("put", make_task(1)), ("put", make_task(2)), ("event", make_event(1))])
    store.append([("put", {**make_task(1), "state": "running"}), ("del", "t-0000002")])
    store.append([("meta", "epoch", 3), ("meta", "cluster", {"name": "farm"})])
    store.append([("meta", "epoch", 4), ("del", "no-such-id")])
    store.close()

    _, state = reload(open_store)
    assert state.records == {"t-0000001": {**make_task(1), "state": "running"}}
    assert state.events == [make_event(1)]
    assert state.meta == {"epoch": 4, "cluster": {"name": "farm"}}


def test_encoded_records_are_stored_as_given(open_store: OpenStore) -> None:
    store, _ = reload(open_store)
    record = {**make_task(1), "name": "naïve"}
    store.append([("put", Encoded(record["id"], dumps(record)))])
    store.append([("put", Encoded("t-0000002", dumps(make_task(2))))])
    store.checkpoint()
    store.append([("put", Encoded("t-0000002", dumps({**make_task(2), "state": "done"})))])
    store.close()
    _, state = reload(open_store)
    assert state.records == {record["id"]: record, "t-0000002": {**make_task(2), "state": "done"}}


def test_checkpoint_then_more_appends_then_reload(open_store: OpenStore) -> None:
    store, _ = reload(open_store)
    for seq in range(30):
        store.append(submit(seq))
    store.checkpoint()
    for seq in range(30, 45):
        store.append(submit(seq))
    store.append([("del", make_task(0)["id"]), ("meta", "k", "v")])
    store.close()

    store, state = reload(open_store)
    assert sorted(state.records) == sorted(make_task(seq)["id"] for seq in range(1, 45))
    assert [event["seq"] for event in state.events] == list(range(45))
    assert state.meta == {"k": "v"}
    assert store.stats()["loaded_from"] == "checkpoint.json"
    assert store.stats()["checkpoint_lsn"] == 30  # the rest came from the journal


def test_checkpoint_is_readable_by_tinydb(open_store: OpenStore, data_dir: Path) -> None:
    store, _ = reload(open_store)
    for seq in range(5):
        store.append(submit(seq))
    store.append([("meta", "epoch", 7)])
    store.checkpoint()
    store.close()

    db = TinyDB(data_dir / "checkpoint.json", access_mode="r")  # TinyDB's own JSON storage
    assert db.table("records").all() == [make_task(seq) for seq in range(5)]
    assert db.table("events").all() == [make_event(seq) for seq in range(5)]
    assert db.table("meta").all() == [{"key": "epoch", "value": 7}]
    db.close()


def test_checkpoint_storage_is_how_tinydb_opens_a_checkpoint(open_store: OpenStore, data_dir: Path) -> None:
    store, _ = reload(open_store)
    for seq in range(5):
        store.append(submit(seq))
    store.checkpoint()
    store.close()
    path = data_dir / "checkpoint.json"

    with TinyDB(path, storage=CheckpointStorage) as db:  # read-only unless asked otherwise
        records = db.table("records")
        assert records.search(Query().id == make_task(3)["id"]) == [make_task(3)]
        with pytest.raises(PermissionError, match="read-only"):
            records.update({"name": "renamed"}, Query().id == make_task(3)["id"])
    # With the master stopped, an operator's script may change it: the file stays a whole,
    # checksummed checkpoint of the same journal position, which the store then loads.
    with TinyDB(path, storage=CheckpointStorage, access_mode="r+") as db:
        db.table("records").update({"name": "renamed"}, Query().id == make_task(3)["id"])
    assert (data_dir / "checkpoint.json.old").exists()
    _, state = reload(open_store)
    assert state.records[make_task(3)["id"]]["name"] == "renamed"
    assert len(state.records) == 5

    path.write_bytes(path.read_bytes().replace(b"renamed", b"RENAMED"))  # not through TinyDB
    with TinyDB(path, storage=CheckpointStorage) as db, pytest.raises(CorruptCheckpoint, match="checksum"):
        db.table("records").all()


@pytest.mark.parametrize("checkpoint_midway", [False, True])
def test_event_retention_keeps_the_newest(open_store: OpenStore, checkpoint_midway: bool) -> None:
    store, _ = reload(open_store, event_retention=10)
    for seq in range(25):
        store.append([("event", make_event(seq))])
        if checkpoint_midway and seq == 17:
            store.checkpoint()
    assert store.stats()["events"] == 10
    store.close()

    store, state = reload(open_store, event_retention=10)
    assert [event["seq"] for event in state.events] == list(range(15, 25))
    store.close()
    store, state = reload(open_store, event_retention=4)  # a smaller limit applies on load
    assert [event["seq"] for event in state.events] == list(range(21, 25))


def test_stats(open_store: OpenStore) -> None:
    store, _ = reload(open_store)
    for seq in range(6):
        store.append(submit(seq))
    store.append([("del", make_task(0)["id"])])
    before = store.stats()
    assert before["records"] == 5 and before["events"] == 6
    assert before["appends"] == 7 and before["changes"] == 13 and before["lsn"] == 7
    assert before["fsyncs"] == 7 and before["commits"] == 7  # one thread: one fsync each
    assert before["journal_bytes"] > 6 * 600
    assert before["checkpoints"] == 0 and before["last_checkpoint_s"] is None
    store.checkpoint()
    after = store.stats()
    assert after["checkpoints"] == 1 and after["checkpoint_lsn"] == 7
    assert after["last_checkpoint_s"] > 0 and after["changes_since_checkpoint"] == 0


def test_fsync_off_counts_no_fsyncs(open_store: OpenStore) -> None:
    store, _ = reload(open_store, fsync=False)
    store.append(submit(1))
    assert store.stats()["fsyncs"] == 0 and store.stats()["commits"] == 1


def test_non_finite_numbers_are_stored_as_null(open_store: OpenStore) -> None:
    store, _ = reload(open_store)
    store.append([("put", {"id": "x", "nan": float("nan"), "inf": float("inf")})])
    store.close()
    _, state = reload(open_store)
    assert state.records["x"] == {"id": "x", "nan": None, "inf": None}


@pytest.mark.parametrize(
    "changes",
    [
        [],
        [("put", {"name": "no id"})],
        [("put", {"id": 5})],
        [("del", 5)],
        [("event", "not a dict")],
        [("meta", 1, "key not a string")],
        [("frobnicate", 1)],
        [("put", {"id": "x", "obj": object()})],
        [("put", make_task(1)), ("put", {"id": "bad", "set": {1}})],
        [("put", Encoded("t1", '["not", "an object"]'))],
        [("put", Encoded("t1", '{"id": "t1", "name": "naïve"}'))],  # not ASCII: not from dumps
        [("put", Encoded(7, "{}"))],
        [("put", make_task(1)), ("event", {"seq": 1, "bad": {1}})],
    ],
)
def test_bad_changes_are_refused_and_nothing_is_stored(
    open_store: OpenStore, changes: list
) -> None:
    store, _ = reload(open_store)
    with pytest.raises(StoreError):
        store.append(changes)
    assert store.stats()["records"] == 0 and store.stats()["lsn"] == 0
    store.append(submit(2))  # the store still works
    store.close()
    _, state = reload(open_store)
    assert list(state.records) == [make_task(2)["id"]]


def test_lifecycle_errors(open_store: OpenStore) -> None:
    store = open_store()
    with pytest.raises(StoreError, match="load"):
        store.append(submit(1))
    store.load()
    with pytest.raises(StoreError, match="once"):
        store.load()
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        store.append(submit(1))
    with pytest.raises(StoreError, match="closed"):
        store.checkpoint()


def test_a_directory_is_used_by_one_store_at_a_time(open_store: OpenStore) -> None:
    first, _ = reload(open_store)
    with pytest.raises(StoreError, match="in use"):
        open_store().load()
    first.close()
    reload(open_store)  # free again once the first one is closed


def checkpoint_waiter(store: Store) -> threading.Event:
    """An event set when the store finishes a checkpoint (its last step)."""
    done = threading.Event()
    store._step_hook = lambda step: done.set() if step == "trimmed" else None
    return done


def test_automatic_checkpoint_after_n_changes(open_store: OpenStore) -> None:
    store, _ = reload(open_store, checkpoint_every=10)
    done = checkpoint_waiter(store)
    for seq in range(4):
        store.append(submit(seq))  # 8 changes: not yet
    assert store.stats()["checkpoints"] == 0
    store.append(submit(4))
    assert done.wait(10), "no checkpoint after 10 changes"
    assert store.stats()["checkpoint_lsn"] == 5


def test_checkpoint_growth_waits_for_as_many_changes_as_records(open_store: OpenStore) -> None:
    store, _ = reload(open_store, checkpoint_every=10, checkpoint_growth=1.0)
    done = checkpoint_waiter(store)
    store.append([("put", {"id": f"t{n}", "n": 0}) for n in range(40)])  # 40 changes, 40 records
    assert done.wait(10), "no checkpoint once changes reached the record count"
    done.clear()
    for n in range(39):
        store.append([("put", {"id": f"t{n}", "n": 1})])
    # 39 changes: past checkpoint_every, but a rewrite of 40 records is not yet due.
    assert not store._due() and not store._wake.is_set()
    store.append([("put", {"id": "t39", "n": 1})])
    assert done.wait(10), "no checkpoint after as many changes as records"


def test_automatic_checkpoint_after_interval(open_store: OpenStore) -> None:
    store, _ = reload(open_store, checkpoint_interval_s=0.05)
    done = checkpoint_waiter(store)
    store.append(submit(1))
    assert done.wait(10), "no checkpoint after the interval"
    assert store.stats()["checkpoints"] == 1


def test_journal_is_trimmed_by_checkpoints(open_store: OpenStore, data_dir: Path) -> None:
    store, _ = reload(open_store)
    for round_ in range(6):
        for seq in range(round_ * 10, round_ * 10 + 10):
            store.append(submit(seq))
        store.checkpoint()
    # Kept: the segments after the .old checkpoint; the rest are gone.
    assert store.stats()["journal_segments"] == 2
    assert len(list(data_dir.glob("journal-*.log"))) == 2
    assert (data_dir / "checkpoint.json.old").exists()
    store.close()
    _, state = reload(open_store)
    assert len(state.records) == 60


def test_failed_checkpoint_is_reported_and_appends_go_on(
    open_store: OpenStore, data_dir: Path
) -> None:
    store, _ = reload(open_store)
    store.append(submit(1))
    (data_dir / "checkpoint.json.tmp").mkdir()  # the temporary file cannot be created
    with pytest.raises(StoreError, match="checkpoint in .* failed"):
        store.checkpoint()
    store.append(submit(2))
    (data_dir / "checkpoint.json.tmp").rmdir()
    store.checkpoint()
    store.append(submit(3))
    store.close()
    _, state = reload(open_store)
    assert sorted(state.records) == [make_task(seq)["id"] for seq in (1, 2, 3)]


def test_journal_write_failure_stops_the_store(
    open_store: OpenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _ = reload(open_store)
    store.append(submit(1))

    def disk_full(self: object, data: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("cloudq.store.journal.JournalWriter._write_all", disk_full)
    with pytest.raises(StoreError, match="journal write failed.*No space left"):
        store.append(submit(2))
    monkeypatch.undo()
    # Memory may now be ahead of the disk: nothing more is acknowledged until a restart.
    with pytest.raises(StoreError, match="restart"):
        store.append(submit(3))
    store.close()
    _, state = reload(open_store)
    assert list(state.records) == [make_task(1)["id"]]


def test_unusable_directory_is_a_store_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(StoreError, match="cannot use"):
        Store(not_a_dir).load()
