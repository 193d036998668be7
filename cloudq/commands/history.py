"""`events`: what happened, newest last: every move of every task, what a task was blocked on,
and what happened to workers (joined, lost, quarantined, draining, released, forgotten); the
same events `--audit-log` writes. Filtered by task, worker and time."""

from __future__ import annotations

import argparse
import re
import time
from typing import Any

from cloudq.commands.registry import CommandParser, Context, Result, command, whole_number
from cloudq.errors import ValidationError

EVENT_COLUMNS = ["time", "task", "move", "worker", "attempt", "reason"]
_AGO = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_CLOCK = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}))?$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_UNIX = 1e9  # a number this large is a Unix time, not seconds ago


def since_time(text: str, now: float) -> float:
    """--since: `90`, `90s`, `5m`, `2h`, `1d` ago; a clock time today (`12:01`, `12:01:33`,
    yesterday if that is still to come); or Unix seconds."""
    text = text.strip()
    if match := _AGO.match(text):
        value = float(match.group(1))
        return value if value >= _UNIX and not match.group(2) else now - value * _UNIT_S[match.group(2)]
    if match := _CLOCK.match(text):
        hour, minute, second = int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)
        if hour > 23 or minute > 59 or second > 59:
            raise ValidationError(f"--since {text}: not a time of day")
        today = time.localtime(now)
        moment = time.mktime((today.tm_year, today.tm_mon, today.tm_mday, hour, minute, second,
                              0, 0, -1))
        return moment - 86400 if moment > now else moment
    raise ValidationError(f"--since {text[:40]!r}: give seconds ago (90, 5m, 2h, 1d), a time of "
                          f"day (12:01:33) or Unix seconds")


def _events_arguments(parser: CommandParser) -> None:
    parser.add_argument("id", nargs="?", help="only this task id")
    parser.add_argument("--worker", "-worker", help="only events on this worker")
    parser.add_argument("--since", "-since", help="only after: 5m, 2h, 12:01:33, or Unix seconds")
    parser.add_argument("--limit", "-limit", type=whole_number(1, 100_000), default=100,
                        help="at most this many, the newest (default 100)")


@command("events", "The audit log: every move of every task and every worker change, newest last.",
         arguments=_events_arguments)
def events_command(ctx: Context, args: argparse.Namespace) -> Result:
    since = since_time(args.since, ctx.master.clock()) if args.since else None
    events = ctx.master.events_since(args.id, args.worker, since, args.limit)
    rows = [_row(event.to_dict()) for event in events]
    what = " ".join(part for part in (
        args.id and f"of {args.id}", args.worker and f"on {args.worker}",
        args.since and f"since {args.since}") if part)
    return Result(title=f"{len(rows)} events" + (f" {what}" if what else ""),
                  headers=EVENT_COLUMNS, rows=rows, data=[e.to_dict() for e in events])


def _row(event: dict[str, Any]) -> list[Any]:
    # A note keeps its state (blocked, a new priority); a worker's own event has no task.
    move = event["dst"] if event["src"] in (event["dst"], "") else f"{event['src']} -> {event['dst']}"
    return [time.strftime("%H:%M:%S", time.localtime(event["time"])), event["task"], move,
            event["worker"] or "", event["attempt"], event["reason"]]
