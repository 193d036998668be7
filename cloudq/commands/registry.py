"""One registry of operator commands, shared by the `master>` shell and `cloudq ctl`.

A command is registered once, with its name, aliases, help and arguments; `help`, completion
and both front ends read the same entry. Every command returns a Result; one renderer prints it.
"""

from __future__ import annotations

import argparse
import shlex
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudq.errors import CloudqError, InternalError, ValidationError


@dataclass
class Result:
    """What every command returns: a table, a record or a message, plus the same data for --json."""

    title: str = ""
    headers: list[str] = field(default_factory=list)
    rows: list[list[Any]] = field(default_factory=list)
    status: str = ""
    data: Any = None
    vertical: bool = False  # a single record reads better as key: value lines
    raw: bool = False  # `status` is printed as it is, control characters and all (logs --raw)
    # A listing too large for one reply: the command line that fetches the next page. Its rows
    # and data continue this page's; title and status are the first page's.
    next_argv: list[str] | None = None

    FIELDS = ("title", "headers", "rows", "status", "data", "vertical", "raw", "next_argv")

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.FIELDS}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Result:
        return cls(**{k: raw[k] for k in cls.FIELDS if k in raw})


class CommandParser(argparse.ArgumentParser):
    """argparse that raises instead of printing and exiting, so a bad line never ends the shell."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ValidationError(f"{self.prog}: {message}. Try `help {self.prog}`")

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        raise ValidationError(message or f"{self.prog}: stopped")


class Interrupted(CloudqError):
    """The operator interrupted the command (Ctrl-C in the shell) before it changed anything."""


@dataclass
class Context:
    """What a command may touch: the master's core, and the files the caller sent along."""

    master: Any
    files: dict[str, str] = field(default_factory=dict)
    local: bool = True  # True in the master's own shell: files are read from this machine's disk
    # Set by the shell when the operator interrupts; a long command looks at it between steps.
    stop: threading.Event = field(default_factory=threading.Event)
    on_note: Callable[[str], None] | None = None

    def check_interrupted(self) -> None:
        """Raises Interrupted once the operator has interrupted (call it only before a change)."""
        if self.stop.is_set():
            raise Interrupted("interrupted")

    def note(self, text: str) -> None:
        """Tells the operator what a long command is doing now (the shell shows it)."""
        if self.on_note is not None:
            self.on_note(text)

    def read_file(self, path: str) -> str:
        if path in self.files:
            return self.files[path]
        if not self.local:
            raise ValidationError(f"file {path} was not sent with the command")
        try:
            return Path(path).read_text()
        except OSError as err:
            raise ValidationError(f"cannot read {path}: {err.strerror}") from None


Handler = Callable[[Context, argparse.Namespace], Result]


def whole_number(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number from `low` to `high`, or a message that says so (a bare
    int would let 10**20 through, to fail deep inside as an internal error)."""

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, not {text[:40]}")
        return value

    return convert


@dataclass
class Command:
    name: str
    help: str
    handler: Handler
    parser: CommandParser
    aliases: tuple[str, ...] = ()
    file_args: tuple[str, ...] = ()  # argument names that are paths on the caller's machine
    remote: bool = True  # False: only in the master's own shell (e.g. quit)
    # True: it changes the master. A command that says False runs through a read-only gate
    # (commands/gate.py) wherever it runs, so the declaration cannot drift from what it does.
    changes: bool = False

    def changes_master(self, args: argparse.Namespace) -> bool:
        """Whether this command line changes the master: a --dry-run never does."""
        return self.changes and not getattr(args, "dry_run", False)

    @property
    def usage(self) -> str:
        return self.parser.format_usage().removeprefix("usage: ").strip()


COMMANDS: dict[str, Command] = {}
_ALIASES: dict[str, str] = {}


def command(
    name: str, help: str, *, aliases: tuple[str, ...] = (), file_args: tuple[str, ...] = (),
    remote: bool = True, changes: bool = False,
    arguments: Callable[[CommandParser], None] | None = None,
) -> Callable[[Handler], Handler]:
    """Registers a command. `arguments` adds its options to an argparse parser."""

    def register(handler: Handler) -> Handler:
        parser = CommandParser(prog=name, description=help, add_help=False)
        if arguments:
            arguments(parser)
        COMMANDS[name] = Command(name, help, handler, parser, aliases, file_args, remote, changes)
        for alias in aliases:
            _ALIASES[alias] = name
        return handler

    return register


def lookup(name: str) -> Command:
    found = COMMANDS.get(_ALIASES.get(name, name))
    if found is None:
        raise ValidationError(f"unknown command {name!r}; type `help` for the list")
    return found


def split_line(line: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError as err:
        raise ValidationError(f"cannot parse the line: {err}") from None


def parse(argv: list[str]) -> tuple[Command, argparse.Namespace]:
    if not argv:
        raise ValidationError("empty command")
    cmd = lookup(argv[0])
    return cmd, cmd.parser.parse_args(argv[1:])


def dispatch(ctx: Context, argv: list[str]) -> Result:
    """Runs one command line (already split). Raises CloudqError for anything the user got wrong."""
    cmd, args = parse(argv)
    return run(ctx, cmd, args)


def run(ctx: Context, cmd: Command, args: argparse.Namespace) -> Result:
    """Runs a parsed command line."""
    if not ctx.local and not cmd.remote:
        raise ValidationError(f"{cmd.name} only works in the master's own shell")
    try:
        return cmd.handler(ctx, args)
    except CloudqError:
        raise
    except (KeyError, TypeError, ValueError) as err:  # a bug must not take the master down
        raise InternalError(f"{cmd.name} failed: {err!r}") from err


def files_to_send(argv: list[str]) -> dict[str, str]:
    """For `cloudq ctl`: reads the caller-side files a command names, to send along with it."""
    cmd, args = parse(argv)
    out = {}
    for dest in cmd.file_args:
        path = getattr(args, dest, None)
        if path:
            out[path] = Context(master=None).read_file(path)
    return out
