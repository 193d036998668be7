"""The process-wide inflate budget: many large compressed frames at once all get through, one
after another, instead of each holding part of the budget and waiting for the rest."""

from __future__ import annotations

import struct
import threading
import time
import zlib

from cloudq.rpc.protocol import MAX_FRAME_BYTES, BoundedChannel, Budget


class _Bytes:
    """A stream that reads from one frame in memory."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def read(self, count: int) -> bytes:
        chunk = self.data[self.at:self.at + count]
        self.at += count
        return chunk

    def close(self) -> None:
        pass


def _frame(inflated: int) -> bytes:
    body = zlib.compress(bytes(inflated), 1)
    return struct.pack("!LB", len(body), 1) + body + b"\n"


def test_large_frames_at_once_all_inflate_within_the_budget() -> None:
    budget = Budget(160 << 20, large_at_once=(160 << 20) // MAX_FRAME_BYTES)
    frame = _frame(40 << 20)
    peak, done, errors = [0], [], []
    lock = threading.Lock()

    def receive() -> None:
        channel = BoundedChannel(_Bytes(frame))
        channel.budget = budget
        try:
            data = channel.recv()
            with lock:
                peak[0] = max(peak[0], budget.used)
            done.append(len(data))
        except Exception as err:  # noqa: BLE001 - collected and asserted below
            errors.append(err)
        finally:
            channel.release()

    started = time.monotonic()
    threads = [threading.Thread(target=receive) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    took = time.monotonic() - started
    assert errors == [] and done == [40 << 20] * 8
    assert budget.used == 0 and peak[0] <= budget.limit
    assert took < 9  # under the 10 s a frame may wait: nobody waited for a share it never got
