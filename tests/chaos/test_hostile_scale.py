"""The short versions of the hostile-peer checks (full size: 10,000 calls, 1,000 connections,
through the same code): each prints its figures (pytest -s) and fails on any broken promise
(docs/security.md, docs/reliability.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudq import defaults
from tests.chaos.flood import run_flood
from tests.chaos.hostile_rpc import CATEGORIES, run_hostile_calls
from tests.chaos.peers import percentile

pytestmark = pytest.mark.timeout(300)


def test_hostile_calls_from_a_worker_certificate_change_nothing(tmp_path: Path) -> None:
    result = run_hostile_calls(tmp_path, calls=1000, seed=7, baseline_s=2.0)  # seed 7: two over-limit frames
    print("\n" + result.report())
    assert set(result.by_category) == set(CATEGORIES), result.report()  # every kind was sent
    assert sum(sum(c.values()) for c in result.by_category.values()) == 1000
    assert result.failures() == dict.fromkeys(result.failures(), 0), result.report()
    assert result.outcome("refused") > 900  # nearly all are refused; the rest harmless reads
    # Each frame over the limit closed its connection, and the master counted each one.
    over_limit = result.by_category["oversized"].get("dropped", 0)
    assert over_limit >= 1 and result.rejections["frame_too_large"] == over_limit, result.report()
    assert len(result.rtt_attack_ms) >= 20 and result.rtt_ratio() < 2, result.report()


def test_a_connection_flood_leaves_the_workers_and_the_operator_served(tmp_path: Path) -> None:
    result = run_flood(tmp_path, connections=300, hold_s=6.0)
    print("\n" + result.report())
    assert result.failures() == dict.fromkeys(result.failures(), 0), result.report()
    # The client held many at once; past its share of connections in their handshake, the
    # master closed the rest at once (and the client dialled them again, all the while).
    assert result.client["most_open"] >= defaults.MAX_HANDSHAKES_PER_ADDRESS, result.report()
    assert result.rejections["handshake_flood"] > 0 and result.rejections["peer_limit"] > 0
    assert len(result.latency_flood_ms) >= 10 and percentile(result.latency_flood_ms, 0.99) < 5000
    assert len(result.status_ms) >= 3
