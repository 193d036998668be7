"""`cloudq ctl logs ID --follow` and `show ID --follow` against a real master and worker: the
same `call` again until the task ends; `--raw` and `--json` keep working; Ctrl-C stops only
the following. And `ctl watch`, refused with a reason."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from tests.cluster.harness import ROOT
from tests.cluster.test_ctl import HOSTILE_OUTPUT, ctl

pytestmark = pytest.mark.timeout(120)

STREAM = "sh -c 'echo one; sleep 1; echo two; sleep 1; echo three; sleep 1; echo four'"


def _task(address: str, *words: str) -> str:
    made = ctl(address, "--json", "task", *words)
    assert made.returncode == 0, made.stderr
    return json.loads(made.stdout)["id"]


def test_ctl_logs_follow_streams_until_the_task_ends(cluster):
    master = cluster.start_master()
    cluster.start_worker("w1")
    task_id = _task(master.address, "--exec", STREAM)
    followed = ctl(master.address, "logs", task_id, "--follow")
    print("\n" + followed.stdout)
    assert followed.returncode == 0, followed.stderr
    assert followed.stdout == f"one\ntwo\nthree\nfour\n{task_id} is completed\n"

    again = ctl(master.address, "--json", "logs", task_id, "-f")  # an ended task: one line
    assert [json.loads(line) for line in again.stdout.splitlines()] == [
        {"id": task_id, "state": "completed", "log": "one\ntwo\nthree\nfour\n"}]


def test_ctl_logs_follow_raw_and_json(cluster):
    master = cluster.start_master()
    cluster.start_worker("w1")
    fmt = "".join(f"\\{byte:03o}" for byte in HOSTILE_OUTPUT)
    task_id = _task(master.address, "--exec", f"sh -c \"sleep 1; printf '{fmt}'; sleep 1; echo end\"")
    raw = subprocess.run([sys.executable, "-m", "cloudq", "ctl", "--master", master.address,
                          "logs", task_id, "--follow", "--raw"], capture_output=True, timeout=60, cwd=ROOT)
    assert raw.returncode == 0, raw.stderr
    assert raw.stdout == HOSTILE_OUTPUT + b"end\n"  # the bytes as written, nothing added

    task_id = _task(master.address, "--exec", STREAM)
    lines = ctl(master.address, "logs", task_id, "--follow", "--json").stdout.splitlines()
    records = [json.loads(line) for line in lines]
    print("\n" + "\n".join(lines))
    assert "".join(r["log"] for r in records) == "one\ntwo\nthree\nfour\n"
    assert records[-1]["state"] == "completed" and len(records) >= 3
    assert all("\x1b" not in line for line in lines)


def test_ctl_show_follow_prints_each_move(cluster):
    master = cluster.start_master()
    cluster.start_worker("w1")
    task_id = _task(master.address, "--exec", "sleep 2")
    shown = ctl(master.address, "show", task_id, "--follow")
    print("\n" + shown.stdout)
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout.splitlines()
    assert out[0] == f"Task {task_id}" and out[-1] == f"{task_id} is completed"
    assert out[-2].endswith("running -> completed: completed on w1")
    states = [json.loads(line)["state"] for line in
              ctl(master.address, "show", task_id, "--follow", "--json").stdout.splitlines()]
    assert states == ["completed"]


def test_ctl_follow_stops_at_ctrl_c_and_the_task_goes_on(cluster):
    master = cluster.start_master()
    cluster.start_worker("w1")
    task_id = _task(master.address, "--exec", "sh -c 'echo started; sleep 120'")
    proc = subprocess.Popen([sys.executable, "-m", "cloudq", "ctl", "--master", master.address,
                             "logs", task_id, "--follow"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "started\n"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 130
        assert proc.stderr is not None
        assert f"stopped following {task_id} (the task goes on)" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert master.task(task_id)["state"] == "running"


def test_ctl_refuses_watch_with_the_reason(cluster):
    master = cluster.start_master()
    refused = ctl(master.address, "watch", "-n", "1", "queue")
    print(f"\n{refused.stderr.strip()}")
    assert refused.returncode == 1 and refused.stdout == ""
    assert "watch redraws a terminal and works only in the master> shell" in refused.stderr
