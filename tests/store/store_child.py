"""A child process for the crash tests: appends to a store until it is killed or crashes.

    python -m tests.store.store_child DATA_DIR writer --first N [--threads T] [--every C]
        submit tasks N, N+1, ... forever; print "ack <seq>" after each append() returns,
        and "ckpt <step>" at each checkpoint step
    python -m tests.store.store_child DATA_DIR crash-at STEP --first N --count K
        submit K tasks (acked), then checkpoint and die (exit 75) at checkpoint step STEP
    python -m tests.store.store_child DATA_DIR torn CUT --first N --count K
        submit K tasks (acked), then die (exit 76) halfway through journalling one more:
        CUT is how many bytes of that write reach the file ("1", "half", "all-but-newline")

Output lines go out with one os.write each, so threads never interleave within a line and
nothing waits in a buffer when the process is killed.
"""

from __future__ import annotations

import argparse
import itertools
import os
import threading
from pathlib import Path

from cloudq.store import Store
from cloudq.store.journal import JournalWriter
from tests.store.taskdata import submit

CRASH_AT_STEP = 75
CRASH_MID_LINE = 76


def say(line: str) -> None:
    os.write(1, f"{line}\n".encode())


def writer(store: Store, first: int, threads: int) -> None:
    store._step_hook = lambda step: say(f"ckpt {step}") if step != "tmp_chunk" else None
    seqs = itertools.count(first)
    take = threading.Lock()

    def loop() -> None:
        while True:
            with take:
                seq = next(seqs)
            store.append(submit(seq))
            say(f"ack {seq}")

    pool = [threading.Thread(target=loop, daemon=True) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()  # until killed


def submit_acked(store: Store, first: int, count: int) -> None:
    for seq in range(first, first + count):
        store.append(submit(seq))
        say(f"ack {seq}")


def crash_at(store: Store, step: str) -> None:
    def hook(name: str) -> None:
        if name == step:
            os._exit(CRASH_AT_STEP)

    store._step_hook = hook
    store.checkpoint()
    say("survived")


def torn(store: Store, cut: str, seq: int) -> None:
    def partial_write(self: JournalWriter, data: bytes) -> None:
        keep = {"1": 1, "half": len(data) // 2, "all-but-newline": len(data) - 1}[cut]
        os.write(self._fd, data[:keep])
        os._exit(CRASH_MID_LINE)

    JournalWriter._write_all = partial_write  # type: ignore[method-assign]
    store.append(submit(seq))
    say("survived")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("mode", choices=["writer", "crash-at", "torn"])
    parser.add_argument("arg", nargs="?")
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--every", type=int, default=20_000)
    args = parser.parse_args()
    store = Store(args.data_dir, checkpoint_every=args.every)
    state = store.load()
    say(f"ready {len(state.records)}")
    if args.mode == "writer":
        writer(store, args.first, args.threads)
    submit_acked(store, args.first, args.count)
    if args.mode == "crash-at":
        crash_at(store, args.arg)
    else:
        torn(store, args.arg, args.first + args.count)


if __name__ == "__main__":
    main()
