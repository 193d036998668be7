"""Commands about the cluster: workers, release, status, help, quit."""

from __future__ import annotations

import argparse
import time

from cloudq.commands.registry import COMMANDS, CommandParser, Context, Result, command, lookup

WORKER_COLUMNS = ["name", "status", "cpu", "memory", "gpus", "tasks", "labels", "seen"]


@command("workers", "Workers, their free capacity and what they run.", aliases=("nodes",))
def workers_command(ctx: Context, args: argparse.Namespace) -> Result:
    views = ctx.master.worker_views()
    now = time.time()
    rows = [[
        w["name"], w["status"],
        f"{w['cpu_free']:g}/{w['cpu_cores']:g}",
        f"{w['mem_free_gb']:g}/{w['mem_gb']:g} GB",
        f"{w['gpus_free']}/{w['gpus']}",
        f"{w['tasks']}/{w['max_tasks']}",
        ",".join(f"{k}={v}" for k, v in w["labels"].items()),
        f"{max(now - w['last_seen'], 0):.0f}s ago" if w["last_seen"] else "never",
    ] for w in views]
    return Result(title=f"{len(views)} workers", headers=WORKER_COLUMNS, rows=rows, data=views)


def _worker_argument(parser: CommandParser) -> None:
    parser.add_argument("worker", help="worker name")


@command("release", "Let a quarantined or draining worker take tasks again.", arguments=_worker_argument)
def release_command(ctx: Context, args: argparse.Namespace) -> Result:
    ctx.master.release_worker(args.worker)
    return Result(status=f"{args.worker} takes tasks again")


@command("drain", "Let a worker finish what it runs and give it nothing new.", arguments=_worker_argument)
def drain_command(ctx: Context, args: argparse.Namespace) -> Result:
    ctx.master.drain_worker(args.worker)
    return Result(status=f"{args.worker} is draining; `release {args.worker}` undoes it")


@command("status", "Cluster summary: tasks by state, workers, queue, store.")
def status_command(ctx: Context, args: argparse.Namespace) -> Result:
    summary = ctx.master.summary()
    rows = [[key, value] for key, value in summary.items() if not isinstance(value, dict)]
    rows += [[f"tasks {state}", count] for state, count in summary["tasks"].items() if count]
    rows += [[f"workers {status}", count] for status, count in summary["workers"].items() if count]
    rows += [[f"store {key.replace('_', ' ')}", value] for key, value in summary["store"].items()
             if value is not None]
    return Result(title="cloudq status", headers=["", ""], rows=rows, data=summary, vertical=True)


def _help_arguments(parser: CommandParser) -> None:
    parser.add_argument("topic", nargs="?", help="a command name")


@command("help", "List commands, or show one command's options.", aliases=("?",),
         arguments=_help_arguments)
def help_command(ctx: Context, args: argparse.Namespace) -> Result:
    if args.topic:
        cmd = lookup(args.topic)
        return Result(title=cmd.name, status=cmd.parser.format_help().strip(),
                      data={"name": cmd.name, "help": cmd.help, "usage": cmd.usage})
    rows = [[cmd.name, ", ".join(cmd.aliases), cmd.help] for cmd in sorted(COMMANDS.values(),
                                                                           key=lambda c: c.name)]
    return Result(title="Commands (help NAME for options)", headers=["command", "aliases", "what"],
                  rows=rows, data=[{"name": r[0], "aliases": r[1], "help": r[2]} for r in rows])


@command("quit", "Leave the shell and stop the master.", aliases=("exit",), remote=False)
def quit_command(ctx: Context, args: argparse.Namespace) -> Result:
    raise SystemExit(0)

