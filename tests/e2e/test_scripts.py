"""The start scripts as the README gives them, with their arguments: a master as a service and
a worker that joins it, then a task through `cloudq ctl`. As on a real machine, the master
makes its certificates in its data directory on the first start, and the worker and ctl on
the same machine find them there: only the data directory is named (CLOUDQ_DATA_DIR)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.cluster.harness import ROOT, Proc

pytestmark = pytest.mark.timeout(180)


def test_run_master_and_run_worker_with_arguments(tmp_path: Path):
    env = {"CLOUDQ_DATA_DIR": str(tmp_path / "data")}
    master = Proc([str(ROOT / "runMaster.sh"), "--no-shell", "--port", "0"], env)
    procs = [master]
    try:
        match = master.wait_for_line(re.compile(r"listening on (\S+):(\d+).*; TLS, certificates in"),
                                     timeout=120)
        address = f"{match.group(1)}:{match.group(2)}"
        worker = Proc([str(ROOT / "runWorker.sh"), "--master", address, "--name", "w1",
                       "--max-tasks", "2", "--labels", "zone=eu", "--work-dir", str(tmp_path / "work")], env)
        procs.append(worker)
        worker.wait_for_line(re.compile(r"registered with .* as w1"), timeout=120)
        ctl = Proc([str(ROOT / ".venv/bin/cloudq"), "ctl", "--master", address, "task",
                    "--exec", "echo from the script", "--name", "hello"], env)
        ctl.wait_for_line(re.compile(r"Task t1 (queued|assigned|running|completed)"), timeout=60)
        assert ctl.proc.wait(timeout=30) == 0
        print(f"\nmaster at {address}, worker w1 joined, t1 submitted through ctl")
    finally:
        for proc in reversed(procs):
            proc.stop(timeout=20)
