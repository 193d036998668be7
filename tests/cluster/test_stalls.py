"""A real transcode that stops making progress is killed and retried after --stall-timeout.

Inputs are regular files only (a FIFO or device is refused, see docs/runners.md), so a feed
that stops is simulated the way a wedged encoder looks from outside: the worker's ffmpeg is
stopped with SIGSTOP. Its progress stands still; the master notices after the stall timeout,
the worker kills it, and the next attempt runs to the end."""

from __future__ import annotations

import signal

import psutil
import pytest

from tests.cluster.harness import wait_until

pytestmark = pytest.mark.timeout(180)


def _ffmpeg_of(worker_pid: int) -> psutil.Process | None:
    for child in psutil.Process(worker_pid).children(recursive=True):
        if child.name() == "ffmpeg":
            return child
    return None


def test_a_stalled_transcode_is_killed_and_retried(cluster):
    master = cluster.start_master("--stall-timeout", "3")
    worker = cluster.start_worker("w1")
    task_id = master.ctl("task", "--scenario", "360p30-h264", "--duration", "20", "--retries", "2")["id"]
    wait_until(lambda: (master.task(task_id).get("progress") or {}).get("out_time_s", 0) > 0, 60,
               "the encode to make progress")
    ffmpeg = wait_until(lambda: _ffmpeg_of(worker.proc.pid), 10, "the worker's ffmpeg process")
    ffmpeg.send_signal(signal.SIGSTOP)  # the encode hangs: no frame, no progress
    stalled = wait_until(lambda: [e for e in master.ctl("events", task_id)
                                  if e["reason"].startswith("stalled")], 30, "the stall to be noticed")
    print(f"\n{task_id}: {stalled[0]['src']} -> {stalled[0]['dst']}: {stalled[0]['reason']}")
    assert stalled[0]["reason"] == "stalled: no progress for 3 s" and stalled[0]["dst"] == "retrying"
    wait_until(lambda: not ffmpeg.is_running() or ffmpeg.status() == psutil.STATUS_ZOMBIE, 30,
               "the stalled ffmpeg to be killed")
    done = master.wait_state(task_id, "completed", timeout=90)
    assert done["attempt"] == 2 and done["last_error"] == "stalled: no progress for 3 s"
