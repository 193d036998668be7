"""Cluster benchmarks: submit-to-start latency, no-op throughput, placement pass cost.

    .venv/bin/python bench/bench_cluster.py            # full run (about two and a half minutes)
    .venv/bin/python bench/bench_cluster.py --quick    # smaller numbers, for a smoke test

Latency and throughput use real master and worker processes over loopback RPyC, with the
store journalling and fsyncing every change (durability on). Tasks are of kind `noop`: they do
nothing, so what is measured is cloudq itself. The placement figures drive the master's core
in-process (no network), with 200 registered workers and 100,000 queued tasks.
"""

from __future__ import annotations

import argparse
import functools
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cloudq import Client, defaults  # noqa: E402
from cloudq.master.core import Master, MasterConfig  # noqa: E402
from tests.cluster.harness import MasterProc, WorkerProc, wait_until  # noqa: E402

GOALS = {1: "4,000 tasks/s", 32: "8,000 tasks/s"}  # by --max-tasks


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def bench_latency(tmp: Path, samples: int) -> dict[str, float]:
    """An idle worker; one task at a time; started_at (worker clock) minus submit time."""
    master = MasterProc(tmp / "lat", "--interval", "300")
    worker = WorkerProc(master.address, "idle", tmp / "work", "--max-tasks", "1")
    try:
        master.wait_worker("idle")
        client = master.client()
        submitted = {}
        for _ in range(samples):
            before = time.time()
            (task,) = client.call("submit", {"tasks": [{"kind": "noop"}]})
            submitted[task["id"]] = before
            time.sleep(0.01)  # the worker is idle again before the next one
        wait_until(lambda: master.ctl("status")["tasks"]["completed"] == samples, 60, "latency tasks")
        done = master.ctl("queue", "--state", "completed", "--limit", str(samples))
        lat = [(t["started_at"] - submitted[t["id"]]) * 1000 for t in done]
        # Submit to done as a script sees it: Client.submit, then Client.wait (the master's
        # long-poll, answered once the task's end is durable).
        with Client(master.address) as cq:
            waited = []
            for _ in range(samples):
                before = time.perf_counter()
                task_id = cq.submit(kind="noop")["id"]
                assert cq.wait([task_id], timeout=30)[task_id]["state"] == "completed"
                waited.append((time.perf_counter() - before) * 1000)
        return {"p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99), "n": len(lat),
                "done_p50_ms": percentile(waited, 50), "done_p99_ms": percentile(waited, 99)}
    finally:
        worker.stop()
        master.stop()


def bench_throughput(tmp: Path, total: int, workers: int, repeats: int, max_tasks: int,
                     master_flags: tuple[str, ...] = (), label: str = "") -> dict[str, float]:
    """`workers` worker processes, each taking up to `max_tasks` tasks at once; `total` no-op
    tasks submitted in batches of 1000. A worker's max tasks sets how many outcomes and
    assignments share one fetch call: the master's cost per call is spread over them. Also
    gives the CPU (user + system) the master and the workers spent per task."""
    rates, master_cpu, workers_cpu = [], [], []
    for run in range(repeats):
        master = MasterProc(tmp / f"tp{label}{max_tasks}-{run}", "--interval", "300", *master_flags)
        limits = ("--max-tasks", str(max_tasks), "--cpu-cores", str(max_tasks))
        procs = [WorkerProc(master.address, f"w{i}", tmp / "work", *limits) for i in range(workers)]
        try:
            for i in range(workers):
                master.wait_worker(f"w{i}")
            client = master.client()
            cpu_before = [_cpu(master), *map(_cpu, procs)]
            started = time.perf_counter()
            for offset in range(0, total, 1000):
                client.call("submit", {"tasks": [{"kind": "noop"}] * min(1000, total - offset)})
            wait_until(functools.partial(_completed, master, total), 300, "throughput", every=0.05)
            rates.append(total / (time.perf_counter() - started))
            spent = [_cpu(proc) - before for proc, before in zip([master, *procs], cpu_before, strict=True)]
            master_cpu.append(spent[0] / total * 1e6)
            workers_cpu.append(sum(spent[1:]) / total * 1e6)
        finally:
            for proc in procs:
                proc.stop()
            master.stop()
    return {"tasks_per_s": statistics.median(rates), "low": min(rates), "high": max(rates), "runs": repeats,
            "tasks": total, "workers": workers, "max_tasks": max_tasks,
            "master_us": statistics.median(master_cpu), "workers_us": statistics.median(workers_cpu)}


def _cpu(proc: MasterProc | WorkerProc) -> float:
    times = psutil.Process(proc.proc.pid).cpu_times()
    return times.user + times.system


def bench_core_throughput(tmp: Path, total: int, repeats: int, max_tasks: int) -> dict[str, float]:
    """The same no-op flow as bench_throughput, driven in-process from one thread: the master's
    core with the real durable store, but no RPC and no worker processes. Not a ceiling: each
    operation waits for its own fsync here, where in the cluster other calls go on meanwhile."""
    from cloudq.master.journal import StoreJournal
    from cloudq.store import Store

    rates = []
    for run in range(repeats):
        store = Store(tmp / f"core{run}", checkpoint_every=defaults.CHECKPOINT_EVERY,  # as the master
                      checkpoint_interval_s=defaults.CHECKPOINT_INTERVAL_S,
                      checkpoint_growth=defaults.CHECKPOINT_GROWTH)
        store.load()
        master = Master(StoreJournal(store), MasterConfig(max_queued=10**7))
        facts = {"cpu_cores": float(max_tasks), "mem_gb": 64.0, "max_tasks": max_tasks}
        sessions = {f"w{i}": master.register({"name": f"w{i}", **facts}, [])["session"] for i in range(4)}
        done = {"status": "completed", "exit_code": 0, "duration_s": 0.0, "output": {},
                "log_tail": "", "error": None}
        started = time.perf_counter()
        for offset in range(0, total, 1000):
            master.submit([{"kind": "noop"}] * min(1000, total - offset))
            while master.backlog or any(w.ledger.bookings for w in master.workers.values()):
                for name, session in sessions.items():
                    reports = []
                    for item in master.fetch(name, session, 0):
                        task = item["assign"]
                        reports.append({"task": task["id"], "attempt": task["attempt"],
                                        "state": "completed", "result": done})
                    if reports:
                        master.report(name, session, reports)
        rates.append(total / (time.perf_counter() - started))
        store.close()
    return {"tasks_per_s": statistics.median(rates)}


def _completed(master: MasterProc, total: int) -> bool:
    return master.ctl("status")["tasks"]["completed"] == total


def _loaded_master(queued: int, workers: int, max_tasks: int, shapes: int, cpu: float) -> Master:
    master = Master(config=MasterConfig(max_queued=10**7))
    for i in range(workers):
        master.register({"name": f"w{i:03d}", "cpu_cores": 64.0, "mem_gb": 256.0, "storage_gb": 1000.0,
                         "max_tasks": max_tasks}, [])
    rng = random.Random(1)
    batch = []
    for _ in range(queued):
        batch.append({"kind": "noop", "resources": {"cpu_cores": cpu + rng.randrange(shapes) * 0.5},
                      "priority": rng.choice(["high", "medium", "low"])})
        if len(batch) == 1000:
            master.submit(batch)
            batch = []
    if batch:
        master.submit(batch)
    return master


def _timed_passes(master: Master, passes: int, between=None) -> list[float]:
    timings: list[float] = []
    master.hooks.on_placement_pass.append(lambda seconds, placed: timings.append(seconds * 1000))
    for _ in range(passes):
        if between:
            between()
        else:
            master.place()
    return timings[-passes:]


def bench_placement(queued: int, workers: int, passes: int) -> dict[str, float]:
    out = {}
    # 1. A full cluster: each pass follows one completion and places one task.
    master = _loaded_master(queued, workers, max_tasks=4, shapes=8, cpu=1.0)
    running = [t for t in master.tasks.values() if t.state.value == "assigned"]
    sessions = {name: w.session for name, w in master.workers.items()}

    def complete_one() -> None:
        task = running.pop()
        worker = task.worker
        master.report(worker, sessions[worker],
                      [{"task": task.id, "attempt": task.attempt, "state": "completed"}])
        running.extend(master.tasks[i] for i in master.workers[worker].ledger.bookings if i != task.id
                       and master.tasks[i] not in running[-8:])

    timings = _timed_passes(master, passes, complete_one)
    out["full_cluster_pass_ms"] = statistics.median(timings)
    # 2. Nothing fits anywhere (every task asks for more cores than any worker has).
    blocked = _loaded_master(queued, workers, max_tasks=4, shapes=8, cpu=100.0)
    out["all_blocked_pass_ms"] = statistics.median(_timed_passes(blocked, passes))
    # 3. An empty cluster filling up: one pass places workers x max_tasks tasks.
    filling = _loaded_master(0, workers, max_tasks=4, shapes=8, cpu=1.0)
    filling.hooks.on_placement_pass.clear()
    timings = []
    filling.hooks.on_placement_pass.append(lambda seconds, placed: timings.append((seconds, placed)))
    batch = [{"kind": "noop", "resources": {"cpu_cores": 1.0 + (i % 8) * 0.5}} for i in range(queued)]
    started = time.perf_counter()
    filling.submit(batch)
    seconds, placed = timings[-1]
    out["fill_pass_ms"] = seconds * 1000
    out["fill_placed"] = placed
    out["fill_per_placement_us"] = seconds / max(placed, 1) * 1e6
    out["submit_100k_in_one_batch_s"] = time.perf_counter() - started
    return out


def bench_memory(queued: int) -> float:
    """Bytes of master memory per queued no-op (task, request JSON, events, backlog entry)."""
    import gc
    import tracemalloc

    master = Master(config=MasterConfig(max_queued=10**7))
    master.submit([{"kind": "noop"}])
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for _ in range(queued // 1000):
        master.submit([{"kind": "noop"}] * 1000)
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return used / (queued // 1000 * 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    quick = args.quick
    with tempfile.TemporaryDirectory(prefix="cloudq-bench-") as tmp_name:
        tmp = Path(tmp_name)
        latency = bench_latency(tmp, 100 if quick else 500)
        throughput = [bench_throughput(tmp, 4000 if quick else 20000, 4, 1 if quick else 3, max_tasks)
                      for max_tasks in (1, 32, 256)]
        core = bench_core_throughput(tmp, 4000 if quick else 20000, 1 if quick else 3, 256)
    placement = bench_placement(10_000 if quick else 100_000, 200, 10 if quick else 30)
    memory = bench_memory(10_000 if quick else 50_000)
    print("| measure | result | goal |")
    print("|---|---|---|")
    print(f"| submit-to-start latency, idle worker, p50 | {latency['p50_ms']:.2f} ms | < 5 ms |")
    print(f"| submit-to-start latency, idle worker, p99 | {latency['p99_ms']:.2f} ms | < 25 ms |")
    print(f"| submit-to-done seen by Client.wait, idle worker, p50 / p99 | {latency['done_p50_ms']:.2f} / "
          f"{latency['done_p99_ms']:.2f} ms | p50 1.5 ms |")
    for run in throughput:
        print(f"| no-op throughput, {run['workers']} worker processes with --max-tasks {run['max_tasks']}, "
              f"durable (median of {run['runs']} x {run['tasks']} tasks; lowest-highest) | "
              f"{run['tasks_per_s']:.0f} tasks/s ({run['low']:.0f}-{run['high']:.0f}) | "
              f"{GOALS.get(run['max_tasks'], '')} |")
    for run in throughput:
        print(f"| CPU per task at --max-tasks {run['max_tasks']}: master; all {run['workers']} workers | "
              f"{run['master_us']:.0f} us; {run['workers_us']:.0f} us | |")
    print(f"| the same no-op flow in-process, one thread (--max-tasks 256): master core + durable store, "
          f"no RPC, each operation waiting for its own fsync | {core['tasks_per_s']:.0f} tasks/s | |")
    print(f"| placement pass, 200 workers, queue full, one slot freed | "
          f"{placement['full_cluster_pass_ms']:.3f} ms | < 20 ms |")
    print(f"| placement pass, 200 workers, nothing fits | {placement['all_blocked_pass_ms']:.3f} ms | < 20 ms |")
    print(f"| placement pass filling 200 empty workers ({placement['fill_placed']} placements) | "
          f"{placement['fill_pass_ms']:.1f} ms ({placement['fill_per_placement_us']:.1f} us each) | |")
    print(f"| master memory per queued no-op (tracemalloc) | {memory:.0f} B | |")


if __name__ == "__main__":
    main()
