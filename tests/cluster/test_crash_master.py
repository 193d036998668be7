"""kill -9 the master at random moments while a client submits: every acknowledged task survives,
none is duplicated, and the state always loads (Jepsen-style lost / duplicated / unexpected)."""

from __future__ import annotations

import random
import threading

from cloudq.rpc.client import MasterClient
from tests.cluster.harness import MasterProc

# Eight kills here; the queue check of tests/chaos (CI: 3 kills under load with workers, and
# 20 over 10,000 submissions in bench/chaos/run.py queue) proves the same promise at size.
TRIALS = 8


def _submit_until_killed(address: str, prefix: str, acked: list[str], stop: threading.Event) -> None:
    try:
        client = MasterClient(address)
    except Exception:  # noqa: BLE001 - the master was killed before we connected
        return
    n = 0
    while not stop.is_set():
        name = f"{prefix}-{n}"
        n += 1
        try:
            if n % 3:
                client.call("submit", {"tasks": [{"kind": "noop", "name": name}]})
                acked.append(name)
            else:  # a batch of 5 is acknowledged as a whole
                batch = [f"{name}.{i}" for i in range(5)]
                client.call("submit", {"tasks": [{"kind": "noop", "name": b} for b in batch]})
                acked.extend(batch)
        except Exception:  # noqa: BLE001 - the master died mid-call: not acknowledged
            return


def test_master_killed_at_random_moments_loses_and_duplicates_nothing(tmp_path):
    rng = random.Random(2026)
    data = tmp_path / "data"
    acked: list[str] = []
    for trial in range(TRIALS):
        master = MasterProc(data, "--interval", "300")
        try:
            names = [t["name"] for t in master.ctl("queue", "--state", "queued", "--limit", "1000000")]
            assert len(names) == len(set(names)), f"trial {trial}: duplicated tasks after restart"
            lost = set(acked) - set(names)
            assert not lost, f"trial {trial}: {len(lost)} acknowledged tasks lost, e.g. {sorted(lost)[:5]}"
            unexpected = {n for n in names if not n.startswith("t")}
            assert not unexpected, f"trial {trial}: tasks nobody submitted: {sorted(unexpected)[:5]}"
            master.close_client()
            stop = threading.Event()
            submitter = threading.Thread(
                target=_submit_until_killed, args=(master.address, f"t{trial}", acked, stop), daemon=True)
            submitter.start()
            stop.wait(rng.uniform(0.05, 0.6))
        finally:
            master.kill()
        stop.set()
        submitter.join(timeout=10)
    final = MasterProc(data, "--interval", "300")
    try:
        names = [t["name"] for t in final.ctl("queue", "--state", "queued", "--limit", "1000000")]
        assert sorted(names) == sorted(set(names)) and set(acked) <= set(names)
        assert len(acked) > TRIALS * 5, "too few submissions to mean anything"
    finally:
        final.stop()
