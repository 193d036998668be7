"""Whether a command has begun to change the master, and the gate that knows.

Every command runs with a Guard. The master's own shell wraps the master in a Gate, which lets
reads (ops.READS) through and calls `Guard.begin_change` before the first change; the master's
RPC service does the same for the commands `cloudq ctl` and the remote shell send. The Guard
answers one question under a lock, so that the answer is exact when the operator presses
Ctrl-C: has this command begun to change the master?

- not yet: it is told to stop (at its next check, or at the latest when it tries to change
  something) and nothing was changed;
- yes: the change runs to its end.

A read-only Guard (watch, --follow, and every command registered with changes=False) refuses
the first change before it starts.
"""

from __future__ import annotations

import threading
from typing import Any

from cloudq.commands.ops import READS
from cloudq.commands.registry import Interrupted
from cloudq.errors import CloudqError


class ChangeRefused(CloudqError):
    """A command run under a read-only guard tried to change the master."""

    def __init__(self, method: str) -> None:
        super().__init__(f"{method} changes the master")
        self.method = method


class Guard:
    def __init__(self, read_only: bool = False, stop: threading.Event | None = None) -> None:
        self.read_only = read_only
        self.stop = stop or threading.Event()
        self._lock = threading.Lock()
        self.changing: str | None = None  # the first change begun

    def begin_change(self, what: str) -> None:
        """Called before a change: refuses it (read-only), stops it (interrupted), or notes it."""
        if self.read_only:
            raise ChangeRefused(what)
        with self._lock:
            if self.stop.is_set():
                raise Interrupted("interrupted")
            self.changing = self.changing or what

    def interrupt(self) -> str | None:
        """Stops any change from starting; returns the change already under way, if any."""
        with self._lock:
            self.stop.set()
            return self.changing


class Gate:
    """The master as a command sees it through a Guard: reads pass, a change asks first."""

    def __init__(self, master: Any, guard: Guard) -> None:
        self._master = master
        self._guard = guard

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._master, name)
        if name in READS or name.startswith("_") or not callable(value):
            return value

        def change(*args: Any, **kwargs: Any) -> Any:
            self._guard.begin_change(name)
            return value(*args, **kwargs)

        return change


def unwrap(master: Any) -> Any:
    """The master behind a Gate (or `master` itself): what a listing's cursor belongs to."""
    return master._master if isinstance(master, Gate) else master
