"""The master as its front ends see it, without sockets: the typed operations commands call
(commands/ops.py) against the core, the read-only gate every command that says it reads runs
through, the shell's feed (an event cursor, the oldest wait, ids) and the LocalLink."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

from cloudq.commands import COMMANDS, parse
from cloudq.commands.gate import ChangeRefused, Gate, Guard
from cloudq.commands.ops import CHANGES, READS, MasterOps
from cloudq.commands.registry import Context, run
from cloudq.core.transitions import Event, EventLog
from cloudq.master.core import Master, MasterConfig
from cloudq.shell.link import LocalLink
from cloudq.shell.live import Watcher
from tests.unit.test_commands import worker
from tests.unit.test_master_core import Clock

# One line for every command that only reads, against the cluster `busy` builds.
READ_LINES = {
    "queue": "queue --worker w1", "show": "show t1", "why": "why t2", "logs": "logs t1",
    "workers": "workers w1", "locks": "locks", "status": "status", "events": "events t1",
    "help": "help task", "workflows": "workflows", "wait": "wait t1 t2 --timeout 0",
    "watch": None,  # the shell runs watch itself; its lines are the above
}


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.now = 1_800_000_000.0
    return clock


@pytest.fixture
def busy(clock: Clock) -> Master:
    master = Master(config=MasterConfig(lease_s=10.0), clock=clock)
    worker(master, "w1", cores=2.0)
    master.submit([{"kind": "noop", "resources": {"cpu_cores": 2.0}, "locks": ["db"]},
                   {"kind": "noop", "resources": {"cpu_cores": 2.0}, "locks": ["db"]}])
    return master


def test_the_core_implements_every_operation_commands_call() -> None:
    assert READS and CHANGES and not READS & CHANGES
    master = Master()
    for name in sorted(READS | CHANGES):
        declared = [p for p in inspect.signature(getattr(MasterOps, name)).parameters if p != "self"]
        method = getattr(master, name)
        assert callable(method), name
        if name != "clock":  # time.time, by default: a builtin without a signature
            assert list(inspect.signature(method).parameters) == declared, name


def test_every_command_that_says_it_reads_runs_through_a_read_only_gate(busy: Master) -> None:
    reads = {name for name, cmd in COMMANDS.items() if not cmd.changes}
    assert reads == set(READ_LINES), "a command was added: give it a line here"
    for line in READ_LINES.values():
        if line is None:
            continue
        cmd, args = parse(line.split())
        result = run(Context(Gate(busy, Guard(read_only=True))), cmd, args)
        assert result.title or result.status or result.rows, line
    assert COMMANDS["task"].changes_master(parse(["task", "--noop", "--dry-run"])[1]) is False
    assert COMMANDS["task"].changes_master(parse(["task", "--noop"])[1]) is True


def test_a_read_only_gate_refuses_each_change_before_it_starts(busy: Master) -> None:
    before = {t.id: (t.state, t.priority) for t in busy.tasks.values()}
    for line in ("cancel t1", "hold t2", "priority t2 high", "drain w1", "task --noop",
                 "retry t1", "release w1"):
        cmd, args = parse(line.split())
        assert cmd.changes, line
        with pytest.raises(ChangeRefused):
            run(Context(Gate(busy, Guard(read_only=True))), cmd, args)
    assert {t.id: (t.state, t.priority) for t in busy.tasks.values()} == before


def test_the_event_log_cursor_tells_what_was_added_and_what_was_skipped() -> None:
    log = EventLog(retention=5)
    events = [Event(f"t{i}", "pending", "queued", "", None, 1, float(i)) for i in range(1, 9)]
    for event in events[:3]:
        log.add(event)
    assert log.after(0, 10) == (events[:3], 3, 0)
    for event in events[3:]:
        log.add(event)
    assert log.after(3, 10) == (events[3:], 8, 0)
    assert log.after(1, 10) == (events[3:], 8, 2)  # t2 and t3 are no longer kept
    assert log.after(3, 2) == (events[6:], 8, 3)  # the newest two, and three skipped
    assert log.after(99, 10) == ([], 8, 0)  # a cursor from a log since rebuilt: from now on


def test_the_feed_tells_moves_since_the_cursor_with_facts(busy: Master, clock: Clock) -> None:
    link = LocalLink(busy, "test")
    seed = link.feed(None, workers=True)
    assert seed["events"] == [] and seed["last_id"] == "t2"
    assert seed["recent_ids"][:2] == ["t1", "t2"] and [w["name"] for w in seed["workers"]] == ["w1"]
    assert seed["summary"]["oldest_wait_s"] == 0.0 and seed["locks"] == ["db"]
    clock.now += 30
    busy.report("w1", 1, [{"task": "t1", "attempt": 1, "state": "completed"}])  # t2 gets the core
    feed = link.feed(seed["cursor"])
    assert [(e["task"], e["src"], e["dst"]) for e in feed["events"]] == [
        ("t1", "running", "completed"), ("t2", "queued", "assigned")]  # assigned -> running is not told
    assert feed["events"][1]["facts"]["queued_at"] == 1_800_000_000.0
    assert feed["workers"] is None and feed["missed"] == 0
    assert link.feed(feed["cursor"])["events"] == []
    assert link.running(5) == (1, [])  # t2 is assigned, not yet running


def test_the_oldest_wait_follows_each_queue_class(busy: Master, clock: Clock) -> None:
    assert busy.oldest_waits() == {"default": 0.0}  # t2 waits for the core t1 holds
    clock.now += 10
    (live,) = busy.submit([{"kind": "noop", "queue": "live", "resources": {"cpu_cores": 2.0}}])
    clock.now += 5
    assert busy.oldest_waits() == {"default": 15.0, "live": 5.0}
    busy.set_priority("t2", "high", "live")  # moved: it waits in live now, since it was queued
    assert busy.oldest_waits() == {"live": 15.0}
    busy.cancel(live.id)
    busy.cancel("t2")
    assert busy.oldest_waits() == {} and busy.summary()["oldest_wait_s"] is None


def test_completion_offers_the_masters_lock_names_and_new_ids(busy: Master) -> None:
    watcher = Watcher(LocalLink(busy, "test"), lambda notices: None).start()
    try:
        assert watcher.live().locks == ["db"] and watcher.live().task_ids[:2] == ["t2", "t1"]
        busy.submit([{"kind": "noop", "resources": {"cpu_cores": 64.0}}])
        watcher._read()  # what its thread does twice a second
        assert watcher.live().task_ids[0] == "t3"
    finally:
        watcher.stop()


def test_the_core_imports_none_of_the_edges() -> None:
    """cloudq/core/ is the I/O-free core: importing it loads no store, RPC, shell or HTTP."""
    code = ("import sys, cloudq.core.model, cloudq.core.transitions, cloudq.core.queue, "
            "cloudq.core.scheduler, cloudq.core.ledger, cloudq.core.retry\n"
            "print(sorted(m for m in sys.modules if m.startswith(('cloudq.store', 'cloudq.rpc', "
            "'cloudq.shell', 'cloudq.master', 'cloudq.worker', 'cloudq.commands', 'rpyc', "
            "'prompt_toolkit', 'prometheus_client', 'psutil', 'docker', 'tinydb'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
