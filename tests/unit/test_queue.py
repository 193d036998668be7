"""The priority queue against a reference sort, and its thread safety."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudq.core.model import Priority, QueueClass
from cloudq.core.queue import TaskQueue

ops = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.sampled_from(list(QueueClass)), st.sampled_from(list(Priority))),
        st.tuples(st.just("pop")),
        st.tuples(st.just("remove"), st.integers(0, 60)),
        st.tuples(st.just("reprioritise"), st.integers(0, 60), st.sampled_from(list(Priority))),
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_queue_matches_reference_sort(operations):
    queue = TaskQueue()
    reference: dict[str, tuple] = {}
    seq = 0
    for op in operations:
        if op[0] == "push":
            seq += 1
            key = (op[1].rank, op[2].rank, seq)
            queue.push(f"t{seq}", key)
            reference[f"t{seq}"] = key
        elif op[0] == "pop":
            expected = min(reference, key=reference.get) if reference else None
            assert queue.pop() == expected
            reference.pop(expected, None)
        elif op[0] == "remove":
            task_id = f"t{op[1]}"
            assert queue.remove(task_id) == (task_id in reference)
            reference.pop(task_id, None)
        else:
            task_id = f"t{op[1]}"
            if task_id in reference:
                old = reference[task_id]
                reference[task_id] = (old[0], op[2].rank, old[2])
                queue.reprioritise(task_id, reference[task_id])
            else:
                with pytest.raises(KeyError):
                    queue.reprioritise(task_id, (0, 0, 0))
        assert len(queue) == len(reference)
        assert list(queue) == sorted(reference, key=reference.get)
        assert queue.peek() == (min(reference, key=reference.get) if reference else None)


def test_class_beats_priority_beats_fifo():
    queue = TaskQueue()
    queue.push("batch-high", (QueueClass.BATCH.rank, Priority.HIGH.rank, 1))
    queue.push("default-low", (QueueClass.DEFAULT.rank, Priority.LOW.rank, 2))
    queue.push("default-high-late", (QueueClass.DEFAULT.rank, Priority.HIGH.rank, 4))
    queue.push("default-high-early", (QueueClass.DEFAULT.rank, Priority.HIGH.rank, 3))
    queue.push("live-low", (QueueClass.LIVE.rank, Priority.LOW.rank, 5))
    assert [queue.pop() for _ in range(5)] == [
        "live-low", "default-high-early", "default-high-late", "default-low", "batch-high",
    ]
    assert queue.pop() is None


def test_duplicate_push_is_refused():
    queue = TaskQueue()
    queue.push("t1", (0, 0, 1))
    with pytest.raises(KeyError, match="already queued"):
        queue.push("t1", (0, 0, 1))


def test_removed_entries_are_compacted():
    queue = TaskQueue()
    for i in range(1000):
        queue.push(f"t{i}", (0, 0, i))
    for i in range(990):
        queue.remove(f"t{i}")
    assert len(queue._heap) < 100  # dead entries do not pile up
    assert list(queue) == [f"t{i}" for i in range(990, 1000)]


def test_concurrent_push_pop_loses_nothing():
    queue = TaskQueue()
    popped: list[str] = []
    lock = threading.Lock()

    def producer(base: int) -> None:
        for i in range(2000):
            queue.push(f"t{base + i}", (0, 0, base + i))

    def consumer() -> None:
        got = []
        while len(got) < 2000:
            item = queue.pop()
            if item is not None:
                got.append(item)
        with lock:
            popped.extend(got)

    threads = [threading.Thread(target=producer, args=(k * 10_000,)) for k in range(4)]
    threads += [threading.Thread(target=consumer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(popped) == 8000 and len(set(popped)) == 8000
    assert len(queue) == 0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 8), st.integers(0, 10**6)), unique_by=lambda p: p[1], max_size=80),
       st.integers(0, 80))
def test_push_many_orders_as_one_push_each(keys, split):
    """A restart queues in bulk; what it pops must not differ from pushing one by one, also
    into a queue that already holds some."""
    items = [(f"t{seq}", rank << 60 | seq) for rank, seq in keys]
    one_by_one, in_bulk = TaskQueue(), TaskQueue()
    for task_id, key in items:
        one_by_one.push(task_id, key)
    for task_id, key in items[:split]:
        in_bulk.push(task_id, key)
    in_bulk.push_many(items[split:])
    assert [one_by_one.pop() for _ in items] == [in_bulk.pop() for _ in items]
    with pytest.raises(KeyError):
        in_bulk.push_many([("t1", 1), ("t1", 2)])
