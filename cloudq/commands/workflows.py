"""Workflows: named steps with dependencies, from one YAML or JSON file, submitted whole.

```yaml
name: ep1                      # optional: step tasks are named ep1/STEP
steps:
  prep:
    task: --exec "python prep.py" --lock nano-banana-pro
  encode:
    task: --scenario 720p30-h264 --duration 60
    after: [prep]              # queued once prep completed; cancelled if it does not
  notify:
    task: {"kind": "exec", "spec": {"argv": ["notify", "done"]}}
    after_any: [encode]        # once encode ended, however
```

`steps` is a mapping (in file order) or a list of objects with `name`. Each step's `task` is a
`task` line (as in `submit` files) or an object of task fields. The whole file is checked
before anything is submitted (unknown steps, cycles, bad fields: refused, nothing submitted);
then every step goes in one batch, one journal write, each step after those it waits for.
"""

from __future__ import annotations

import argparse
from typing import Any

import yaml

from cloudq.commands.registry import COMMANDS, CommandParser, Context, Result, command
from cloudq.commands.task_syntax import parse_submit_line
from cloudq.core.model import check_name
from cloudq.errors import ValidationError
from cloudq.specs.fields import comma_separated

MAX_STEPS = 10_000
STEP_FIELDS = {"name", "task", "after", "after_any"}

Step = tuple[str, dict[str, Any], list[str], list[str]]  # name, request, after, after_any


def parse_workflow(text: str, parser: CommandParser) -> tuple[str | None, list[Step]]:
    """The workflow's name and its steps, each after the steps it waits for (file order kept
    where the dependencies allow). Raises ValidationError naming the first problem."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValidationError(f"not valid YAML or JSON: {str(err)[:300]}") from None
    if not isinstance(raw, dict) or "steps" not in raw:
        raise ValidationError("a workflow is an object with `steps` (and an optional `name`)")
    unknown = set(raw) - {"name", "steps"}
    if unknown:
        raise ValidationError(f"unknown workflow field(s): {', '.join(sorted(map(str, unknown)))}")
    name = check_name("workflow name", raw["name"]) if raw.get("name") is not None else None
    entries = _entries(raw["steps"])
    steps: dict[str, Step] = {}
    for step_name, body in entries:
        if step_name in steps:
            raise ValidationError(f"step {step_name!r} is given twice")
        steps[step_name] = _step(step_name, body, name, parser)
    for step_name, (_, _, after, after_any) in steps.items():
        for other in after + after_any:
            if other not in steps:
                raise ValidationError(f"step {step_name!r} waits for {other!r}, which is not a step")
            if other == step_name:
                raise ValidationError(f"step {step_name!r} waits for itself")
    return name, _in_order(steps)


def _entries(raw: Any) -> list[tuple[str, Any]]:
    if isinstance(raw, dict):
        entries = [(check_name("step name", str(key)), body) for key, body in raw.items()]
    elif isinstance(raw, list):
        entries = []
        for index, body in enumerate(raw, start=1):
            if not isinstance(body, dict) or "name" not in body:
                raise ValidationError(f"step {index} needs a `name`")
            entries.append((check_name("step name", body["name"]), body))
    else:
        raise ValidationError("`steps` must be a mapping of step names, or a list of steps")
    if not entries:
        raise ValidationError("a workflow needs at least one step")
    if len(entries) > MAX_STEPS:
        raise ValidationError(f"at most {MAX_STEPS} steps, got {len(entries)}")
    return entries


def _step(step_name: str, body: Any, workflow: str | None, parser: CommandParser) -> Step:
    if not isinstance(body, dict):
        raise ValidationError(f"step {step_name!r}: give `task` (a task line or fields) and `after`")
    unknown = set(body) - STEP_FIELDS
    if unknown:
        raise ValidationError(f"step {step_name!r}: unknown field(s) "
                              f"{', '.join(sorted(map(str, unknown)))}; a step has {sorted(STEP_FIELDS)}")
    task = body.get("task")
    try:
        if isinstance(task, str):
            request = parse_submit_line(task, parser)
        elif isinstance(task, dict):
            request = dict(task)
        else:
            request = None
        if request is None:
            raise ValidationError("needs `task`: a task line or an object of task fields")
        if "after" in request or "after_any" in request:
            raise ValidationError("say what a step waits for with the step's `after`, by step name")
    except ValidationError as err:
        raise ValidationError(f"step {step_name!r}: {err}") from None
    request.setdefault("name", f"{workflow}/{step_name}" if workflow else step_name)
    return (step_name, request, _names(step_name, body.get("after")),
            _names(step_name, body.get("after_any")))


def _names(step_name: str, raw: Any) -> list[str]:
    if raw is None:
        return []
    raw = comma_separated(raw)
    if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
        raise ValidationError(f"step {step_name!r}: `after` is a list of step names")
    return list(dict.fromkeys(raw))


def _in_order(steps: dict[str, Step]) -> list[Step]:
    """Kahn's algorithm, taking the earliest step in file order each time; what is left over
    waits in a cycle, which is named."""
    position = {name: index for index, name in enumerate(steps)}
    waiting_on = {name: set(step[2] + step[3]) for name, step in steps.items()}
    ready = sorted((n for n, deps in waiting_on.items() if not deps), key=position.__getitem__)
    order: list[Step] = []
    while ready:
        current = ready.pop(0)
        order.append(steps[current])
        for name, deps in waiting_on.items():
            if current in deps:
                deps.discard(current)
                if not deps:
                    ready.append(name)
        ready.sort(key=position.__getitem__)
        waiting_on.pop(current)
    if waiting_on:
        raise ValidationError(f"the steps wait for each other in a cycle: {_cycle(waiting_on)}")
    return order


def _cycle(waiting_on: dict[str, set[str]]) -> str:
    start = min(waiting_on)
    path = [start]
    while True:
        following = min(dep for dep in waiting_on[path[-1]] if dep in waiting_on)
        if following in path:
            loop = path[path.index(following):] + [following]
            return " -> ".join(loop)
        path.append(following)


# ---------------------------------------------------------------------------- commands
def _workflow_arguments(parser: CommandParser) -> None:
    parser.add_argument("file", help="YAML or JSON file of named steps (see docs/commands.md)")


@command("workflow", "Submit the steps in FILE as one workflow: each step after those it waits for.",
         file_args=("file",), arguments=_workflow_arguments, changes=True)
def workflow_command(ctx: Context, args: argparse.Namespace) -> Result:
    try:
        name, steps = parse_workflow(ctx.read_file(args.file), COMMANDS["task"].parser)
    except ValidationError as err:
        raise ValidationError(f"{args.file}: {err}; nothing was submitted") from None
    workflow, tasks = ctx.master.submit_workflow(steps)
    ids = {step[0]: task.id for step, task in zip(steps, tasks, strict=True)}
    shown = ", ".join(f"{step} {task_id}" for step, task_id in list(ids.items())[:8])
    more = f", and {len(ids) - 8} more" if len(ids) > 8 else ""
    label = f" ({name})" if name else ""
    return Result(status=f"Workflow {workflow}{label}: {len(tasks)} steps submitted: {shown}{more}. "
                         f"`show {workflow}` follows it.",
                  data={"workflow": workflow, "name": name, "steps": ids})


def group_result(view: dict[str, Any]) -> Result:
    """`show wfN` / `show arN`: each task with its state (and, in a workflow, what it waits
    for), under a line of how far the whole has got."""
    counts = ", ".join(f"{n} {state}" for state, n in view["counts"].items())
    title = (f"{view['kind'].capitalize()} {view['group']}: {view['done']}/{len(view['steps'])} done "
             f"({counts}); {view['state']}")
    if view["kind"] == "array":
        rows = [[s["id"], s["step"], s["state"], s["worker"] or "", s["reason"] or ""] for s in view["steps"]]
        return Result(title=title, headers=["task", "name", "state", "worker", "reason"], rows=rows,
                      data=view)
    rows = [[s["step"], s["id"], s["state"], ", ".join(s["after"]) or "-", s["worker"] or "",
             s["reason"] or ""] for s in view["steps"]]
    return Result(title=title, headers=["step", "task", "state", "after", "worker", "reason"], rows=rows,
                  data=view)


def _workflows_arguments(parser: CommandParser) -> None:
    parser.add_argument("--limit", "-limit", type=int, default=50, help="the newest N (default 50)")


@command("workflows", "Workflows, newest last, with their progress (steps done/total) and state.",
         arguments=_workflows_arguments)
def workflows_command(ctx: Context, args: argparse.Namespace) -> Result:
    views = ctx.master.group_views("workflow")[-max(args.limit, 1):]
    rows = [[v["group"], v["name"] or "", f"{v['done']}/{len(v['steps'])}", v["state"]] for v in views]
    return Result(title=f"{len(rows)} workflows", headers=["workflow", "name", "done", "state"],
                  rows=rows, data=[{k: v for k, v in view.items() if k != "steps"} for view in views])
