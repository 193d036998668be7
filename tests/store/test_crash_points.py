"""Acceptance: crash a process at each step of a checkpoint, and in the middle of a journal
line; the store must load the state from just before or just after the interrupted step."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cloudq.store import Store
from tests.store.store_child import CRASH_AT_STEP, CRASH_MID_LINE
from tests.store.taskdata import make_task, submit

REPO = Path(__file__).resolve().parents[2]

# Checkpoint steps in order; the new checkpoint is in force from "renamed" on.
BEFORE_RENAME = ["rotated", "snapshot", "tmp_chunk", "tmp_written", "tmp_fsynced", "old_linked"]
AFTER_RENAME = ["renamed", "dir_fsynced", "trimmed"]


def prepare(data_dir: Path, checkpoints: bool = True) -> int | None:
    """Two checkpoints (so .old exists) with tasks 0-49, then tasks 50-79 in the journal only.

    Returns the lsn the current checkpoint covers (None without checkpoints).
    """
    with Store(data_dir) as store:
        store.load()
        for seq in range(50):
            store.append(submit(seq))
            if checkpoints and seq in (20, 49):
                store.checkpoint()
        for seq in range(50, 80):
            store.append(submit(seq))
        return store.stats()["checkpoint_lsn"]


def run_child(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "tests.store.store_child", str(data_dir), *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)


def acked(result: subprocess.CompletedProcess) -> list[int]:
    return [int(line.split()[1]) for line in result.stdout.splitlines() if line.startswith("ack")]


def load(data_dir: Path) -> tuple[dict[str, dict], list[dict], dict]:
    with Store(data_dir) as store:
        state = store.load()
        return state.records, state.events, store.stats()


def assert_tasks(records: dict[str, dict], events: list[dict], seqs: range) -> None:
    assert sorted(records) == sorted(make_task(seq)["id"] for seq in seqs)
    assert all(records[make_task(seq)["id"]] == make_task(seq) for seq in seqs)
    assert [event["seq"] for event in events] == list(seqs)


def assert_keeps_working(data_dir: Path, seqs: range) -> None:
    """After recovery the store accepts, checkpoints and reloads more work."""
    with Store(data_dir) as store:
        store.load()
        store.append(submit(seqs.stop))
        store.checkpoint()
        store.append(submit(seqs.stop + 1))
    records, events, _ = load(data_dir)
    assert_tasks(records, events, range(seqs.start, seqs.stop + 2))


@pytest.mark.parametrize("step", BEFORE_RENAME + AFTER_RENAME)
def test_crash_at_checkpoint_step(data_dir: Path, step: str) -> None:
    before_lsn = prepare(data_dir)
    result = run_child(data_dir, "crash-at", step, "--first", "80", "--count", "30")
    assert result.returncode == CRASH_AT_STEP, result.stderr
    assert acked(result) == list(range(80, 110))

    records, events, stats = load(data_dir)
    assert_tasks(records, events, range(110))  # a checkpoint never changes the state...
    # ...but which checkpoint is in force tells before from after.
    if step in BEFORE_RENAME:
        assert stats["checkpoint_lsn"] == before_lsn, "expected the state before the checkpoint"
    else:
        assert stats["checkpoint_lsn"] == stats["lsn"], "expected the state after the checkpoint"
    assert not (data_dir / "checkpoint.json.tmp").exists()
    assert_keeps_working(data_dir, range(110))


@pytest.mark.parametrize("step", ["tmp_written", "renamed", "trimmed"])
def test_crash_during_the_first_checkpoint(data_dir: Path, step: str) -> None:
    prepare(data_dir, checkpoints=False)
    result = run_child(data_dir, "crash-at", step, "--first", "80", "--count", "30")
    assert result.returncode == CRASH_AT_STEP, result.stderr

    records, events, stats = load(data_dir)
    assert_tasks(records, events, range(110))
    expected = None if step == "tmp_written" else stats["lsn"]
    assert stats["checkpoint_lsn"] == expected
    assert_keeps_working(data_dir, range(110))


@pytest.mark.parametrize("cut", ["1", "half", "all-but-newline"])
def test_crash_mid_journal_line(data_dir: Path, cut: str) -> None:
    prepare(data_dir)
    result = run_child(data_dir, "torn", cut, "--first", "80", "--count", "30")
    assert result.returncode == CRASH_MID_LINE, result.stderr
    assert acked(result) == list(range(80, 110))
    segment = sorted(data_dir.glob("journal-*.log"))[-1]
    assert not segment.read_bytes().endswith(b"\n"), "the child did leave a torn line"

    records, events, _ = load(data_dir)
    assert_tasks(records, events, range(110))  # the state before the interrupted append
    assert segment.read_bytes().endswith(b"\n"), "the torn line was not cut off"
    assert_keeps_working(data_dir, range(110))
