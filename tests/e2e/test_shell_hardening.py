"""The `master>` shell against hostile task data and an impatient operator, through tmux and a
real master: escape sequences in output, argv and worker errors stay inert; Ctrl-C during a
long command never stops the master nor cuts a change halfway; ESC is harmless; refused lines
stay out of the history and their errors stay short. Each test prints what it measured."""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import termios
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tests.e2e.conftest import PROMPT, TmuxShell
from tests.e2e.test_shell_tmux import field, submitted_id, task_counts, worker_available
from tests.unit.test_hostile_lines import random_lines

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
    with shell.client(identity="evil") as evil:
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


def _cooked(shell: TmuxShell, tty: str | None = None) -> bool:
    """Whether the pane's terminal (`tty`, when known) is back in cooked mode (ISIG on): the
    prompt has handed the line over, and Ctrl-C now makes a SIGINT instead of a key for it."""
    fd = os.open(tty or shell._pane_format("#{pane_tty}"), os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
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

    # Ctrl-C at an empty prompt still just drops the line, and Ctrl-D still leaves. Ctrl-D goes
    # to the fresh prompt below the dropped one: the line above is only the old prompt's last
    # picture, and a key sent before the new prompt reads keys meets the terminal in cooked
    # mode, where Ctrl-D is taken as end-of-file by the tty and never reaches the shell.
    dropped = shell.idle_prompt()
    shell.key("C-c")
    shell.wait_prompt(after=dropped)
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


# ---------------------------------------------------------------- hostile lines at the real prompt
_QUITS = ("quit", "exit")  # a line that would quit is left out: stopping is what quit is for


def _quits(line: str) -> bool:
    """Whether the shell would take any part of `line` for quit (a CR in it enters what is
    before it)."""
    for part in re.split(r"[\r\n]", line):
        try:
            words = shlex.split(part)
        except ValueError:
            continue
        if words and words[0] in _QUITS:
            return True
    return False


def _within(seconds: float, predicate: Callable[[], bool]) -> bool:
    """Whether `predicate` comes true within `seconds`, looked at every 20 ms."""
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)  # until the next look
    return True


class _Typist:
    """Types hostile lines into the real prompt, each followed by Enter, and waits until the
    shell has handled them: the cursor has moved down past the line and the shell is at an
    empty prompt with the terminal raw (so a control character typed next is a key for the
    prompt, never a signal). A mark, the unknown command `markN`, proves that every key sent
    before it has been read: its error line comes after theirs. It reads the screen only, not
    the scrollback, which a 1 MB line makes slow to read at every look."""

    LONGEST_TYPED = 500  # characters; a longer line is pasted (typed, 5,000 keys take seconds)

    def __init__(self, shell: TmuxShell) -> None:
        self.shell = shell
        self.tty = shell._pane_format("#{pane_tty}")
        self.marks = 0

    def look(self) -> tuple[int, list[str]]:
        """The cursor's row counted from the top of the scrollback (Enter moves it down), and
        the screen's lines down to the cursor's."""
        history, cursor = self.shell._pane_format("#{history_size} #{cursor_y}").split()
        text = self.shell._tmux("capture-pane", "-p", "-J", "-E", cursor, "-t", self.shell.session)
        lines = [line.rstrip() for line in text.splitlines()]
        while lines and not lines[-1]:
            lines.pop()
        return int(history) + int(cursor), lines

    def at_rest(self, after: int = -1) -> bool:
        """At an empty prompt below row `after`, the terminal raw: all typed has been handled."""
        row, lines = self.look()
        if any(line.startswith("Every ") and "any key" in line for line in lines):
            self.shell.key("q")  # a generated `watch ...` redraws until a key
            return False
        return row > after and bool(lines) and lines[-1] == PROMPT and not _cooked(self.shell, self.tty)

    def enter(self, text: str, timeout: float = 20) -> None:
        """Types `text` (send-keys -l: control characters as they are; pasted when long) and
        Enter at an empty prompt, and waits until the shell has handled it."""
        if not _within(timeout, self.at_rest):
            raise AssertionError(f"no empty prompt; the screen shows:\n{self.screen()}")
        row, session = self.look()[0], self.shell.session
        if len(text) > self.LONGEST_TYPED:
            keys = ["set-buffer", "-b", "hostile", "--", text, ";",
                    "paste-buffer", "-p", "-d", "-b", "hostile", "-t", session]
        else:
            keys = ["send-keys", "-t", session, "-l", "--", text]
        self.shell._tmux(*keys, ";", "send-keys", "-t", session, "Enter")
        for wait in (1, 5, timeout):
            if _within(wait, lambda: self.at_rest(after=row)):
                return
            self.shell.key("Enter")  # a key began a mode that Enter leaves first (^R: a search)
        raise AssertionError(f"the shell did not handle {text[:60]!r}; the screen shows:\n{self.screen()}")

    def mark(self, timeout: float = 30) -> None:
        """Enters a mark and waits for its error: nothing typed before it is left unread."""
        self.marks += 1
        error = f"error: unknown command 'mark{self.marks}'"
        self.shell.key("C-e", "C-u")  # whatever a line left half typed
        self.enter(f"mark{self.marks}", timeout)
        if not _within(timeout, lambda: any(line.startswith(error) for line in self.look()[1])):
            raise AssertionError(f"no error for mark{self.marks}; the screen shows:\n{self.screen()}")

    def screen(self) -> str:
        return "\n".join(self.look()[1][-20:])


@pytest.mark.timeout(150)
def test_hostile_lines_typed_at_the_real_prompt_leave_it_answering(
        start_shell: Callable[..., TmuxShell]) -> None:
    shell = start_shell(env={"CLOUDQ_PAGER": "off"})  # no output waits in a pager for keys
    master = psutil.Process(shell.pane_pid)
    # Nothing generated runs: tasks stay queued, as in the unit test (its master has no worker).
    drained = ["worker-1 is draining; `release worker-1` undoes it"]
    shell.run_until("drain worker-1", lambda out: out[:1] == drained, 30, "worker-1 to be drained")
    typist = _Typist(shell)
    took: dict[str, float] = {}
    started = time.monotonic()

    # 1. Every control character but NUL (no argument carries one to tmux), each in a line of
    #    its own, typed while the prompt reads: ^C drops the line, ^L clears the screen, ^R
    #    searches the history, ^\ and ^Z are keys, not signals.
    for code in [*range(1, 0x20), 0x7F]:
        typist.enter(f"status {chr(code)} x")
        typist.mark()
    took["32 control characters"] = time.monotonic() - started

    # 2. Unbalanced quotes and a trailing backslash.
    for line in ('task --exec "echo unterminated', "'", '"', "status '", "queue --name \"a'b",
                 "show t1 \\", "'''", '"""'):
        typist.enter(line)
    typist.mark()

    # 3. Lines from the unit test's generator (tests/unit/test_hostile_lines.py).
    lines = [line for line in random_lines(300) if "\x00" not in line and not _quits(line)][:200]
    for number, line in enumerate(lines, start=1):
        typist.enter(line)
        if number % 50 == 0:
            typist.mark()
    took[f"{len(lines)} generated lines"] = time.monotonic() - started - sum(took.values())

    # 4. A 1 MB line, pasted (too long for send-keys) as an operator would paste it.
    huge = "status " + ("x" * 1023 + " ") * 1023 + "end-of-mb"
    paste = shell.tmp / "huge.txt"
    paste.write_text(huge)
    shell.wait(typist.at_rest, 10, "an empty prompt")
    shell._tmux("load-buffer", str(paste))
    shell._tmux("paste-buffer", "-p", "-t", shell.session)
    shell.wait(lambda: (typist.look()[1] or [""])[-1].endswith("end-of-mb"), 30, "the pasted line's end")
    shell.key("Enter")
    typist.mark()
    took[f"a {len(huge):,}-character line"] = time.monotonic() - started - sum(took.values())

    out = shell.run("status")
    screen = "\n".join(shell.lines(notices=True))
    print("\n" + ", ".join(f"{what} {seconds:.1f}s" for what, seconds in took.items()))
    assert out[0] == "cloudq status", "\n".join(out)
    assert master.is_running() and master.status() != psutil.STATUS_ZOMBIE
    assert shell.pane_dead() == (False, None)
    assert "Traceback" not in screen and "Unhandled exception" not in screen, shell.tail()
    internal = re.compile(r"^error: (internal error|\w+ failed: \w+Error\()", re.MULTILINE)
    assert not internal.search(screen), [m.group() for m in internal.finditer(screen)]
