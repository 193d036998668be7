"""Commands about the cluster: workers, locks, status, help, quit."""

from __future__ import annotations

import argparse
import time
from typing import Any

from cloudq.commands.registry import COMMANDS, CommandParser, Context, Result, command, lookup

WORKER_COLUMNS = ["name", "status", "cpu", "memory", "gpus", "tasks", "labels", "seen"]


def _workers_arguments(parser: CommandParser) -> None:
    parser.add_argument("name", nargs="?", help="one worker, in detail")


@command("workers", "Workers, their free capacity and what they run; `workers NAME` for one in detail.",
         aliases=("nodes",), arguments=_workers_arguments)
def workers_command(ctx: Context, args: argparse.Namespace) -> Result:
    if args.name:
        return _worker_detail(ctx.master.worker_detail(args.name))
    views = ctx.master.worker_views()
    now = time.time()
    rows = [[
        w["name"], w["status"],
        f"{w['cpu_free']:g}/{w['cpu_cores']:g}",
        f"{w['mem_free_gb']:g}/{w['mem_gb']:g} GB",
        f"{w['gpus_free']}/{w['gpus']}",
        f"{w['tasks']}/{w['max_tasks']}",
        ",".join(f"{k}={v}" for k, v in w["labels"].items()),
        _seen(w["last_seen"], now),
    ] for w in views]
    return Result(title=f"{len(views)} workers", headers=WORKER_COLUMNS, rows=rows, data=views)


def _worker_detail(w: dict[str, Any]) -> Result:
    rows: list[list[Any]] = [
        ["status", w["status"] + (f" ({', '.join(w['flags'])})" if w["flags"] else "")],
        ["host", w["host"]],
        ["cpu free/total", f"{w['cpu_free']:g}/{w['cpu_cores']:g} cores"],
        ["memory free/total", f"{w['mem_free_gb']:g}/{w['mem_gb']:g} GB"],
        ["storage free/total", f"{w['storage_free_gb']:g}/{w['storage_gb']:g} GB"],
        ["gpus free/total", f"{w['gpus_free']}/{w['gpus']}"],
        ["tasks", f"{w['tasks']}/{w['max_tasks']}"],
        ["labels", ", ".join(f"{k}={v}" for k, v in w["labels"].items())],
        ["capabilities", ", ".join(w["capabilities"])],
        ["last heartbeat", _seen(w["last_seen"], time.time())],
        ["consecutive failures", w["consecutive_failures"]],
    ]
    if w["quarantine_reason"]:
        rows.append(["quarantine reason", w["quarantine_reason"]])
    for gpu in w["gpu_devices"]:
        rows.append([f"gpu {gpu['index']}", _gpu_line(gpu)])
    for task in w["running_tasks"]:
        rows.append([f"task {task['id']}", f"{task['state']} {task['kind']} attempt {task['attempt']}, "
                     f"{task['cpu_cores']:g} cores, {task['mem_gb']:g} GB, {task['gpus']} GPUs"
                     + (f", {task['name']}" if task["name"] else "")])
    return Result(title=f"Worker {w['name']}", headers=["field", "value"], rows=rows, data=w,
                  vertical=True)


def _gpu_line(gpu: dict[str, Any]) -> str:
    parts = [str(gpu.get("name") or "GPU"), "free" if gpu["free"] else "booked"]
    if gpu.get("mem_gb") is not None:
        used = gpu.get("mem_used_gb")
        parts.append(f"{used:g}/{gpu['mem_gb']:g} GB used" if used is not None else f"{gpu['mem_gb']:g} GB")
    for key, unit in (("util_percent", "% busy"), ("temperature_c", " C"), ("power_w", " W")):
        if gpu.get(key) is not None:
            parts.append(f"{gpu[key]:g}{unit}")
    return ", ".join(parts)


def _seen(last_seen: float, now: float) -> str:
    return f"{max(now - last_seen, 0):.0f}s ago" if last_seen else "never"


@command("locks", "Named locks: who holds each (task and worker) and who waits, in order.")
def locks_command(ctx: Context, args: argparse.Namespace) -> Result:
    locks = ctx.master.lock_views()
    rows = [[
        lock["name"], lock["limit"] if lock["limit"] is not None else "",
        ", ".join(f"{h['task']} on {h['worker']}" if h["worker"] else h["task"] for h in lock["holders"]),
        lock["waiting"],
        ", ".join(lock["waiters"][:10]) + (" ..." if lock["waiting"] > 10 else ""),
    ] for lock in locks]
    return Result(title=f"{len(locks)} locks", headers=["lock", "limit", "holders", "waiting", "next"],
                  rows=rows, data=locks)


@command("status", "Cluster summary: tasks by state, workers, queue, store.")
def status_command(ctx: Context, args: argparse.Namespace) -> Result:
    summary = ctx.master.summary()
    rows = [[key, value] for key, value in summary.items() if not isinstance(value, dict)]
    rows += [[f"tasks {state}", count] for state, count in summary["tasks"].items() if count]
    rows += [[f"workers {status}", count] for status, count in summary["workers"].items() if count]
    rows += [[f"store {key.replace('_', ' ')}", value] for key, value in summary["store"].items()
             if value is not None]
    if "leadership" in summary:
        rows += _leadership_rows(summary["leadership"])
    return Result(title="cloudq status", headers=["", ""], rows=rows, data=summary, vertical=True)


def _leadership_rows(leadership: dict[str, Any]) -> list[list[Any]]:
    """Masters sharing a store: this one's role and epoch, then each master seen."""
    rows: list[list[Any]] = [["role", leadership["role"]], ["epoch", leadership["epoch"]]]
    for seen in leadership["masters"]:
        this = ", this one" if seen["self"] else f", seen {seen['seen_s_ago']:g}s ago"
        rows.append([f"master {seen['address']}", f"{seen['role']} (epoch {seen['epoch']}{this})"])
    return rows


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


@command("quit", "Leave the shell and stop the master.", aliases=("exit",), remote=False,
         changes=True)
def quit_command(ctx: Context, args: argparse.Namespace) -> Result:
    raise SystemExit(0)

