"""Benchmark of a master's memory and restart with many queued tasks.

    .venv/bin/python bench/bench_restart.py               # 200,000 exec tasks, 3 restarts
    .venv/bin/python bench/bench_restart.py --tasks 100000 --kind noop

Each step runs in a fresh child process, so its resident memory is its own: the first submits
the tasks (batches of 1,000, durable, through the master core and the real store, as `submit`
does) and reports its RSS; each restart then loads the store and rebuilds the master's state
(`MasterProcess` does the same two steps) and reports the time and its peak and final RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BATCH = 1000
SPECS = {
    "exec": {"argv": ["python3", "-c", "import time; time.sleep(1)"], "env": {"MODE": "batch"}},
    "noop": {},
}


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _open(directory: Path):
    from cloudq import defaults
    from cloudq.master.core import Master, MasterConfig
    from cloudq.master.journal import StoreJournal
    from cloudq.master.state import consume
    from cloudq.store import Store

    store = Store(directory, checkpoint_every=defaults.CHECKPOINT_EVERY,
                  checkpoint_interval_s=defaults.CHECKPOINT_INTERVAL_S,
                  checkpoint_growth=defaults.CHECKPOINT_GROWTH)
    started = time.perf_counter()
    state = store.load()
    loaded = time.perf_counter()
    master = Master(StoreJournal(store), MasterConfig(max_queued=10**7))
    master.restore(consume(state.records), state.events, state.meta)
    del state
    return store, master, loaded - started, time.perf_counter() - loaded


def child_fill(directory: Path, tasks: int, kind: str) -> dict:
    store, master, _, _ = _open(directory)
    base = _rss_mb()
    batch = [{"kind": kind, "spec": SPECS[kind]}] * BATCH
    started = time.perf_counter()
    for _ in range(tasks // BATCH):
        master.submit(batch)
    took = time.perf_counter() - started
    import gc

    gc.collect()
    out = {"rss_mb": _rss_mb(), "base_mb": base, "submit_s": took, "queued": master.counts().get("queued")}
    store.close()
    return out


def child_restart(directory: Path) -> dict:
    store, master, load_s, restore_s = _open(directory)
    import gc

    gc.collect()
    out = {"load_s": load_s, "restore_s": restore_s, "rss_mb": _rss_mb(), "peak_mb": _peak_mb(),
           "queued": master.counts().get("queued")}
    store.close()
    return out


def _child(*args: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=200_000)
    parser.add_argument("--kind", choices=sorted(SPECS), default="exec")
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        step, directory, *rest = args.child
        out = (child_fill(Path(directory), int(rest[0]), rest[1]) if step == "fill"
               else child_restart(Path(directory)))
        print(json.dumps(out))
        return
    with tempfile.TemporaryDirectory(prefix="cloudq-bench-restart-") as tmp:
        fill = _child("fill", tmp, str(args.tasks), args.kind)
        runs = [_child("restart", tmp) for _ in range(args.restarts)]
    per_task = (fill["rss_mb"] - fill["base_mb"]) * 2**20 / args.tasks
    print(f"{args.tasks} queued {args.kind} tasks, submitted in {fill['submit_s']:.1f} s: master RSS "
          f"{fill['rss_mb']:.0f} MB ({per_task:.0f} B per task over the empty master)")
    for key, label in (("load_s", "store load"), ("restore_s", "state rebuilt"),
                       ("rss_mb", "RSS after"), ("peak_mb", "peak RSS")):
        values = [run[key] for run in runs]
        unit = "s" if key.endswith("_s") else "MB"
        print(f"restart, {label}: median {statistics.median(values):.2f} {unit} "
              f"({min(values):.2f}-{max(values):.2f}, {len(values)} runs)")
    totals = [run["load_s"] + run["restore_s"] for run in runs]
    print(f"restart, total: median {statistics.median(totals):.2f} s ({min(totals):.2f}-{max(totals):.2f})")
    assert all(run["queued"] == fill["queued"] == args.tasks for run in runs), (fill, runs)


if __name__ == "__main__":
    main()
