"""A worker's work directory on a full file system: its tasks fail at once with the reason,
which does not count against the worker (no quarantine however many), the worker stays up,
and it runs tasks again as soon as space is freed."""

from __future__ import annotations

import pytest

from cloudq.client import Client
from tests.cluster.test_full_disk import _fill

pytestmark = pytest.mark.timeout(180)


def test_a_full_work_directory_fails_tasks_plainly_without_blaming_the_worker(cluster, tmpfs):
    small_work_disk = tmpfs("work-disk", 8)
    master = cluster.start_master("--quarantine-after", "3")
    worker = cluster.start_worker("w1", "--work-dir", str(small_work_disk / "w1"))
    echo = {"argv": ["sh", "-c", "echo hello"]}
    with Client(master.address) as cq:
        assert cq.submit(kind="exec", spec=echo).wait(timeout=30)["state"] == "completed"
        filler = small_work_disk / "filler"
        _fill(filler)
        ended = [cq.submit(kind="exec", spec=echo, max_retries=0).wait(timeout=30) for _ in range(5)]
        for task in ended:
            assert task["state"] == "dead", task
            assert "no space left in the worker's work directory" in task["last_error"], task
            assert task["result"]["fault"] == "space"
        print(f"\na task on a full work directory: {ended[0]['last_error']}")
        (w1,) = cq.workers()
        assert w1["status"] == "available" and w1["consecutive_failures"] == 0, w1  # not quarantined
        assert worker.proc.poll() is None

        filler.unlink()  # space again: the same worker runs tasks at once
        back = cq.submit(kind="exec", spec=echo).wait(timeout=30)
        assert back["state"] == "completed" and back["worker"] == "w1"
