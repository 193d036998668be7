"""The real `master>` prompt, typed into through tmux and read off the screen, as a person would.

Most tests share one master (module fixture) and find task ids in what the shell prints, so they
do not depend on each other's order; tab completion and leaving the shell get a fresh master each.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

import psutil
import pytest

from tests.cluster.harness import wait_until
from tests.e2e.conftest import (
    PROMPT,
    TmuxShell,
    procs_mentioning,
    shared_shell_fixture,
    worker_available,  # other modules import it from here too
)

COMMAND_NAMES = {"task", "submit", "show", "why", "cancel", "logs", "queue", "workers", "release",
                 "status", "help", "quit"}
SUBMITTED = re.compile(r"^Task (t\d+) (queued|assigned|running|completed)\b")


def submitted_id(out: list[str]) -> str:
    assert out, "the shell printed nothing after the task line"
    match = SUBMITTED.match(out[0])
    assert match, "expected 'Task tN ...' first, got:\n" + "\n".join(out)
    return match.group(1)


def field(out: list[str], name: str) -> str | None:
    """The value of a `key  value` line of a vertical record (show, status)."""
    for line in out:
        key, _, value = line.partition("  ")
        if key == name:
            return value.strip()
    return None


def run_paged(shell: TmuxShell, line: str) -> list[str]:
    """Runs a line whose output is taller than the pane: the pager shows its first screen and
    waits (less's `:`); `q` leaves it. Returns what is on the screen above the next prompt."""
    start = shell.idle_prompt()
    shell.type(line)
    shell.wait(lambda: shell.current_line().startswith(f"{PROMPT} {line}"), 10, f"the typed line {line!r}")
    shell.key("Enter")
    shell.wait(lambda: shell.current_line() == ":", 10, "the pager's prompt")
    shell.key("q")
    end = shell.wait_prompt(after=start)
    return shell.lines()[start + 1:end]


def task_counts(shell: TmuxShell) -> dict[str, int]:
    """Tasks by state, from the `status` command's `tasks STATE  N` lines."""
    out = shell.run("status")
    assert out and out[0] == "cloudq status", "status printed:\n" + "\n".join(out)
    counts = {}
    for line in out:
        match = re.fullmatch(r"tasks (\w+)\s+(\d+)", line)
        if match:
            counts[match.group(1)] = int(match.group(2))
    return counts


shared_shell = shared_shell_fixture(width=200, height=50)


def test_prompt_comes_up_and_help_lists_the_commands(shell: TmuxShell) -> None:
    screen = shell.screen()
    assert f"cloudq master on {shell.address}. Type `help` for commands" in screen
    assert shell.current_line() == PROMPT

    out = shell.run("help")
    assert out[0] == "Commands (help NAME for options)"
    listed = {line.split()[0] for line in out[3:] if line.strip()}  # after title, header, rule
    assert listed >= COMMAND_NAMES, "help printed:\n" + "\n".join(out)

    out = run_paged(shell, "help task")  # taller than the pane: through the pager
    assert any(line.startswith("usage: task") for line in out), "\n".join(out)
    assert any("--exec" in line for line in out)

    # The prompt keeps its history where CLOUDQ_HISTORY points.
    wait_until(lambda: shell.history.exists() and "+help task" in shell.history.read_text(), 5,
               f"'help task' in the history file {shell.history}")


def test_workers_shows_the_local_worker_available(shell: TmuxShell) -> None:
    out = shell.run_until("workers", worker_available, 30, "worker-1 available")
    assert out[0] == "1 workers"
    assert out[1].split()[:2] == ["name", "status"]
    line = next(line for line in out if line.startswith("worker-1 "))
    # name, status, cpu free/total, memory, gpus, tasks running/max (none yet), no labels, seen
    assert re.fullmatch(r"worker-1\s+available\s+[\d.]+/[\d.]+\s+[\d.]+/[\d.]+ GB\s+\d+/\d+\s+0/\d+"
                        r"\s+\d+s ago", line), f"worker-1 row: {line!r}"
    # It is this master's own worker process.
    assert shell.local_worker().ppid() == shell.pane_pid


def test_exec_task_completes_and_its_output_is_in_logs(shell: TmuxShell) -> None:
    out = shell.run('task --exec "echo hello-from-shell"')
    task_id = submitted_id(out)

    out = shell.run_until(f"show {task_id}", lambda o: field(o, "state") == "completed", 30,
                          f"{task_id} to be completed in `show`")
    assert out[0] == f"Task {task_id}"
    assert field(out, "kind") == "exec"
    assert field(out, "worker") == "worker-1"
    assert "exit_code=0" in (field(out, "result") or ""), "\n".join(out)
    assert any(line.endswith("running -> completed: completed on worker-1") for line in out)

    out = shell.run(f"logs {task_id}")
    assert "hello-from-shell" in out, "logs printed:\n" + "\n".join(out)


def test_too_big_task_stays_queued_and_why_says_insufficient_cpu(shell: TmuxShell) -> None:
    out = shell.run("task -cpu_cores 64 --exec true")
    task_id = submitted_id(out)
    assert out[0].startswith(f"Task {task_id} queued: "), "\n".join(out)

    out = shell.run(f"why {task_id}")
    assert out[0] == f"{task_id} is queued"
    row = next((line for line in out if line.startswith("worker-1 ")), None)
    assert row is not None, "why has no row for worker-1:\n" + "\n".join(out)
    assert re.search(r"^worker-1\s+Insufficient CPU: worker has [\d.]+ available, task requires 64\.00$",
                     row), row

    out = shell.run(f"show {task_id}")
    assert field(out, "state") == "queued"
    assert field(out, "worker") == ""

    out = shell.run(f"cancel {task_id}")
    assert out == [f"{task_id} cancelled"]
    assert field(shell.run(f"show {task_id}"), "state") == "cancelled"


@pytest.mark.parametrize(("line", "message"), [
    ("task --queue urgent --noop", "unknown queue class 'urgent'"),
    ("frobnicate", "unknown command 'frobnicate'"),
    ('task --exec "echo unterminated', "cannot parse the line"),
    ("show t999999", "no task 't999999'"),
    ("queue --limit many", "'many' is not a whole number"),
    ("queue --limit 100000000000000000000", "--limit/-limit: must be from 1 to 10000000"),
])
def test_bad_line_prints_an_error_and_the_prompt_still_works(shell: TmuxShell, line: str,
                                                             message: str) -> None:
    before = task_counts(shell)

    out = shell.run(line)
    assert len(out) == 1 and out[0].startswith("error: "), "expected one error line, got:\n" + "\n".join(out)
    assert message in out[0]
    styled = [s for s in shell.styled_lines() if out[0] in s]
    assert styled and re.search(r"\x1b\[[0-9;]*31m\s*error: ", styled[-1]), \
        f"the error is not printed in red: {styled[-1:]!r}"

    # The shell is still there, answers, and the bad line submitted nothing.
    assert task_counts(shell) == before


def test_ctrl_c_cancels_a_half_typed_line(shell: TmuxShell) -> None:
    before = task_counts(shell)
    start = shell.idle_prompt()
    half = 'task -cpu_cores 64 --name half-typed --exec "sleep'
    shell.type(half)
    shell.wait(lambda: shell.current_line().startswith(f"{PROMPT} {half}"), 10, "the half-typed line")

    shell.key("C-c")
    now = shell.wait_prompt(after=start)
    lines = shell.lines()
    assert lines[start].startswith(f"{PROMPT} {half}"), "the cancelled line should stay visible"
    assert now == start + 1, "nothing should be printed between the cancelled line and the prompt:\n" \
        + "\n".join(lines[start:])

    queue = shell.run("queue")
    assert not any("half-typed" in line for line in queue), "the cancelled line was submitted"
    assert task_counts(shell) == before


def test_tab_completes_a_command_and_an_option(start_shell: Callable[..., TmuxShell]) -> None:
    shell = start_shell()  # fresh history: no suggestion from earlier lines shows after the cursor
    start = shell.idle_prompt()

    shell.type("worke")  # `wor` could also be workflow, workflows
    shell.wait_line(f"{PROMPT} worke")  # exactly: nothing suggested after the cursor
    shell.key("Tab")
    shell.wait_line(f"{PROMPT} workers")
    shell.key("Enter")
    end = shell.wait_prompt(after=start)
    out = shell.lines()[start + 1:end]
    # The completed line ran `workers` (the worker may not have registered yet: 0 or 1 rows).
    assert out and re.fullmatch(r"[01] workers", out[0]), \
        "the completed line did not run `workers`:\n" + "\n".join(out)

    shell.type("task --ex")
    shell.wait_line(f"{PROMPT} task --ex")
    shell.key("Tab")
    shell.wait_line(f"{PROMPT} task --exec")
    shell.key("C-c")
    shell.wait_prompt(after=end)


def _gone(proc: psutil.Process) -> bool:
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("leave", ["quit", "ctrl-d"])
def test_leaving_the_shell_stops_the_master_and_its_local_worker(
        start_shell: Callable[..., TmuxShell], leave: str) -> None:
    shell = start_shell()
    shell.run_until("workers", worker_available, 30, "worker-1 to be available")
    worker = shell.local_worker()
    master = psutil.Process(shell.pane_pid)
    assert worker.ppid() == master.pid
    assert shell.pane_dead() == (False, None)

    shell.idle_prompt()
    if leave == "quit":
        shell.type("quit")
        shell.key("Enter")
    else:
        shell.key("C-d")

    status = shell.wait_exit()
    assert status == 0, f"master exit status {status}; pane:\n{shell.tail()}"
    assert "cloudq master stopped" in shell.screen()
    wait_until(lambda: _gone(master), 5, "the master process to be gone")
    wait_until(lambda: _gone(worker), 10, f"the local worker (pid {worker.pid}) to be gone")
    left = [p for p in procs_mentioning(f"{shell.tmp}{os.sep}") if "cloudq" in p.info["cmdline"]]
    assert left == [], f"cloudq processes of this master outlived it: {left}"

