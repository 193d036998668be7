"""Tab completion: a plain function of the line and a snapshot of live names, so it is tested
without a terminal (as pgcli tests its completer), and a thin prompt-toolkit Completer on top.

What the word under the cursor is decides what is offered:
- the first word: command names and aliases (the registry's and the shell's own);
- a word that starts with `-`: the command's options, in the form typed (`-cpu_c` gives
  `-cpu_cores`, `--cpu_c` gives `--cpu_cores`; an option that has only one form gives that one);
- the word after an option that takes a value: its choices, or what is known for it (queue
  classes, priorities, states, scenarios, worker labels, lock names, worker names);
- any other word: what that positional argument names (task ids most recent first, worker
  names, help topics, images, files); `watch COMMAND ...` completes the watched line.

Everything live (ids, names, labels) comes in a `Live` snapshot, refreshed by the shell's
watcher thread (live.py), so a Tab never waits for the master's lock.
"""

from __future__ import annotations

import argparse
import glob
import os
import shlex
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document

from cloudq.commands import COMMANDS
from cloudq.commands.registry import CommandParser
from cloudq.core.model import Priority, QueueClass, TaskState
from cloudq.shell.local import LOCAL
from cloudq.specs.scenarios import scenario_names

MAX_CANDIDATES = 200  # task ids: the most recent this many that match


@dataclass(frozen=True)
class Live:
    """What the master holds now, as far as completion needs it."""

    task_ids: Sequence[str] = ()  # most recent first
    workers: Sequence[str] = ()
    labels: Sequence[str] = ()  # k=v pairs the workers have (what `--label` must match)
    images: Sequence[str] = ()  # images of tasks submitted before
    locks: Sequence[str] = ()


NO_LIVE = Live()


def complete_line(text: str, live: Live = NO_LIVE) -> list[str]:
    """The candidates for the word that ends `text` (the line up to the cursor)."""
    return [candidate for candidate, _ in candidates(text, live)]


def candidates(text: str, live: Live = NO_LIVE) -> list[tuple[str, str]]:
    """As complete_line, each with a short description for the completion menu."""
    words = _split(text)
    if words is None:
        return []  # inside an unclosed quote: a free text, nothing to offer
    current = "" if not text or text[-1].isspace() else words.pop()
    if not words:
        return [(name, about) for name, about in _command_names() if name.startswith(current)]
    parser = _parser(words[0])
    if parser is None:
        return []
    return _argument_candidates(parser, words[1:], current, live)


def _split(text: str) -> list[str] | None:
    try:
        return shlex.split(text)
    except ValueError:
        return None


def _command_names() -> list[tuple[str, str]]:
    names = {name: cmd.help for name, cmd in COMMANDS.items()}
    for cmd in COMMANDS.values():
        names.update(dict.fromkeys(cmd.aliases, f"= {cmd.name}"))
    for name, parser in LOCAL.items():
        names.setdefault(name, parser.description or "")
    return sorted(names.items())


def _parser(name: str) -> CommandParser | None:
    if name in LOCAL and name not in COMMANDS:
        return LOCAL[name]
    for cmd in COMMANDS.values():
        if name == cmd.name or name in cmd.aliases:
            if cmd.name == "quit":  # the shell's quit takes --force (local.py)
                return LOCAL["quit"]
            return cmd.parser
    return None


def _argument_candidates(parser: CommandParser, before: list[str], current: str,
                         live: Live) -> list[tuple[str, str]]:
    by_flag = {flag: action for action in parser._actions for flag in action.option_strings}
    positionals = [a for a in parser._actions if not a.option_strings]
    index = 0  # positional words before the current one
    pending: argparse.Action | None = None  # an option waiting for its value
    for position, word in enumerate(before):
        if pending is not None:
            pending = None
            continue
        action = by_flag.get(word)
        if action is not None:
            pending = action if action.nargs != 0 else None
            continue
        if word.startswith("-") and len(word) > 1:
            continue  # an unknown option: the parser will say so
        target = _positional(positionals, index)
        if target is not None and target.nargs == argparse.REMAINDER:
            # `watch COMMAND ...`: the rest is a command line of its own
            return candidates(shlex.join(before[position:]) + " " + current, live)
        index += 1
    if pending is not None:
        return _values(pending, current, live)
    if current.startswith("-"):
        found = _options(parser, current)
        if parser is not LOCAL.get(parser.prog) and "vertical".startswith(current.lstrip("-")):
            found.append(("--vertical" if current.startswith("--") else "-vertical",
                          "print the rows as records (as a trailing \\G does)"))
        if parser is not LOCAL.get(parser.prog) and "json".startswith(current.lstrip("-")):
            found.append(("--json" if current.startswith("--") else "-json",
                          "print the data as JSON"))
        return found
    target = _positional(positionals, index)
    if target is None:
        return []
    if target.nargs == argparse.REMAINDER:
        return [(n, a) for n, a in _command_names() if n.startswith(current)]
    if index >= _MOST_WORDS.get(target.dest, index + 1):
        return []
    return _values(target, current, live)


def _positional(actions: list[argparse.Action], index: int) -> argparse.Action | None:
    for action in actions:
        nargs = action.nargs
        count = 1 if nargs in (None, "?") else nargs if isinstance(nargs, int) else None
        if count is None or index < count:
            return action
        index -= count
    return None


def _options(parser: CommandParser, current: str) -> list[tuple[str, str]]:
    """Options in the form typed: one dash or two, as the parser defines it."""
    double = current.startswith("--")
    stem = current.lstrip("-")
    found: dict[str, str] = {}
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        forms: dict[str, dict[bool, str]] = {}
        for flag in action.option_strings:
            forms.setdefault(flag.lstrip("-"), {})[flag.startswith("--")] = flag
        for name, by_dashes in forms.items():
            if not name.startswith(stem) or len(name) == 1:
                continue  # a one-letter flag (-f) is whole once typed: nothing to complete
            flag = by_dashes.get(double) or next(iter(by_dashes.values()))
            found.setdefault(flag, action.help or "")
    return sorted(found.items())


_SCENARIOS = tuple(scenario_names())
_KNOWN = {  # values of options and positionals by their dest, when argparse has no choices
    "queue": lambda live: [q.value for q in QueueClass],
    "priority": lambda live: [p.value for p in Priority],
    "state": lambda live: [s.value for s in TaskState],
    "scenario": lambda live: _SCENARIOS,
    "label": lambda live: live.labels,
    "labels": lambda live: live.labels,
    "lock": lambda live: live.locks,
    "worker": lambda live: live.workers,
    "target_worker": lambda live: live.workers,
    "id": lambda live: live.task_ids,
    "ids": lambda live: live.task_ids,
    "task": lambda live: live.task_ids,
    "task_id": lambda live: live.task_ids,
    "target": lambda live: [*live.task_ids, *live.workers],  # release ID|WORKER
    "name": lambda live: live.workers,  # positional NAME: workers NAME
    "topic": lambda live: [name for name, _ in _command_names()],
    "words": lambda live: [*live.workers, *live.images],  # task [WORKER] IMAGE
}
_MOST_WORDS = {"words": 2}  # a list positional that takes at most this many: task [WORKER] IMAGE
_KNOWN_FLAG_DESTS = {"queue", "priority", "state", "scenario", "label", "labels", "lock", "worker"}


def _values(action: argparse.Action, current: str, live: Live) -> list[tuple[str, str]]:
    if action.choices is not None:
        values: Sequence[str] = [str(choice) for choice in action.choices]
    elif action.option_strings and action.dest not in _KNOWN_FLAG_DESTS:
        return []  # --name, --owner, --timeout...: free values
    elif action.dest == "file" or (action.metavar or "").upper() == "FILE":
        return [(path, "") for path in _paths(current)]
    elif action.dest in _KNOWN:
        values = _KNOWN[action.dest](live)
    elif "task id" in (action.help or ""):
        values = live.task_ids
    elif "worker" in (action.help or ""):
        values = live.workers
    else:
        return []
    out = dict.fromkeys(value for value in values if value.startswith(current))
    return [(value, "") for value in list(out)[:MAX_CANDIDATES]]


def _paths(current: str) -> list[str]:
    """Files and folders for `submit FILE` (a folder with a trailing slash)."""
    pattern = os.path.expanduser(current) + "*"
    found = sorted(glob.glob(pattern))[:MAX_CANDIDATES]
    return [path + os.sep if os.path.isdir(path) else path for path in found]


class RegistryCompleter(Completer):
    """complete_line for prompt-toolkit; the session wraps it in a ThreadedCompleter, so the
    menu never holds up typing."""

    def __init__(self, live: Callable[[], Live] = lambda: NO_LIVE) -> None:
        self.live = live

    def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterator[Completion]:
        text = document.text_before_cursor
        start = -len(document.get_word_before_cursor(WORD=True))
        for candidate, about in candidates(text, self.live()):
            yield Completion(candidate, start_position=start, display_meta=about[:60] or None)
