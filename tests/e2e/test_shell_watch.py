"""`--json`, `logs ID --follow`, `show ID --follow` and `watch COMMAND` in the real `master>`
shell, through tmux and a real master with its local worker. Each test prints what it saw."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import PROMPT, TmuxShell
from tests.e2e.test_shell_tmux import field, submitted_id, worker_available

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def shared_shell(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TmuxShell]:
    shell = TmuxShell(tmp_path_factory.mktemp("watch"))
    try:
        shell.start()
        # Tall enough that a JSON record is not paged.
        shell._tmux("resize-window", "-t", shell.session, "-x", "200", "-y", "200")
        shell.run_until("workers", worker_available, 30, "worker-1 to be available in `workers`")
        yield shell
    finally:
        shell.close()


@pytest.fixture
def shell(shared_shell: TmuxShell) -> TmuxShell:
    if shared_shell.current_line() != PROMPT:
        shared_shell.key("C-c")
        shared_shell.wait_prompt(after=-1)
    return shared_shell


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
