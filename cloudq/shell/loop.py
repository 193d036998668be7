"""The shell's loop: read a line, parse it, run it as a Job, print what it returns."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Any

from prompt_toolkit import PromptSession
from prompt_toolkit.application import run_in_terminal
from prompt_toolkit.auto_suggest import AutoSuggestFromHistory
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.shortcuts import print_formatted_text

from cloudq.commands import parse, split_line
from cloudq.errors import CloudqError
from cloudq.render import neutralise, render, render_error
from cloudq.shell.completion import RegistryCompleter
from cloudq.shell.history import ShellHistory
from cloudq.shell.jobs import Job

PROMPT = "master> "
MAX_PROMPT_FAILURES = 3


def run_shell(master: Any, address: str) -> None:
    history = ShellHistory(Path(os.environ.get("CLOUDQ_HISTORY", Path.home() / ".cloudq_history")))
    session: PromptSession[str] = PromptSession(
        history=history, auto_suggest=AutoSuggestFromHistory(), completer=RegistryCompleter(),
        complete_while_typing=False,
    )
    shell = Shell(master, session, history)
    print(f"cloudq master on {address}. Type `help` for commands, Ctrl-D to quit.")
    try:
        shell.loop()
    finally:
        shell.finish_changes()


class Shell:
    def __init__(self, master: Any, session: PromptSession[str], history: ShellHistory) -> None:
        self.master = master
        self.session = session
        self.history = history
        self.jobs: list[Job] = []  # the current one and those left running in the background
        self._pending: list[str] = []  # lines from background jobs not printed yet
        self._lock = threading.Lock()

    def loop(self) -> None:
        failures = 0  # of the prompt itself, in a row
        while True:
            try:
                self._print_pending()
                try:
                    line = self.session.prompt(PROMPT)
                    failures = 0
                except KeyboardInterrupt:
                    continue  # Ctrl-C at the prompt: the line is dropped
                except EOFError:
                    return
                except Exception as err:  # a key the prompt cannot handle must not stop the master
                    failures += 1
                    if failures >= MAX_PROMPT_FAILURES:  # no usable terminal: leave as Ctrl-D would
                        raise
                    self._error(f"the prompt failed ({type(err).__name__}: {err}); the line is dropped")
                    continue
                if line.strip() and not self.run_line(line):
                    return
            except KeyboardInterrupt:  # Ctrl-C between the steps above: no command had started
                self._say("interrupted")

    def run_line(self, line: str) -> bool:
        """Runs one line; False when the shell should end (quit)."""
        try:
            cmd, args = parse(split_line(line))
        except CloudqError as err:
            self._error(err)  # not kept in the history
            return True
        self.history.keep(line)
        job = Job(self.master, cmd, args, self._announce, self._note)
        self.jobs.append(job)
        try:
            job.start()
            result = job.wait()
        except KeyboardInterrupt:
            self._say(job.interrupt())
            return True
        except SystemExit:
            return False
        except CloudqError as err:
            self._error(err)
            return True
        except Exception as err:  # noqa: BLE001 - a bug in one command must not stop the master
            self._error(f"internal error in {cmd.name}: {type(err).__name__}: {err}")
            return True
        finally:
            self.jobs = [j for j in self.jobs if not j.done.is_set()]
        try:
            print(render(result), flush=True)
        except KeyboardInterrupt:
            self._say(f"\ninterrupted: the output was cut short ({cmd.name} itself had finished)")
        return True

    def finish_changes(self) -> None:
        """Before the master stops: no command may begin a change any more, and those under
        way are waited for, so none is cut halfway."""
        for job in self.jobs:
            job.gate.interrupt()
        for job in self.jobs:
            while job.changing:
                self._say(f"waiting for {job.cmd.name} to finish before the master stops")
                try:
                    job.done.wait()
                except KeyboardInterrupt:
                    continue
            self._print_pending()

    # ------------------------------------------------------------------ output
    def _say(self, text: str) -> None:
        print(neutralise(text), flush=True)

    def _error(self, err: BaseException | str) -> None:
        print_formatted_text(FormattedText([("ansired", render_error(err))]))

    def _note(self, text: str) -> None:
        print_formatted_text(FormattedText([("ansibrightblack", neutralise(text))]))

    def _announce(self, text: str) -> None:
        """From a background job's thread: printed above the prompt if one is shown, otherwise
        before the next one."""
        with self._lock:
            self._pending.append(text)
        app = self.session.app
        if app.is_running and app.loop is not None:
            with contextlib.suppress(RuntimeError):  # the prompt's loop has just closed
                app.loop.call_soon_threadsafe(self._print_pending_above_prompt)

    def _take_pending(self) -> list[str]:
        with self._lock:
            pending, self._pending = self._pending, []
        return pending

    def _print_pending(self) -> None:
        for text in self._take_pending():
            self._say(text)

    def _print_pending_above_prompt(self) -> None:  # in the prompt's event loop
        pending = self._take_pending()
        if pending:
            run_in_terminal(lambda: [self._say(text) for text in pending])
