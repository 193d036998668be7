"""The one renderer: every command's Result becomes text (tabulate) or JSON here.

Task data (a task's output, its argv, an error text a worker reported) is written by whoever
submitted or ran the task, and an operator's terminal obeys control sequences: a log line can
set the window title, clear the screen, or return the cursor and overwrite a line with a fake
one. So every piece of text printed from a Result goes through `neutralise` first; `--raw`
(a Result with `raw` set) is the one way to get the bytes back, for a file or a pipe.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterable, Iterator
from typing import Any

from tabulate import tabulate

from cloudq.commands.registry import Result

# C0 controls but newline and tab, DEL, and the C1 controls (U+0080-U+009F: a terminal in
# UTF-8 mode may take U+009B for CSI, U+009D for OSC). ESC alone is in C0: it starts every
# CSI/OSC sequence, so escaping it disarms the whole sequence.
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CONTROLS_IN_CELLS = re.compile("[\x00-\x1f\x7f-\x9f]")  # and newline and tab: one row, one line
_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\x1b": "\\x1b"}

ERROR_WORD_CHARS = 200  # a longer word of an error message (an echoed argument) is cut here
ERROR_CHARS = 1000  # and the whole message here
_LONG_WORD = re.compile(rf"\S{{{ERROR_WORD_CHARS + 1},}}")


def _visible(match: re.Match[str]) -> str:
    char = match.group()
    return _NAMED.get(char) or f"\\x{ord(char):02x}"


def neutralise(text: str, *, one_line: bool = False) -> str:
    """`text` with every control character shown as a visible escape (`\\x1b`, `\\r`, `\\x9b`),
    so that it prints as characters and never acts on the terminal. Newline and tab are kept,
    unless `one_line` (table cells, where a newline would print a line that is not a row)."""
    pattern = _CONTROLS_IN_CELLS if one_line else _CONTROLS
    return pattern.sub(_visible, text) if pattern.search(text) else text


def render(result: Result, width: int | None = None) -> str:
    if result.raw:
        return result.status
    width = width or shutil.get_terminal_size((120, 40)).columns
    parts = [neutralise(result.title)] if result.title else []
    if result.rows:
        parts.append(_table(result, width))
    if result.status:
        parts.append(neutralise(result.status))
    return "\n".join(parts)


def render_error(err: BaseException | str) -> str:
    """`error: ...` for the operator: neutralised, and short even when it echoes a huge line."""
    text = neutralise(str(err))
    text = _LONG_WORD.sub(lambda m: m.group()[:ERROR_WORD_CHARS] + "...", text)
    if len(text) > ERROR_CHARS:
        text = text[:ERROR_CHARS] + f"... ({len(text) - ERROR_CHARS} more characters)"
    return f"error: {text}"


def _cell(value: Any, limit: int | None = None) -> str:
    text = neutralise(str(value), one_line=True)
    if limit is not None and len(text) > max(limit, 20):
        return text[: max(limit, 20) - 1] + "…"
    return text


def _table(result: Result, width: int) -> str:
    if result.vertical:
        return tabulate([[_cell(k), _cell(v, width - 24)] for k, v in result.rows], tablefmt="plain")
    headers = [_cell(h) for h in result.headers]
    rows = [[_cell(v) for v in row] for row in result.rows]
    text = tabulate(rows, headers=headers, tablefmt="simple")
    if max(len(line) for line in text.splitlines()) <= width:
        return text
    # Too wide for the terminal: one record after another, as `key  value` lines.
    blocks = []
    for row in rows:
        pairs = [[h, _cell(v, width - 16)] for h, v in zip(headers, row, strict=False)]
        blocks.append(tabulate(pairs, tablefmt="plain"))
    return "\n\n".join(blocks)


def render_json(result: Result) -> str:
    # ensure_ascii (the default) writes every control character and DEL as \uXXXX: JSON output
    # is as safe for a terminal as text output.
    return json.dumps(result.data, indent=2, default=str)


def json_list_chunks(items: Iterable[Any]) -> Iterator[str]:
    """The text of `json.dumps(list(items), indent=2)`, piece by piece, so a long listing can be
    written out as its pages arrive instead of being held whole."""
    first = True
    for item in items:
        body = json.dumps(item, indent=2, default=str).replace("\n", "\n  ")
        yield ("[\n  " if first else ",\n  ") + body
        first = False
    yield "[]" if first else "\n]"
