"""Operator controls: hold, release, retry, priority, drain. Each is one master operation,
journalled like every other change."""

from __future__ import annotations

import argparse

from cloudq.commands.registry import CommandParser, Context, Result, command
from cloudq.core.model import Priority, QueueClass


def _id_argument(parser: CommandParser) -> None:
    parser.add_argument("id", help="task id, e.g. t42")


@command("hold", "Park a queued or retrying task: it is not placed until `release ID`.",
         arguments=_id_argument, changes=True)
def hold_command(ctx: Context, args: argparse.Namespace) -> Result:
    task = ctx.master.hold(args.id)
    return Result(status=f"{task.id} held; `release {task.id}` queues it again",
                  data=ctx.master.view(task))


def _release_arguments(parser: CommandParser) -> None:
    parser.add_argument("target", metavar="ID|WORKER",
                        help="a held task, or a quarantined or draining worker")


@command("release", "Queue a held task again, or let a quarantined or draining worker take tasks.",
         arguments=_release_arguments, changes=True)
def release_command(ctx: Context, args: argparse.Namespace) -> Result:
    if ctx.master.release(args.target) == "worker":
        return Result(status=f"{args.target} takes tasks again")
    view = ctx.master.view(ctx.master.get(args.target))
    where = f" on {view['worker']}" if view.get("worker") else ""
    return Result(status=f"{args.target} released: {view['state']}{where}", data=view)


@command("retry", "Queue a failed, dead or cancelled task again, as a new attempt.",
         arguments=_id_argument, changes=True)
def retry_command(ctx: Context, args: argparse.Namespace) -> Result:
    task = ctx.master.retry(args.id)
    view = ctx.master.view(task)
    where = f" on {view['worker']}" if view.get("worker") else ""
    return Result(status=f"{task.id} retried: {view['state']}{where}", data=view)


def _priority_arguments(parser: CommandParser) -> None:
    _id_argument(parser)
    parser.add_argument("priority", choices=[p.value for p in Priority], help="the new priority")
    parser.add_argument("--queue", "-queue", choices=[q.value for q in QueueClass],
                        help="move it to this queue class too")


@command("priority", "Change a waiting task's priority (and queue class); a queued one is re-sorted.",
         arguments=_priority_arguments, changes=True)
def priority_command(ctx: Context, args: argparse.Namespace) -> Result:
    task = ctx.master.set_priority(args.id, args.priority, args.queue)
    return Result(status=f"{task.id} is now {task.queue}/{task.priority}", data=ctx.master.view(task))


def _worker_argument(parser: CommandParser) -> None:
    parser.add_argument("worker", help="worker name")


@command("drain", "Let a worker finish what it runs and give it nothing new.", arguments=_worker_argument,
         changes=True)
def drain_command(ctx: Context, args: argparse.Namespace) -> Result:
    ctx.master.drain_worker(args.worker)
    return Result(status=f"{args.worker} is draining; `release {args.worker}` undoes it")
