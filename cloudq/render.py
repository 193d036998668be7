"""The one renderer: every command's Result becomes text (tabulate) or JSON here."""

from __future__ import annotations

import json
import shutil
from typing import Any

from tabulate import tabulate

from cloudq.commands.registry import Result


def render(result: Result, width: int | None = None) -> str:
    width = width or shutil.get_terminal_size((120, 40)).columns
    parts = [result.title] if result.title else []
    if result.rows:
        parts.append(_table(result, width))
    if result.status:
        parts.append(result.status)
    return "\n".join(parts)


def _table(result: Result, width: int) -> str:
    if result.vertical:
        return tabulate([[str(k), _short(v, width - 24)] for k, v in result.rows], tablefmt="plain")
    text = tabulate(result.rows, headers=result.headers, tablefmt="simple")
    if max(len(line) for line in text.splitlines()) <= width:
        return text
    # Too wide for the terminal: one record after another, as `key  value` lines.
    blocks = []
    for row in result.rows:
        pairs = [[h, _short(v, width - 16)] for h, v in zip(result.headers, row, strict=False)]
        blocks.append(tabulate(pairs, tablefmt="plain"))
    return "\n\n".join(blocks)


def _short(value: Any, limit: int) -> str:
    text = str(value)
    return text if len(text) <= max(limit, 20) else text[: max(limit, 20) - 1] + "…"


def render_json(result: Result) -> str:
    return json.dumps(result.data, indent=2, default=str)
