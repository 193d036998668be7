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
