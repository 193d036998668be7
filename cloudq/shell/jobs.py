"""A shell command runs in a thread of its own, so Ctrl-C never lands inside it.

Python delivers SIGINT to the main thread as KeyboardInterrupt, wherever that thread is. If the
main thread ran the command, Ctrl-C could stop a submit between the master's state and its
journal, or leave the shell loop and stop the master. So the main thread only waits (and prints),
and Ctrl-C interrupts the wait. What happens to the command then depends on one question, which
its Guard answers exactly (commands/gate.py): has it begun to change the master?

- not yet: it is told to stop (at its next check, or at the latest when it tries to change
  something) and the operator reads that nothing was changed;
- yes: the change runs to its end in the background, and a line says when it has, with what.

Over RPC (a remote shell) a change counts as begun once its line is sent.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable

from cloudq.commands.gate import Guard
from cloudq.commands.registry import Command, Result
from cloudq.render import render_error
from cloudq.shell.link import MasterLink

NOTE_AFTER_S = 0.5  # a command running longer than this says what it is doing


class Job:
    def __init__(self, link: MasterLink, cmd: Command, args: argparse.Namespace, argv: list[str],
                 announce: Callable[[str], None], note: Callable[[str], None],
                 read_only: bool = False) -> None:
        self.cmd = cmd
        self.args = args
        self.argv = argv
        self._link = link
        self._announce = announce
        self._print_note = note
        # A command registered as one that only reads runs read-only, wherever the master is.
        self.guard = Guard(read_only=read_only or not cmd.changes_master(args))
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
        return self.guard.changing is not None and not self.done.is_set()

    def wait(self) -> Result:
        """The command's Result, or its exception; KeyboardInterrupt if Ctrl-C comes first."""
        self.done.wait()
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result

    def interrupt(self) -> str:
        """Ctrl-C while waiting: detaches the job and says what became of the command."""
        changing = self.guard.interrupt()
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
            self.result = self._link.run(self.cmd, self.args, self.argv, self.guard, self._note)
        except BaseException as err:  # noqa: BLE001 - handed to the waiting shell
            self.error = err
        with self._lock:
            self.done.set()
            detached = not self._attached
        if detached and self.guard.changing is not None:
            self._announce(f"{self.cmd.name} (interrupted earlier) has finished: {self.summary()}")

    def _note(self, text: str) -> None:
        with self._lock:  # never after an interrupt: the prompt is back by then
            if self._attached and time.monotonic() - self._started >= NOTE_AFTER_S:
                self._print_note(f"{self.cmd.name}: {text}")
