"""Retrying calls to the master: a bounded, doubling delay, and a log that names each distinct
error once per outage instead of once per attempt.

For a worker every error the master answers with is transient (a full disk, a connection
limit, a refusal it may not repeat after a restart): the worker keeps its tasks and outcomes,
waits, and asks again. It never exits because of the master.
"""

from __future__ import annotations

import logging
import time

FIRST_S = 0.2
MAX_S = 5.0
MAX_REMEMBERED = 64  # distinct messages logged per outage; a message with a counter in it
#                      must not grow this without bound


class Backoff:
    """One retrying caller's state: call failed() after an error, succeeded() after an answer."""

    def __init__(self, what: str, log: logging.Logger, first_s: float = FIRST_S,
                 max_s: float = MAX_S) -> None:
        self.what = what
        self.log = log
        self.first_s = first_s
        self.max_s = max_s
        self.delay_s = first_s
        self.failures = 0
        self._since = 0.0
        self._logged: set[str] = set()

    def failed(self, err: BaseException, max_s: float | None = None) -> float:
        """Logs the error unless this outage already logged the same message; returns how long
        to wait before the next attempt. `max_s` lowers the ceiling for this wait."""
        if self.failures == 0:
            self._since = time.monotonic()
        self.failures += 1
        message = f"{type(err).__name__}: {err}"
        if message not in self._logged and len(self._logged) < MAX_REMEMBERED:
            self._logged.add(message)
            self.log.warning("%s failed (%s); retrying, at most every %.1fs", self.what, message,
                             self.max_s)
        delay = min(self.delay_s, self.max_s if max_s is None else max_s)
        self.delay_s = min(self.delay_s * 2, self.max_s)
        return delay

    def succeeded(self) -> None:
        if self.failures:
            self.log.info("%s works again after %d failed attempt(s) over %.1fs", self.what,
                          self.failures, time.monotonic() - self._since)
        self.delay_s = self.first_s
        self.failures = 0
        self._logged.clear()
