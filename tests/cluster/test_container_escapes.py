"""Hostile containers through a real master and worker: a fork bomb and a memory hog fail as
the task's fault, and the same worker stays available and runs the next task. The runner-level
proofs (limits, host files, network, the Docker socket) are in
tests/runners/test_container_escapes.py."""

from __future__ import annotations

import os
import threading

from tests.cluster.harness import wait_until

IMAGE = "cloudq-busybox:latest"
PIDS_LIMIT = 512
HOST_SLACK = 64  # the engine's shim and runc, and whatever else the machine does meanwhile
# Bombers fork until refused; PID 1 becomes a sleep that never reaps, holding the limit.
FORK_BOMB = "sh -c 'bomb() { while :; do bomb & done; }; bomb & exec sleep 600'"
HOG_GB = 64 / 1024


def host_processes() -> int:
    return sum(1 for name in os.listdir("/proc") if name.isdigit())


class HostProcessPeak:
    """The most processes the host had at once while the block ran."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, host_processes())

    def __enter__(self) -> HostProcessPeak:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)


def test_a_fork_bomb_and_a_memory_hog_leave_the_worker_available(cluster):
    # One worker failure would quarantine it: the hostile tasks must count as their own fault.
    master = cluster.start_master("--quarantine-after", "1")
    worker = cluster.start_worker("docker-host", "--cpu-cores", "2")
    baseline = host_processes()

    with HostProcessPeak() as host:
        bomb = master.ctl("task", IMAGE, "--cmd", FORK_BOMB, "-mem", "0.1", "--timeout", "3",
                          "--retries", "0")  # fmt: skip
        bombed = master.wait_state(bomb["id"], "dead", timeout=30)
    hog = master.ctl("task", IMAGE, "--cmd", "sh -c 'tail /dev/zero'", "-mem", str(HOG_GB),
                     "--retries", "0")  # fmt: skip
    hogged = master.wait_state(hog["id"], "dead", timeout=30)

    assert bombed["result"]["status"] == "timed_out"
    assert bombed["last_error"] == "timed out after 3 s: the container was killed"
    assert host.peak - baseline <= PIDS_LIMIT + HOST_SLACK
    assert hogged["result"]["status"] == "failed"
    assert hogged["last_error"] == "memory limit exceeded (64 MiB): the container was OOM-killed"
    assert bombed["result"]["fault"] == hogged["result"]["fault"] == "task"

    record = master.worker("docker-host")
    assert record["status"] == "available"
    assert record["consecutive_failures"] == 0 and record["quarantine_reason"] is None
    assert worker.proc.poll() is None

    normal = master.ctl("task", IMAGE, "--cmd", "sh -c 'echo still-fine'", "-mem", "0.1")
    done = master.wait_state(normal["id"], "completed", timeout=30)
    assert done["result"]["log_tail"].strip() == "still-fine"
    wait_until(lambda: host_processes() <= baseline + HOST_SLACK, 10,
               "the host's process count to come back")  # fmt: skip
    print(f"\nfork bomb: {bombed['result']['status']} in {bombed['result']['duration_s']:.2f} s, "
          f"host +{host.peak - baseline} processes at peak (pids limit {PIDS_LIMIT}); "
          f"memory hog: {hogged['result']['status']} in {hogged['result']['duration_s']:.2f} s "
          f"(OOM at 64 MiB); normal task: completed in {done['result']['duration_s']:.2f} s; "
          f"worker {record['status']}, {record['consecutive_failures']} worker failures")
