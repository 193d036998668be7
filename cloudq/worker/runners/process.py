"""Run a local process as its own process group, and make sure all of it ends.

The task's process leads a new session (so a new process group): cancel and timeout signal the
whole group, SIGTERM first and SIGKILL after a short grace, or as soon as the context's kill
event is set (a worker whose lease runs out cannot wait). When the leader exits, the group is
SIGKILLed once more so that no background child outlives its task. The leader is not reaped
until then (waitid with WNOWAIT), so its id, which is also the group id, cannot be reused by an
unrelated process in between.

A process that leaves the group on purpose (setsid, a double fork into a new session) is out
of the group's reach; when the task runs as a task user (a root worker, confine.py), it is
found by its uid in the worker's process tree and killed when the task ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from cloudq.worker.runners import confine
from cloudq.worker.runners.base import RunContext, RunStatus
from cloudq.worker.runners.confine import TaskUser

KILL_GRACE_S = 2.0  # SIGTERM to SIGKILL; cancel must end everything within 5 s
POLL_S = 0.1  # how often cancel and the deadline are looked at while the task runs
KILL_POLL_S = 0.02  # how often the kill event is looked at during the grace
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"  # exec tasks; FFmpeg when the worker has no PATH


@dataclass
class Outcome:
    status: RunStatus  # COMPLETED if it exited 0, FAILED if not; or CANCELLED / TIMED_OUT
    exit_code: int | None  # shell convention: 128 + n when killed by signal n
    duration_s: float


def start(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    stdout: IO[Any] | int,
    stderr: IO[Any] | int,
    pass_fds: Sequence[int] = (),
    user: TaskUser | None = None,
) -> subprocess.Popen[bytes]:
    """Start argv (never through a shell) as the leader of a new session; as `user` (no
    supplementary groups) when given, else as the worker."""

    def popen() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            pass_fds=tuple(pass_fds),
            close_fds=True,
            start_new_session=True,
            **({} if user is None else {"user": user.uid, "group": user.gid, "extra_groups": []}),
        )

    return popen() if user is None else confine.spawn(popen, user)


def supervise(proc: subprocess.Popen[bytes], ctx: RunContext, started: float) -> Outcome:
    """Wait for the process, enforcing cancel and timeout; returns once the group is gone."""
    exited = _exit_event(proc.pid)
    deadline = ctx.deadline(started)
    stopped: RunStatus | None = None
    while not exited.wait(_slice(deadline)):
        if ctx.cancel.is_set() or ctx.kill.is_set():
            stopped = RunStatus.CANCELLED
        elif deadline is not None and time.monotonic() >= deadline:
            stopped = RunStatus.TIMED_OUT
        if stopped is not None:
            terminate_group(proc.pid, exited, ctx.kill)
            break
    _signal_group(proc.pid, signal.SIGKILL)  # whatever the leader left behind
    code = _shell_code(proc.wait())
    if ctx.user is not None:  # and whatever left the group: found by the task's uid
        confine.end_leftovers(proc.pid, ctx.user)
    if stopped is None:
        stopped = RunStatus.COMPLETED if code == 0 else RunStatus.FAILED
    return Outcome(stopped, code, time.monotonic() - started)


def describe_outcome(outcome: Outcome, timeout_s: float | None) -> str | None:
    """The one-line error for a process outcome; None when it completed."""
    match outcome.status:
        case RunStatus.COMPLETED:
            return None
        case RunStatus.CANCELLED:
            return "cancelled: the process group was killed"
        case RunStatus.TIMED_OUT:
            return f"timed out after {timeout_s:g} s: the process group was killed"
    code = outcome.exit_code
    if code is not None and code > 128:
        return f"killed by signal {code - 128} (exit code {code})"
    return f"exited with code {code}"


def terminate_group(pgid: int, exited: threading.Event,
                    kill: threading.Event | None = None) -> None:
    """SIGTERM the group, give it KILL_GRACE_S to leave, then SIGKILL it. Once `kill` is set
    (before or during the grace) it is SIGKILLed at once."""
    if kill is None or not kill.is_set():
        _signal_group(pgid, signal.SIGTERM)
        grace_ends = time.monotonic() + KILL_GRACE_S
        while not (kill is not None and kill.is_set()):
            left = grace_ends - time.monotonic()
            if left <= 0 or exited.wait(min(left, KILL_POLL_S)):
                break
    if not exited.is_set():
        _signal_group(pgid, signal.SIGKILL)
        exited.wait(KILL_GRACE_S)


def _exit_event(pid: int) -> threading.Event:
    """An event set when `pid` exits, leaving it unreaped (a zombie) for proc.wait()."""
    exited = threading.Event()

    def wait_for_exit() -> None:
        try:
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:
            pass  # already reaped: it has exited either way
        finally:
            exited.set()

    threading.Thread(target=wait_for_exit, name=f"exit-{pid}", daemon=True).start()
    return exited


def _slice(deadline: float | None) -> float:
    if deadline is None:
        return POLL_S
    return max(0.0, min(POLL_S, deadline - time.monotonic()))


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # nobody left in the group
        os.killpg(pgid, sig)


def _shell_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode
