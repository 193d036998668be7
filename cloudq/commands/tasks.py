"""Commands about tasks: task, submit, show, why, cancel, logs, queue."""

from __future__ import annotations

import argparse
import time
from collections import Counter
from typing import Any

from cloudq.commands.columns import QUEUE_COLUMNS, cell
from cloudq.commands.follow import add_follow_argument
from cloudq.commands.pages import next_page, task_listing
from cloudq.commands.registry import COMMANDS, CommandParser, Context, Result, command, whole_number
from cloudq.commands.task_syntax import add_task_arguments, parse_submit_line, request_from_args
from cloudq.commands.workflows import group_result
from cloudq.core.model import (
    MAX_ARRAY,
    QueueClass,
    TaskState,
    expand_array,
    group_kind,
    is_group_id,
)
from cloudq.errors import ValidationError

SUBMIT_COLUMNS = ["id", "name", "state", "worker"]
ACTIVE_ORDER = ("running", "assigned", "queued", "retrying", "held")
MAX_LIMIT = 10_000_000  # rows one `queue` may ask for: more tasks than a master holds
MAX_NAMED = 3  # ids a batch's warning names (the tasks no worker can ever run)


def _task_arguments(parser: CommandParser) -> None:
    add_task_arguments(parser)
    parser.add_argument("--dry-run", "-dry-run", "--dry_run", "-dry_run", action="store_true",
                        dest="dry_run", help="say where it would go and why not; submit nothing")
    parser.add_argument("--count", "-count", type=whole_number(1, MAX_ARRAY), metavar="N",
                        help="an array of N tasks; {index} (0 to N-1) is put in the command, name "
                             "and output")
    parser.add_argument("--wait", "-wait", action="store_true",
                        help="then wait until it (or the array) has ended, as `wait` does")
    parser.add_argument("--max-running", "-max-running", "--max_running", "-max_running",
                        dest="max_running", type=whole_number(1, MAX_ARRAY), metavar="K",
                        help="with --count: at most K of the array run at once")


@command("task", "Submit one task: a container image, --scenario, --exec or --noop.",
         arguments=_task_arguments, changes=True)
def task_command(ctx: Context, args: argparse.Namespace) -> Result:
    request = request_from_args(args)
    if args.max_running is not None and args.count is None:
        raise ValidationError("--max-running caps an array: give --count N too")
    if args.dry_run:
        return _dry_run(ctx.master.dry_run(expand_array(request, args.count or 1)[0]))
    if args.count is not None:
        return _array(ctx, request, args.count, args.max_running)
    (task,) = ctx.master.submit([request])
    view = ctx.master.view(task)
    return Result(status=submit_reply(view), data=view)


def _wait_arguments(parser: CommandParser) -> None:
    parser.add_argument("ids", nargs="+", metavar="ID", help="task ids")
    parser.add_argument("--timeout", "-timeout", type=float, metavar="S",
                        help="give up after S seconds (cloudq ctl: exit status 2)")


FOREVER_S = 366 * 86400.0


@command("wait", "Wait until tasks have ended; cloudq ctl exits 0 if all completed, 1 if one did "
         "not, 2 on --timeout.", arguments=_wait_arguments)
def wait_command(ctx: Context, args: argparse.Namespace) -> Result:
    """In the master's own shell: waits here (Ctrl-C stops waiting, not the tasks). `cloudq ctl`
    and the remote shell wait through cloudq.Client.wait instead, one bounded call at a time."""
    answer = ctx.master.wait_ended(args.ids, FOREVER_S if args.timeout is None else args.timeout)
    views = [answer["ended"].get(i) or ctx.master.view(ctx.master.get(i)) for i in args.ids]
    result = ended_result(views)
    if answer["waiting"]:
        result.status = (f"{len(answer['waiting'])} still going after {args.timeout:g}s: "
                         f"{', '.join(answer['waiting'][:10])}")
    return result


def ended_result(views: list[dict[str, Any]]) -> Result:
    """What `wait` prints: each task's state, worker, attempt and last error."""
    rows = [[v["id"], v["name"], v["state"], v.get("worker") or "", v.get("attempt"),
             v.get("last_error") or ""] for v in views]
    done = sum(1 for v in views if v["state"] == "completed")
    return Result(title=f"{done} of {len(views)} completed",
                  headers=["id", "name", "state", "worker", "attempt", "last error"], rows=rows,
                  data=views if len(views) > 1 else views[0])


def _array(ctx: Context, request: dict[str, Any], count: int, max_running: int | None) -> Result:
    array, tasks = ctx.master.submit_array(request, count, max_running)
    ids = tasks[0].id if count == 1 else f"{tasks[0].id} to {tasks[-1].id}"
    cap = f", at most {max_running} running at once" if max_running else ""
    states = ", ".join(f"{n} {state}" for state, n in Counter(t.state.value for t in tasks).items())
    return Result(status=f"Array {array}: {count} tasks, {ids}{cap} ({states}). `show {array}` follows it.",
                  data={"array": array, "tasks": [task.id for task in tasks], "max_running": max_running})


def submit_reply(view: dict[str, Any]) -> str:
    """What `task` answers, in the operator's words: where the task went, or why it waits and
    what it waits for, and a warning when no registered worker could ever run it."""
    state, task_id = view["state"], view["id"]
    if state == "pending" and view.get("reason"):  # waits for other tasks
        return f"Task {task_id} pending: {view['reason']}. It is queued when they end."
    if state != "queued":
        where = f" {'to' if state == 'assigned' else 'on'} {view['worker']}" if view.get("worker") else ""
        return f"Task {task_id} {state}{where}."
    reason = view.get("reason") or "Waiting for the next placement pass"
    line = f"Task {task_id} queued: {reason.rstrip('.')}. {_waits_for(view, reason)}"
    if view.get("never_fits"):
        line += "\n" + never_fits_warning([view], 1)
    return line


def never_fits_warning(misfits: list[dict[str, Any]], submitted: int) -> str:
    """The warning about tasks just submitted that no registered worker can ever run (views
    with `never_fits`, in order): how many, the first few ids, and why the first cannot run."""
    first = misfits[0]
    if submitted == 1:
        return (f"Warning: no registered worker can ever run it as asked: {first['never_fits']}. "
                f"Cancel it and ask for less, or add a worker that big.")
    if len(misfits) == 1:
        return (f"Warning: no registered worker can ever run {first['id']} as asked: "
                f"{first['never_fits']}. Cancel it and ask for less, or add a worker that big.")
    ids = ", ".join(view["id"] for view in misfits[:MAX_NAMED])
    ids += ", ..." if len(misfits) > MAX_NAMED else ""
    which = (f"all {submitted} tasks" if len(misfits) == submitted
             else f"{len(misfits)} of the {submitted} tasks")
    return (f"Warning: no registered worker can ever run {which} as asked ({ids}); {first['id']}: "
            f"{first['never_fits']}. Cancel them and ask for less, or add a worker that big.")


def _waits_for(view: dict[str, Any], reason: str) -> str:
    target = view.get("target_worker")
    if target and reason == f"{target} has not registered":
        return f"Will be assigned when {target} registers."
    if target and reason.startswith(f"{target} is "):
        return f"Will be assigned when {target} takes tasks again."
    if reason.startswith("Lock "):
        return "Will be assigned when the lock is free."
    if reason == "No workers available":
        return "Will be assigned when a worker registers."
    return "Will be assigned when resources become available."


def _dry_run(answer: dict[str, Any]) -> Result:
    rows = [[name, "->" if name == answer["would_go_to"] else "", verdict]
            for name, verdict in answer["workers"].items()]
    status = answer["summary"] + "."
    if answer["never_fits"]:
        status += f"\nNo registered worker can ever run it as asked: {answer['never_fits']}."
    return Result(title="Dry run: nothing was submitted", headers=["worker", "", "verdict"],
                  rows=rows, status=status, data=answer)


def _submit_arguments(parser: CommandParser) -> None:
    parser.add_argument("file", help="one task per line: `task` arguments or a JSON object")


@command("submit", "Submit every task in FILE in one batch; replies with their ids.",
         file_args=("file",), arguments=_submit_arguments, changes=True)
def submit_command(ctx: Context, args: argparse.Namespace) -> Result:
    parser = COMMANDS["task"].parser
    requests = []
    for number, line in enumerate(ctx.read_file(args.file).splitlines(), start=1):
        ctx.check_interrupted()  # a long file: Ctrl-C stops here, before anything is submitted
        try:
            request = parse_submit_line(line, parser)
        except (ValidationError, ValueError) as err:
            raise ValidationError(f"{args.file} line {number}: {err}") from None
        if request is not None:
            requests.append(request)
    if not requests:
        raise ValidationError(f"{args.file} has no tasks")
    ctx.note(f"submitting {len(requests)} tasks from {args.file}")
    tasks = ctx.master.submit(requests)
    ids = tasks[0].id if len(tasks) == 1 else f"{tasks[0].id} to {tasks[-1].id}"
    result = task_listing(ctx, [t.id for t in tasks], SUBMIT_COLUMNS, f"Submitted {len(tasks)} tasks",
                          f"ids {ids}")
    misfits = _never_fitting(ctx, tasks, result.data)
    if misfits:
        result.status += "\n" + never_fits_warning(misfits, len(tasks))
    return result


def _never_fitting(ctx: Context, tasks: list[Any], views: list[dict[str, Any]]
                   ) -> list[dict[str, Any]]:
    """Views of the tasks just submitted that no registered worker can ever run, in order. The
    listing's views are used where it has them (all of them in the shell, the first page over
    RPC); only a task still queued can be one."""
    known = {view["id"]: view for view in views}
    misfits = []
    for task in tasks:
        view = known.get(task.id)
        if view is None and task.state is TaskState.QUEUED:
            view = ctx.master.view(task)
        if view is not None and view.get("never_fits"):
            misfits.append(view)
    return misfits


def _id_argument(parser: CommandParser) -> None:
    parser.add_argument("id", help="task id, e.g. t42")


def _task_or_workflow(parser: CommandParser) -> None:
    parser.add_argument("id", help="task id (t42), workflow id (wf40) or array id (ar30)")


def _show_arguments(parser: CommandParser) -> None:
    _task_or_workflow(parser)
    add_follow_argument(parser, "then print each change of state as it happens,")


@command("show", "Everything about one task, with its last events.", aliases=("info",),
         arguments=_show_arguments)
def show_command(ctx: Context, args: argparse.Namespace) -> Result:
    if is_group_id(args.id):
        return group_result(ctx.master.group_view(args.id))
    task = ctx.master.get(args.id)
    view = ctx.master.view(task)
    view["events"] = [e.to_dict() for e in ctx.master.story(task.id)]
    rows = [[key, _when(view[key], full=True) if key.endswith("_at") and view[key] else cell(view[key])]
            for key in view if key not in ("events", "spec", "result")]
    rows.append(["spec", cell(view["spec"])])
    if view.get("result"):
        rows.append(["result", cell({k: v for k, v in view["result"].items() if k != "log_tail"})])
        rows += output_rows(view["result"].get("output"), view.get("worker"))
    rows += [[_when(e["time"]), f"{e['src']} -> {e['dst']}: {e['reason']}"] for e in view["events"][-10:]]
    return Result(title=f"Task {task.id}", headers=["field", "value"], rows=rows, data=view,
                  vertical=True)


def output_rows(output: Any, worker: str | None) -> list[list[str]]:
    """What a task's result says of the file it wrote, its quality scores and its kept task
    directory, one line each (the worker's figures: anything may be missing)."""
    if not isinstance(output, dict):
        return []
    rows = []
    if isinstance(path := output.get("path"), str):
        where = output.get("host_path")
        facts = [f"{path}" + (f" ({where} on {worker or 'its worker'})" if where else "")]
        if isinstance(size := output.get("size_bytes"), int):
            facts.append(f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size} bytes")
        if isinstance(seconds := output.get("duration_s"), int | float):
            facts.append(f"{seconds:.2f} s")
        video = " ".join(str(x) for x in (output.get("codec"), output.get("resolution")) if x)
        facts += [video] if video else []
        if isinstance(rate := output.get("bitrate_kbps"), int | float):
            facts.append(f"{rate:g} kbit/s")
        if isinstance(speed := output.get("encode_speed"), int | float):
            facts.append(f"encoded at {speed:g}x")
        rows.append(["output", ", ".join(facts)])
    scores = output.get("quality")
    if isinstance(scores, dict) and scores:
        units = {"psnr": " dB"}
        rows.append(["quality", ", ".join(f"{metric} {value:g}{units.get(metric, '')}"
                                          for metric, value in scores.items()
                                          if isinstance(value, int | float))])
    if isinstance(kept := output.get("task_dir"), str):
        rows.append(["task dir", f"{kept} on {worker or 'its worker'} (kept)"])
    return rows


@command("why", "Why a task is waiting: the reason for every worker.", arguments=_id_argument)
def why_command(ctx: Context, args: argparse.Namespace) -> Result:
    answer = ctx.master.why(args.id)
    rows = [[name, reason] for name, reason in answer["workers"].items()]
    status = answer["summary"]
    if answer.get("never_fits"):
        status += f"\nNo registered worker can ever run it as asked: {answer['never_fits']}"
    return Result(title=f"{answer['task']} is {answer['state']}", headers=["worker", "reason"],
                  rows=rows, status=status, data=answer)


@command("cancel", "Cancel a task, or what has not ended of a workflow or array; a running one is "
         "killed on its worker.", arguments=_task_or_workflow,
         changes=True)
def cancel_command(ctx: Context, args: argparse.Namespace) -> Result:
    if is_group_id(args.id):
        tasks = ctx.master.cancel_group(args.id)
        ids = ", ".join(task.id for task in tasks[:20]) + (", ..." if len(tasks) > 20 else "")
        return Result(status=f"{group_kind(args.id)} {args.id}: cancelled {ids or 'nothing: every task had ended'}",
                      data=[ctx.master.view(task) for task in tasks])
    task = ctx.master.cancel(args.id)
    return Result(status=f"{task.id} cancelled", data=ctx.master.view(task))


def _logs_arguments(parser: CommandParser) -> None:
    _id_argument(parser)
    parser.add_argument("--raw", "-raw", action="store_true",
                        help="print the output as it is, control characters included (for a file)")
    add_follow_argument(parser, "then print the output as it comes,")


@command("logs", "The tail of a task's output.", arguments=_logs_arguments)
def logs_command(ctx: Context, args: argparse.Namespace) -> Result:
    # The state first: a task seen ended has its whole tail in its result by then, so the
    # last answer of a follow (`--follow` repeats this command) has all of its output.
    state = ctx.master.get(args.id).state.value
    text = ctx.master.log_tail(args.id)
    data = {"id": args.id, "state": state, "log": text}
    if args.raw:
        return Result(status=text, data=data, raw=True)
    return Result(status=text or f"{args.id} has no output yet", data=data)


def _queue_arguments(parser: CommandParser) -> None:
    parser.add_argument("--state", "-state", choices=[s.value for s in TaskState],
                        help="only tasks in this state (default: everything not finished)")
    parser.add_argument("--worker", "-worker", help="only tasks on this worker or pinned to it")
    parser.add_argument("--queue", "-queue", choices=[q.value for q in QueueClass],
                        help="only tasks of this queue class")
    parser.add_argument("--owner", "-owner", help="only tasks of this owner")
    parser.add_argument("--name", "-name", help="only tasks whose name matches (a glob: enc-*)")
    parser.add_argument("--array", "-array", "--workflow", "-workflow", dest="group", metavar="ID",
                        help="only the tasks of this array (arN) or workflow (wfN)")
    parser.add_argument("--limit", "-limit", type=whole_number(1, MAX_LIMIT), default=200,
                        help=f"at most this many rows (1 to {MAX_LIMIT})")
    # The next page of a long listing (cloudq ctl follows these by itself).
    parser.add_argument("--cursor", help=argparse.SUPPRESS)
    parser.add_argument("--offset", type=whole_number(0, MAX_LIMIT), default=0, help=argparse.SUPPRESS)


@command("queue", "Tasks waiting and running, in the order they will be served.", aliases=("tasks",),
         arguments=_queue_arguments)
def queue_command(ctx: Context, args: argparse.Namespace) -> Result:
    if args.cursor is not None:
        return next_page(ctx, args.cursor, args.offset)
    filters = {"worker": args.worker, "queue": args.queue, "owner": args.owner, "name": args.name,
               "group": args.group}
    ids = ctx.master.listing_ids(args.state, args.limit, **filters)
    total = ctx.master.counts()
    shown = args.state or "unfinished"
    matching = " ".join(f"{key} {value}" for key, value in filters.items() if value is not None)
    title = f"{len(ids)} {shown} tasks" + (f" matching {matching}" if matching else "")
    return task_listing(ctx, ids, QUEUE_COLUMNS, title,
                        ", ".join(f"{total[s]} {s}" for s in ACTIVE_ORDER if total.get(s)))


def _when(timestamp: float, full: bool = False) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S" if full else "%H:%M:%S", time.localtime(timestamp))
