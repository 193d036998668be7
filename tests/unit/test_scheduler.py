"""Placement with no I/O: ledgers, locks, backfill, aging, strategies."""

from __future__ import annotations

from cloudq.core.ledger import Ledger, LockTable
from cloudq.core.model import new_task
from cloudq.core.scheduler import Backlog, Scheduler

SEQ = iter(range(1, 10**9))


def task(cpu=1.0, mem=0.0, gpus=0, locks=None, priority="medium", queued_at=0.0, **extra):
    seq = next(SEQ)
    t = new_task({"kind": "noop", "resources": {"cpu_cores": cpu, "mem_gb": mem, "gpus": gpus},
                  "locks": locks, "priority": priority, **extra}, task_id=f"t{seq}", seq=seq, now=0.0)
    t.queued_at = queued_at
    return t


def setup(*tasks):
    backlog, by_id = Backlog(), {}
    for t in tasks:
        backlog.add(t, frozenset())
        by_id[t.id] = t
    return backlog, by_id


def test_blocked_head_does_not_stop_smaller_tasks_and_keeps_its_reason():
    big, small = task(cpu=8), task(cpu=1)
    backlog, tasks = setup(big, small)
    ledgers = {"w1": Ledger("w1", 4.0, 8.0, 10.0, max_tasks=4)}
    placed = Scheduler().place(backlog, tasks, ledgers, LockTable(), now=1.0)
    assert [p.task_id for p in placed] == [small.id]
    assert big.id in backlog
    assert "Insufficient CPU: worker has 4.00 available, task requires 8.00" in backlog.reason_for(big.id)


def test_two_tasks_never_book_the_same_capacity():
    backlog, tasks = setup(task(cpu=3), task(cpu=3))
    ledgers = {"w1": Ledger("w1", 4.0, 8.0, 10.0, max_tasks=4)}
    placed = Scheduler().place(backlog, tasks, ledgers, LockTable(), now=1.0)
    assert len(placed) == 1 and abs(ledgers["w1"].free_cpu - 1.0) < 1e-9


def test_named_lock_admits_its_holder_count():
    a, b, c, other = task(locks=["m:2"]), task(locks=["m:2"]), task(locks=["m:2"]), task(locks=["n"])
    backlog, tasks = setup(a, b, c, other)
    locks = LockTable()
    ledgers = {"w1": Ledger("w1", 64.0, 64.0, 10.0, max_tasks=10)}
    placed = Scheduler().place(backlog, tasks, ledgers, locks, now=1.0)
    assert {p.task_id for p in placed} == {a.id, b.id, other.id}
    assert "Lock m is held by" in backlog.reason_for(c.id)
    locks.release(a.id, a.locks)
    ledgers["w1"].release(a.id)
    assert [p.task_id for p in Scheduler().place(backlog, tasks, ledgers, locks, now=2.0)] == [c.id]


def test_pack_fills_first_worker_and_spread_balances():
    def run(strategy):
        backlog, tasks = setup(*(task(cpu=1) for _ in range(4)))
        ledgers = {n: Ledger(n, 4.0, 8.0, 1.0, max_tasks=4) for n in ("w1", "w2")}
        return [p.worker for p in Scheduler(strategy).place(backlog, tasks, ledgers, LockTable(), 1.0)]

    assert run("pack") == ["w1"] * 4
    assert sorted(run("spread")) == ["w1", "w1", "w2", "w2"]


def test_old_blocked_task_reserves_a_worker_against_backfill():
    big = task(cpu=4, queued_at=0.0)
    smalls = [task(cpu=1, priority="low", queued_at=0.0) for _ in range(3)]
    backlog, tasks = setup(big, *smalls)
    ledgers = {"w1": Ledger("w1", 4.0, 8.0, 1.0, max_tasks=8)}
    ledgers["w1"].book("running", new_task({"kind": "noop"}, task_id="x", seq=0, now=0).resources)
    young = Scheduler(aging_s=100.0).place(backlog, tasks, ledgers, LockTable(), now=10.0)
    assert len(young) == 3  # backfill while the big task is young
    backlog, tasks = setup(big, *(task(cpu=1, priority="low") for _ in range(3)))
    ledgers = {"w1": Ledger("w1", 4.0, 8.0, 1.0, max_tasks=8)}
    ledgers["w1"].book("running", big.resources.__class__(cpu_cores=1.0))
    old = Scheduler(aging_s=100.0).place(backlog, tasks, ledgers, LockTable(), now=500.0)
    assert old == []  # the worker is kept for the starving task
    assert big.id in backlog


def test_gpus_are_whole_and_checked_for_memory():
    need = task(gpus=2)
    backlog, tasks = setup(need)
    ledgers = {"g": Ledger("g", 8.0, 8.0, 1.0, gpu_mem_gb=(16.0, 80.0, 80.0), max_tasks=4)}
    placed = Scheduler().place(backlog, tasks, ledgers, LockTable(), now=1.0)
    assert placed[0].gpu_indices == (0, 1) and ledgers["g"].free_gpus == {2}


def test_labels_and_target_worker():
    labelled = task(labels={"zone": "eu"})
    targeted = task(target_worker="w2")
    backlog, tasks = setup(labelled, targeted)
    ledgers = {
        "w1": Ledger("w1", 4.0, 8.0, 1.0, max_tasks=4, labels={"zone": "us"}),
        "w2": Ledger("w2", 4.0, 8.0, 1.0, max_tasks=4, labels={"zone": "eu"}),
    }
    placed = {p.task_id: p.worker for p in Scheduler().place(backlog, tasks, ledgers, LockTable(), 1.0)}
    assert placed == {labelled.id: "w2", targeted.id: "w2"}


def test_pass_cost_does_not_grow_with_blocked_tasks():
    backlog, tasks = setup(*(task(cpu=8) for _ in range(5000)))
    ledgers = {"w1": Ledger("w1", 4.0, 8.0, 1.0, max_tasks=4)}
    calls = 0
    original = Ledger.misfit

    def counting(self, need):
        nonlocal calls
        calls += 1
        return original(self, need)

    Ledger.misfit = counting
    try:
        Scheduler().place(backlog, tasks, ledgers, LockTable(), now=1.0)
    finally:
        Ledger.misfit = original
    assert calls == 1  # one shape, one head, one worker: the other 4999 cost nothing
