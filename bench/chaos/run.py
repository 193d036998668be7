"""The fault campaign at full size, each check with its figures (docs/reliability.md).

    .venv/bin/python bench/chaos/run.py queue      # 20 kill -9 of the master over 10,000 submissions
    .venv/bin/python bench/chaos/run.py workers    # 100 workers killed -9 mid-task
    .venv/bin/python bench/chaos/run.py standby    # the queue check, killing the leader of two
                                                   # masters on PostgreSQL (started here)
    .venv/bin/python bench/chaos/run.py partitions # 20 workers cut off past the lease, 5 briefly
    .venv/bin/python bench/chaos/run.py soak       # 100,000 tasks, a worker killed every 30 s
    .venv/bin/python bench/chaos/run.py hostile    # 10,000 hostile RPC calls from a worker certificate
    .venv/bin/python bench/chaos/run.py flood      # 1,000 connections held by one client

The short versions run in CI (tests/chaos/test_chaos.py), through the same code. Exit status
1 when a promise was broken.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.chaos.flood import run_flood  # noqa: E402
from tests.chaos.hostile_rpc import run_hostile_calls  # noqa: E402
from tests.chaos.partition import run_partitions  # noqa: E402
from tests.chaos.queue_check import run_queue_check  # noqa: E402
from tests.chaos.soak import run_soak  # noqa: E402
from tests.chaos.worker_kill import run_worker_kills  # noqa: E402
from tests.postgres import postgres_server  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("check", choices=["queue", "workers", "standby", "partitions", "soak", "hostile",
                                          "flood"])
    parser.add_argument("--trials", type=int, help="kills or cuts (default: queue 20, workers 100, "
                                                   "partitions 20)")
    parser.add_argument("--calls", type=int, default=10_000, help="hostile: RPC calls")
    parser.add_argument("--tasks", type=int, default=100_000, help="soak: tasks run")
    parser.add_argument("--kill-every", type=float, default=30.0, help="soak: seconds between worker kills")
    parser.add_argument("--connections", type=int, default=1000, help="flood: connections held")
    parser.add_argument("--submissions", type=int, default=10_000, help="queue: tasks submitted")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cloudq-chaos-") as tmp:
        Path(tmp).chmod(0o711)  # the workers' task user goes through it
        if args.check in ("queue", "standby"):
            runs = Path(tmp) / "runs"
            runs.mkdir()
            runs.chmod(0o777)  # ...and appends to the runs file in here
            with contextlib.ExitStack() as stack:
                store = None
                if args.check == "standby":
                    store = stack.enter_context(postgres_server()).new_database()
                result = run_queue_check(Path(tmp), runs, trials=args.trials or 20,
                                         submissions=args.submissions, seed=args.seed, store=store)
            slow = max(result.accept_s, default=0) > 5.0
        elif args.check == "workers":
            result = run_worker_kills(Path(tmp), trials=args.trials or 100)
            slow = False
        elif args.check == "partitions":
            result = run_partitions(Path(tmp), trials=args.trials or 20, short_trials=5)
            slow = False
        elif args.check == "soak":
            # 20,000 events kept: the master's history is full before the 10,000th task, so
            # RSS from there to the end is its steady state (growth of 10% or more fails).
            result = run_soak(Path(tmp), tasks=args.tasks, kill_every_s=args.kill_every,
                              keep_events=20_000, growth_limit_pct=10.0)
            slow = False
        elif args.check == "hostile":
            result = run_hostile_calls(Path(tmp), calls=args.calls, seed=args.seed)
            slow = result.rtt_ratio() >= 2  # the good worker's median heartbeat round trip
        else:
            result = run_flood(Path(tmp), connections=args.connections)
            slow = False
    print(result.report())
    broken = {k: v for k, v in result.failures().items() if v}
    if broken or slow:
        print(f"BROKEN: {broken or 'too slow: see the figures'}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
