"""Confining exec and ffmpeg tasks: who their processes run as, and ending all of them.

A worker running as root starts a task's processes as an unprivileged user (--exec-user,
default nobody), or with --exec-uid-base N as uid N + slot, a uid of its own for each task
running at once. Such a process cannot read the worker's TLS key (0600, root), its environment
(/proc/PID/environ of a root process), nor, with a uid per slot, another task's directory
(0700, owned by that task's uid). A worker that is not root runs tasks as itself.

Ending a task ends every process it started, even one that left the task's process group
(setsid, a double fork). The worker is a child subreaper, so such a process is re-parented to
the worker rather than to init: every process a task starts stays in the worker's process
tree, running as the task's uid, which it cannot change. When a task ends, every process of
the worker's tree with that uid is SIGKILLed, except the trees of other tasks still running as
the same uid. That needs no cgroup file system, no delegation and no helper process, and works
the same on cgroup v1 and v2 hosts and inside containers. With one uid shared by all tasks
(the default), a process that one task detached and that is no longer below its task's leader
cannot be told from another running task's: it is ended when any task of that uid ends. A uid
per slot makes the attribution exact.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import pwd
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from cloudq.errors import CloudqError

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
END_WAIT_S = 5.0  # how long the kernel gets to end what a task left behind
_POLL_S = 0.01

_lock = threading.Lock()  # task starts and sweeps: a sweep never sees a half-started task
_leaders: dict[int, int] = {}  # pid -> uid of each running task's process group leader
_subreaper = False


@dataclass(frozen=True)
class TaskUser:
    """The identity a task's processes run as."""

    uid: int
    gid: int
    name: str  # for messages

    def for_slot(self, uid_base: int | None, slot: int) -> TaskUser:
        """The user of one task slot: this one, or uid_base + slot with this user's group."""
        if uid_base is None:
            return self
        return TaskUser(uid_base + slot, self.gid, f"uid {uid_base + slot}")


def task_user(name: str) -> TaskUser | None:
    """--exec-user resolved at worker start; None when the worker is not root (then tasks run
    as the worker itself). A user that does not exist is an error at start, not at a task."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except KeyError:
        raise CloudqError(f"--exec-user {name!r}: no such user on this machine; create it or "
                          f"name another (tasks of a root worker never run as root)") from None
    if entry.pw_uid == 0:
        raise CloudqError(f"--exec-user {name!r} is root; tasks must run as an unprivileged user")
    return TaskUser(entry.pw_uid, entry.pw_gid, entry.pw_name)


def unreachable(work_dir: Path, user: TaskUser) -> str | None:
    """Why the task user cannot reach --work-dir by its path, or None. Tasks still start there
    (the worker enters the directory before it drops to the task user), but a task that uses
    the absolute path ($HOME, $CLOUDQ_WORK_DIR) is refused by a parent directory."""
    path = Path(os.path.realpath(work_dir))
    for directory in [path, *path.parents]:
        st = os.stat(directory)
        if st.st_uid == user.uid:
            allowed = st.st_mode & stat.S_IXUSR
        elif st.st_gid == user.gid:
            allowed = st.st_mode & stat.S_IXGRP
        else:
            allowed = st.st_mode & stat.S_IXOTH
        if not allowed:
            return (f"--work-dir {work_dir}: tasks run as {user.name}, who may not enter "
                    f"{directory} (mode {stat.filemode(st.st_mode)}), so $HOME and "
                    f"$CLOUDQ_WORK_DIR will not work in tasks; use a directory whose parents "
                    f"others may enter (o+x)")
    return None


def become_subreaper() -> None:
    """Orphans of our tasks become our children (not init's), so they stay findable."""
    global _subreaper
    if _subreaper:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")
    _subreaper = True


def own_task_dir(work_dir: Path, user: TaskUser) -> None:
    """The task directory becomes the task user's, mode 0700: nobody else's tasks may look in."""
    fd = os.open(work_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchown(fd, user.uid, user.gid)
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def own_below(root: Path, target: Path, user: TaskUser) -> None:
    """Directories the worker made between `root` and `target` (both real paths) become the
    task user's, so the task can write in its working directory."""
    for directory in [target, *target.parents]:
        if directory == root or root not in directory.parents:
            return
        os.chown(directory, user.uid, user.gid, follow_symlinks=False)


def spawn(start: Callable[[], subprocess.Popen[bytes]], user: TaskUser) -> subprocess.Popen[bytes]:
    """Runs `start` (which starts the task's leader as `user`) and records the leader, so that
    sweeps for other tasks of the same uid spare its tree."""
    become_subreaper()
    with _lock:
        proc = start()
        _leaders[proc.pid] = user.uid
        return proc


def end_leftovers(leader: int, user: TaskUser) -> int:
    """Called once the task's leader is reaped: SIGKILLs what is left of the task (processes of
    the worker's tree with the task's uid, outside other running tasks' trees), reaps those
    re-parented to us, and returns how many there were."""
    with _lock:
        _leaders.pop(leader, None)
    ended: set[int] = set()
    deadline = time.monotonic() + END_WAIT_S
    while True:
        with _lock:  # no task of this uid starts while we choose what to kill
            left = _leftovers(user.uid)
            for proc in left:
                with contextlib.suppress(psutil.Error):
                    if proc.status() != psutil.STATUS_ZOMBIE:
                        proc.send_signal(signal.SIGKILL)  # psutil checks it is still that process
                        ended.add(proc.pid)
        _reap(left)
        if not left:
            break
        if time.monotonic() > deadline:
            log.warning("%d process(es) of %s outlived their task's end by %.0f s: %s", len(left),
                        user.name, END_WAIT_S, [p.pid for p in left])
            break
        time.sleep(_POLL_S)  # the kernel ends SIGKILLed processes asynchronously
    if ended:
        log.info("ended %d process(es) that a task of %s left behind", len(ended), user.name)
    return len(ended)


def _leftovers(uid: int) -> list[psutil.Process]:
    """Processes below us running as `uid` that belong to no running task (caller holds _lock).

    The candidates are listed first, then each one's ancestry is read: a process a running
    task forks in the meantime is either not a candidate or is found under its leader. (Listing
    the running tasks' trees first would miss a child forked between the two reads, and kill
    it.)"""
    leaders = {pid for pid, leader_uid in _leaders.items() if leader_uid == uid}
    found = []
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if proc.uids().real != uid or proc.pid in leaders:
                continue
            if not any(parent.pid in leaders for parent in proc.parents()):
                found.append(proc)
    return found


def _reap(procs: list[psutil.Process]) -> None:
    """Collects the exit of those that are our own children (a subreaper must, or they stay
    zombies); none of them is a task leader, which its runner reaps itself."""
    me = os.getpid()
    for proc in procs:
        with contextlib.suppress(psutil.Error, ChildProcessError):
            if proc.ppid() == me:
                os.waitpid(proc.pid, os.WNOHANG)
