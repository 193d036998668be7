"""Hostile shell lines: every one gets a CloudqError with a message, none crashes the registry,
and a refused line changes nothing."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from cloudq.commands import COMMANDS, Context, dispatch, split_line
from cloudq.errors import CloudqError
from cloudq.master.core import Master

WORDS = [*COMMANDS, "task", "--exec", "-cpu_cores", "-mem", "--queue", "--priority", "--lock",
         "--label", "--scenario", "--timeout", "--ttl", "--retries", "-gpu", "--noop", "--cmd",
         "--input", "--output", "--env", "'", '"', "\\", ";", "|", "$(reboot)", "`id`", "-1", "nan",
         "inf", "1e309", "../../etc/passwd", "concat:a|b", "http://x", "t1", "t999", "x" * 300,
         "live", "urgent", "high", "model:0", "a=b", "=", "--", "-", "\x00", "🙂", "99999999999999999999"]


def snapshot(master: Master) -> tuple:
    return (sorted(master.tasks), master.counts(), len(master.backlog))


def run_line(master: Master, line: str) -> bool:
    """True when the line was accepted, False when it was refused (with a message, no change)."""
    before = snapshot(master)
    try:
        dispatch(Context(master), split_line(line))
    except SystemExit:
        assert line.split()[0] in ("quit", "exit")
        return True
    except CloudqError as err:
        assert str(err), line
        assert snapshot(master) == before, f"refused line changed state: {line!r}"
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(WORDS), min_size=1, max_size=8).map(" ".join))
def test_generated_lines_never_crash(line):
    run_line(Master(), line)


def test_thousand_random_lines_on_one_master():
    rng = random.Random(7)
    master = Master()
    outcomes = []
    for _ in range(1000):
        words = [rng.choice(WORDS) for _ in range(rng.randint(1, 8))]
        if rng.random() < 0.3:
            words = [rng.choice(list(COMMANDS))] + words
        outcomes.append(run_line(master, " ".join(words)))
    assert outcomes.count(False) > 500 and outcomes.count(True) > 10  # both paths exercised
    assert all(t.state.value in ("queued", "cancelled") for t in master.tasks.values())
