"""The bottom toolbar: the cluster at a glance, under the prompt, redrawn every second.

It formats the watcher's last Figures (live.py) and never reads the master itself, so a
redraw costs nothing however busy the master is. Workers down, dead tasks and a stale read
are shown in the toolbar's warning colours.
"""

from __future__ import annotations

import time

from prompt_toolkit.formatted_text import FormattedText

from cloudq.shell.live import Figures
from cloudq.shell.notices import duration

REFRESH_S = 1.0
STALE_S = 5.0  # figures older than this are marked as such


def toolbar(figures: Figures, notices: str, now: float | None = None,
            columns: int = 200) -> FormattedText:
    """The toolbar for a terminal `columns` wide: the notices mode is left out when it would
    not fit, so the counts always show whole."""
    now = time.time() if now is None else now
    wait = "-"
    if figures.oldest_wait_s is not None and figures.queued:
        wait = duration(figures.oldest_wait_s + max(now - figures.at, 0.0))
    down = figures.workers_up < figures.workers_total
    parts: list[tuple[str, str]] = [
        ("class:bottom-toolbar.warn" if down or not figures.workers_total else "",
         f" workers {figures.workers_up}/{figures.workers_total} up"),
        ("", f" | running {figures.running} | queued {figures.queued} | held {figures.held}"),
        ("", " | "),
        ("class:bottom-toolbar.error" if figures.dead else "", f"dead {figures.dead}"),
        ("", f" | oldest wait {wait}"),
        ("", f" | notices {notices} "),
    ]
    if sum(len(text) for _, text in parts) > columns:
        parts[-1] = ("", " ")
    if figures.error or (figures.at and now - figures.at > STALE_S):
        parts.append(("class:bottom-toolbar.error", f" (as of {time.strftime('%H:%M:%S', time.localtime(figures.at))}) "))
    return FormattedText(parts)


STYLE = {
    "bottom-toolbar": "noreverse bg:#303030 #d0d0d0",
    "bottom-toolbar.warn": "bg:#303030 #ffd75f bold",
    "bottom-toolbar.error": "bg:#303030 #ff5f5f bold",
}
