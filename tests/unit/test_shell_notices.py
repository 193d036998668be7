"""The shell's watcher, notices, toolbar and vertical flags against an in-process master: no
terminal. The watcher's thread is driven by real master operations and awaited by event."""

from __future__ import annotations

import threading

import pytest

from cloudq.core.transitions import Event
from cloudq.master.core import Master
from cloudq.shell.link import LocalLink
from cloudq.shell.live import Watcher
from cloudq.shell.loop import _without_g, vertical_request
from cloudq.shell.notices import (
    BURST_LINES,
    Notice,
    TaskFacts,
    duration,
    select,
    task_notice,
    worker_notice,
)
from cloudq.shell.toolbar import toolbar


class Collected:
    """The notices the watcher hands on, and a way to wait for one."""

    def __init__(self) -> None:
        self.notices: list[Notice] = []
        self._cv = threading.Condition()

    def __call__(self, notices: list[Notice]) -> None:
        with self._cv:
            self.notices += notices
            self._cv.notify_all()

    def wait_for(self, text: str, timeout: float = 10) -> Notice:
        with self._cv:
            found = self._cv.wait_for(lambda: next((n for n in self.notices if text in n.text), None),
                                      timeout)
        assert found, f"no notice with {text!r}; got {[n.text for n in self.notices]}"
        return found


@pytest.fixture
def watched() -> tuple[Master, Watcher, Collected]:
    master = Master()
    collected = Collected()
    watcher = Watcher(LocalLink(master, "test"), collected).start()
    yield master, watcher, collected
    watcher.stop()


def _register(master: Master, name: str = "w1", cores: float = 4.0) -> int:
    return master.register({"name": name, "cpu_cores": cores, "mem_gb": 8.0, "max_tasks": 4}, [])["session"]


def test_a_queued_task_assigned_later_is_told_with_its_wait(watched) -> None:
    master, watcher, collected = watched
    session = _register(master)
    collected.wait_for("w1 joined (4 cores, 8 GB)")
    (big,) = master.submit([{"kind": "noop", "resources": {"cpu_cores": 4.0}}])
    (waiting,) = master.submit([{"kind": "noop", "resources": {"cpu_cores": 4.0}}])
    master.report("w1", session, [{"task": big.id, "attempt": 1, "state": "running"}])
    master.report("w1", session, [{"task": big.id, "attempt": 1, "state": "completed"}])
    notice = collected.wait_for(f"{waiting.id} assigned")
    print(f"\n{notice.line()}")
    assert notice.text.startswith(f"{waiting.id} assigned to w1 after ") and notice.text.endswith(" in queue")
    assert collected.wait_for(f"{big.id} finished on w1").error is False
    # The task placed as it was submitted is not news.
    assert not any(n.text.startswith(f"{big.id} assigned") for n in collected.notices)
    assert watcher.live().task_ids[:2] == [waiting.id, big.id]  # most recent first
    assert watcher.live().workers == ["w1"]


def test_failures_and_lost_workers_are_errors(watched) -> None:
    master, watcher, collected = watched
    session = _register(master)
    collected.wait_for("w1 joined")
    (task,) = master.submit([{"kind": "noop", "max_retries": 0}])
    master.report("w1", session, [{"task": task.id, "attempt": 1, "state": "failed",
                                   "result": {"error": "exit code 3"}}])
    failed = collected.wait_for(f"{task.id} ")
    print(f"\n{failed.line()}")
    assert failed.error and failed.kind in ("failed", "dead")
    master.workers["w1"].connected = False  # what a missed lease does
    lost = collected.wait_for("w1 lost")
    assert lost.error


def test_the_toolbar_counts_and_the_oldest_wait(watched) -> None:
    master, watcher, _ = watched
    _register(master, cores=1.0)
    master.submit([{"kind": "noop", "resources": {"cpu_cores": 1.0}}])
    master.submit([{"kind": "noop", "resources": {"cpu_cores": 1.0}}, {"kind": "noop", "resources": {"cpu_cores": 1.0}}])
    figures = watcher.wait_figures(lambda f: f.queued == 2, 10)  # read twice a second
    assert figures is not None, watcher.figures()
    assert (figures.workers_up, figures.workers_total, figures.running, figures.queued) == (1, 1, 1, 2)
    assert figures.oldest_wait_s is not None
    later = figures.at + 64.5 - figures.oldest_wait_s  # when the oldest has waited 64.5 s
    text = "".join(part for _, part in toolbar(figures, "on", now=later))
    print(f"\n{text}")
    assert "workers 1/1 up | running 1 | queued 2 | held 0 | dead 0 | oldest wait 1m04s" in text


def test_worker_notices() -> None:
    view = {"name": "gpu-1", "status": "available", "cpu_cores": 8.0, "mem_gb": 32.0, "gpus": 2}
    assert worker_notice(view, None).text == "gpu-1 joined (8 cores, 32 GB, 2 GPUs)"
    assert worker_notice(view, "available") is None
    assert worker_notice({**view, "status": "offline", "last_seen": 0}, None) is None
    assert worker_notice({**view, "status": "offline", "last_seen": 0}, "busy").text == "gpu-1 lost"
    quarantined = worker_notice({**view, "status": "quarantined", "quarantine_reason": "3 worker failures"},
                                "available")
    assert quarantined.error and "quarantined (3 worker failures)" in quarantined.text


def test_the_issue_s_example_line() -> None:
    event = Event("t7", "queued", "assigned", "placed on worker-2", "worker-2", 1, 1064.0)
    notice = task_notice(event, TaskFacts(12, 1000.0, None, None, ""))
    assert notice.text == "t7 assigned to worker-2 after 12 placement attempts, 1m04s in queue"
    assert notice.line().endswith("] t7 assigned to worker-2 after 12 placement attempts, 1m04s in queue")
    assert duration(3 * 3600 + 125) == "3h02m"


def test_modes_and_bursts() -> None:
    ok = [Notice("finished", f"t{i} finished", at=1.0) for i in range(100)]
    bad = [Notice("failed", "t200 failed: boom", error=True, at=1.0)]
    assert select(ok + bad, "off") == []
    assert select(ok + bad, "errors") == bad
    shown = select(ok + bad, "on")
    assert len(shown) == BURST_LINES and bad[0] in shown  # failures are never the ones counted
    assert shown[-1].text == "and 97 more: 97 finished"


@pytest.mark.parametrize(("line", "words", "vertical"), [
    ("queue \\G", ["queue"], True),
    ("queue --state queued\\G", ["queue", "--state", "queued"], True),
    ("workers --vertical", ["workers"], True),
    ('task --exec "echo --vertical"', ["task", "--exec", "echo --vertical"], False),
    ("queue", ["queue"], False),
])
def test_vertical_on_demand(line: str, words: list[str], vertical: bool) -> None:
    import shlex

    assert vertical_request(shlex.split(_without_g(line)), line) == (words, vertical)
