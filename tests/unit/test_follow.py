"""`--follow`: what is new between two answers, against an in-process master (no sockets), and
the shell's read-only gate that every repeated command runs through."""

from __future__ import annotations

import io

import pytest

from cloudq.commands import Context, dispatch, parse
from cloudq.commands.follow import SKIPPED, end_line, follow_logs, follow_show, new_output
from cloudq.commands.gate import ChangeRefused, Gate, Guard
from cloudq.master.core import Master
from cloudq.render import render
from cloudq.shell.jobs import Job
from cloudq.shell.link import LocalLink

pytestmark = pytest.mark.timeout(30)


def test_new_output_is_what_a_later_tail_adds() -> None:
    assert new_output("", "one\n") == "one\n"
    assert new_output("one\n", "one\ntwo\n") == "two\n"
    assert new_output("abcdef", "defgh") == "gh"  # the tail moved on: overlap "def"
    assert new_output("abc", "abc") == ""
    assert new_output("two\n", "one\ntwo\nthree\n") == "three\n"  # the result's longer tail
    assert new_output("abc", "xyz") == SKIPPED + "xyz"


class Script:
    """A fetch that answers Results of a real master while a story is played out on it."""

    def __init__(self, master: Master, line: str, steps: list) -> None:  # type: ignore[type-arg]
        self.master, self.argv, self.steps = master, line.split(), steps

    def fetch(self):  # type: ignore[no-untyped-def]
        return dispatch(Context(self.master), self.argv)

    def wait(self, seconds: float) -> bool:
        """Plays the next step; True (as a key would) once there are none left."""
        if not self.steps:
            return True
        self.steps.pop(0)()
        return False


SESSIONS: dict[int, int] = {}


def _running(master: Master) -> str:
    SESSIONS[id(master)] = master.register({"name": "w1", "cpu_cores": 4.0, "mem_gb": 8.0,
                                            "max_tasks": 2}, [])["session"]
    (task,) = master.submit([{"kind": "exec", "spec": {"argv": ["x"]}}])
    return task.id


def _report(master: Master, task_id: str, state: str | None, log: str) -> None:
    task = master.get(task_id)
    entry = {"task": task_id, "attempt": task.attempt, "log_tail": log,
             "state": state or "running", "started_at": master.clock()}
    if state in ("completed", "failed"):
        entry["result"] = {"status": state, "exit_code": 0, "log_tail": log}
    assert master.report("w1", SESSIONS[id(master)], [entry]) == []


def test_logs_follow_prints_each_new_piece_once_then_ends() -> None:
    master = Master()
    task_id = _running(master)
    script = Script(master, f"logs {task_id} --follow", [
        lambda: _report(master, task_id, None, "one\n"),
        lambda: _report(master, task_id, None, "one\ntwo\n"),
        lambda: _report(master, task_id, None, "two\nthree\n"),  # the tail moved on
        lambda: _report(master, task_id, "completed", "one\ntwo\nthree\nfour \x1b[2J"),
    ])
    out = io.StringIO()
    last = follow_logs(script.fetch, script.wait, out)
    print("\n" + out.getvalue())
    assert out.getvalue() == "one\ntwo\nthree\nfour \\x1b[2J\n"
    assert last is not None and last.ended and end_line(task_id, last) == f"{task_id} is completed"


def test_logs_follow_raw_and_json() -> None:
    master = Master()
    task_id = _running(master)
    steps = [lambda: _report(master, task_id, None, "a\x1b]0;x\x07"),
             lambda: _report(master, task_id, "completed", "a\x1b]0;x\x07b")]
    raw = io.StringIO()
    follow_logs(Script(master, f"logs {task_id} --follow --raw", list(steps)).fetch,
                Script(master, "", steps).wait, raw, raw=True)
    assert raw.getvalue() == "a\x1b]0;x\x07b"


def test_logs_follow_json_lines() -> None:
    master = Master()
    task_id = _running(master)
    script = Script(master, f"logs {task_id} --follow", [
        lambda: _report(master, task_id, None, "a\x1b"),
        lambda: _report(master, task_id, "completed", "a\x1bb"),
    ])
    out = io.StringIO()
    follow_logs(script.fetch, script.wait, out, as_json=True)
    lines = out.getvalue().splitlines()
    print("\n" + out.getvalue())
    assert lines == [f'{{"id": "{task_id}", "state": "assigned", "log": ""}}',
                     f'{{"id": "{task_id}", "state": "running", "log": "a\\u001b"}}',
                     f'{{"id": "{task_id}", "state": "completed", "log": "b"}}']


def test_show_follow_prints_the_task_then_each_move_until_it_ends() -> None:
    master = Master()
    task_id = _running(master)
    script = Script(master, f"show {task_id} --follow", [
        lambda: None,  # nothing new: nothing printed
        lambda: _report(master, task_id, None, ""),
        lambda: _report(master, task_id, "completed", "done\n"),
    ])
    out = io.StringIO()
    last = follow_show(script.fetch, script.wait, out, render)
    text = out.getvalue()
    print("\n" + text)
    assert text.startswith(f"Task {task_id}\n")
    tail = text.splitlines()[-2:]
    assert tail[0].endswith("assigned -> running: started on w1")
    assert tail[1].endswith("running -> completed: completed on w1")
    assert text.count("assigned -> running") == 1
    assert last is not None and last.ended and last.state == "completed"


def test_a_key_stops_following() -> None:
    master = Master()
    task_id = _running(master)
    out = io.StringIO()
    last = follow_logs(lambda: dispatch(Context(master), ["logs", task_id]), lambda s: True, out)
    assert last is not None and not last.ended
    assert end_line(task_id, last) == f"stopped following {task_id} (the task goes on)"


def test_a_read_only_gate_refuses_a_change_before_it_starts() -> None:
    master = Master()
    gate = Gate(master, Guard(read_only=True))
    with pytest.raises(ChangeRefused, match="submit changes the master"):
        gate.submit([{"kind": "noop"}])
    assert master.tasks == {} and gate.counts()["queued"] == 0
    cmd, args = parse(["task", "--noop"])
    job = Job(LocalLink(master, "test"), cmd, args, ["task", "--noop"], print, print, read_only=True).start()
    with pytest.raises(ChangeRefused):
        job.wait()
    assert master.tasks == {}
