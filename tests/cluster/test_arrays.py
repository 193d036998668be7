"""A task array against real master and worker processes: `--count 20 --max-running 3` never
runs more than 3 at once, all 20 complete, and each got its own {index}."""

from __future__ import annotations

import pytest

from tests.cluster.harness import wait_until

pytestmark = pytest.mark.timeout(120)


def test_count_20_max_running_3(cluster):
    master = cluster.start_master()
    cluster.start_worker("w1", "--max-tasks", "8")
    reply = master.ctl("task", "--exec", "sh -c 'sleep 0.2; echo item-{index}'", "--name", "item-{index}",
                       "--count", "20", "--max-running", "3")
    array, ids = reply["array"], reply["tasks"]
    assert len(ids) == 20 and reply["max_running"] == 3
    wait_until(lambda: all(master.task(t)["state"] == "completed" for t in ids), 60, "all 20 to complete")
    tasks = [master.task(t) for t in ids]
    # The most that ever ran at once, from when each started and finished.
    moments = sorted([(t["started_at"], 1) for t in tasks] + [(t["finished_at"], -1) for t in tasks])
    running, most = 0, 0
    for _, step in moments:
        running += step
        most = max(most, running)
    print(f"\n{array}: 20 completed, at most {most} at once")
    assert most <= 3
    for index, task in enumerate(tasks):
        assert task["name"] == f"item-{index}"
        assert task["result"]["log_tail"].strip() == f"item-{index}"
    assert master.ctl("show", array)["done"] == 20
