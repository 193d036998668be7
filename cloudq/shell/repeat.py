"""Commands the shell runs again and again: `logs ID --follow`, `show ID --follow` (follow.py
says what is new each time) and `watch COMMAND` (redraws it).

Each run is a Job through a read-only gate (jobs.py), so a repeated command can never change
the master, and Ctrl-C is a plain interrupt of a read. Between runs the terminal is in cbreak
mode: a key ends the loop at once (and is swallowed, so it does not reach the next prompt);
Ctrl-C still raises KeyboardInterrupt. Without a terminal (a pipe) only Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import shutil
import sys
import termios
import time
import tty
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

from cloudq.commands import parse
from cloudq.commands.follow import following
from cloudq.commands.gate import ChangeRefused
from cloudq.commands.registry import Command, Result
from cloudq.errors import CloudqError, ValidationError
from cloudq.render import neutralise, render_error
from cloudq.shell.local import LOCAL, QUIT_WORDS


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


# ---------------------------------------------------------------------- watch
WATCH_KEYS = "any key or Ctrl-C: back to the prompt"
_ENTER = "\x1b[?1049h\x1b[?7l\x1b[?25l"  # the alternate screen, no line wrap, no cursor
_LEAVE = "\x1b[?25h\x1b[?7h\x1b[?1049l"  # and back: the screen as it was before watch


def watched(words: list[str]) -> tuple[Command, argparse.Namespace]:
    """The command line `watch` is to re-run, parsed, or a ValidationError saying why not."""
    if not words:
        raise ValidationError("watch needs a command to run again, e.g. `watch queue` or "
                              "`watch -n 1 workers`")
    if words[0] in LOCAL or words[0] in QUIT_WORDS:
        raise ValidationError(f"watch runs commands of the master again; {words[0]} is the shell's own")
    cmd, args = parse(words)
    if cmd.name == "watch" or not cmd.remote:
        raise ValidationError(f"watch cannot run {cmd.name}")
    if following(args):
        raise ValidationError(f"{cmd.name} --follow follows by itself: leave out watch")
    return cmd, args


def refusal(cmd: Command, err: ChangeRefused) -> ValidationError:
    return ValidationError(f"watch runs only commands that read, and {cmd.name} changes the master "
                           f"(master.{err.method}); nothing was changed")


class Screen:
    """The terminal while `watch` runs: the alternate screen, redrawn whole each time, cut to
    its height (no line wraps, no scrolling). Not a terminal: each run printed after the last."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.tty = self.out.isatty()

    def __enter__(self) -> Screen:
        if self.tty:
            self.out.write(_ENTER)
            self.out.flush()
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.tty:
            self.out.write(_LEAVE)
            self.out.flush()

    def size(self) -> os.terminal_size:
        return shutil.get_terminal_size((120, 40))

    def draw(self, header: str, body: str) -> None:
        lines = [header, "", *body.splitlines()]
        if not self.tty:
            self.out.write("\n".join(lines) + "\n\n")
            self.out.flush()
            return
        rows = max(self.size().lines, 3)
        if len(lines) > rows:
            lines = [*lines[:rows - 1], f"... {len(lines) - rows + 1} more lines"]
        self.out.write("\x1b[H\x1b[2J" + "\n".join(lines))  # no newline after the last row
        self.out.flush()


def run_watch(fetch: Callable[[], Result], wait: Callable[[float], bool], screen: Screen,
              header: Callable[[], str], show: Callable[[Result, int], str], interval: float) -> int:
    """Draws `fetch()` every `interval` until `wait` says a key was pressed; Ctrl-C
    (KeyboardInterrupt) ends it too. An error of one run is drawn and the next run tried.
    Returns how many times it drew."""
    drawn = 0
    while True:
        try:
            body = show(fetch(), screen.size().columns)
        except ChangeRefused:
            raise
        except CloudqError as err:
            body = render_error(err)
        screen.draw(header(), body)
        drawn += 1
        if wait(interval):
            return drawn


def watch_header(interval: float, line: str) -> Callable[[], str]:
    def header() -> str:
        return f"Every {interval:g}s: {neutralise(line, one_line=True)}    " \
               f"{time.strftime('%H:%M:%S')}    ({WATCH_KEYS})"
    return header
