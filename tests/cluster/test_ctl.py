"""`cloudq ctl` as operators run it: a separate process, JSON out, errors on stderr."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.cluster.harness import ROOT


def ctl(address: str, *words: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cloudq", "ctl", "--master", address, *words],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_ctl_json_listings_and_errors(cluster, tmp_path):
    master = cluster.start_master()
    cluster.start_worker("w1")
    made = ctl(master.address, "task", "--exec", "echo hi", "--name", "greet", "--json")
    assert made.returncode == 0, made.stderr
    task = json.loads(made.stdout)
    assert task["name"] == "greet" and task["kind"] == "exec"
    master.wait_state(task["id"], "completed")

    batch = tmp_path / "tasks.txt"
    batch.write_text('--noop --name n1\n{"kind": "noop", "name": "n2"}\n')
    submitted = json.loads(ctl(master.address, "submit", str(batch), "--json").stdout)
    assert [t["name"] for t in submitted] == ["n1", "n2"] and all(t["id"] for t in submitted)

    shown = json.loads(ctl(master.address, "--json", "show", task["id"]).stdout)
    assert shown["state"] == "completed" and shown["result"]["log_tail"].strip() == "hi"
    listing = json.loads(ctl(master.address, "queue", "--state", "completed", "--json").stdout)
    assert all({"id", "state", "worker", "attempt", "reason"} <= set(t) for t in listing)
    workers = json.loads(ctl(master.address, "workers", "--json").stdout)
    assert workers[0]["name"] == "w1" and workers[0]["status"] in ("available", "busy")
    table = ctl(master.address, "workers")
    assert table.returncode == 0 and "w1" in table.stdout and "available" in table.stdout

    for words, message in (
        (("show", "t999"), "no task 't999'"),
        (("task", "--queue", "urgent", "--noop"), "unknown queue class 'urgent'"),
        (("frobnicate",), "unknown command 'frobnicate'"),
        (("quit",), "only works in the master's own shell"),
        (("submit", str(tmp_path / "missing.txt")), "cannot read"),
    ):
        bad = ctl(master.address, *words)
        assert bad.returncode != 0 and message in bad.stderr, (words, bad.stderr)
        assert bad.stdout == ""
    gone = ctl("127.0.0.1:1", "status")
    assert gone.returncode != 0 and "cannot reach the master" in gone.stderr
