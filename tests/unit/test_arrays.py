"""Task arrays through the registry against an in-process master: {index} in the command and
name, at most K running at once (each next one starts as one ends), and queue/show/cancel by
the array's id."""

from __future__ import annotations

import pytest

from cloudq.commands import Context, dispatch, split_line
from cloudq.errors import ValidationError
from cloudq.master.core import Master
from tests.unit.test_commands import worker
from tests.unit.test_dependencies import finish


def run(master: Master, line: str):
    return dispatch(Context(master), split_line(line))


def test_an_array_runs_k_at_a_time_with_its_index_substituted() -> None:
    master = Master()
    session = worker(master, "w1", cores=8.0, max_tasks=8)
    reply = run(master, 'task --exec "encode part-{index}.mkv" --name enc-{index} --count 5 --max-running 2')
    assert reply.status == ("Array ar1: 5 tasks, t1 to t5, at most 2 running at once (2 assigned, "
                            "3 queued). `show ar1` follows it.")
    assert [master.get(f"t{n}").spec["argv"] for n in (1, 5)] == [["encode", "part-0.mkv"], ["encode", "part-4.mkv"]]
    assert [master.get(f"t{n}").name for n in (1, 5)] == ["enc-0", "enc-4"]
    assert master.why("t3")["summary"].startswith("Lock array:ar1 is held by t1, t2")
    most = 0
    for _ in range(5):
        active = [t for t in master.tasks.values() if t.state.is_active]
        most = max(most, len(active))
        finish(master, session, min(active, key=lambda t: t.seq).id)
    assert most == 2 and all(t.state.value == "completed" for t in master.tasks.values())
    shown = run(master, "show ar1")
    assert shown.title == "Array ar1: 5/5 done (5 completed); completed"
    assert [row[:3] for row in shown.rows][:2] == [["t1", "enc-0", "completed"], ["t2", "enc-1", "completed"]]


def test_queue_and_cancel_take_the_array_id() -> None:
    master = Master()
    worker(master, "w1", cores=2.0, max_tasks=2)
    run(master, "task --noop --count 3")  # ar1: t1..t3
    run(master, "task --noop --count 4 --max-running 1")  # ar4: t4..t7
    assert [row[0] for row in run(master, "queue --array ar4").rows] == ["t4", "t5", "t6", "t7"]
    assert run(master, "cancel ar4").status == "array ar4: cancelled t4, t5, t6, t7"
    assert {master.get(f"t{n}").state.value for n in range(4, 8)} == {"cancelled"}
    assert {master.get(f"t{n}").state.value for n in range(1, 4)} == {"assigned", "queued"}  # ar1 goes on


@pytest.mark.parametrize(("line", "message"), [
    ("task --noop --max-running 2", "--max-running caps an array: give --count N too"),
    ("task --noop --count 0", "must be from 1"),
    ("task --noop --count 200000", "must be from 1"),
    ("task --noop --count 3 --max-running 0", "must be from 1"),
    ("task --exec 'x' --name 'bad {index}!' --count 2", "task name must be"),
])
def test_a_bad_array_is_refused_and_nothing_is_submitted(line: str, message: str) -> None:
    master = Master()
    with pytest.raises(ValidationError, match=message):
        run(master, line)
    assert master.tasks == {}
