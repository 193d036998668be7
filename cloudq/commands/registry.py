"""One registry of operator commands, shared by the `master>` shell and `cloudq ctl`.

A command is registered once, with its name, aliases, help and arguments; `help`, completion
and both front ends read the same entry. Every command returns a Result; one renderer prints it.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudq.errors import CloudqError, ValidationError


@dataclass
class Result:
    """What every command returns: a table, a record or a message, plus the same data for --json."""

    title: str = ""
    headers: list[str] = field(default_factory=list)
    rows: list[list[Any]] = field(default_factory=list)
    status: str = ""
    data: Any = None
    vertical: bool = False  # a single record reads better as key: value lines

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "headers": self.headers, "rows": self.rows,
                "status": self.status, "data": self.data, "vertical": self.vertical}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Result:
        return cls(**{k: raw.get(k) for k in ("title", "headers", "rows", "status", "data", "vertical")
                      if k in raw})


class CommandParser(argparse.ArgumentParser):
    """argparse that raises instead of printing and exiting, so a bad line never ends the shell."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ValidationError(f"{self.prog}: {message}. Try `help {self.prog}`")

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        raise ValidationError(message or f"{self.prog}: stopped")


@dataclass
class Context:
    """What a command may touch: the master's core, and the files the caller sent along."""

    master: Any
    files: dict[str, str] = field(default_factory=dict)
    local: bool = True  # True in the master's own shell: files are read from this machine's disk

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


@dataclass
class Command:
    name: str
    help: str
    handler: Handler
    parser: CommandParser
    aliases: tuple[str, ...] = ()
    file_args: tuple[str, ...] = ()  # argument names that are paths on the caller's machine
    remote: bool = True  # False: only in the master's own shell (e.g. quit)

    @property
    def usage(self) -> str:
        return self.parser.format_usage().removeprefix("usage: ").strip()


COMMANDS: dict[str, Command] = {}
_ALIASES: dict[str, str] = {}


def command(
    name: str, help: str, *, aliases: tuple[str, ...] = (), file_args: tuple[str, ...] = (),
    remote: bool = True, arguments: Callable[[CommandParser], None] | None = None,
) -> Callable[[Handler], Handler]:
    """Registers a command. `arguments` adds its options to an argparse parser."""

    def register(handler: Handler) -> Handler:
        parser = CommandParser(prog=name, description=help, add_help=False)
        if arguments:
            arguments(parser)
        COMMANDS[name] = Command(name, help, handler, parser, aliases, file_args, remote)
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
    if not ctx.local and not cmd.remote:
        raise ValidationError(f"{cmd.name} only works in the master's own shell")
    try:
        return cmd.handler(ctx, args)
    except CloudqError:
        raise
    except (KeyError, TypeError, ValueError) as err:  # a bug must not take the master down
        raise CloudqError(f"{cmd.name} failed: {err!r}") from err


def files_to_send(argv: list[str]) -> dict[str, str]:
    """For `cloudq ctl`: reads the caller-side files a command names, to send along with it."""
    cmd, args = parse(argv)
    out = {}
    for dest in cmd.file_args:
        path = getattr(args, dest, None)
        if path:
            out[path] = Context(master=None).read_file(path)
    return out
