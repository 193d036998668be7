"""The short versions of the fault campaign (bench/chaos/run.py has the full ones): each prints
its figures (pytest -s) and fails on any broken promise (docs/reliability.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.queue_check import run_queue_check
from tests.chaos.restart_diff import run_restart_diff
from tests.chaos.worker_kill import run_worker_kills
from tests.postgres import PostgresServer

pytestmark = pytest.mark.timeout(600)


def test_queue_check_with_the_master_killed_at_random(tmp_path: Path, task_writable_dir: Path) -> None:
    result = run_queue_check(tmp_path, task_writable_dir, trials=3, submissions=900)
    print("\n" + result.report())
    assert result.acknowledged >= 900 * 0.9, result.report()  # the clients got through
    assert result.failures() == dict.fromkeys(result.failures(), 0), result.report()
    assert max(result.accept_s) <= 5.0, result.report()


def test_workers_killed_mid_task_have_it_requeued_within_the_lease(tmp_path: Path) -> None:
    result = run_worker_kills(tmp_path, trials=5)
    print("\n" + result.report())
    assert len(result.requeue_s) == 5
    assert result.failures() == dict.fromkeys(result.failures(), 0), result.report()


def test_a_master_restart_changes_only_what_it_may(tmp_path: Path) -> None:
    result = run_restart_diff(tmp_path)
    print(f"\nrestart diff: {result['tasks']} tasks in every state; changed beyond what a restart may:"
          f" {result['diff'] or 'nothing'}; queue order kept: {result['order_kept']}")
    assert not result["missing"] and not result["new"], result
    assert result["diff"] == {}, result["diff"]
    assert result["order_kept"]


def test_queue_check_with_the_leader_of_two_masters_killed(
        tmp_path: Path, task_writable_dir: Path, postgres: PostgresServer) -> None:
    result = run_queue_check(tmp_path, task_writable_dir, trials=3, submissions=600,
                             store=postgres.new_database())
    print("\n" + result.report())
    assert result.acknowledged >= 600 * 0.9, result.report()
    assert result.failures() == dict.fromkeys(result.failures(), 0), result.report()
    assert max(result.accept_s) <= 5.0, result.report()
