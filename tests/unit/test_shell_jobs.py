"""The shell's pieces without a terminal: a command's gate to the master (Ctrl-C decides exactly
between 'nothing changed' and 'goes on'), and the history file (0600, parsed lines only)."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from cloudq.commands import parse
from cloudq.commands.gate import Gate, Guard
from cloudq.commands.registry import Interrupted
from cloudq.master.core import Master
from cloudq.shell.history import ShellHistory
from cloudq.shell.jobs import Job
from cloudq.shell.link import LocalLink


def test_a_gate_interrupted_first_refuses_every_change() -> None:
    master, guard = Master(), Guard()
    gate = Gate(master, guard)
    assert guard.interrupt() is None
    with pytest.raises(Interrupted):
        gate.submit([{"kind": "noop"}])
    assert master.tasks == {} and gate.counts()["queued"] == 0  # reads still pass


def test_a_change_under_way_is_reported_and_finishes() -> None:
    class SlowMaster(Master):
        def submit(self, requests):  # type: ignore[no-untyped-def]
            entered.set()
            release.wait(10)
            return super().submit(requests)

    entered, release = threading.Event(), threading.Event()
    master = SlowMaster()
    announced: list[str] = []
    cmd, args = parse(["task", "--noop", "--name", "slow"])
    job = Job(LocalLink(master, "test"), cmd, args, ["task", "--noop", "--name", "slow"], announced.append,
              lambda text: None).start()
    assert entered.wait(10)
    message = job.interrupt()
    assert message.startswith("interrupted: task goes on in the background")
    release.set()
    assert job.done.wait(10)
    assert [t.name for t in master.tasks.values()] == ["slow"]
    reason = master.view(master.tasks["t1"])["reason"]
    assert announced == [f"task (interrupted earlier) has finished: Task t1 queued: {reason}. "
                         f"Will be assigned when a worker registers."]


def test_a_submit_interrupted_while_reading_its_file_submits_nothing(tmp_path) -> None:
    batch = tmp_path / "batch.txt"
    batch.write_text("--noop\n" * 200_000)
    master = Master()
    cmd, args = parse(["submit", str(batch)])
    notes: list[str] = []
    job = Job(LocalLink(master, "test"), cmd, args, ["submit", str(batch)], lambda text: None, notes.append).start()
    message = job.interrupt()  # at once: it is still reading lines
    assert job.done.wait(30)
    print(f"\n{message!r}; the job ended with {type(job.error).__name__}")
    assert message == "interrupted: submit changed nothing"
    assert isinstance(job.error, Interrupted) and master.tasks == {} and notes == []


def test_history_is_private_and_keeps_only_lines_it_is_given(tmp_path) -> None:
    path = tmp_path / "history"
    path.write_text("\n# old\n+status\n")
    os.chmod(path, 0o644)
    history = ShellHistory(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    history.append_string("frobnicate " + "x" * 200_000)  # what the prompt does on Enter
    history.keep("workers")
    assert history.get_strings() == ["workers"]  # this session's lines (the file's are loaded lazily)
    assert "frobnicate" not in path.read_text() and "+workers\n" in path.read_text()
    path.unlink()
    history.keep("status")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert list(ShellHistory(path).load_history_strings()) == ["status"]
