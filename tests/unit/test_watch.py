"""`watch COMMAND` without a terminal: what it refuses, the loop that redraws, and that a command
that changes the master is stopped before it changes anything."""

from __future__ import annotations

import io

import pytest

from cloudq.commands import Context, dispatch, parse
from cloudq.commands.gate import ChangeRefused
from cloudq.commands.registry import Result
from cloudq.errors import NotFoundError, ValidationError
from cloudq.master.core import Master
from cloudq.render import render
from cloudq.shell.completion import complete_line
from cloudq.shell.jobs import Job
from cloudq.shell.link import LocalLink
from cloudq.shell.repeat import Screen, refusal, run_watch, watch_header, watched

pytestmark = pytest.mark.timeout(30)


def test_watch_parses_its_interval_and_the_watched_line() -> None:
    _, args = parse(["watch", "-n", "1", "workers"])
    assert args.interval == 1.0 and args.words == ["workers"]
    _, args = parse(["watch", "queue", "--state", "queued"])
    assert args.interval == 2.0 and args.words == ["queue", "--state", "queued"]
    cmd, inner = watched(args.words)
    assert cmd.name == "queue" and inner.state == "queued"
    for bad in (["-n", "0", "queue"], ["-n", "nan", "queue"], ["--interval", "x", "queue"]):
        with pytest.raises(ValidationError, match="interval"):
            parse(["watch", *bad])


@pytest.mark.parametrize(("words", "message"), [
    ([], "watch needs a command"),
    (["notices"], "notices is the shell's own"),
    (["exit"], "exit is the shell's own"),
    (["watch", "queue"], "watch cannot run watch"),
    (["logs", "t1", "-f"], "logs --follow follows by itself"),
    (["frobnicate"], "unknown command 'frobnicate'"),
])
def test_watch_refuses_what_it_cannot_repeat(words: list[str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        watched(words)


def test_watch_is_for_the_shell_only() -> None:
    master = Master()
    with pytest.raises(ValidationError, match="watch only works in the master's own shell"):
        dispatch(Context(master, local=False), ["watch", "queue"])
    with pytest.raises(ValidationError, match="works only in the master> shell"):
        dispatch(Context(master), ["watch", "queue"])


def test_a_watched_change_is_refused_before_it_changes_anything() -> None:
    master = Master()
    (task,) = master.submit([{"kind": "noop"}])
    for line in (["cancel", task.id], ["hold", task.id], ["priority", task.id, "high"], ["drain", "w1"]):
        cmd, args = watched(line)
        job = Job(LocalLink(master, "test"), cmd, args, line, print, print, read_only=True).start()
        with pytest.raises(ChangeRefused) as caught:
            job.wait()
        print(refusal(cmd, caught.value))
    assert master.get(task.id).state.value == "queued" and master.get(task.id).priority.value == "medium"
    dry = ["task", "--noop", "--dry-run"]
    cmd, args = watched(dry)  # a read, though `task` submits otherwise
    job = Job(LocalLink(master, "test"), cmd, args, dry, print, print, read_only=True).start()
    assert job.wait().title.startswith("Dry run")


def test_run_watch_redraws_each_run_and_draws_an_error_in_place() -> None:
    master = Master()
    answers: list[object] = [NotFoundError("no task 't9'")]

    def fetch() -> Result:
        if answers:
            raise answers.pop()  # type: ignore[misc]
        return dispatch(Context(master), ["queue"])

    keys = iter([False, False, True])
    master.submit([{"kind": "noop", "name": "seen"}])
    out = io.StringIO()
    drawn = run_watch(fetch, lambda s: next(keys), Screen(out), watch_header(0.5, "queue"),
                      lambda result, width: render(result, width), 0.5)
    text = out.getvalue()
    print("\n" + text)
    assert drawn == 3 and text.count("Every 0.5s: queue") == 3
    assert "error: no task 't9'" in text and text.count("t1    noop") == 2


def test_tab_completes_the_watched_line() -> None:
    assert "queue" in complete_line("watch -n 1 que")
    assert "--state" in complete_line("watch queue --st")
    assert "--interval" in complete_line("watch --int")
