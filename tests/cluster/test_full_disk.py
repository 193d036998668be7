"""A full data disk, against real master and worker processes: the master refuses changes with
`store full`, shows nothing it has not stored, keeps answering reads, and resumes by itself once
space is freed; workers stay alive and nothing acknowledged is lost."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest

from cloudq.errors import CloudqError
from tests.cluster.harness import wait_until

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def small_disk(tmpfs) -> Path:
    """A 24 MiB file system of the test's own."""
    return tmpfs("disk", 24)


def _fill(path: Path) -> int:
    """Writes until the file system has no room left; returns the bytes written."""
    written = 0
    block = bytes(1 << 16)
    with open(path, "wb", buffering=0) as out, contextlib.suppress(OSError):
        while True:
            written += out.write(block)
    with open(path, "ab", buffering=0) as out, contextlib.suppress(OSError):
        while out.write(b"x"):  # the last few bytes too
            written += 1
    return written


def test_a_full_disk_refuses_writes_loses_nothing_and_resumes_by_itself(cluster, small_disk):
    master = cluster.start_master("--interval", "1", data=str(small_disk / "data"))
    workers = [cluster.start_worker(name) for name in ("w1", "w2")]
    acknowledged = [master.ctl("task", "--exec", "sleep 0.2")["id"] for _ in range(10)]

    filler = small_disk / "filler"
    print(f"\nfilled the disk with {_fill(filler) / 2**20:.1f} MiB")

    # A batch of 500: refused whole, and none of it shows.
    counts_before = master.ctl("status")["tasks"]
    refusals = []
    for _ in range(3):
        with pytest.raises(CloudqError, match="store full") as refused:
            master.client().call("submit", {"tasks": [{"kind": "noop"}] * 500})
        refusals.append(str(refused.value))
    print("refused:", refusals[0])
    status = master.ctl("status")  # reads go on
    assert sum(status["tasks"].values()) <= sum(counts_before.values())
    assert status["store"]["refusing_writes"]
    shown = {t["id"] for state in ("queued", "assigned", "running") for t in master.ctl("queue", "--state", state)}
    assert shown <= set(acknowledged), f"tasks shown that were never acknowledged: {shown - set(acknowledged)}"
    for task_id in acknowledged:
        assert master.task(task_id)["id"] == task_id  # nothing acknowledged is gone

    # Workers keep going through it (their calls are refused or retried, never fatal).
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        assert all(w.proc.poll() is None for w in workers)
        time.sleep(0.2)

    filler.unlink()
    freed = time.monotonic()
    task = wait_until(lambda: _try_submit(master), 30, "writes to resume after space was freed")
    resumed = time.monotonic() - freed
    print(f"writes resumed {resumed:.2f}s after space was freed")
    assert master.wait_state(task, "completed", timeout=60)
    for task_id in acknowledged:
        assert master.wait_state(task_id, "completed", timeout=60)
    assert all(w.proc.poll() is None for w in workers)
    for name in ("w1", "w2"):
        master.wait_worker(name)
    assert master.ctl("status")["store"]["refusing_writes"] is None


def _try_submit(master) -> str | None:
    try:
        return master.ctl("task", "--exec", "echo after")["id"]
    except CloudqError as err:
        assert "store full" in str(err)
        return None
