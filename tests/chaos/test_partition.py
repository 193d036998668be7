"""Network partitions in CI, the short versions of tests/chaos/partition.py (its full run:
`run_partitions` with 20 long trials): each prints its figures (pytest -s) and fails on any
broken promise (docs/reliability.md). Needs root, `ip` and `iptables` (network namespaces); scripts/system-packages.sh installs them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.chaos.netns import check_silent_drop, linked_namespaces
from tests.chaos.partition import LEASE_S, run_partitions


@pytest.fixture(autouse=True)
def _namespaces_can_be_made() -> None:
    """A missing tool fails the test (scripts/system-packages.sh installs them), never skips it."""
    missing = [tool for tool in ("ip", "iptables") if shutil.which(tool) is None]
    assert not missing, f"{missing} not installed: run scripts/system-packages.sh as root"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    assert probe.returncode == 0, f"cannot use network namespaces (root needed): {probe.stderr}"


@pytest.mark.timeout(60)
def test_a_cut_drops_packets_silently_and_leaves_nothing_behind() -> None:
    """The partition is a real one: no error and no reset on either side, a new connection
    times out, and the open one carries data again once the link is back. The namespaces
    are gone afterwards."""
    with linked_namespaces() as link:
        assert link.leftovers() == [f"namespace {link.router}", f"namespace {link.worker}",
                                    f"device {link.root_device}"]
        assert check_silent_drop(link) == []
    assert link.leftovers() == []


@pytest.mark.timeout(150)
def test_partitions_longer_and_shorter_than_the_lease(tmp_path: Path) -> None:
    """Two partitions past the lease (the second with a task that ignores SIGTERM): requeued
    within a second of cut + lease, attempt 1 gone before it, attempt 2 after, the late outcome
    refused, the worker back and working. One of 30% of the lease: nothing noticed."""
    result = run_partitions(tmp_path, trials=2, short_trials=1)
    print("\n" + result.report())
    assert result.stubborn_trials == 1
    assert len(result.requeue_s) == 2 and len(result.rejoin_s) == 2, result.report()
    assert result.failures() == dict.fromkeys(result.failures(), 0), result.report() + "\n" + "\n".join(
        f"{name}: {item}" for name in result.failures() for item in getattr(result, name))
    assert min(result.stop_margin_s) > 0 and max(result.requeue_s) <= LEASE_S + 1.0
    assert result.leftovers == []
