"""Workflows against real master and worker processes: steps run in order, a failing middle
step cancels the last, the model-lock seed scenario (steps on nano-banana-pro then
motion-2.0-fast, and a plain task on motion-2.0-fast: never at once, each starting as the
other lets go, told in the events), and all of it across a kill -9 of the master."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cloudq.commands.registry import Result
from tests.cluster.harness import MasterProc, wait_until
from tests.e2e.conftest import free_port

pytestmark = pytest.mark.timeout(180)

ENDED = {"completed", "failed", "cancelled", "dead"}


def submit_workflow(master: MasterProc, path: Path, text: str) -> dict[str, Any]:
    """`cloudq ctl workflow FILE` does this: the file's text goes with the line."""
    path.write_text(text)
    reply = master.client().call("call", {"argv": ["workflow", str(path)], "files": {str(path): text}})
    return Result.from_dict(reply).data


def three_steps(middle: str) -> str:
    return f"""
name: trio
steps:
  first: {{task: --exec "sleep 0.3" --retries 0}}
  second: {{task: --exec "{middle}" --retries 0, after: [first]}}
  third: {{task: --exec "true" --retries 0, after: [second]}}
"""


def test_steps_run_in_order_and_a_failing_middle_step_cancels_the_last(cluster, tmp_path):
    master = cluster.start_master()
    cluster.start_worker("w1", "--max-tasks", "4")
    good = submit_workflow(master, tmp_path / "good.yaml", three_steps("sleep 0.3"))["steps"]
    bad = submit_workflow(master, tmp_path / "bad.yaml", three_steps("false"))["steps"]
    wait_until(lambda: all(master.task(t)["state"] in ENDED for t in [*good.values(), *bad.values()]),
               60, "both workflows to end")
    ran = [master.task(good[step]) for step in ("first", "second", "third")]
    assert [t["state"] for t in ran] == ["completed"] * 3
    for before, after in zip(ran, ran[1:], strict=False):
        assert after["started_at"] >= before["finished_at"], (before, after)
    third = master.task(bad["third"])
    assert (master.task(bad["second"])["state"], third["state"]) == ("dead", "cancelled")
    assert third["last_error"] == f"dependency {bad['second']} dead" and third["started_at"] is None
    listed = {w["group"]: (w["done"], w["state"]) for w in master.ctl("workflows")}
    print(f"\nworkflows: {listed}")
    assert sorted(listed.values()) == [(1, "failed"), (3, "completed")]


SEED = """
name: gen
steps:
  image:  {task: --exec "sleep 1.5" --lock nano-banana-pro}
  motion: {task: --exec "sleep 1.5" --lock motion-2.0-fast, after: [image]}
"""


def test_all_three_survive_a_kill_9_of_the_master(cluster, tmp_path):
    """The seed scenario, a workflow that succeeds and one whose middle step fails, with the
    master killed -9 while their first steps run."""
    port = free_port()
    master = cluster.start_master(port=port)
    cluster.start_worker("w1", "--max-tasks", "4")
    steps = submit_workflow(master, tmp_path / "gen.yaml", SEED)["steps"]
    plain = master.ctl("task", "--exec", "sleep 1.5", "--lock", "motion-2.0-fast", "--name", "plain")["id"]
    good = submit_workflow(master, tmp_path / "good.yaml", three_steps("sleep 0.3"))["steps"]
    bad = submit_workflow(master, tmp_path / "bad.yaml", three_steps("false"))["steps"]
    master.wait_state(steps["image"], "running")
    master.kill()  # kill -9 while first steps run and the others wait
    master = cluster.start_master(port=port)
    everything = [steps["image"], steps["motion"], plain, *good.values()]
    wait_until(lambda: all(master.task(t)["state"] == "completed" for t in everything), 60,
               "the workflows and the plain task to complete after the restart")
    wait_until(lambda: master.task(bad["third"])["state"] == "cancelled", 30, "the failed workflow's end")
    assert master.task(bad["third"])["last_error"] == f"dependency {bad['second']} dead"
    ran = [master.task(good[step]) for step in ("first", "second", "third")]
    for before, after in zip(ran, ran[1:], strict=False):
        assert after["started_at"] >= before["finished_at"]
    motion, other = master.task(steps["motion"]), master.task(plain)
    first, second = sorted((motion, other), key=lambda t: t["started_at"])
    assert second["started_at"] >= first["finished_at"], "both held motion-2.0-fast at once"
    assert motion["started_at"] >= master.task(steps["image"])["finished_at"]
    waited = master.ctl("events", second["id"])
    blocked = [e["reason"] for e in waited if e["src"] == e["dst"] and e["reason"].startswith("blocked")]
    print(f"\n{second['id']} ({second['name']}): {blocked}")
    assert blocked == [f"blocked: lock motion-2.0-fast is held by {first['id']} on w1"]
    moves = [e["dst"] for e in waited if e["src"] != e["dst"]]
    assert moves[-3:] == ["assigned", "running", "completed"]
