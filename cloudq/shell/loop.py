"""The shell's loop: read a line, parse it, run it as a Job, print what it returns.

Around the prompt: completion from the registry and the watcher's snapshot of live names
(completion.py, live.py), the toolbar (toolbar.py) and notices above the prompt
(notices.py). Everything is printed from the main thread: by the loop itself between
prompts, or by the prompt's own event loop (`run_in_terminal`) while a line is being typed,
which hides the prompt, prints, and draws it again with the half-typed line intact. Writes
from any other thread while the prompt is up go through `patch_stdout` for the same reason.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shlex
import sys
import threading
from pathlib import Path

from prompt_toolkit import PromptSession
from prompt_toolkit.auto_suggest import AutoSuggestFromHistory
from prompt_toolkit.completion import ThreadedCompleter
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.patch_stdout import patch_stdout
from prompt_toolkit.renderer import print_formatted_text as write_formatted
from prompt_toolkit.shortcuts import confirm, print_formatted_text
from prompt_toolkit.styles import Style

from cloudq.commands import parse, split_line
from cloudq.commands.follow import end_line, follow_logs, follow_show, following
from cloudq.commands.gate import ChangeRefused
from cloudq.commands.registry import Command, Result
from cloudq.errors import CloudqError
from cloudq.render import neutralise, render, render_error, render_json
from cloudq.shell import pager
from cloudq.shell.completion import RegistryCompleter
from cloudq.shell.history import ShellHistory
from cloudq.shell.jobs import Job
from cloudq.shell.link import MasterLink
from cloudq.shell.live import Watcher
from cloudq.shell.local import LOCAL, NOTICE_MODES, QUIT_WORDS
from cloudq.shell.notices import Notice, select
from cloudq.shell.repeat import Keys, Screen, refusal, run_watch, watch_header, watched
from cloudq.shell.toolbar import REFRESH_S, STYLE, toolbar

PROMPT = "master> "
MAX_PROMPT_FAILURES = 3
HISTORY_LINES_LEARNT = 500  # images and locks of the last task lines are offered by Tab
NOTICE_MODE_HELP = {"on": "every notice", "errors": "failures, dead tasks, lost and quarantined workers",
                    "off": "none"}


def run_shell(link: MasterLink) -> None:
    """The shell until quit or Ctrl-D: over the master in this process (which stops after it)
    or over a master elsewhere (which goes on)."""
    history = ShellHistory(Path(os.environ.get("CLOUDQ_HISTORY", Path.home() / ".cloudq_history")))
    shell = Shell(link, history)
    if link.local:
        print(f"cloudq master on {link.address}. Type `help` for commands, Tab to complete, "
              f"Ctrl-D to quit.")
    else:
        print(f"cloudq shell on the master at {link.address}. Type `help` for commands, Tab to "
              f"complete, Ctrl-D to leave (the master goes on).")
    shell.watcher.start()
    try:
        shell.loop()
    finally:
        shell.finish_changes()
        shell.watcher.stop()


VERTICAL_FLAGS = ("--vertical", "-vertical")
JSON_FLAGS = ("--json", "-json")


def _without_g(line: str) -> str:
    """The line without a trailing `\\G` (pgcli's "this one as records"), read before shlex,
    which would take the backslash for an escape."""
    stripped = line.rstrip()
    return stripped[:-2] if stripped.endswith("\\G") else line


def vertical_request(words: list[str], line: str) -> tuple[list[str], bool]:
    """The words without `--vertical`, and whether the output is asked for as records
    (`--vertical` anywhere, or `\\G` at the end of `line`)."""
    kept = [word for word in words if word not in VERTICAL_FLAGS]
    return kept, len(kept) != len(words) or line.rstrip().endswith("\\G")


def json_request(words: list[str]) -> tuple[list[str], bool]:
    """The words without `--json`, and whether the Result's data is asked for as JSON (any word
    that is exactly `--json` or `-json`, anywhere in the line, as `cloudq ctl` takes it)."""
    kept = [word for word in words if word not in JSON_FLAGS]
    return kept, len(kept) != len(words)


class Shell:
    def __init__(self, link: MasterLink, history: ShellHistory) -> None:
        self.link = link
        self.history = history
        mode = os.environ.get("CLOUDQ_NOTICES", "on")
        self.notice_mode = mode if mode in NOTICE_MODES else "on"
        self.watcher = Watcher(link, self.notify)
        with contextlib.suppress(OSError):
            self.watcher.learn_from_history(
                line for _, line in zip(range(HISTORY_LINES_LEARNT), history.load_history_strings(),
                                        strict=False))
        self.session: PromptSession[str] = PromptSession(
            history=history, auto_suggest=AutoSuggestFromHistory(),
            completer=ThreadedCompleter(RegistryCompleter(self.watcher.live)),
            complete_while_typing=False,
            bottom_toolbar=self._toolbar,
            refresh_interval=REFRESH_S, style=Style.from_dict(STYLE),
        )
        self.jobs: list[Job] = []  # the current one and those left running in the background
        self._pending: list[tuple[str, str]] = []  # (style, line) not printed yet
        self._lock = threading.Lock()

    def _toolbar(self) -> FormattedText:
        columns = self.session.app.output.get_size().columns
        return toolbar(self.watcher.figures(), self.notice_mode, columns=columns)

    def loop(self) -> None:
        failures = 0  # of the prompt itself, in a row
        while True:
            try:
                self._print_pending()
                try:
                    with patch_stdout(raw=True):  # a stray write from a thread: above the prompt
                        line = self.session.prompt(PROMPT)
                    failures = 0
                except KeyboardInterrupt:
                    continue  # Ctrl-C at the prompt: the line is dropped
                except EOFError:
                    if self._may_quit():
                        return
                    continue
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
            words, vertical = vertical_request(split_line(_without_g(line)), line)
            words, as_json = json_request(words)
            if words and (words[0] in LOCAL or words[0] in QUIT_WORDS):
                return self._run_local(line, words)
            cmd, args = parse(words)
        except CloudqError as err:
            self._error(err)  # not kept in the history
            return True
        self.history.keep(line)
        self.watcher.remember(cmd.name, args)
        topic = getattr(args, "topic", None) if cmd.name == "help" else None
        if topic in LOCAL or topic in QUIT_WORDS:  # the shell's own commands: their own help
            parser = LOCAL["quit" if topic in QUIT_WORDS else topic]
            self._print_result(Result(title=parser.prog, status=parser.format_help().strip()), "help")
            return True
        if cmd.name == "watch":
            self._watch(args, vertical, as_json)
            return True
        if following(args):
            self._follow(cmd, args, words, as_json)
            return True
        return self._run_job(cmd, args, words, vertical, as_json)

    def _run_job(self, cmd: Command, args: argparse.Namespace, words: list[str], vertical: bool,
                 as_json: bool) -> bool:
        job = Job(self.link, cmd, args, words, self._announce, self._note)
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
            if cmd.changes:
                self.watcher.read_now()  # what it made is offered by Tab at once
        if cmd.name == "help" and not args.topic:
            result.rows += [[name, "", parser.description] for name, parser in LOCAL.items()
                            if name not in QUIT_WORDS]
        self._print_result(result, cmd.name, vertical, as_json)
        if cmd.name == "task" and getattr(args, "wait", False) and isinstance(result.data, dict):
            ids = result.data.get("tasks") or [result.data["id"]]  # an array, or one task
            wait, wait_args = parse(["wait", *ids])
            return self._run_job(wait, wait_args, ["wait", *ids], vertical, as_json)
        return True

    def finish_changes(self) -> None:
        """Before the master stops: no command may begin a change any more, and those under
        way are waited for, so none is cut halfway."""
        for job in self.jobs:
            job.guard.interrupt()
        for job in self.jobs:
            while job.changing:
                self._say(f"waiting for {job.cmd.name} to finish before the master stops")
                try:
                    job.done.wait()
                except KeyboardInterrupt:
                    continue
            self._print_pending()

    # ------------------------------------------------------------------ commands run again and again
    def _read(self, cmd: Command, args: argparse.Namespace, words: list[str]) -> Result:
        """One run of a repeated command, through a read-only gate; Ctrl-C interrupts it."""
        job = Job(self.link, cmd, args, words, self._announce, self._note, read_only=True).start()
        try:
            return job.wait()
        except KeyboardInterrupt:
            job.interrupt()  # a read: nothing to wait for
            raise

    def _follow(self, cmd: Command, args: argparse.Namespace, words: list[str], as_json: bool) -> None:
        """`logs ID --follow`, `show ID --follow`: until the task ends, a key or Ctrl-C."""
        colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        last = None
        try:
            with Keys() as keys:
                fetch = functools.partial(self._read, cmd, args, words)
                if cmd.name == "logs":
                    last = follow_logs(fetch, keys.wait, sys.stdout, as_json=as_json, raw=args.raw)
                else:
                    last = follow_show(fetch, keys.wait, sys.stdout,
                                       lambda result: render(result, colour=colour), as_json=as_json)
        except KeyboardInterrupt:
            pass
        except CloudqError as err:
            self._error(err)
            return
        except Exception as err:  # noqa: BLE001 - a bug in one command must not stop the master
            self._error(f"internal error in {cmd.name}: {type(err).__name__}: {err}")
            return
        if not as_json and not getattr(args, "raw", False):
            self._note(end_line(args.id, last))

    def _watch(self, args: argparse.Namespace, vertical: bool, as_json: bool) -> None:
        """`watch [-n S] COMMAND ...`: the command again every S seconds, redrawn on the
        alternate screen, until a key or Ctrl-C. A command that would change the master is
        refused at its first run, before it changes anything (the gate is read-only)."""
        line = shlex.join(args.words)
        try:
            inner, inner_args = watched(args.words)
            fetch = functools.partial(self._read, inner, inner_args, args.words)
            try:
                first: list[Result] = [fetch()]
            except ChangeRefused as err:
                raise refusal(inner, err) from None
        except KeyboardInterrupt:
            return
        except CloudqError as err:
            self._error(err)
            return
        colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")

        def again() -> Result:
            return first.pop() if first else fetch()

        def show(result: Result, width: int) -> str:
            if as_json:
                return render_json(result)
            return render(result, width, vertical=vertical, colour=colour)

        try:
            with Keys() as keys, Screen() as screen:
                run_watch(again, keys.wait, screen, watch_header(args.interval, line), show,
                          args.interval)
        except KeyboardInterrupt:
            pass
        except ChangeRefused as err:
            self._error(refusal(inner, err))
            return
        except Exception as err:  # noqa: BLE001 - a bug in one command must not stop the master
            self._error(f"internal error in watch {inner.name}: {type(err).__name__}: {err}")
            return
        self._say(f"stopped watching {line}")

    # ------------------------------------------------------------------ the shell's own commands
    def _run_local(self, line: str, words: list[str]) -> bool:
        name = "quit" if words[0] in QUIT_WORDS else words[0]
        args = LOCAL[name].parse_args(words[1:])
        self.history.keep(line)
        if name == "quit":
            return not self._may_quit(force=args.force)
        if args.mode:
            self.notice_mode = args.mode
        self._say(f"notices {self.notice_mode}: {NOTICE_MODE_HELP[self.notice_mode]}")
        return True

    def _may_quit(self, force: bool = False) -> bool:
        """Quit and Ctrl-D stop the master (the master's own shell): with tasks running, the
        operator says so first."""
        if force:
            return True
        try:
            busy, ids = self.link.running(5)
        except Exception:  # noqa: BLE001 - the master cannot say: do not hold the operator
            return True
        if not busy:
            return True
        some = ", ".join(ids) + (", ..." if busy > len(ids) else "")
        question = (f"{busy} task{'s are' if busy != 1 else ' is'} running ({some}). "
                    f"Quit and stop the master anyway?")
        try:
            yes = confirm(question)
        except (KeyboardInterrupt, EOFError):
            yes = False
        if not yes:
            self._say("not quitting (`quit --force` does not ask)")
        return yes

    # ------------------------------------------------------------------ output
    def _print_result(self, result: Result, name: str, vertical: bool = False,
                      as_json: bool = False) -> None:
        colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        text = render_json(result) if as_json else render(result, vertical=vertical, colour=colour)
        try:
            pager.show(text)
        except KeyboardInterrupt:
            self._say(f"\ninterrupted: the output was cut short ({name} itself had finished)")

    def _say(self, text: str) -> None:
        print(neutralise(text), flush=True)

    def _error(self, err: BaseException | str) -> None:
        print_formatted_text(FormattedText([("ansired", render_error(err))]))

    def _note(self, text: str) -> None:
        print_formatted_text(FormattedText([("ansibrightblack", neutralise(text))]))

    def notify(self, notices: list[Notice]) -> None:
        """From the watcher's thread: the notices the mode shows, above the prompt."""
        lines = [("ansired" if n.error else "", n.line()) for n in select(notices, self.notice_mode)]
        if lines:
            self._queue(lines)

    def _announce(self, text: str) -> None:
        """From a background job's thread: a line about a command interrupted earlier."""
        self._queue([("", neutralise(text))])

    def _queue(self, lines: list[tuple[str, str]]) -> None:
        """Printed above the prompt if one is shown, otherwise before the next one."""
        with self._lock:
            self._pending += lines
        app = self.session.app
        loop = app.loop
        if app.is_running and loop is not None:
            with contextlib.suppress(RuntimeError):  # the prompt's loop has just closed
                loop.call_soon_threadsafe(self._print_pending_above_prompt)

    def _take_pending(self) -> list[tuple[str, str]]:
        with self._lock:
            pending, self._pending = self._pending, []
        return pending

    def _print_pending(self) -> None:
        for style, text in self._take_pending():
            print_formatted_text(FormattedText([(style, text)]))
        sys.stdout.flush()

    def _print_pending_above_prompt(self) -> None:  # in the prompt's event loop
        app = self.session.app
        if not app.is_running or app.is_done:
            # The line has just been entered: printing now would erase it from the screen.
            # The loop prints what is pending before the next prompt.
            return
        pending = self._take_pending()
        if not pending:
            return
        # What run_in_terminal does (and print_formatted_text, which defers to it while a
        # prompt runs), without its switch to cooked mode: keys typed meanwhile, and the
        # terminal's answers to cursor position requests, would be echoed into the middle of
        # the notices. Here the terminal stays raw, and this runs in the prompt's own loop,
        # so no key is handled halfway.
        app.renderer.erase()
        for line in pending:
            write_formatted(app.output, FormattedText([line, ("", "\n")]), app.style)
        app.output.flush()
        app.renderer.request_absolute_cursor_position()
        app.invalidate()
