"""Path rules for runners: everything a task writes stays inside its own directory.

The spec validators already refused absolute paths, '..' and protocols; these checks look at
the real file system, where a symlink can still point anywhere.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cloudq.errors import RunnerError
from cloudq.worker.runners import confine
from cloudq.worker.runners.base import Fault, WorkerFaultError, fault_of
from cloudq.worker.runners.confine import TaskUser


def inside(path: str | Path, root: str | Path) -> bool:
    """True if the real `path` is `root` or below it (both already resolved)."""
    path, root = str(path), str(root)
    return path == root or path.startswith(root.rstrip("/") + "/")


def check_work_dir(work_dir: Path) -> Path:
    """The task directory, resolved; refused if it is a symlink or not a directory.

    The caller (the worker) creates it, so a problem with it is the worker's fault; a symlink
    in its place could send the task's output anywhere.
    """
    try:
        st = os.lstat(work_dir)
    except OSError as exc:
        raise WorkerFaultError(f"task directory {work_dir} is not usable: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise WorkerFaultError(f"task directory {work_dir} is a symlink; refusing to write through it")
    if not stat.S_ISDIR(st.st_mode):
        raise WorkerFaultError(f"task directory {work_dir} is not a directory")
    return Path(os.path.realpath(work_dir))


def task_subdir(work_dir: Path, relative: str | None) -> Path:
    """`relative` below the task directory, created if missing, never outside it."""
    root = check_work_dir(work_dir)
    if not relative:
        return root
    target = root / relative
    # Check before mkdir too: a planted symlink must not make us create directories elsewhere.
    if not inside(os.path.realpath(target), root):
        raise RunnerError(f"working directory {relative!r} resolves outside the task directory")
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        message = f"cannot create working directory {relative!r}: {exc.strerror}"
        raise (WorkerFaultError if fault_of(exc) == Fault.WORKER else RunnerError)(message) from None
    real = os.path.realpath(target)
    if not inside(real, root) or not os.path.isdir(real):
        raise RunnerError(f"working directory {relative!r} resolves outside the task directory")
    return Path(real)


def give_task_dir(work_dir: Path, user: TaskUser, cwd: Path | None = None) -> None:
    """The task directory (0700), and the working directory made in it, become the user's."""
    try:
        confine.own_task_dir(work_dir, user)
        if cwd is not None:
            confine.own_below(Path(os.path.realpath(work_dir)), cwd, user)
    except OSError as exc:
        raise WorkerFaultError(f"task directory {work_dir} cannot be given to {user.name}: "
                               f"{exc.strerror or exc}") from None


def output_path(work_dir: Path, name: str) -> Path:
    """Where an output file named `name` goes; refused if something already there is a symlink
    (FFmpeg would write through it) or is not a regular file."""
    root = check_work_dir(work_dir)
    target = root / name
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return target
    if stat.S_ISLNK(st.st_mode):
        raise RunnerError(
            f"output {name!r} is a symlink in the task directory; refusing to follow it"
        )
    if not stat.S_ISREG(st.st_mode):
        raise RunnerError(f"output {name!r} exists and is not a regular file")
    return target


def open_input(name: str, work_dir: Path, roots: list[Path]) -> tuple[int, Path]:
    """Open an input file for reading and return (fd, its real path).

    A relative name is looked up in the task directory, then in each input root. The check is
    made on the file actually opened (/proc/self/fd), so swapping in a symlink between check and
    use gains nothing; FFmpeg is then given /dev/fd/N, never the user's string.
    """
    allowed = [check_work_dir(work_dir)] + [Path(os.path.realpath(r)) for r in roots]
    candidates = [Path(name)] if name.startswith("/") else [base / name for base in allowed]
    for candidate in candidates:
        if os.path.lexists(candidate):
            return open_checked(candidate, name, allowed)
    raise RunnerError(f"input {name!r} was not found in the allowed input directories")


def open_checked(
    candidate: Path, name: str, allowed: list[Path], where: str = ""
) -> tuple[int, Path]:
    """Open `candidate` for reading if it, and the file really opened, lie inside `allowed` and
    it is a regular file; (fd, its real path). `name` is how messages call it, `where` what
    `allowed` is (default: the input directories)."""
    # Checked before opening too: opening a device or FIFO elsewhere can have effects.
    _check_allowed(os.path.realpath(candidate), name, allowed, where)
    try:
        fd = os.open(candidate, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise RunnerError(f"input {name!r} cannot be opened: {exc.strerror}") from None
    try:
        real = os.readlink(f"/proc/self/fd/{fd}")
        _check_allowed(real, name, allowed, where)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise RunnerError(f"input {name!r} is not a regular file")
    except BaseException:
        os.close(fd)
        raise
    os.set_blocking(fd, True)
    return fd, Path(real)


def _check_allowed(real: str, name: str, allowed: list[Path], where: str = "") -> None:
    if not any(inside(real, root) for root in allowed):
        where = where or "the allowed input directories on this worker"
        raise RunnerError(f"input {name!r} is outside {where}")
