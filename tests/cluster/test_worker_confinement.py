"""A root worker runs its exec tasks as task users: a real master and worker process, tasks
submitted as an operator would. The runner-level checks are in tests/runners/test_confinement.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from tests.cluster.harness import ROOT

UID_BASE = 1_900_000_100



@pytest.fixture(autouse=True)
def as_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("confinement is a root worker's: run these tests as root")


def test_a_worker_whose_exec_user_does_not_exist_stops_at_start(tmp_path):
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "cloudq", "worker", "--master", "127.0.0.1:1", "--name", "w",
         "--work-dir", str(tmp_path / "work"), "--exec-user", "no-such-user-cloudq"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    took = time.monotonic() - started
    print(f"\nexit {done.returncode} after {took:.2f} s: {done.stderr.strip()}")
    assert done.returncode == 2
    assert "--exec-user 'no-such-user-cloudq': no such user on this machine" in done.stderr


def test_tasks_running_at_once_get_uids_of_their_own(cluster):
    master = cluster.start_master()
    worker = cluster.start_worker("confined", "--cpu-cores", "4", "--max-tasks", "2",
                                  "--exec-uid-base", str(UID_BASE))  # fmt: skip
    # The cluster's work directory is below pytest's private tmp dir: said once at start.
    worker.wait_for_line(re.compile(r"tasks run as nobody, uid 1900000100 \+ slot each"), 10)
    worker.wait_for_line(re.compile(r"who may not enter .* \$HOME and \$CLOUDQ_WORK_DIR"), 10)
    script = "id -u; echo made > out; cat out; sleep 1"
    ids = [master.ctl("task", "--exec", f"sh -c '{script}'")["id"] for _ in range(2)]
    uids = set()
    for task_id in ids:
        done = master.wait_state(task_id, {"completed", "failed"}, timeout=30)
        assert done["state"] == "completed", done
        uid, made = done["result"]["log_tail"].split()
        assert made == "made"  # the task wrote in its own directory
        uids.add(int(uid))
    print(f"\ntwo tasks at once ran as uids {sorted(uids)}")
    assert uids == {UID_BASE, UID_BASE + 1}
