"""The `master>` shell: a prompt-toolkit prompt over the shared command registry.

Ctrl-C cancels the line, Ctrl-D leaves; an error prints in red and the loop goes on.
"""

from __future__ import annotations

import os
from pathlib import Path

from prompt_toolkit import PromptSession
from prompt_toolkit.auto_suggest import AutoSuggestFromHistory
from prompt_toolkit.completion import Completer, Completion
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.history import FileHistory
from prompt_toolkit.shortcuts import print_formatted_text

from cloudq.commands import COMMANDS, Context, dispatch, split_line
from cloudq.errors import CloudqError
from cloudq.render import render


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
                      if o.startswith("--")})
    return [o for o in options if o.startswith(prefix)]


class RegistryCompleter(Completer):
    def get_completions(self, document, complete_event):  # type: ignore[no-untyped-def]
        text = document.text_before_cursor
        word = "" if text.endswith(" ") else (text.split() or [""])[-1]
        for candidate in complete_line(text):
            yield Completion(candidate, start_position=-len(word))


def run_shell(master: object, address: str) -> None:
    history = Path(os.environ.get("CLOUDQ_HISTORY", Path.home() / ".cloudq_history"))
    session: PromptSession[str] = PromptSession(
        history=FileHistory(str(history)), auto_suggest=AutoSuggestFromHistory(),
        completer=RegistryCompleter(), complete_while_typing=False,
    )
    print(f"cloudq master on {address}. Type `help` for commands, Ctrl-D to quit.")
    ctx = Context(master)
    while True:
        try:
            line = session.prompt("master> ")
        except KeyboardInterrupt:
            continue
        except EOFError:
            return
        if not line.strip():
            continue
        try:
            print(render(dispatch(ctx, split_line(line))))
        except SystemExit:
            return
        except CloudqError as err:
            print_formatted_text(FormattedText([("ansired", f"error: {err}")]))
