"""The fault campaign at full size, each check with its figures (docs/reliability.md).

    .venv/bin/python bench/chaos/run.py queue      # 20 kill -9 of the master over 10,000 submissions
    .venv/bin/python bench/chaos/run.py workers    # 100 workers killed -9 mid-task
    .venv/bin/python bench/chaos/run.py standby    # the queue check, killing the leader of two
                                                   # masters on PostgreSQL (started here)

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

from tests.chaos.queue_check import run_queue_check  # noqa: E402
from tests.chaos.worker_kill import run_worker_kills  # noqa: E402
from tests.postgres import postgres_server  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("check", choices=["queue", "workers", "standby"])
    parser.add_argument("--trials", type=int, help="kills (default: queue 20, workers 100)")
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
        else:
            result = run_worker_kills(Path(tmp), trials=args.trials or 100)
            slow = False
    print(result.report())
    broken = {k: v for k, v in result.failures().items() if v}
    if broken or slow:
        print(f"BROKEN: {broken or 'accepting work took over 5 s'}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
