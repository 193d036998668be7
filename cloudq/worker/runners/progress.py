"""FFmpeg `-progress` parsing: key=value lines, one block per report, ending in `progress=`.

Turns each block into {"percent", "fps", "speed", "out_time_s"} and hands it on, at most about
twice a second (the last block, progress=end, always goes through).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

MIN_INTERVAL_S = 0.45  # a little under FFmpeg's 0.5 s period, so its reports are not dropped

log = logging.getLogger(__name__)


class ProgressParser:
    def __init__(
        self,
        total_s: float | None,
        on_progress: Callable[[dict[str, Any]], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total_s = total_s
        self.on_progress = on_progress
        self.clock = clock
        self.last: dict[str, Any] = {}  # the last report, sent or not
        self._block: dict[str, str] = {}
        self._sent_at: float | None = None
        self._percent = 0.0
        self._callback_failed = False

    def feed_lines(self, lines: Iterable[bytes | str]) -> None:
        for line in lines:
            self.feed(line)

    def feed(self, line: bytes | str) -> None:
        text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
        key, sep, value = text.strip().partition("=")
        if not sep:
            return
        if key != "progress":
            self._block[key] = value.strip()
            return
        report = self._report(self._block, done=value.strip() == "end")
        self._block = {}
        self.last = report
        now = self.clock()
        if report["done"] or self._sent_at is None or now - self._sent_at >= MIN_INTERVAL_S:
            self._sent_at = now
            self._send(report)

    def _report(self, block: dict[str, str], done: bool) -> dict[str, Any]:
        out_time_s = _out_time_s(block)
        if done:
            percent = 100.0
        elif self.total_s and out_time_s is not None:
            percent = min(99.9, 100.0 * out_time_s / self.total_s)
        elif self.total_s:
            percent = self._percent  # no position yet ("N/A" before the first frame)
        else:
            percent = None
        if percent is not None:
            # Reports can repeat a position; never let the percentage go backwards.
            self._percent = max(self._percent, percent)
            percent = round(self._percent, 1)
        return {
            "percent": percent,
            "fps": _number(block.get("fps")),
            "speed": _number(block.get("speed", "").rstrip("x")),
            "out_time_s": out_time_s,
            "done": done,
        }

    def _send(self, report: dict[str, Any]) -> None:
        # The reader must keep draining FFmpeg's pipe whatever the callback does, or the
        # encoder would block on a full pipe; so a failing callback is logged, not raised.
        try:
            self.on_progress(dict(report))
        except Exception:
            if not self._callback_failed:
                log.exception("progress callback failed; further failures are not logged")
            self._callback_failed = True


def _out_time_s(block: dict[str, str]) -> float | None:
    # FFmpeg 5 names microseconds both out_time_us and (wrongly) out_time_ms.
    for key in ("out_time_us", "out_time_ms"):
        value = _number(block.get(key))
        if value is not None:
            return max(0.0, value / 1e6)
    return None


def _number(text: str | None) -> float | None:
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        return None  # "N/A" before the first frame
    return value if value == value and abs(value) != float("inf") else None
