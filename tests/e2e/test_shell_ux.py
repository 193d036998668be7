"""The `master>` shell's daily comforts through tmux and a real master, in an 80-column and a
200-column pane: Tab completes an option, a task id and a worker name; Up recalls the last
line; a notice prints above the prompt when a queued task is assigned and the half-typed line
survives it; the toolbar counts; `queue` fits the pane; quit with a running task asks first.
Each test prints what it saw."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from tests.e2e.conftest import NOTICE, PROMPT, TmuxShell
from tests.e2e.test_shell_tmux import field, run_paged, submitted_id, worker_available

pytestmark = pytest.mark.timeout(240)

WIDTHS = [80, 200]


def _sized(start_shell: Callable[..., TmuxShell], width: int) -> TmuxShell:
    shell = start_shell()
    shell._tmux("resize-window", "-t", shell.session, "-x", str(width), "-y", "50")
    shell.wait(lambda: shell._pane_format("#{pane_width}") == str(width), 10, f"a {width}-column pane")
    shell.run_until("workers", worker_available, 30, "worker-1 to be available")
    return shell


def _tab(shell: TmuxShell, typed: str, expected: str) -> None:
    shell.type(typed)
    shell.wait_line(f"{PROMPT} {typed}".rstrip())  # the pane's lines have no trailing spaces
    shell.key("Tab")
    shell.wait_line(f"{PROMPT} {expected}")
    print(f"  {typed!r} + Tab -> {expected!r}")
    shell.key("C-c")
    shell.idle_prompt()


def _toolbar(shell: TmuxShell) -> str:
    """The screen's last row: the toolbar while a prompt is shown."""
    return shell._tmux("capture-pane", "-p", "-t", shell.session).rstrip("\n").splitlines()[-1]


@pytest.mark.parametrize("width", WIDTHS)
def test_tab_completes_an_option_a_task_id_and_a_worker_name_and_up_recalls(
        start_shell: Callable[..., TmuxShell], width: int) -> None:
    shell = _sized(start_shell, width)
    print(f"\n{width} columns:")
    _tab(shell, "task -cpu_c", "task -cpu_cores")
    task_id = submitted_id(shell.run("task -cpu_cores 64 --name too-big --exec true"))
    _tab(shell, "why ", f"why {task_id}")  # the only task: completed whole
    _tab(shell, "drain wor", "drain worker-1")
    _tab(shell, "task --queue li", "task --queue live")

    shell.key("Up")  # the last line entered, not the ones dropped with Ctrl-C
    shell.wait_line(f"{PROMPT} task -cpu_cores 64 --name too-big --exec true")
    shell.key("C-c")
    shell.idle_prompt()

    shell.wait(lambda: "queued 1" in _toolbar(shell), 10, "the toolbar to count the queued task")
    bar = _toolbar(shell)
    print(f"  toolbar: {bar.strip()}")
    assert re.search(r"workers 1/1 up \| running 0 \| queued 1 \| held 0 \| dead 0 \| oldest wait \d+s", bar)


QUEUE_HEADERS = ["id", "kind", "target", "image", "owner", "needs", "state", "class", "wait",
                 "passes", "reason"]


@pytest.mark.parametrize("width", WIDTHS)
def test_queue_is_a_table_of_every_column_that_fits_and_records_on_demand(
        start_shell: Callable[..., TmuxShell], width: int) -> None:
    shell = _sized(start_shell, width)
    task_id = submitted_id(shell.run("task -cpu_cores 64 --name too-big --exec true"))
    # A long image, a GPU, pinned to a worker that never registers: it waits, with its reason
    # (sent over RPC: typed, so long a line would wrap the 80-column prompt).
    image = "registry.example.com/ml-team/bert-large-finetune:2024.06.01-cuda12"
    with shell.client() as client:
        pinned = client.call("call", {"argv": ["task", "gpu-worker-42", image, "-cpu_cores", "8",
                                               "-mem", "32", "-gpu", "1", "--queue", "live",
                                               "--priority", "high"], "files": {}})["data"]["id"]
    out = shell.run("queue")
    print(f"\n{width} columns:\n" + "\n".join(out))
    assert not any("RECORD" in line for line in out), "queue switched to records"
    assert max(len(line) for line in out) <= width
    assert out[1].split() == QUEUE_HEADERS, f"not every column is shown: {out[1]!r}"
    row = next(line for line in out if line.startswith(task_id))
    assert "queued" in row and "Never" in row
    row = next(line for line in out if line.startswith(pinned))
    assert "queued" in row and "live/hi" in row
    if width == 200:
        assert image in row and "8c 32G 1g" in row and "gpu-worker-42 has not registered" in row
    styled = next(line for line in shell.styled_lines() if line.startswith(task_id))
    assert re.search(r"\x1b\[[0-9;]*33mqueued", styled), f"queued is not yellow: {styled!r}"
    out = shell.run("queue \\G")  # records on demand
    assert out[1].startswith("-[ RECORD 1 ]") and field(out, "id") == pinned  # live/high first
    assert [line.split() for line in out if line.startswith("id ")] == [["id", pinned], ["id", task_id]]


def test_a_notice_for_an_assignment_prints_above_the_half_typed_line(
        start_shell: Callable[..., TmuxShell]) -> None:
    shell = _sized(start_shell, 200)
    task_id = submitted_id(shell.run("task -cpu_cores 64 --name waits --exec true"))
    start = shell.idle_prompt()
    half = 'task --name half-typed --exec "echo not yet'
    shell.type(half)
    shell.wait_line(f"{PROMPT} {half}")

    # A worker big enough registers: the queued task is assigned to it at once.
    with shell.client(identity="big-1") as big:
        big.call("register", {"facts": {"name": "big-1", "cpu_cores": 128.0, "mem_gb": 256.0},
                              "running": []})
        pattern = re.compile(rf"^\[\d\d:\d\d:\d\d\] {task_id} assigned to big-1 after .*\d+s in queue$")
        notice = shell.wait(lambda: next((line for line in shell.lines(notices=True)
                                          if pattern.match(line)), None), 15, "the assignment notice")
        # The notice is written first and the prompt redrawn under it a moment later.
        lines = shell.wait(lambda: (now := shell.lines(notices=True))[-1] == f"{PROMPT} {half}"
                           and now, 5, "the half-typed line redrawn below the notice")
        print(f"\n{notice}\n{lines[-1]}")
        assert lines.index(notice) < len(lines) - 1, "the notice is not above the prompt"
        joined = re.compile(r"^\[\d\d:\d\d:\d\d\] big-1 joined \(128 cores, 256 GB\)$")
        shell.wait(lambda: any(joined.match(line) for line in shell.lines(notices=True)), 10,
                   "the notice that big-1 joined")  # workers are read once a second
        shell.wait_line(f"{PROMPT} {half}")  # redrawn under that notice too, a moment later
        # The line goes on being typed and runs as typed.
        shell.type(' now"')
        shell.key("Enter")
        end = shell.wait_prompt(after=start)
        out = shell.lines()[start:end]
        assert out[0] == f'{PROMPT} {half} now"' and submitted_id(out[1:]) != task_id

    # `notices off`: the next one is not printed.
    assert shell.run("notices off") == ["notices off: none"]
    assert "notices off" in _toolbar(shell)


def test_quit_with_a_running_task_asks_first(start_shell: Callable[..., TmuxShell]) -> None:
    shell = _sized(start_shell, 80)
    task_id = submitted_id(shell.run('task --exec "sleep 120"'))
    shell.run_until(f"show {task_id}", lambda o: field(o, "state") == "running", 30, "running")

    question = f"1 task is running ({task_id}). Quit and stop the master anyway? (y/n)"
    for leave in ("quit", "C-d"):
        start = shell.idle_prompt()
        if leave == "quit":
            shell.type("quit")
            shell.key("Enter")
        else:
            shell.key("C-d")
        shell.wait(lambda: shell.current_line() == question, 10, "the question")
        print(f"\n{leave}: {shell.current_line()}")
        shell.type("n")
        shell.wait_prompt(after=start)
        assert "not quitting (`quit --force` does not ask)" in shell.lines()
        assert shell.pane_dead() == (False, None)
    shell.run_until(f"show {task_id}", lambda o: field(o, "state") == "running", 10, "still running")

    shell.type("quit")
    shell.key("Enter")
    shell.wait(lambda: shell.current_line() == question, 10, "the question")
    shell.type("y")
    assert shell.wait_exit() == 0
    assert "cloudq master stopped" in shell.screen()


def test_quit_force_does_not_ask(start_shell: Callable[..., TmuxShell]) -> None:
    shell = _sized(start_shell, 80)
    task_id = submitted_id(shell.run('task --exec "sleep 120"'))
    shell.run_until(f"show {task_id}", lambda o: field(o, "state") == "running", 30, "running")
    shell.type("quit --force")
    shell.key("Enter")
    assert shell.wait_exit() == 0


def test_a_stream_of_notices_never_garbles_the_lines_typed(start_shell: Callable[..., TmuxShell]) -> None:
    """Tasks finishing and being assigned several times a second while lines are typed and
    entered: every command line stays whole on the screen, and no key or terminal answer is
    echoed into a notice (the terminal stays raw while they print)."""
    shell = _sized(start_shell, 200)
    batch = shell.tmp / "stream.txt"
    batch.write_text("--noop --sleep 0.2\n" * 300)
    run_paged(shell, f"submit {batch}")
    for _ in range(25):
        out = shell.run("status")  # asserts that the line typed is the one on the screen
        assert out[0] == "cloudq status", "\n".join(out)
    lines = shell.lines(notices=True)
    notices = [line for line in lines if NOTICE.match(line)]
    print(f"\n{len(notices)} notices while 25 lines were typed, e.g. {notices[-1]!r}")
    assert len(notices) > 10
    assert not any("\x1b" in line or "^[" in line or "R[" in line for line in lines), \
        [line for line in lines if "^[" in line or "R[" in line]
    assert all(NOTICE.match(line) or not re.search(r"\[\d\d:\d\d:\d\d\] ", line) for line in lines), \
        "a notice was printed into another line"
