"""One list of task kinds (specs.KINDS): every part that deals in kinds covers each of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudq.commands import Context, dispatch
from cloudq.core.model import TASK_KINDS
from cloudq.master.core import Master
from cloudq.specs import KINDS, validate_spec
from cloudq.worker.runners import RUNNERS

DOCS = Path(__file__).resolve().parents[2] / "docs" / "runners.md"

# A `task` line for each kind, as an operator types it.
TASK_LINES = {
    "ffmpeg": ["task", "--scenario", "360p30-h264", "--duration", "1"],
    "container": ["task", "busybox:latest", "-cmd", "true"],
    "exec": ["task", "--exec", "true"],
    "noop": ["task", "--noop"],
}


def test_the_model_specs_and_runners_share_one_list():
    assert TASK_KINDS is KINDS
    assert tuple(RUNNERS) == KINDS


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_has_a_task_line_a_valid_spec_and_a_section_in_the_docs(kind):
    master = Master()
    master.register({"name": "w", "cpu_cores": 4.0, "mem_gb": 8.0, "max_tasks": 4,
                     "capabilities": ["docker", "ffmpeg", "encoder:libx264"]}, [])
    result = dispatch(Context(master), TASK_LINES[kind])
    (task,) = master.tasks.values()
    assert task.kind == kind, result.status
    assert validate_spec(kind, task.spec) == task.spec  # stored normalised, as a worker checks it
    assert f"\n## {kind}\n" in DOCS.read_text()
