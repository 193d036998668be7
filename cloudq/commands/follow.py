"""Commands the front ends run again and again: `logs ID --follow` and `show ID --follow` (what
is new between two answers of the same command), and `watch COMMAND` (registered here; the
`master>` shell runs it, cloudq/shell/repeat.py).

The master answers each command once; following is the front end's loop (the shell runs the
command again through its read-only gate, `cloudq ctl` sends the same `call` again), every
POLL_S, until the task is in a final state. This module is that loop's memory, the same for
both: given each new Result, it says what to print and whether the task has ended.

A running task's log is a tail (the worker sends its last 4 KiB), not a stream: what is new
is the part of the new tail past its overlap with the one before. When the output moved more
than a whole tail between two answers, a line says that some output was skipped.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from cloudq.commands.registry import CommandParser, Context, Result, command
from cloudq.errors import ValidationError
from cloudq.render import neutralise, render_json_line

POLL_S = 0.5  # how often a follower asks again
FINAL_STATES = frozenset({"completed", "failed", "cancelled", "dead"})
EVENT_TIME_WIDTH = 18  # as `show` prints its events: under its longest field name
SKIPPED = "[... output skipped: it moved more than a tail between two reads ...]\n"


WATCH_DEFAULT_S = 2.0
WATCH_MIN_S, WATCH_MAX_S = 0.1, 86400.0


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a number of seconds") from None
    if not WATCH_MIN_S <= value <= WATCH_MAX_S:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"must be from {WATCH_MIN_S:g} to {WATCH_MAX_S:g} seconds")
    return value


def _watch_arguments(parser: CommandParser) -> None:
    parser.add_argument("--interval", "-interval", "-n", type=_seconds, default=WATCH_DEFAULT_S,
                        metavar="S", help=f"seconds between runs (default {WATCH_DEFAULT_S:g})")
    parser.add_argument("words", nargs=argparse.REMAINDER, metavar="COMMAND ...",
                        help="a command that only reads (queue, workers, show ID, status...), "
                             "with its options")


@command("watch", "Run a command that only reads again every few seconds, redrawn, until a key "
         "(shell only).", remote=False, arguments=_watch_arguments)
def watch_command(ctx: Context, args: argparse.Namespace) -> Result:
    # The shell runs `watch` itself (it owns the terminal); nothing else can.
    raise ValidationError("watch redraws the terminal: it works only in the master> shell")


def add_follow_argument(parser: CommandParser, what: str) -> None:
    parser.add_argument("--follow", "-follow", "-f", action="store_true",
                        help=f"{what} until the task ends (Ctrl-C stops following; in the "
                             f"shell, any key too)")


def following(args: Any) -> bool:
    return bool(getattr(args, "follow", False))


def new_output(before: str, now: str) -> str:
    """What `now` (a later tail of the same output) adds to `before`. Where output repeats
    itself, the smallest move that explains both is taken: nothing is printed twice."""
    if now.startswith(before):
        return now[len(before):]
    if before and (found := now.rfind(before)) >= 0:  # a longer tail (the result's, at the end)
        return now[found + len(before):]
    for start in range(1, len(before)):  # the longest end of `before` that `now` begins with
        if now.startswith(before[start:]):
            return now[len(before) - start:]
    return SKIPPED + now


@dataclass
class Update:
    """One step of a follow: text for the terminal (`raw` when it is the task's bytes as they
    are, not neutralised yet), the same as JSON data, and whether the task has ended."""

    text: str
    data: Any
    ended: bool
    state: str = ""


@dataclass
class LogFollower:
    """Feeds on `logs ID` Results ({"id", "state", "log"}); yields what is new."""

    _log: str | None = None

    def step(self, result: Result) -> Update:
        data = result.data or {}
        log, state = str(data.get("log") or ""), str(data.get("state") or "")
        added = log if self._log is None else new_output(self._log, log)
        self._log = log
        return Update(added, {"id": data.get("id"), "state": state, "log": added},
                      state in FINAL_STATES, state)


@dataclass
class ShowFollower:
    """Feeds on `show ID` Results; the first is shown whole, then each new event as a line."""

    _seen: set[tuple[Any, ...]] | None = None
    _state: str = field(default="")

    def step(self, result: Result) -> tuple[Result | None, Update]:
        """The whole Result to print (the first time), and the update of the new events."""
        view = result.data or {}
        events = view.get("events") or []
        keys = [(e.get("time"), e.get("src"), e.get("dst"), e.get("reason")) for e in events]
        state = str(view.get("state") or "")
        first = self._seen is None
        fresh = [] if first else [e for e, k in zip(events, keys, strict=True) if k not in (self._seen or set())]
        self._seen = set(keys)
        changed = first or bool(fresh) or state != self._state
        self._state = state
        lines = "".join(f"{event_line(e)}\n" for e in fresh)
        update = Update(lines, view if changed else None, state in FINAL_STATES, state)
        return (result if first else None), update


def event_line(event: dict[str, Any]) -> str:
    when = time.strftime("%H:%M:%S", time.localtime(float(event.get("time") or 0)))
    return f"{when:<{EVENT_TIME_WIDTH}}  {event.get('src')} -> {event.get('dst')}: {event.get('reason')}"


def poll(fetch: Callable[[], Result], wait: Callable[[float], bool],
         interval: float = POLL_S) -> Iterator[Result]:
    """`fetch()` now, then again every `interval` until `wait` says to stop (it returns True
    when the operator pressed a key) or the consumer stops asking."""
    while True:
        yield fetch()
        if wait(interval):
            return


def follow_logs(fetch: Callable[[], Result], wait: Callable[[float], bool], out: TextIO, *,
                as_json: bool = False, raw: bool = False) -> Update | None:
    """Prints a task's output as it comes, until the task ends or `wait` says stop; returns the
    last update (None if there was none). Text is neutralised unless `raw`; `as_json` prints a
    JSON line `{"id", "state", "log"}` per answer that brought something new."""
    follower = LogFollower()
    last: Update | None = None
    open_line = False
    for result in poll(fetch, wait):
        update = follower.step(result)
        if as_json:
            if update.text or update.ended or last is None:
                out.write(render_json_line(update.data) + "\n")
        elif update.text:
            out.write(update.text if raw else neutralise(update.text))
            open_line = not update.text.endswith("\n")
        out.flush()
        last = update
        if update.ended:
            break
    if open_line and not raw:
        out.write("\n")
    return last


def follow_show(fetch: Callable[[], Result], wait: Callable[[float], bool], out: TextIO,
                render_whole: Callable[[Result], str], *, as_json: bool = False) -> Update | None:
    """Prints the task whole, then each event as it happens, until the task ends or `wait` says
    stop; `as_json` prints the task record as a JSON line each time it changed state."""
    follower = ShowFollower()
    last: Update | None = None
    for result in poll(fetch, wait):
        whole, update = follower.step(result)
        if as_json:
            if update.data is not None:
                out.write(render_json_line(update.data) + "\n")
        elif whole is not None:
            out.write(render_whole(whole) + "\n")
        else:
            out.write(neutralise(update.text))
        out.flush()
        last = update
        if update.ended:
            break
    return last


def end_line(task_id: str, last: Update | None) -> str:
    """What a follow says when it stops: the task ended, or the operator stopped following."""
    if last is not None and last.ended:
        return f"{task_id} is {last.state}"
    return f"stopped following {task_id} (the task goes on)"
