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


def render(result: Result, width: int | None = None, *, vertical: bool = False,
           colour: bool = False) -> str:
    """`result` as text for a terminal `width` columns wide. `vertical` prints every row as a
    block of `column  value` lines (the shell's `\\G` and `--vertical`); `colour` paints task
    states and worker statuses (only for a terminal: the codes are added after the text is
    neutralised, so they are the only control sequences in it)."""
    if result.raw:
        return result.status
    width = width or shutil.get_terminal_size((120, 40)).columns
    parts = [neutralise(result.title)] if result.title else []
    if result.rows:
        parts.append(_table(result, width, vertical, colour))
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


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


# Columns of free text, cut first when a table is too wide: the whole text is in `show ID`.
FREE_TEXT = frozenset({"reason", "last error", "last_error", "error", "what", "why", "message",
                       "labels", "spec", "image", "image/scenario", "name"})
COMFORTABLE_FREE = 40  # free text is cut to this before headers wrap
MIN_FREE = 16  # a free-text column is cut to no fewer columns than this
MIN_OTHER = 8  # nor any other column, before the table is printed as blocks instead
_GAP = 2  # tabulate's "simple" format puts two spaces between columns
_HEADER_PAD = 2  # and makes a column at least two wider than its header (tabulate.MIN_PADDING)

# Colours (SGR) of task states and worker statuses; errors are red too (the shell).
COLOURS = {
    "running": "32", "completed": "32", "available": "32",
    "assigned": "36", "draining": "36",
    "queued": "33", "retrying": "33", "busy": "33", "pending": "33",
    "held": "35",
    "failed": "31", "dead": "1;31", "quarantined": "1;31",
    "cancelled": "90", "offline": "90",
}
COLOURED_COLUMNS = frozenset({"state", "status"})


def paint(text: str, value: str) -> str:
    """`text` in the colour of state or status `value` (text is already neutralised)."""
    code = COLOURS.get(value.strip())
    return f"\x1b[{code}m{text}\x1b[0m" if code else text


def fit_widths(headers: list[str], rows: list[list[str]], width: int) -> list[int] | None:
    """Column widths that fit `width`, losing as little as it can, in this order: the widest
    free-text column (reason, last error) is cut down to COMFORTABLE_FREE, then the next; the
    headers wrap onto two lines (after `/` or at a space: nothing is lost); free text is cut
    further, down to MIN_FREE; then any column wider than MIN_OTHER, widest first. None when
    even that does not fit (the table is then printed as records)."""
    data = [max((len(row[i]) for row in rows if i < len(row)), default=0) for i in range(len(headers))]
    widths = [max(len(h) + _HEADER_PAD, d) for h, d in zip(headers, data, strict=True)]
    excess = sum(widths) + _GAP * (len(widths) - 1) - width
    free = sorted((i for i, h in enumerate(headers) if h.strip().lower() in FREE_TEXT),
                  key=lambda i: -widths[i])

    def cut_free(floor: int) -> None:
        nonlocal excess
        for i in free:
            cut = min(excess, widths[i] - floor)
            if excess > 0 and cut > 0:
                widths[i] -= cut
                excess -= cut

    cut_free(COMFORTABLE_FREE)
    if excess > 0:
        for i, header in enumerate(headers):
            narrower = max(data[i], _two_lines(header) + _HEADER_PAD)
            if narrower < widths[i] and i not in free:
                excess -= widths[i] - narrower
                widths[i] = narrower
    cut_free(MIN_FREE)
    while excess > 0:
        i = max(range(len(widths)), key=lambda j: widths[j])
        if widths[i] <= MIN_OTHER:
            return None
        floor = max(MIN_OTHER, max((w for j, w in enumerate(widths) if j != i), default=0))
        cut = min(excess, widths[i] - floor) or 1  # at least one column per round
        widths[i] -= cut
        excess -= cut
    return widths


def _two_lines(header: str) -> int:
    """The width of `header` written on two lines, broken where it reads best."""
    words = _header_words(header)
    best = len(header)
    for split in range(1, len(words)):
        first = "".join(w if w.endswith("/") else w + " " for w in words[:split]).rstrip()
        second = "".join(w if w.endswith("/") else w + " " for w in words[split:]).rstrip()
        best = min(best, max(len(first), len(second)))
    return best


_HEADER_BREAK = re.compile(r"(?<=/)|\s+")


def _header_words(header: str) -> list[str]:
    return [word for word in _HEADER_BREAK.split(header) if word] or [""]


def wrap_header(header: str, width: int) -> str:
    """`header` on as many lines as it needs to be `width` wide (`cpu/mem/` over `disk/gpu`)."""
    if len(header) <= width:
        return header
    lines: list[str] = []
    for word in _header_words(header):
        word = _cut(word, width)
        joined = lines[-1] + ("" if lines[-1].endswith("/") else " ") + word if lines else word
        if lines and len(joined) <= width:
            lines[-1] = joined
        else:
            lines.append(word)
    return "\n".join(lines)


def _table(result: Result, width: int, vertical: bool = False, colour: bool = False) -> str:
    if result.vertical:
        pairs = [[_cell(k), _cell(v, width - 24)] for k, v in result.rows]
        if colour:
            pairs = [[k, paint(v, v) if k.strip() in COLOURED_COLUMNS else v] for k, v in pairs]
        return tabulate(pairs, tablefmt="plain")
    headers = [_cell(h) for h in result.headers]
    rows = [[_cell(v) for v in row] for row in result.rows]
    widths = None if vertical else fit_widths(headers, rows, width)
    if widths is None:  # asked for, or too wide even cut: one record after another
        return _blocks(headers, rows, width, colour)
    headers = [wrap_header(h, w - _HEADER_PAD) for h, w in zip(headers, widths, strict=False)]
    rows = [[_cut(v, widths[i]) if i < len(widths) else v for i, v in enumerate(row)] for row in rows]
    if colour:
        painted = {i for i, h in enumerate(headers) if h.strip() in COLOURED_COLUMNS}
        rows = [[paint(v, v) if i in painted else v for i, v in enumerate(row)] for row in rows]
    return tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True)


def _blocks(headers: list[str], rows: list[list[str]], width: int, colour: bool) -> str:
    """pgcli's expanded output: `-[ RECORD n ]---` and a `column  value` line per field."""
    blocks = []
    for number, row in enumerate(rows, start=1):
        pairs = [[h, _cell(v, width - 16)] for h, v in zip(headers, row, strict=False)]
        if colour:
            pairs = [[h, paint(v, v) if h.strip() in COLOURED_COLUMNS else v] for h, v in pairs]
        rule = f"-[ RECORD {number} ]"
        blocks.append(rule + "-" * max(min(width, 40) - len(rule), 0) + "\n"
                      + tabulate(pairs, tablefmt="plain", disable_numparse=True))
    return "\n".join(blocks)


def render_json(result: Result) -> str:
    # ensure_ascii (the default) writes every control character and DEL as \uXXXX: JSON output
    # is as safe for a terminal as text output.
    return json.dumps(result.data, indent=2, default=str)


def render_json_line(data: Any) -> str:
    """`data` as JSON on one line (JSON Lines: `--follow --json` prints one per change), control
    characters escaped as in render_json."""
    return json.dumps(data, default=str)


def json_list_chunks(items: Iterable[Any]) -> Iterator[str]:
    """The text of `json.dumps(list(items), indent=2)`, piece by piece, so a long listing can be
    written out as its pages arrive instead of being held whole."""
    first = True
    for item in items:
        body = json.dumps(item, indent=2, default=str).replace("\n", "\n  ")
        yield ("[\n  " if first else ",\n  ") + body
        first = False
    yield "[]" if first else "\n]"
