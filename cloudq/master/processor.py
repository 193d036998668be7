"""The safety net: every `interval` seconds, retries placement, counts attempts, expires what
waited too long, and gives up on workers that missed their lease. Never the normal path:
placement already runs on every submit, completion, registration and heartbeat change."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from cloudq.errors import StoreError
from cloudq.master.core import Master

log = logging.getLogger("cloudq.processor")


class Processor:
    """Two timers: the full processor pass every `interval_s`, and the cheap deadline check
    (leases, back-offs, run timeouts) often enough that a lease is enforced on time."""

    def __init__(self, master: Master, interval_s: float) -> None:
        self.master = master
        self.interval_s = interval_s
        self.timer_s = min(1.0, master.config.lease_s / 4)
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._every, args=(self.interval_s, master.tick), name="processor",
                             daemon=True),
            threading.Thread(target=self._every, args=(self.timer_s, master.timers), name="timers",
                             daemon=True),
        ]

    def start(self) -> Processor:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)

    def _every(self, seconds: float, work: Callable[[], None]) -> None:
        last_refusal = ""
        while not self._stop.wait(seconds):
            try:
                work()
            except StoreError as err:  # a full disk: said once, not every second
                if str(err) != last_refusal:
                    log.warning("%s: %s", getattr(work, "__name__", "timer"), err)
                last_refusal = str(err)
                continue
            except Exception:  # noqa: BLE001 - the safety net must keep running
                log.exception("%s failed", getattr(work, "__name__", "timer"))
            last_refusal = ""
