"""Many threads appending at once: nothing lost or doubled, and they share fsyncs."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

from cloudq.store import Store
from tests.store.taskdata import make_task, submit

THREADS = 8
PER_THREAD = 150


def append_from_threads(store: Store, per_thread: int = PER_THREAD) -> None:
    start = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def work(index: int) -> None:
        start.wait()
        try:
            for n in range(per_thread):
                store.append(submit(index * 100_000 + n))
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert not errors, errors


def expected_seqs(per_thread: int = PER_THREAD) -> set[int]:
    return {index * 100_000 + n for index in range(THREADS) for n in range(per_thread)}


def assert_all_there_once(data_dir: Path, per_thread: int = PER_THREAD) -> None:
    with Store(data_dir) as store:
        state = store.load()
    assert {record["seq"] for record in state.records.values()} == expected_seqs(per_thread)
    assert all(record == make_task(record["seq"]) for record in state.records.values())
    events = Counter(event["seq"] for event in state.events)
    assert set(events) == expected_seqs(per_thread) and set(events.values()) == {1}
    # Each thread's own submissions keep their order in the journal.
    for index in range(THREADS):
        mine = [e["seq"] for e in state.events if e["seq"] // 100_000 == index]
        assert mine == sorted(mine)


def test_group_commit_shares_fsyncs(data_dir: Path) -> None:
    with Store(data_dir) as store:
        store.load()
        append_from_threads(store)
        stats = store.stats()
    appends = THREADS * PER_THREAD
    assert stats["appends"] == appends and stats["lsn"] == appends
    assert stats["fsyncs"] == stats["commits"]
    assert stats["fsyncs"] < appends, "every append paid its own fsync: no group commit"
    print(f"{appends} appends from {THREADS} threads took {stats['fsyncs']} fsyncs")
    assert_all_there_once(data_dir)


def test_appends_racing_checkpoints(data_dir: Path) -> None:
    # Checkpoints every 50 changes in the background, and back to back from this thread:
    # snapshots are taken while eight threads append.
    with Store(data_dir, checkpoint_every=50) as store:
        store.load()
        appender = threading.Thread(target=append_from_threads, args=(store, 100))
        appender.start()
        while appender.is_alive():
            store.checkpoint()
        appender.join()
        stats = store.stats()
        assert stats["checkpoints"] >= 3 and stats["checkpoint_errors"] == 0
        assert stats["checkpoint_lsn"] > 0
    assert_all_there_once(data_dir, per_thread=100)
