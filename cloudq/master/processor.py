"""The safety net: every `interval` seconds, retries placement, counts attempts, expires what
waited too long, and gives up on workers that missed their lease. Never the normal path:
placement already runs on every submit, completion, registration and heartbeat change."""

from __future__ import annotations

import logging
import threading

from cloudq.master.core import Master

log = logging.getLogger("cloudq.processor")


class Processor:
    def __init__(self, master: Master, interval_s: float) -> None:
        self.master = master
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="processor", daemon=True)

    def start(self) -> Processor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.master.tick()
            except Exception:  # noqa: BLE001 - the safety net must keep running
                log.exception("processor tick failed")
