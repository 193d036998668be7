"""A shell command runs in a thread of its own, so Ctrl-C never lands inside it.

Python delivers SIGINT to the main thread as KeyboardInterrupt, wherever that thread is. If the
main thread ran the command, Ctrl-C could stop a submit between the master's state and its
journal, or leave the shell loop and stop the master. So the main thread only waits (and prints),
and Ctrl-C interrupts the wait. What happens to the command then depends on one question, asked
under a lock so that the answer is exact: has it begun to change the master?

- not yet: it is told to stop (at its next check, or at the latest when it tries to change
  something) and the operator reads that nothing was changed;
- yes: the change runs to its end in the background, and a line says when it has, with what.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from typing import Any

from cloudq.commands.registry import Command, Context, Interrupted, Result, run
from cloudq.errors import CloudqError
from cloudq.master.views import Views
from cloudq.render import render_error

NOTE_AFTER_S = 0.5  # a command running longer than this says what it is doing

# Master methods that only read: everything views.Views defines (that class holds the reads),
# and the clock. Every other method is taken as a change, so a change added to the master later
# is safe by default.
READS = frozenset({name for name in vars(Views) if not name.startswith("_")} | {"clock"})


class ChangeRefused(CloudqError):
    """A command run through a read-only gate (watch, --follow) tried to change the master."""

    def __init__(self, method: str) -> None:
        super().__init__(f"{method} changes the master")
        self.method = method


class Gate:
    """The master as a shell command sees it: reads pass; the first change asks first, and a
    read-only gate refuses it before it starts."""

    def __init__(self, master: Any, stop: threading.Event, read_only: bool = False) -> None:
        self._master = master
        self._stop = stop
        self._read_only = read_only
        self._lock = threading.Lock()
        self.changing: str | None = None  # the first master method that changes state

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._master, name)
        if name in READS or name.startswith("_") or not callable(value):
            return value

        def change(*args: Any, **kwargs: Any) -> Any:
            if self._read_only:
                raise ChangeRefused(name)
            with self._lock:
                if self._stop.is_set():
                    raise Interrupted("interrupted")
                self.changing = self.changing or name
            return value(*args, **kwargs)

        return change

    def interrupt(self) -> str | None:
        """Stops any change from starting; returns the change already under way, if any."""
        with self._lock:
            self._stop.set()
            return self.changing


class Job:
    def __init__(self, master: Any, cmd: Command, args: argparse.Namespace,
                 announce: Callable[[str], None], note: Callable[[str], None],
                 read_only: bool = False) -> None:
        self.cmd = cmd
        self.args = args
        self._announce = announce
        self._print_note = note
        stop = threading.Event()
        self.gate = Gate(master, stop, read_only)
        self.ctx = Context(self.gate, stop=stop, on_note=self._note)
        self.done = threading.Event()
        self.result: Result | None = None
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._attached = True  # the shell waits for it: its notes are shown, its result printed
        self._started = time.monotonic()
        # A daemon: an abandoned read must not hold the process at exit. A change in progress
        # is waited for by the shell (loop.py) before the master stops.
        self._thread = threading.Thread(target=self._run, name=f"shell-{cmd.name}", daemon=True)

    def start(self) -> Job:
        self._thread.start()
        return self

    @property
    def changing(self) -> bool:
        """A change to the master is under way and has not ended yet."""
        return self.gate.changing is not None and not self.done.is_set()

    def wait(self) -> Result:
        """The command's Result, or its exception; KeyboardInterrupt if Ctrl-C comes first."""
        self.done.wait()
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result

    def interrupt(self) -> str:
        """Ctrl-C while waiting: detaches the job and says what became of the command."""
        changing = self.gate.interrupt()
        with self._lock:
            self._attached = False
            finished = self.done.is_set()
        name = self.cmd.name
        if changing is None:
            return f"interrupted: {name} changed nothing"
        if finished:
            return f"interrupted, but {name} had already finished: {self.summary()}"
        return (f"interrupted: {name} goes on in the background (it changes the master and "
                f"is not stopped halfway); a line will say when it has finished")

    def summary(self) -> str:
        """One line about how a finished command ended."""
        if self.error is not None:
            return render_error(self.error)
        result = self.result or Result()
        return "; ".join(part for part in (result.title, result.status) if part) or "done"

    def _run(self) -> None:
        try:
            self.result = run(self.ctx, self.cmd, self.args)
        except BaseException as err:  # noqa: BLE001 - handed to the waiting shell
            self.error = err
        with self._lock:
            self.done.set()
            detached = not self._attached
        if detached and self.gate.changing is not None:
            self._announce(f"{self.cmd.name} (interrupted earlier) has finished: {self.summary()}")

    def _note(self, text: str) -> None:
        with self._lock:  # never after an interrupt: the prompt is back by then
            if self._attached and time.monotonic() - self._started >= NOTE_AFTER_S:
                self._print_note(f"{self.cmd.name}: {text}")
