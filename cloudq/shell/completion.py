"""Tab completion from the registry: command names and aliases, then a command's --options."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document

from cloudq.commands import COMMANDS


def complete_line(text: str) -> list[str]:
    """Candidates for the word being typed: command names first, then that command's options."""
    words = text.split()
    if not words or (len(words) == 1 and not text.endswith(" ")):
        prefix = words[0] if words else ""
        names = sorted({*COMMANDS, *(a for c in COMMANDS.values() for a in c.aliases)})
        return [name for name in names if name.startswith(prefix)]
    cmd = COMMANDS.get(words[0])
    if cmd is None:
        return []
    prefix = "" if text.endswith(" ") else words[-1]
    if not prefix.startswith("-"):
        return []
    options = sorted({o for action in cmd.parser._actions for o in action.option_strings
                      if o.startswith("--") and action.help != argparse.SUPPRESS})
    return [o for o in options if o.startswith(prefix)]


class RegistryCompleter(Completer):
    def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterator[Completion]:
        text = document.text_before_cursor
        word = "" if text.endswith(" ") else (text.split() or [""])[-1]
        for candidate in complete_line(text):
            yield Completion(candidate, start_position=-len(word))
