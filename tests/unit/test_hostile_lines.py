"""Hostile shell lines: every one gets a CloudqError with a message, none crashes the registry,
a refused line changes nothing, and what the operator reads of the refusal is short and inert."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudq.commands import COMMANDS, Context, dispatch, split_line
from cloudq.errors import CloudqError, InternalError
from cloudq.master.core import Master
from cloudq.render import render_error

WORDS = [*COMMANDS, "task", "--exec", "-cpu_cores", "-mem", "--queue", "--priority", "--lock",
         "--label", "--scenario", "--timeout", "--ttl", "--retries", "-gpu", "--noop", "--cmd",
         "--input", "--output", "--env", "'", '"', "\\", ";", "|", "$(reboot)", "`id`", "-1", "nan",
         "inf", "1e309", "../../etc/passwd", "concat:a|b", "http://x", "t1", "t999", "x" * 300,
         "live", "urgent", "high", "model:0", "a=b", "=", "--", "-", "\x00", "🙂", "99999999999999999999",
         "--limit", "--offset", "--cursor", "--raw", "\x1b]0;PWNED\x07", "\x1b[2J", "\x9b2J", "\rFAKE",
         "y" * 5000]
ACTIVE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # what a terminal would act on


def snapshot(master: Master) -> tuple:
    return (sorted(master.tasks), master.counts(), len(master.backlog))


def run_line(master: Master, line: str) -> bool:
    """True when the line was accepted, False when it was refused (with a message, no change).
    A command that failed on a bug of its own (the registry wraps a KeyError, TypeError or
    ValueError as `NAME failed: ...`) fails the test: that is no refusal."""
    before = snapshot(master)
    try:
        dispatch(Context(master), split_line(line))
    except SystemExit:
        assert line.split()[0] in ("quit", "exit")
        return True
    except InternalError as err:
        raise AssertionError(f"internal error on {line[:200]!r}: {err}") from err
    except CloudqError as err:
        assert str(err), line
        assert snapshot(master) == before, f"refused line changed state: {line!r}"
        shown = render_error(err)
        assert not ACTIVE.search(shown) and len(shown) < 1100, (line, shown)
        assert "internal" not in shown and "islice" not in shown, (line, shown)
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(WORDS), min_size=1, max_size=8).map(" ".join))
def test_generated_lines_never_crash(line):
    run_line(Master(), line)


def random_lines(count: int, seed: int = 7) -> Iterator[str]:
    """`count` hostile lines of one to eight WORDS, three in ten after a command's name; the
    same lines for the same seed (the real prompt gets them too: tests/e2e)."""
    rng = random.Random(seed)
    for _ in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.randint(1, 8))]
        if rng.random() < 0.3:
            words = [rng.choice(list(COMMANDS))] + words
        yield " ".join(words)


def test_thousand_random_lines_on_one_master():
    master = Master()
    outcomes = [run_line(master, line) for line in random_lines(1000)]
    assert outcomes.count(False) > 500 and outcomes.count(True) >= 5  # both paths exercised
    assert len(outcomes) == 1000  # and no line failed inside a command (run_line would raise)
    assert all(t.state.value in ("pending", "queued", "held", "cancelled") for t in master.tasks.values())


def test_numeric_options_out_of_range_are_refused_plainly():
    master = Master()
    for line, message in (
        ("queue --limit 100000000000000000000", "--limit/-limit: must be from 1 to 10000000"),
        ("queue --limit 0", "--limit/-limit: must be from 1 to 10000000"),
        ("queue --offset -1", "--offset: must be from 0 to 10000000"),
    ):
        assert not run_line(master, line)
        try:
            dispatch(Context(master), split_line(line))
        except CloudqError as err:
            assert message in str(err), (line, str(err))


def test_an_internal_error_is_a_failure_not_a_refusal(monkeypatch):
    """The check above would see a bug in a command: the registry's `NAME failed: KeyError(...)`
    is not taken for a refusal."""
    def broken(ctx, args):
        raise KeyError("oops")

    monkeypatch.setattr(COMMANDS["status"], "handler", broken)
    with pytest.raises(AssertionError, match=r"internal error on 'status': status failed: KeyError\('oops'\)"):
        run_line(Master(), "status")
