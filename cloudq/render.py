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
from wcwidth import wcswidth, wcwidth

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
    if limit is not None and text_width(text) > max(limit, 20):
        return _cut(text, max(limit, 20))
    return text


def text_width(text: str) -> int:
    """Columns `text` takes on a terminal (a CJK character or an emoji takes two)."""
    if text.isascii():
        return len(text)
    wide = wcswidth(text)
    return wide if wide >= 0 else len(text)


def _cut(text: str, width: int) -> str:
    """`text` in at most `width` columns: its start and `…`."""
    if text_width(text) <= width:
        return text
    return _take(text, width - 1) + "…" if width > 0 else ""


def _cut_middle(text: str, width: int) -> str:
    """`text` in at most `width` columns: its start, `…` and its end (the tag of an image, the
    number of a worker)."""
    if text_width(text) <= width:
        return text
    if width < 3:
        return _cut(text, width)
    tail = (width - 1) // 2
    return _take(text, width - 1 - tail) + "…" + _take(text[::-1], tail)[::-1]


def _take(text: str, width: int) -> str:
    """The longest start of `text` that fits in `width` columns."""
    if text.isascii():
        return text[:max(width, 0)]
    used = 0
    for index, char in enumerate(text):
        used += max(wcwidth(char), 0)
        if used > width:
            return text[:index]
    return text


# Columns of free text, cut first when a table is too wide: the whole text is in `show ID`.
FREE_TEXT = frozenset({"reason", "last error", "last_error", "error", "what", "why", "message",
                       "labels", "spec", "name"})
# Columns of names, cut next, in the middle: the end of an image is its tag, of a worker its number.
NAMES = frozenset({"image", "image/scenario", "target"})
COMFORTABLE_FREE = 40  # free text and names are cut to this before anything else changes
MIN_FREE = 16  # then, once columns are as close as they go, free text is cut to this
MIN_NAME = 12  # and names to this
MIN_LAST = 6  # then both to this
MIN_OTHER = 8  # and last any other column, widest first, to this (never below its header's
# words), before the table is printed as records
_GAP = 2  # two spaces between columns, as tabulate's "simple" format puts them; one when tight
_HEADER_PAD = 2  # and a column at least two wider than its header (tabulate.MIN_PADDING), until tight

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


def fit_widths(headers: list[str], rows: list[list[str]], width: int) -> tuple[list[int], int] | None:
    """Column widths and the gap between columns that fit `width`, losing as little as it can,
    in this order: the widest free-text column (reason, last error) is cut down to
    COMFORTABLE_FREE, then the next, then the names (image, target) likewise; then, losing
    nothing, columns stop being wider than their data for their headers' sake, headers wrap
    onto two lines (after `/` or at a space) and one space parts the columns instead of two;
    then free text is cut to MIN_FREE, names to MIN_NAME, both to MIN_LAST, and only then any
    other column, widest first, to MIN_OTHER. A header is never cut: no column gets narrower
    than the longest word of its header. None when even that does not fit (the table is then
    printed as records)."""
    count = len(headers)
    data = [max((text_width(row[i]) for row in rows if i < len(row)), default=0) for i in range(count)]
    head = [text_width(h) for h in headers]
    words = [max(text_width(w) for w in _header_words(h)) for h in headers]
    kinds = [h.strip().lower() for h in headers]
    free = [i for i in range(count) if kinds[i] in FREE_TEXT]
    names = [i for i in range(count) if kinds[i] in NAMES]
    others = [i for i in range(count) if i not in free and i not in names]
    widths = [max(head[i] + _HEADER_PAD, data[i]) for i in range(count)]
    gap = _GAP

    def excess() -> int:
        return sum(widths) + gap * (count - 1) - width

    def cut(columns: list[int], floor: int) -> None:
        """Cuts the widest of `columns` as far as `floor` and as far as needed, then the next."""
        for i in sorted(columns, key=lambda j: -widths[j]):
            over = excess()
            if over <= 0:
                return
            widths[i] -= max(min(over, widths[i] - max(floor, words[i])), 0)

    cut(free, COMFORTABLE_FREE)
    cut(names, COMFORTABLE_FREE)
    for header_width in (head, [_two_lines(h) for h in headers]):  # headers flush, then wrapped
        if excess() > 0:
            widths = [min(w, max(d, h)) for w, d, h in zip(widths, data, header_width, strict=True)]
    if excess() > 0:
        gap = 1
    cut(free, MIN_FREE)
    cut(names, MIN_NAME)
    cut(free, MIN_LAST)
    cut(names, MIN_LAST)
    while excess() > 0:  # the widest other column, down to the next widest, until it fits
        wide = [i for i in others if widths[i] > max(MIN_OTHER, words[i])]
        if not wide:
            return None
        i = max(wide, key=lambda j: widths[j])
        floor = max(MIN_OTHER, words[i], *(widths[j] for j in wide if j != i))
        widths[i] -= max(min(excess(), widths[i] - floor), 1)
    return widths, gap


def _two_lines(header: str) -> int:
    """The width of `header` written on two lines, broken where it reads best."""
    words = _header_words(header)
    best = text_width(header)
    for split in range(1, len(words)):
        first = "".join(w if w.endswith("/") else w + " " for w in words[:split]).rstrip()
        second = "".join(w if w.endswith("/") else w + " " for w in words[split:]).rstrip()
        best = min(best, max(text_width(first), text_width(second)))
    return best


_HEADER_BREAK = re.compile(r"(?<=/)|\s+")


def _header_words(header: str) -> list[str]:
    return [word for word in _HEADER_BREAK.split(header) if word] or [""]


def wrap_header(header: str, width: int) -> str:
    """`header` on as many lines as it needs to be `width` wide (`cpu/mem/` over `disk/gpu`)."""
    if text_width(header) <= width:
        return header
    lines: list[str] = []
    for word in _header_words(header):
        word = _cut(word, width)
        joined = lines[-1] + ("" if lines[-1].endswith("/") else " ") + word if lines else word
        if lines and text_width(joined) <= width:
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
    count = max(len(result.headers), *(len(row) for row in result.rows))
    headers = [_cell(h) for h in result.headers] + [""] * (count - len(result.headers))
    # Cells are stripped as tabulate strips them; a short row is filled with empty cells.
    rows = [[_cell(v).strip() for v in row] + [""] * (count - len(row)) for row in result.rows]
    fitted = None if vertical else fit_widths(headers, rows, width)
    if fitted is None:  # asked for, or too wide even cut: one record after another
        return _blocks(headers, rows, width, colour)
    return _columns(headers, rows, *fitted, colour)


def _columns(headers: list[str], rows: list[list[str]], widths: list[int], gap: int,
             colour: bool) -> str:
    """The table as tabulate's "simple" format lays it out (headers on top, a rule of dashes,
    left-aligned cells, no trailing spaces), in `widths` parted by `gap` spaces. Colour codes
    are added after the padding, so they never count as width."""
    space = " " * gap
    middle = {i for i, h in enumerate(headers) if h.strip().lower() in NAMES}
    painted = {i for i, h in enumerate(headers) if h.strip() in COLOURED_COLUMNS} if colour else set()
    wrapped = [wrap_header(h, w).split("\n") for h, w in zip(headers, widths, strict=True)]
    lines = []
    for n in range(max(len(header) for header in wrapped)):  # a wrapped header's lines, top down
        lines.append(space.join(_pad(header[n] if n < len(header) else "", w)
                                for header, w in zip(wrapped, widths, strict=True)).rstrip())
    lines.append(space.join("-" * w for w in widths))
    for row in rows:
        cells = []
        for i, (value, w) in enumerate(zip(row, widths, strict=True)):
            shown = _cut_middle(value, w) if i in middle else _cut(value, w)
            cells.append(_pad(shown, w, paint(shown, shown) if i in painted else shown))
        lines.append(space.join(cells).rstrip())
    return "\n".join(lines)


def _pad(text: str, width: int, shown: str | None = None) -> str:
    """`shown` (`text`, perhaps coloured) and the spaces that make `text` `width` columns wide."""
    return (text if shown is None else shown) + " " * (width - text_width(text))


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
