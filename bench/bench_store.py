"""Benchmark of cloudq.store: submit rate against store size, group commit, load, memory.

    .venv/bin/python bench/bench_store.py            # full run (a few minutes)
    .venv/bin/python bench/bench_store.py --quick    # short run

A submit is ``append([("put", record), ("event", event)])`` with a ~600-byte task record,
fsync on. Rates are medians over repetitions measured in this one run. The table measures
appends alone (automatic checkpoints off); the sustained rate with default checkpointing,
and what a checkpoint costs the appends running beside it, are reported below it.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cloudq.store import Store  # noqa: E402

SIZES = (1_000, 10_000, 100_000)
NO_AUTO_CHECKPOINT = {"checkpoint_every": 10**12, "checkpoint_interval_s": 10.0**9}


def make_record(seq: int) -> dict:
    now = 1_700_000_000.0 + seq
    return {
        "id": f"t-{seq:06d}", "name": f"encode-{seq}", "kind": "ffmpeg",
        "spec": {"scenario": "720p30-h264", "duration_s": 10}, "owner": "ops",
        "queue": "default", "priority": "medium",
        "resources": {"cpu_cores": 2.0, "mem_gb": 1.0, "storage_gb": 1.0, "gpus": 0,
                      "gpu_mem_gb": 0.0},
        "target_worker": None, "labels": {}, "locks": [], "max_retries": 3,
        "retry_backoff_s": 5.0, "timeout_s": 3600.0, "ttl_s": None, "state": "queued",
        "attempt": 0, "placement_attempts": 0, "last_error": None, "reason": None,
        "worker": None, "seq": seq, "created_at": now, "updated_at": now, "started_at": None,
        "finished_at": None, "result": None,
    }


def make_event(seq: int) -> dict:
    return {"task": f"t-{seq:06d}", "from": None, "to": "queued", "reason": "submitted",
            "worker": None, "attempt": 0, "at": 1_700_000_000.0 + seq}


class Ids:
    """Fresh sequence numbers, shared by submitting threads."""

    def __init__(self, start: int):
        self._next = start
        self._lock = threading.Lock()

    def take(self) -> int:
        with self._lock:
            self._next += 1
            return self._next


def submit(store: Store, seq: int) -> None:
    store.append([("put", make_record(seq)), ("event", make_event(seq))])


def prefill(store: Store, count: int) -> None:
    for start in range(0, count, 1000):
        store.append([("put", make_record(i)) for i in range(start, min(count, start + 1000))])


def run_threads(store: Store, ids: Ids, threads: int, per_thread: int) -> float:
    """Submits per second with ``threads`` threads each submitting ``per_thread`` times."""
    barrier = threading.Barrier(threads + 1)

    def worker() -> None:
        barrier.wait()
        for _ in range(per_thread):
            submit(store, ids.take())

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in pool:
        thread.join()
    return threads * per_thread / (time.perf_counter() - started)


def measure_rates(root: Path, reps: int, submits: int) -> dict[int, dict]:
    """Submit rates for every size, repetitions interleaved across sizes.

    Interleaving (1k, 10k, 100k, 1k, ...) exposes every size to the same background noise
    of a shared machine, so the ratio between sizes stays meaningful.
    """
    stores = {size: Store(root / f"rate-{size}", **NO_AUTO_CHECKPOINT) for size in SIZES}
    rows: dict[int, dict] = {size: {} for size in SIZES}
    ids = Ids(10_000_000)
    try:
        for size, store in stores.items():
            store.load()
            prefill(store, size)
        for threads in (1, 8):
            samples: dict[int, list[tuple[float, float]]] = {size: [] for size in SIZES}
            for _ in range(reps):
                for size, store in stores.items():
                    samples[size].append(one_rate(store, ids, threads, submits))
            for size in SIZES:
                rows[size][threads] = statistics.median(rate for rate, _ in samples[size])
                rows[size][f"fsyncs/submit@{threads}"] = statistics.median(
                    per for _, per in samples[size])
        for size, store in stores.items():
            rows[size]["latency"] = latency(store, ids, submits)
    finally:
        for store in stores.values():
            store.close()
    return rows


def one_rate(store: Store, ids: Ids, threads: int, submits: int) -> tuple[float, float]:
    """(submits/s, fsyncs per submit) for one repetition."""
    before = store.stats()["fsyncs"]
    rate = run_threads(store, ids, threads, submits // threads)
    return rate, (store.stats()["fsyncs"] - before) / (submits // threads * threads)


def latency(store: Store, ids: Ids, count: int) -> tuple[float, float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        submit(store, ids.take())
        samples.append(time.perf_counter() - started)
    samples.sort()
    return samples[len(samples) // 2] * 1e6, samples[int(len(samples) * 0.99)] * 1e6


def raw_fdatasync_us(root: Path, count: int = 500) -> float:
    """p50 of appending 1 KB to a file and fdatasync-ing it: the floor under every submit."""
    path = root / "fdatasync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    samples = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            os.write(fd, b"x" * 1023 + b"\n")
            os.fdatasync(fd)
            samples.append(time.perf_counter() - started)
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(samples) * 1e6


def measure_sustained(root: Path, chunks: int, chunk: int) -> dict[int, tuple[float, int]]:
    """1-thread submits/s over a long run with default checkpointing, for 1k and 100k stored.

    Both stores run in alternating chunks, so both see the same background noise. A chunk's
    time ends only when any checkpoint it set off has finished, so checkpoints are charged
    in full to the store that needed them. Returns size -> (rate, checkpoints that ran).
    """
    sizes = (SIZES[0], SIZES[-1])
    stores = {size: Store(root / f"sustained-{size}") for size in sizes}
    elapsed = dict.fromkeys(sizes, 0.0)
    ids = Ids(10_000_000)
    try:
        for size, store in stores.items():
            store.load()
            prefill(store, size)
            store.checkpoint()
        before = {size: store.stats()["checkpoints"] for size, store in stores.items()}
        for _ in range(chunks):
            for size, store in stores.items():
                started = time.perf_counter()
                for _ in range(chunk):
                    submit(store, ids.take())
                with store._checkpoint_lock:  # wait out a checkpoint still running
                    elapsed[size] += time.perf_counter() - started
        return {size: (chunks * chunk / elapsed[size],
                       store.stats()["checkpoints"] - before[size])
                for size, store in stores.items()}
    finally:
        for store in stores.values():
            store.close()


def measure_checkpoint(root: Path, size: int, reps: int) -> tuple[float, float, float]:
    """(median checkpoint seconds, submits/s while one runs, submits/s without)."""
    directory = root / "checkpoint"
    with Store(directory) as store:
        store.load()
        prefill(store, size)
        ids = Ids(10_000_000)
        durations, during, quiet = [], [], []
        for _ in range(reps):
            started = time.perf_counter()
            store.checkpoint()
            durations.append(time.perf_counter() - started)
            quiet.append(run_threads(store, ids, 1, 300))
            during.append(submits_during(store, ids, store.checkpoint))
    shutil.rmtree(directory)
    return statistics.median(durations), statistics.median(during), statistics.median(quiet)


def submits_during(store: Store, ids: Ids, action: Callable[[], None]) -> float:
    done = threading.Event()
    thread = threading.Thread(target=lambda: (action(), done.set()))
    count, started = 0, time.perf_counter()
    thread.start()
    while not done.is_set():
        submit(store, ids.take())
        count += 1
    thread.join()
    return count / (time.perf_counter() - started)


def measure_load(root: Path, size: int, tail_submits: int, reps: int) -> tuple[float, float]:
    """Median load seconds: checkpoint only, then checkpoint plus a journal tail."""
    directory = root / "load"
    with Store(directory) as store:
        store.load()
        prefill(store, size)
        store.checkpoint()
    plain = timed_loads(directory, size, reps)
    with Store(directory, **NO_AUTO_CHECKPOINT) as store:
        store.load()
        ids = Ids(10_000_000)
        run_threads(store, ids, 8, tail_submits // 8)
    with_tail = timed_loads(directory, size + tail_submits // 8 * 8, reps)
    shutil.rmtree(directory)
    return plain, with_tail


def timed_loads(directory: Path, expect: int, reps: int) -> float:
    times = []
    for _ in range(reps):
        gc.collect()
        started = time.perf_counter()
        with Store(directory, **NO_AUTO_CHECKPOINT) as store:
            state = store.load()
            times.append(time.perf_counter() - started)
        assert len(state.records) == expect, (len(state.records), expect)
        del state
    return statistics.median(times)


def measure_memory(root: Path, size: int) -> tuple[float, float]:
    """tracemalloc bytes per record: kept by the Store, and in the LoadedState it returns."""
    directory = root / "memory"
    with Store(directory) as store:
        store.load()
        prefill(store, size)
        store.checkpoint()
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    store = Store(directory)
    state = store.load()
    with_state = tracemalloc.get_traced_memory()[0]
    del state
    gc.collect()
    store_only = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    store.close()
    shutil.rmtree(directory)
    return (store_only - base) / size, (with_state - store_only) / size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and submits")
    parser.add_argument("--dir", type=Path, default=None, help="where to put the data files")
    args = parser.parse_args()
    reps, submits = (3, 800) if args.quick else (7, 2400)
    root = Path(tempfile.mkdtemp(prefix="bench-store-", dir=args.dir))
    try:
        report(root, reps, submits, args.quick)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def report(root: Path, reps: int, submits: int, quick: bool) -> None:
    print(f"cloudq.store benchmark: {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
          f"fsync on, data in {root}")
    print(f"{reps} repetitions of {submits} submits per figure; rates are medians; "
          f"raw 1 KB append + fdatasync here: p50 {raw_fdatasync_us(root):.0f} us\n")
    print(f"{'stored':>8} {'1 thread/s':>11} {'8 threads/s':>12} {'fsync/submit@8':>15} "
          f"{'p50 us':>7} {'p99 us':>7}")
    rows = measure_rates(root, reps, submits)
    for size in SIZES:
        row = rows[size]
        p50, p99 = row["latency"]
        print(f"{size:>8} {row[1]:>11.0f} {row[8]:>12.0f} {row['fsyncs/submit@8']:>15.2f} "
              f"{p50:>7.0f} {p99:>7.0f}", flush=True)
    for threads in (1, 8):
        ratio = rows[SIZES[-1]][threads] / rows[SIZES[0]][threads]
        print(f"rate(100k)/rate(1k), {threads} thread(s): {ratio:.2f}")
    chunks, chunk = (5, 2400) if quick else (10, 2500)
    sustained = measure_sustained(root, chunks, chunk)
    (small, _), (large, count) = sustained[SIZES[0]], sustained[SIZES[-1]]
    print(f"\nsustained, default checkpointing (every 20k changes), 1 thread, "
          f"{chunks * chunk} submits: {small:.0f}/s with 1k stored, {large:.0f}/s with 100k "
          f"stored ({count} checkpoints of 100k records ran); ratio {large / small:.2f}")
    duration, during, quiet = measure_checkpoint(root, SIZES[-1], 3 if quick else 5)
    print(f"checkpoint of 100k records: {duration:.2f} s (median); 1-thread submits/s "
          f"while one runs: {during:.0f} (vs {quiet:.0f} without)")
    plain, with_tail = measure_load(root, SIZES[-1], 10_000, 3)
    print(f"load 100k records: {plain:.2f} s from the checkpoint alone, {with_tail:.2f} s "
          "with a 10k-submit (20k-change) journal tail (median of 3)")
    kept, returned = measure_memory(root, SIZES[-1])
    print(f"memory per stored record (tracemalloc, after loading 100k): {kept:.0f} B kept by "
          f"the Store, {returned:.0f} B in the LoadedState handed to the master")


if __name__ == "__main__":
    main()
