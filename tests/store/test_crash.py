"""Acceptance: kill -9 a process appending to the store at random moments, 20 times.

Jepsen's queue check: every acknowledged submission must be there after each kill (lost =
0), none twice (duplicated = 0), and nothing that was never attempted (unexpected = 0).
Some kills are aimed at checkpoints in progress.
"""

from __future__ import annotations

import random
import subprocess
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cloudq.store import Store
from tests.store.taskdata import make_task, task_id

REPO = Path(__file__).resolve().parents[2]
TRIALS = 20
SAFETY_KILL_S = 10.0  # a child that never reaches its kill point is stopped anyway


@dataclass
class Trial:
    first: int
    threads: int
    every: int
    aim_at_checkpoint: bool
    acked: set[int] = field(default_factory=set)
    steps: list[str] = field(default_factory=list)

    @property
    def killed_mid_checkpoint(self) -> bool:
        """The last checkpoint the child started had not finished when it died."""
        if "rotated" not in self.steps:
            return False
        last_start = len(self.steps) - 1 - self.steps[::-1].index("rotated")
        return "trimmed" not in self.steps[last_start:]


def run_trial(data_dir: Path, trial: Trial, rng: random.Random) -> None:
    command = [sys.executable, "-m", "tests.store.store_child", str(data_dir), "writer",
               "--first", str(trial.first), "--threads", str(trial.threads),
               "--every", str(trial.every)]
    child = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    safety = threading.Timer(SAFETY_KILL_S, child.kill)
    safety.start()
    try:
        assert child.stdout.readline().startswith("ready"), "child did not start"
        if not trial.aim_at_checkpoint:
            threading.Timer(rng.uniform(0.020, 0.300), child.kill).start()
        for line in child.stdout:
            kind, value = line.split()
            if kind == "ack":
                trial.acked.add(int(value))
                continue
            trial.steps.append(value)
            if trial.aim_at_checkpoint and value == "rotated" and trial.steps.count("rotated") == 2:
                threading.Timer(rng.uniform(0.0, 0.010), child.kill).start()
    finally:
        safety.cancel()
        child.kill()
        child.wait()
    assert child.returncode == -9, f"child ended with {child.returncode}, not by SIGKILL"


def check_after_kill(data_dir: Path, acked: set[int], seen: set[int], trial: Trial) -> set[int]:
    """Load the store and apply the queue checks; return the seqs stored.

    ``seen``: seqs found stored after earlier kills, acknowledged or not.
    """
    with Store(data_dir) as store:
        state = store.load()
    stored = {record["seq"]: record for record in state.records.values()}
    lost = acked - stored.keys()
    assert not lost, f"acknowledged but lost: {sorted(lost)[:10]}"
    vanished = seen - stored.keys()
    assert not vanished, f"records stored after an earlier kill are gone: {sorted(vanished)[:10]}"
    in_flight = set(stored) - acked - seen
    highest_attempt = max(trial.acked, default=trial.first - 1) + trial.threads
    assert len(in_flight) <= trial.threads, f"too many unacknowledged records: {in_flight}"
    assert all(trial.first <= seq <= highest_attempt for seq in in_flight), in_flight
    for seq, record in stored.items():
        assert record == make_task(seq), f"record {seq} is damaged"
    events = Counter(event["task"] for event in state.events)
    assert set(events) == {task_id(seq) for seq in stored}, "records and events disagree"
    duplicated = [task for task, count in events.items() if count > 1]
    assert not duplicated, f"events journalled twice: {duplicated[:10]}"
    return set(stored)


def test_kill_minus_nine_loses_no_acknowledged_submission(tmp_path: Path) -> None:
    rng = random.Random(20)
    data_dir = tmp_path / "data"
    acked: set[int] = set()
    seen: set[int] = set()
    next_seq = 0
    mid_checkpoint = 0
    for number in range(TRIALS):
        aim = number % 4 == 3  # 5 of the 20 kills are aimed at a checkpoint
        trial = Trial(first=next_seq, threads=1 if number % 2 == 0 else 4,
                      every=rng.choice([40, 400, 4000]) if not aim else 40,
                      aim_at_checkpoint=aim)
        run_trial(data_dir, trial, rng)
        acked |= trial.acked
        mid_checkpoint += trial.killed_mid_checkpoint
        seen = check_after_kill(data_dir, acked, seen, trial)
        next_seq = max(seen, default=-1) + 1
    assert len(acked) >= 20 * TRIALS, f"only {len(acked)} submissions acknowledged in all"
    assert mid_checkpoint >= 1, "no kill landed inside a checkpoint"
    print(f"{len(acked)} acknowledged submissions over {TRIALS} kills, "
          f"{mid_checkpoint} kills inside a checkpoint: 0 lost, 0 duplicated, 0 unexpected")
