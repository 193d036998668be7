"""The fault campaign at full size, each with its figures (docs/reliability.md).

    .venv/bin/python bench/chaos/run.py queue      # 20 kill -9 of the master over 10,000 submissions

The short versions run in CI (tests/chaos/test_chaos.py), through the same code.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.chaos.queue_check import run_queue_check  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("check", choices=["queue"])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--submissions", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cloudq-chaos-") as tmp:
        runs = Path(tmp) / "runs"
        runs.mkdir()
        runs.chmod(0o777)  # the workers' task user appends to the runs file
        Path(tmp).chmod(0o711)
        result = run_queue_check(Path(tmp), runs, trials=args.trials, submissions=args.submissions,
                                 seed=args.seed)
    print(result.report())
    broken = {k: v for k, v in result.failures().items() if v}
    if broken or max(result.accept_s, default=0) > 5.0:
        print(f"BROKEN: {broken}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
