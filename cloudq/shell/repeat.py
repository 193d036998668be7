"""Commands the shell runs again and again: `logs ID --follow`, `show ID --follow` (follow.py
says what is new each time) and `watch COMMAND` (redraws it).

Each run is a Job through a read-only gate (jobs.py), so a repeated command can never change
the master, and Ctrl-C is a plain interrupt of a read. Between runs the terminal is in cbreak
mode: a key ends the loop at once (and is swallowed, so it does not reach the next prompt);
Ctrl-C still raises KeyboardInterrupt. Without a terminal (a pipe) only Ctrl-C stops it.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import termios
import time
import tty
from types import TracebackType
from typing import TextIO


class Keys:
    """While in effect: `wait(s)` waits up to s seconds, True as soon as a key is pressed."""

    def __init__(self, stream: TextIO | None = None) -> None:
        stream = stream or sys.stdin
        try:
            self._fd: int | None = stream.fileno() if stream.isatty() else None
        except (OSError, ValueError):
            self._fd = None
        self._saved: list | None = None  # type: ignore[type-arg]

    def __enter__(self) -> Keys:
        if self._fd is not None:
            with contextlib.suppress(termios.error):
                self._saved = termios.tcgetattr(self._fd)
                tty.setcbreak(self._fd, termios.TCSANOW)
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._fd is not None and self._saved is not None:
            self._swallow()
            with contextlib.suppress(termios.error):
                termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)

    def wait(self, seconds: float) -> bool:
        if self._fd is None or self._saved is None:
            time.sleep(seconds)
            return False
        ready, _, _ = select.select([self._fd], [], [], seconds)
        if ready:
            self._swallow()
            return True
        return False

    def _swallow(self) -> None:
        """Reads whatever keys are waiting (an arrow key is several bytes)."""
        assert self._fd is not None
        while select.select([self._fd], [], [], 0)[0]:
            if not os.read(self._fd, 1024):
                return
