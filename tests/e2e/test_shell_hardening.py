"""The `master>` shell against hostile task data and an impatient operator, through tmux and a
real master: escape sequences in output, argv and worker errors stay inert; Ctrl-C during a
long command never stops the master nor cuts a change halfway; ESC is harmless; refused lines
stay out of the history and their errors stay short. Each test prints what it measured."""

from __future__ import annotations

import json
import os
import re
import stat
import termios
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cloudq.rpc.client import MasterClient
from tests.e2e.conftest import PROMPT, TmuxShell
from tests.e2e.test_shell_tmux import field, submitted_id, task_counts, worker_available

pytestmark = pytest.mark.timeout(300)

TITLE = "\x1b]0;PWNED\x07"  # OSC 0: set the pane's title
CLEAR = "\x1b[2J"  # CSI 2 J: erase the screen
FAKE = "\rFAKE"  # back to the start of the line, to print over it
HOSTILE = f"{TITLE}{CLEAR}{FAKE}"
SHOWN = "\\x1b]0;PWNED\\x07\\x1b[2J\\rFAKE"  # how the shell must print it


def _title(shell: TmuxShell) -> str:
    return shell._pane_format("#{pane_title}")


def _visible(shell: TmuxShell) -> str:
    """The screen as it is now, without the scrollback (a cleared screen loses its lines)."""
    return shell._tmux("capture-pane", "-p", "-J", "-t", shell.session)


def _run_and_check_inert(shell: TmuxShell, line: str, title: str) -> list[str]:
    out = shell.run(line)
    assert _title(shell) == title, f"`{line}` changed the pane title"
    assert f"{PROMPT} {line}" in _visible(shell), f"`{line}` cleared the screen:\n{_visible(shell)}"
    assert not any(text.startswith("FAKE") for text in out), out
    return out


def test_escape_sequences_in_task_data_stay_inert(start_shell: Callable[..., TmuxShell],
                                                  tmp_path: Path) -> None:
    shell = start_shell()
    shell.run_until("workers", worker_available, 30, "worker-1 to be available")
    title = _title(shell)

    # 1. Output: a real task on the local worker prints the sequences (printf makes the bytes).
    out = shell.run(r"""task --exec "printf '\033]0;PWNED\007\033[2J\rFAKE-OUTPUT\n'" """.strip())
    printer = submitted_id(out)
    shell.run_until(f"show {printer}", lambda o: field(o, "state") == "completed", 30, "completed")

    # 2. Argv, error and log reported by a hostile worker, `evil`, which takes the task, fails
    #    it, and leaves it retrying with the worker's error as the reason `queue` shows.
    batch = tmp_path / "hostile.jsonl"
    batch.write_text(json.dumps({
        "kind": "exec", "name": "hostile", "target_worker": "evil", "max_retries": 1,
        "retry_backoff_s": 300, "spec": {"argv": ["printf", f"{HOSTILE}-ARGV"]}}) + "\n")
    with MasterClient(shell.address) as evil:
        session = evil.call("register", {"facts": {"name": "evil", "cpu_cores": 4.0, "mem_gb": 8.0},
                                         "running": []})["session"]
        out = shell.run(f"submit {batch}")
        hostile = next(m.group(1) for line in out if (m := re.match(r"(t\d+)\s+hostile", line)))
        (assignment,) = evil.call("fetch", {"name": "evil", "session": session, "wait_s": 10})
        assert assignment["assign"]["id"] == hostile
        refused = evil.call("report", {"name": "evil", "session": session, "reports": [{
            "task": hostile, "attempt": 1, "state": "failed", "log_tail": f"{HOSTILE}-LOG\n",
            "result": {"status": "failed", "error": f"{HOSTILE}-ERROR", "log_tail": f"{HOSTILE}-LOG\n"}}]})
        assert refused == {"refused": []}

    logs = _run_and_check_inert(shell, f"logs {printer}", title)
    assert "\\x1b]0;PWNED\\x07\\x1b[2J\\rFAKE-OUTPUT" in logs
    show = _run_and_check_inert(shell, f"show {hostile}", title)
    assert f"printf, {SHOWN}-ARGV" in field(show, "spec")
    assert field(show, "last_error") == f"{SHOWN}-ERROR"
    queue = _run_and_check_inert(shell, "queue", title)
    row = next(line for line in queue if line.startswith(hostile))
    assert "after: \\x1b]0;PWNED" in row  # the reason may be cut to fit the pane: inert all the same
    records = _run_and_check_inert(shell, "queue --vertical", title)
    assert (field(records, "reason") or "").endswith(f"after: {SHOWN}-ERROR"), records
    queue += records
    hostile_logs = _run_and_check_inert(shell, f"logs {hostile}", title)
    assert f"{SHOWN}-LOG" in hostile_logs
    shown = sum(text.count("\\x1b") for text in logs + show + queue + hostile_logs)
    print(f"\npane title {title!r} before and after; {shown} ESC characters printed as \\x1b")


def _submit_file(tmp_path: Path, count: int) -> Path:
    """`count` task lines (each parsed by the task syntax: seconds for 50,000), every task too
    big for the local worker, so the batch stays queued and the counts stay still."""
    path = tmp_path / f"batch-{count}.txt"
    path.write_text("".join(f"--noop -cpu_cores 64 --name big{i}\n" for i in range(count)))
    return path


def _line_after(shell: TmuxShell, start: int, pattern: str, timeout: float) -> str:
    def find() -> str | None:
        return next((line for line in shell.lines()[start:] if re.search(pattern, line)), None)

    return shell.wait(find, timeout, f"a line matching {pattern!r}")


def _cooked(shell: TmuxShell) -> bool:
    """Whether the pane's terminal is back in cooked mode (ISIG on): the prompt has handed the
    line over, and Ctrl-C now makes a SIGINT instead of a key for the prompt."""
    fd = os.open(shell._pane_format("#{pane_tty}"), os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        return bool(termios.tcgetattr(fd)[3] & termios.ISIG)
    finally:
        os.close(fd)


def _interrupt(shell: TmuxShell, line: str, when: str | None) -> tuple[int, str]:
    """Enters `line`, presses Ctrl-C once the command runs (and `when` is on the screen), and
    returns where the line is and what the shell said about the interruption."""
    start = shell.idle_prompt()
    shell.type(line)
    shell.wait(lambda: shell.current_line().startswith(f"{PROMPT} {line}"), 10, "the typed line")
    shell.key("Enter")
    shell.wait(lambda: _cooked(shell), 10, "the prompt to hand the line over")
    if when is not None:
        _line_after(shell, start, when, 120)
    shell.key("C-c")
    said = _line_after(shell, start, r"^(\^C)?interrupted", 60)
    shell.wait_prompt(after=start, timeout=60)
    return start, said.removeprefix("^C")  # the terminal's echo of the key


def test_ctrl_c_during_a_long_submit_never_cuts_it_nor_stops_the_master(
        start_shell: Callable[..., TmuxShell], tmp_path: Path) -> None:
    shell = start_shell()
    batch = _submit_file(tmp_path, 50_000)
    before = task_counts(shell).get("queued", 0)

    # While the file is read: the submit stops, and nothing of it is in the master.
    started = time.monotonic()
    _, said = _interrupt(shell, f"submit {batch}", when=None)
    print(f"\nCtrl-C while reading: {said!r} after {time.monotonic() - started:.1f}s")
    assert said == "interrupted: submit changed nothing"
    assert task_counts(shell).get("queued", 0) == before

    # While the batch is written: it goes on, and a line says when it has, with its ids.
    started = time.monotonic()
    start, said = _interrupt(shell, f"submit {batch}", when=r"^submit: submitting 50000 tasks")
    print(f"Ctrl-C while writing: {said!r}")
    if said.startswith("interrupted: submit goes on in the background"):
        done = _line_after(shell, start, r"^submit \(interrupted earlier\) has finished", 120)
    else:  # the write won the race with the key: the reply must say that it finished
        done = said
    took = time.monotonic() - started
    print(f"then {done!r} ({took:.1f}s after Enter)")
    match = re.search(r"Submitted 50000 tasks; ids t(\d+) to t(\d+)$", done)
    assert match and int(match.group(2)) - int(match.group(1)) == 49_999, done
    assert task_counts(shell).get("queued", 0) == before + 50_000  # all of the batch, once

    # A long read (50,000 rows to lay out and print): interrupted, and the master still answers.
    _, said = _interrupt(shell, "queue --state queued --limit 1000000", when=None)
    print(f"Ctrl-C during a 50,000-row listing: {said!r}")
    assert said.startswith("interrupted")
    assert task_counts(shell).get("queued", 0) == before + 50_000
    assert shell.pane_dead() == (False, None)

    # Ctrl-C at an empty prompt still just drops the line, and Ctrl-D still leaves.
    shell.key("C-c")
    shell.idle_prompt()
    shell.key("C-d")
    assert shell.wait_exit() == 0
    assert "cloudq master stopped" in shell.screen()


@pytest.mark.parametrize("keys", [
    ["Escape"], ["Escape", "Escape"], ["Escape", "Enter"], ["Escape", "-", "BSpace"],
    ["Escape", "[", "2", "J"], ["Escape", "]"], ["Escape", "O"], ["Escape", "Tab"],
])
def test_escape_keys_never_print_a_traceback(shared_escape_shell: TmuxShell, keys: list[str]) -> None:
    shell = shared_escape_shell
    start = shell.idle_prompt()
    shell.type("statu")
    shell.wait(lambda: shell.current_line().startswith(f"{PROMPT} statu"), 10, "the typed text")
    shell.key(*keys)
    # Whatever the keys left (a half line, or a line entered): Ctrl-E Ctrl-U empties the prompt.
    shell.key("C-e", "C-u")
    shell.wait_prompt(after=start - 1)
    out = shell.run("status")
    screen = shell.screen()
    assert "Traceback" not in screen and "Unhandled exception" not in screen, shell.tail()
    assert out[0] == "cloudq status"


@pytest.fixture(scope="module")
def shared_escape_shell(tmp_path_factory: pytest.TempPathFactory):
    shell = TmuxShell(tmp_path_factory.mktemp("escape"))
    try:
        yield shell.start()
    finally:
        shell.close()


def test_a_refused_huge_line_is_short_in_the_error_and_absent_from_history(
        start_shell: Callable[..., TmuxShell]) -> None:
    shell = start_shell()
    shell.run("status")
    huge = "frobnicate" + "x" * 200_000 + "-end"
    start = shell.idle_prompt()
    paste = shell.tmp / "paste.txt"  # too long for send-keys: pasted, as an operator would
    paste.write_text(huge)
    shell._tmux("load-buffer", str(paste))
    shell._tmux("paste-buffer", "-p", "-t", shell.session)
    # The prompt shows what fits of so long a line, with the cursor at its end.
    shell.wait(lambda: shell.current_line().endswith("x-end"), 60, "the end of the pasted line")
    shell.key("Enter")
    error = _line_after(shell, start, r"^error: ", 60)
    end = shell.wait_prompt(after=start, timeout=60)
    print(f"\na refused {len(huge):,}-character line: an error of {len(error)} characters")
    assert error.startswith("error: unknown command 'frobnicatexxx") and len(error) < 300
    assert end == shell.lines().index(error) + 1  # one line, then the prompt

    mode = stat.S_IMODE(shell.history.stat().st_mode)
    text = shell.history.read_text()
    print(f"history file mode {mode:o}, {len(text)} bytes")
    assert mode == 0o600
    assert "+status" in text and "frobnicate" not in text
    shell.key("Up")  # the previous line recalled is the one that parsed
    shell.wait_line(f"{PROMPT} status")
    shell.key("C-c")
