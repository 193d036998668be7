"""Workflows through the registry against an in-process master: the file is checked whole
(unknown steps, cycles, bad tasks: nothing submitted), steps go in one batch in dependency
order, a failing step cancels those after it, and show/cancel/workflows take the workflow id."""

from __future__ import annotations

import pytest

from cloudq.commands import COMMANDS, Context, dispatch, split_line
from cloudq.commands.workflows import parse_workflow
from cloudq.core.model import TaskState
from cloudq.errors import ValidationError
from cloudq.master.core import Master
from tests.unit.test_commands import worker
from tests.unit.test_dependencies import finish

S = TaskState
PARSER = COMMANDS["task"].parser

THREE = """
name: ep1
steps:
  publish:
    task: --exec "publish ep1" --retries 0
    after: [encode]
  prep:
    task: --exec "python prep.py" --lock nano-banana-pro --retries 0
  encode:
    task: {"kind": "exec", "spec": {"argv": ["encode"]}, "locks": ["motion-2.0-fast"], "max_retries": 0}
    after: prep
"""


def run(master: Master, line: str):
    return dispatch(Context(master), split_line(line))


def test_steps_come_after_those_they_wait_for_in_file_order_otherwise() -> None:
    name, steps = parse_workflow(THREE, PARSER)
    assert name == "ep1"
    assert [(s[0], s[2]) for s in steps] == [("prep", []), ("encode", ["prep"]), ("publish", ["encode"])]
    assert steps[0][1]["name"] == "ep1/prep" and steps[1][1]["locks"] == ["motion-2.0-fast"]
    listed = '{"steps": [{"name": "b", "task": "--noop", "after_any": ["a"]}, {"name": "a", "task": "--noop"}]}'
    assert [(s[0], s[3]) for s in parse_workflow(listed, PARSER)[1]] == [("a", []), ("b", ["a"])]


@pytest.mark.parametrize(("text", "message"), [
    ("steps: {a: {task: --noop, after: [b]}, b: {task: --noop, after: [c]}, c: {task: --noop, after: [a]}}",
     "cycle: a -> b -> c -> a"),
    ("steps: {a: {task: --noop, after: [x]}}", "step 'a' waits for 'x', which is not a step"),
    ("steps: {a: {task: --noop, after: [a]}}", "waits for itself"),
    ("steps: {a: {task: --noop --after t1}}", "say what a step waits for with the step's `after`"),
    ("steps: {a: {task: --noop -cpu lots}}", "step 'a': .*cpu"),
    ("steps: {a: {tsk: --noop}}", "unknown field"),
    ("steps: {a: --noop}", "give `task`"),
    ("steps: []", "at least one step"),
    ("name: ep1\nstep: {}", "an object with `steps`"),
    ("steps: {a: {task: --noop}}\nextra: 1", "unknown workflow field"),
    ("steps: [{task: --noop}]", "step 1 needs a `name`"),
    ("{{{", "not valid YAML"),
    ("steps: {'bad name!': {task: --noop}}", "step name must be"),
])
def test_a_bad_file_is_refused_with_the_step_named(text: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        parse_workflow(text, PARSER)


def test_a_workflow_runs_its_steps_in_order(tmp_path) -> None:
    master = Master()
    session = worker(master, "w1", max_tasks=4)
    path = tmp_path / "ep1.yaml"
    path.write_text(THREE)
    reply = run(master, f"workflow {path}")
    assert reply.status == ("Workflow wf1 (ep1): 3 steps submitted: prep t1, encode t2, publish t3. "
                            "`show wf1` follows it.")
    shown = run(master, "show wf1")
    assert shown.title == "Workflow wf1: 0/3 done (1 assigned, 2 pending); running"
    assert [row[:4] for row in shown.rows] == [["prep", "t1", "assigned", "-"], ["encode", "t2", "pending", "t1"],
                                               ["publish", "t3", "pending", "t2"]]
    assert shown.rows[1][5] == "waiting for t1 (assigned on w1)"
    for task_id in ("t1", "t2", "t3"):
        assert master.get(task_id).state is S.ASSIGNED
        finish(master, session, task_id)
    assert run(master, "workflows").rows == [["wf1", "ep1", "3/3", "completed"]]


def test_a_failing_middle_step_cancels_the_last_and_cancel_takes_the_rest(tmp_path) -> None:
    master = Master()
    session = worker(master, "w1", max_tasks=4)
    path = tmp_path / "ep1.yaml"
    path.write_text(THREE)
    run(master, f"workflow {path}")
    finish(master, session, "t1")
    finish(master, session, "t2", "failed")
    assert (master.get("t3").state, master.get("t3").last_error) == (S.CANCELLED, "dependency t2 dead")
    assert run(master, "workflows").rows == [["wf1", "ep1", "1/3", "failed"]]
    run(master, f"workflow {path}")  # wf4
    reply = run(master, "cancel wf4")
    assert reply.status == "workflow wf4: cancelled t4, t5, t6"
    assert {master.get(t).last_error for t in ("t5", "t6")} == {None}
    assert [e.reason for e in master.story("t6")][-1] == "workflow wf4 cancelled by an operator"
    with pytest.raises(ValidationError, match="nothing was submitted"):
        path.write_text("steps: {a: {task: --noop, after: [b]}, b: {task: --noop, after: [a]}}")
        run(master, f"workflow {path}")
    assert len(master.tasks) == 6
