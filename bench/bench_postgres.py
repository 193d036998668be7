"""Durable no-op throughput on the PostgreSQL store, against the embedded store, in one run.

    .venv/bin/python bench/bench_postgres.py             # 3 interleaved pairs of 20,000 tasks
    .venv/bin/python bench/bench_postgres.py --quick

4 worker processes with `--max-tasks 32` over loopback RPyC, as in bench_cluster.py. The
PostgreSQL server is started here (initdb in a temporary directory, loopback, fsync on, the
default synchronous_commit), so every acknowledged change is committed to disk either way.
Runs alternate (embedded, PostgreSQL, embedded, ...) so that drift of the machine falls on
both alike; each PostgreSQL run gets a fresh database.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_cluster import bench_throughput  # noqa: E402
from tests.postgres import postgres_server  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    tasks, pairs = (2_000, 1) if args.quick else (args.tasks, args.pairs)
    runs: dict[str, list[dict]] = {"embedded": [], "postgresql": []}
    with tempfile.TemporaryDirectory(prefix="cloudq-bench-pg-") as tmp, postgres_server() as pg:
        for pair in range(pairs):
            runs["embedded"].append(bench_throughput(Path(tmp), tasks, 4, 1, 32, label=f"e{pair}-"))
            flags = ("--store", pg.new_database())
            runs["postgresql"].append(bench_throughput(Path(tmp), tasks, 4, 1, 32, flags, f"p{pair}-"))
            print(f"pair {pair + 1}: embedded {runs['embedded'][-1]['tasks_per_s']:,.0f} tasks/s, "
                  f"postgresql {runs['postgresql'][-1]['tasks_per_s']:,.0f} tasks/s", flush=True)
    print(f"\n{tasks:,} no-op tasks, 4 workers x --max-tasks 32, median of {pairs} (range):")
    medians = {}
    for store, results in runs.items():
        rates = [r["tasks_per_s"] for r in results]
        cpu = statistics.median(r["master_us"] for r in results)
        medians[store] = statistics.median(rates)
        print(f"  {store:<11} {medians[store]:7,.0f} tasks/s ({min(rates):,.0f}-{max(rates):,.0f}), "
              f"master CPU {cpu:,.0f} us/task")
    ratios = [p["tasks_per_s"] / e["tasks_per_s"] for e, p in zip(runs["embedded"], runs["postgresql"],
                                                                   strict=True)]
    print(f"  postgresql / embedded: {medians['postgresql'] / medians['embedded']:.2f} "
          f"(pairs: {', '.join(f'{r:.2f}' for r in ratios)}; goal >= 0.50)")


if __name__ == "__main__":
    main()
