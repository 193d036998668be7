"""`--json`, `logs ID --follow`, `show ID --follow` and `watch COMMAND` in the real `master>`
shell, through tmux and a real master with its local worker. Each test prints what it saw."""

from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import PROMPT, TmuxShell, shared_shell_fixture
from tests.e2e.test_shell_tmux import field, submitted_id

pytestmark = pytest.mark.timeout(240)


shared_shell = shared_shell_fixture(width=200, height=200)  # tall: a JSON record is not paged


def _enter(shell: TmuxShell, line: str) -> int:
    """Types `line` and Enter at an empty prompt, without waiting for the next prompt; returns
    the index of the line it was typed on."""
    start = shell.idle_prompt()
    shell.type(line)
    shell.wait(lambda: shell.current_line().startswith(f"{PROMPT} {line}"), 10, f"the typed line {line!r}")
    shell.key("Enter")
    return start


def test_json_on_any_command_prints_the_data_escaped(shell: TmuxShell) -> None:
    task_id = submitted_id(shell.run('task --exec "printf \'\\033]0;PWNED\\007 hi\'" --name js1'))
    shell.run_until(f"show {task_id}", lambda o: field(o, "state") == "completed", 30, "completed")
    shown = json.loads("\n".join(shell.run(f"show {task_id} --json")))
    assert shown["id"] == task_id and shown["state"] == "completed" and shown["events"]
    logs = shell.run(f"logs --json {task_id}")
    print("\n" + "\n".join(logs))
    assert json.loads("\n".join(logs))["log"] == "\x1b]0;PWNED\x07 hi"
    assert "\\u001b]0;PWNED\\u0007 hi" in "\n".join(logs)  # escaped as JSON escapes it
    workers = json.loads("\n".join(shell.run("workers -json")))
    assert workers[0]["name"] == "worker-1"
    listing = json.loads("\n".join(shell.run("queue --state completed --json")))
    assert task_id in [t["id"] for t in listing]


def test_logs_follow_streams_until_the_task_ends(shell: TmuxShell) -> None:
    line = ('task --exec "sh -c \'echo one; sleep 1; echo two; sleep 1; echo three; sleep 1; '
            'echo four\'" --name stream')
    task_id = submitted_id(shell.run(line))
    start = _enter(shell, f"logs {task_id} --follow")
    end = shell.wait_prompt(after=start, timeout=60)  # comes back by itself when the task ends
    out = shell.lines()[start + 1:end]
    print("\n" + "\n".join(out))
    assert out == ["one", "two", "three", "four", f"{task_id} is completed"]


def test_show_follow_prints_each_move_and_a_key_stops_following(shell: TmuxShell) -> None:
    task_id = submitted_id(shell.run('task --exec "sleep 2" --name moves'))
    start = _enter(shell, f"show {task_id} --follow")
    end = shell.wait_prompt(after=start, timeout=60)
    out = shell.lines()[start + 1:end]
    print("\n" + "\n".join(out))
    assert out[0] == f"Task {task_id}" and out[-1] == f"{task_id} is completed"
    assert out[-2].endswith("running -> completed: completed on worker-1")
    assert sum(line.endswith("-> running: started on worker-1") for line in out) == 1

    task_id = submitted_id(shell.run('task --exec "sh -c \'echo started; sleep 120\'" --name long'))
    start = _enter(shell, f"logs {task_id} -f")
    shell.wait(lambda: shell.lines()[start + 1:] == ["started"], 20, "the follow to print the output")
    shell.type("q")  # any key: back to the prompt, the key swallowed
    end = shell.wait_prompt(after=start, timeout=10)
    assert shell.lines()[end - 1] == f"stopped following {task_id} (the task goes on)"
    assert shell.current_line() == PROMPT
    assert field(shell.run(f"show {task_id}"), "state") in ("assigned", "running")
    shell.run(f"cancel {task_id}")


def _call(shell: TmuxShell, *argv: str) -> dict:  # type: ignore[type-arg]
    with shell.client() as client:
        return client.call("call", {"argv": list(argv), "files": {}})


def test_watch_redraws_until_a_key_and_ctrl_c_leaves_master_and_worker_alive(shell: TmuxShell) -> None:
    worker = shell.local_worker()
    start = _enter(shell, "watch -n 0.5 queue --state queued")
    shell.wait(lambda: any(line.startswith("Every 0.5s: queue --state queued")
                           for line in shell.lines()), 10, "the watch screen")
    # A task submitted from elsewhere appears at the next redraw.
    task_id = _call(shell, "task", "-cpu_cores", "64", "--exec", "true", "--name", "watched")["data"]["id"]

    def redrawn() -> list[str] | None:
        """The last screen drawn, once it lists the task."""
        lines = shell.lines()
        heads = [i for i, line in enumerate(lines) if line.startswith("Every 0.5s: ")]
        drawn = lines[heads[-1]:] if heads else []
        return drawn if any(line.startswith(f"{task_id} ") for line in drawn) else None

    screen = shell.wait(redrawn, 10, f"{task_id} in the watched queue")
    print("\n" + "\n".join(screen))
    assert screen[0].startswith("Every 0.5s: queue --state queued")
    assert "any key or Ctrl-C: back to the prompt" in screen[0] and screen[2] == "1 queued tasks"
    shell.type("q")
    end = shell.wait_prompt(after=start, timeout=10)
    assert shell.lines()[end - 1] == "stopped watching queue --state queued"
    assert shell.current_line() == PROMPT  # the key went to watch, not to the prompt

    start = _enter(shell, "watch workers")
    shell.wait(lambda: any(line.startswith("Every 2s: workers") for line in shell.lines()), 10, "watch")
    shell.key("C-c")
    shell.wait_prompt(after=start, timeout=10)
    assert shell.pane_dead() == (False, None) and worker.is_running()
    assert field(shell.run(f"show {task_id}"), "state") == "queued"

    for line, message in (
        (f"watch cancel {task_id}", "error: watch runs only commands that read, and cancel changes "
                                    "the master (master.cancel); nothing was changed"),
        ("watch notices", "error: watch runs commands of the master again; notices is the shell's own"),
        (f"watch logs {task_id} --follow", "error: logs --follow follows by itself: leave out watch"),
        ("watch -n 0 queue", "error: watch: argument --interval/-interval/-n: must be from 0.1 to "
                             "86400 seconds. Try `help watch`"),
    ):
        out = shell.run(line)
        print(f"{line}: {out}")
        assert out == [message]
    assert field(shell.run(f"show {task_id}"), "state") == "queued"
    shell.run(f"cancel {task_id}")
