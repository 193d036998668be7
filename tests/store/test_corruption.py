"""Damaged files: a torn tail is cut off; anything else is a clear StoreError or a lossless
fall-back to checkpoint.json.old. Never a silent start from an empty or partial state."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cloudq.errors import StoreError
from cloudq.store import Store
from tests.store.taskdata import make_task, submit


def build(data_dir: Path, checkpoints: tuple[int, ...] = (), count: int = 40) -> None:
    """Submit tasks 0..count-1, checkpointing after the seqs in ``checkpoints``."""
    with Store(data_dir) as store:
        store.load()
        for seq in range(count):
            store.append(submit(seq))
            if seq in checkpoints:
                store.checkpoint()


def load(data_dir: Path) -> tuple[dict[str, dict], dict]:
    with Store(data_dir) as store:
        return store.load().records, store.stats()


def ids(seqs: range) -> list[str]:
    return sorted(make_task(seq)["id"] for seq in seqs)


def segments(data_dir: Path) -> list[Path]:
    return sorted(data_dir.glob("journal-*.log"))


def damage(path: Path, offset: int, data: bytes = b"XX") -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def line_offsets(path: Path) -> list[int]:
    """Byte offset where each line of a journal segment starts."""
    offsets, position = [], 0
    for line in path.read_bytes().splitlines(keepends=True):
        offsets.append(position)
        position += len(line)
    return offsets


def test_torn_last_line_is_cut_off(data_dir: Path) -> None:
    build(data_dir)
    last = segments(data_dir)[-1]
    size = last.stat().st_size
    os.truncate(last, size - 100)  # the last append stopped halfway
    records, _ = load(data_dir)
    assert sorted(records) == ids(range(39))
    assert last.read_bytes().endswith(b"\n") and last.stat().st_size < size - 100


def test_garbled_last_line_is_cut_off(data_dir: Path) -> None:
    build(data_dir)
    last = segments(data_dir)[-1]
    damage(last, line_offsets(last)[-1] + 30)
    records, _ = load(data_dir)
    assert sorted(records) == ids(range(39))


def test_zero_filled_tail_is_cut_off(data_dir: Path) -> None:
    build(data_dir)
    last = segments(data_dir)[-1]
    with open(last, "ab") as handle:
        handle.write(b"\0" * 4096)  # what a power cut can leave after the last synced line
    records, _ = load(data_dir)
    assert sorted(records) == ids(range(40))


def test_bad_checksum_mid_journal_names_file_and_line(data_dir: Path) -> None:
    build(data_dir)
    last = segments(data_dir)[-1]
    before = last.read_bytes()
    damage(last, line_offsets(last)[6] + 40)
    with pytest.raises(StoreError, match=rf"{last.name}: line 7 is corrupt"):
        load(data_dir)
    assert last.stat().st_size == len(before), "a failed load must not cut the journal"


def test_out_of_order_line_is_refused(data_dir: Path) -> None:
    build(data_dir, count=5)
    last = segments(data_dir)[-1]
    lines = last.read_bytes().splitlines(keepends=True)
    last.write_bytes(b"".join([lines[0], lines[2], lines[1], *lines[3:]]))
    with pytest.raises(StoreError, match="line 2 holds change 3 where change 2 was expected"):
        load(data_dir)


def test_damaged_checkpoint_falls_back_to_old_without_loss(data_dir: Path) -> None:
    build(data_dir, checkpoints=(9, 19, 29))
    current = data_dir / "checkpoint.json"
    damage(current, current.stat().st_size // 2)
    records, stats = load(data_dir)
    assert sorted(records) == ids(range(40))  # .old plus the journal after it
    assert stats["loaded_from"] == "checkpoint.json.old"
    assert list(data_dir.glob("checkpoint.json.damaged-*")), "the damaged file is kept aside"
    # The next start (and checkpoint) goes on from there.
    with Store(data_dir) as store:
        assert len(store.load().records) == 40
        store.checkpoint()
    records, stats = load(data_dir)
    assert sorted(records) == ids(range(40)) and stats["loaded_from"] == "checkpoint.json"


def test_truncated_checkpoint_falls_back_to_old(data_dir: Path) -> None:
    build(data_dir, checkpoints=(9, 19))
    current = data_dir / "checkpoint.json"
    os.truncate(current, current.stat().st_size - 50)
    records, stats = load(data_dir)
    assert sorted(records) == ids(range(40)) and stats["loaded_from"] == "checkpoint.json.old"


def test_missing_checkpoint_uses_old(data_dir: Path) -> None:
    build(data_dir, checkpoints=(9, 19))
    (data_dir / "checkpoint.json").unlink()
    records, stats = load(data_dir)
    assert sorted(records) == ids(range(40)) and stats["loaded_from"] == "checkpoint.json.old"


def test_damaged_checkpoint_without_old_is_an_error(data_dir: Path) -> None:
    build(data_dir, checkpoints=(19,))
    current = data_dir / "checkpoint.json"
    damage(current, 100)
    with pytest.raises(StoreError, match="damaged.*no checkpoint.json.old.*refusing to start"):
        load(data_dir)
    assert current.exists(), "nothing is moved or deleted when loading fails"


def test_both_checkpoints_damaged_is_an_error(data_dir: Path) -> None:
    build(data_dir, checkpoints=(9, 19))
    for name in ("checkpoint.json", "checkpoint.json.old"):
        damage(data_dir / name, 100)
    with pytest.raises(StoreError, match="damaged too"):
        load(data_dir)


def test_lost_checkpoint_with_trimmed_journal_is_an_error(data_dir: Path) -> None:
    build(data_dir, checkpoints=(9, 19, 29))
    for name in ("checkpoint.json", "checkpoint.json.old"):
        (data_dir / name).unlink()
    with pytest.raises(StoreError, match="missing"):
        load(data_dir)  # never an empty (or partial) start


def test_missing_journal_segment_is_an_error(data_dir: Path) -> None:
    build(data_dir, checkpoints=(9,))
    # Split the segment after the checkpoint in two, as if it had rotated, then lose the first.
    first = segments(data_dir)[-1]
    assert first.name == "journal-0000000000000011.log"
    lines = first.read_bytes().splitlines(keepends=True)
    (data_dir / "journal-0000000000000021.log").write_bytes(b"".join(lines[10:]))
    first.unlink()
    with pytest.raises(StoreError, match=r"changes 11\.\.20 are in no checkpoint and no segment"):
        load(data_dir)


def test_old_checkpoint_without_its_journal_is_an_error(data_dir: Path) -> None:
    build(data_dir, checkpoints=(9, 19, 29))
    damage(data_dir / "checkpoint.json", 100)
    segments(data_dir)[0].unlink()  # the segment .old needs
    with pytest.raises(StoreError, match="are in no checkpoint and no segment"):
        load(data_dir)
    assert (data_dir / "checkpoint.json").exists(), "nothing is moved when loading fails"


def test_stale_temporary_checkpoint_is_removed(data_dir: Path) -> None:
    build(data_dir, checkpoints=(19,))
    (data_dir / "checkpoint.json.tmp").write_bytes(b'{"records": {\n"1": {"id"')
    records, _ = load(data_dir)
    assert sorted(records) == ids(range(40))
    assert not (data_dir / "checkpoint.json.tmp").exists()
