"""Storage roots on this worker: reading `ROOT:PATH` inputs and writing `ROOT:PATH` outputs
without ever leaving the root.

Inputs are opened as the task directory's are (paths.open_checked): the real path of the file
actually opened must lie inside the root, so a symlink that stays inside it is followed and one
that leads out is refused.

Outputs are stricter, because the worker writes there: the directories below the root are
walked one at a time, each opened with O_NOFOLLOW | O_DIRECTORY relative to the one before
(missing ones are created), so no symlink anywhere in the path is followed and a '..' could not
be either (the spec refuses it). The file is written under a temporary name in its final
directory (`.NAME.cloudq-TASK.tmp`), created with O_EXCL | O_NOFOLLOW by the worker, and FFmpeg
gets only that file's descriptor (`/dev/fd/N`), never the directory. When the task runs as a
task user, the file is lent to that user for the encode and taken back after. Only once the
encode is complete and ffprobe has read the file is it renamed to its final name, without
replacing an existing file (renameat2 RENAME_NOREPLACE, else link + unlink) unless the task
said `overwrite`. Whatever goes wrong, the temporary file is removed.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from pathlib import Path

from cloudq.errors import RunnerError
from cloudq.worker.runners.base import (
    Fault,
    RunContext,
    StorageRoot,
    WorkerFaultError,
    fault_of,
)
from cloudq.worker.runners.confine import TaskUser
from cloudq.worker.runners.paths import open_checked

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
RENAME_NOREPLACE = 1  # linux/fs.h
TEMP_SUFFIX = ".tmp"
DIR_MODE = 0o755
FILE_MODE = 0o644


def root_of(ctx: RunContext, name: str, write: bool = False) -> StorageRoot:
    """This worker's root `name`. The master placed the task here because the worker said it
    had the root, so not having it is the worker's fault."""
    root = ctx.roots.get(name)
    if root is None:
        raise WorkerFaultError(f"{ctx.worker_label} has no storage root {name!r}")
    if write and not root.writable:
        raise WorkerFaultError(f"storage root {name!r} is not an output root on {ctx.worker_label}")
    return root


def open_input(ctx: RunContext, name: str, path: str) -> tuple[int, Path]:
    """(fd, real path) of `name:path`, a regular file whose real path is inside the root."""
    root = root_of(ctx, name)
    shown = f"{name}:{path}"
    candidate = root.path / path
    if not os.path.lexists(candidate):
        raise RunnerError(f"input {shown!r} does not exist (looked in {root.path} on {ctx.worker_label})")
    return open_checked(candidate, shown, [root.path], f"its root {name} ({root.path})")


class RootOutput:
    """One output file below an output root, from its temporary name to its final one.

    create() opens the directory (made if missing) and the temporary file; lend()/take_back()
    give the file to the task user for the encode; publish() renames it into place; close()
    removes the temporary file unless it was published, and closes the descriptors.
    """

    def __init__(self, root: StorageRoot, path: str, task_id: str, overwrite: bool) -> None:
        self.root = root
        self.path = path
        self.shown = f"{root.name}:{path}"
        self.host_path = root.path / path
        self.overwrite = overwrite
        parts = path.split("/")
        self.name = parts[-1]
        self._dirs = parts[:-1]
        # NAME_MAX is 255 bytes: the final name is at most that; keep the temporary one under it.
        self.temp_name = f".{self.name[:200]}.cloudq-{task_id[:40]}{TEMP_SUFFIX}"
        self.dir_fd: int | None = None
        self.fd: int | None = None
        self.published = False

    # -------------------------------------------------------------- before the encode
    def create(self, input_fd: int | None = None) -> None:
        """Opens the directory and the temporary file; refuses what it must not replace."""
        self.dir_fd = self._open_directory()
        existing = self._stat(self.name)
        if existing is not None:
            self._check_replaceable(existing, input_fd)
        # A leftover of an attempt of this task that died with its worker: only its name is
        # removed (unlink never follows a link), then the file is made anew, ours alone.
        self._unlink(self.temp_name)
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            self.fd = os.open(self.temp_name, flags, FILE_MODE, dir_fd=self.dir_fd)
        except OSError as exc:
            raise self._error(exc, f"its temporary file {self.temp_name} cannot be created") from None

    def _open_directory(self) -> int:
        try:
            fd = os.open(self.root.path, _DIR_FLAGS)
        except OSError as exc:
            raise WorkerFaultError(f"output root {self.root.name} ({self.root.path}) cannot be "
                                   f"opened: {exc.strerror}") from None
        walked: list[str] = []
        try:
            for part in self._dirs:
                walked.append(part)
                fd = self._enter(fd, part, "/".join(walked))
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _enter(self, parent: int, part: str, where: str) -> int:
        """The directory `part` of `parent`, made if missing; never through a symlink."""
        for _ in range(2):
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=parent)
            except FileNotFoundError:
                try:
                    os.mkdir(part, DIR_MODE, dir_fd=parent)
                except FileExistsError:
                    pass  # made by someone else meanwhile: open it
                except OSError as exc:
                    raise self._error(exc, f"directory {where} cannot be created") from None
                continue
            except OSError as exc:
                info = self._stat(part, parent)
                if info is not None and stat.S_ISLNK(info.st_mode):
                    raise RunnerError(f"output {self.shown!r}: {where} is a symlink; outputs never "
                                      f"follow links") from None
                if info is not None and not stat.S_ISDIR(info.st_mode):
                    raise RunnerError(f"output {self.shown!r}: {where} is not a directory") from None
                raise self._error(exc, f"directory {where} cannot be opened") from None
            os.close(parent)
            return child
        raise RunnerError(f"output {self.shown!r}: directory {where} keeps disappearing")

    def _check_replaceable(self, existing: os.stat_result, input_fd: int | None) -> None:
        if stat.S_ISLNK(existing.st_mode):
            raise RunnerError(f"output {self.shown!r} exists and is a symlink; refusing to replace it")
        if not stat.S_ISREG(existing.st_mode):
            raise RunnerError(f"output {self.shown!r} exists and is not a regular file")
        if input_fd is not None:
            source = os.fstat(input_fd)
            if (source.st_dev, source.st_ino) == (existing.st_dev, existing.st_ino):
                raise RunnerError("the output would overwrite the input")
        if not self.overwrite:
            raise RunnerError(f"output {self.shown!r} exists; give --overwrite to replace it")

    @property
    def url(self) -> str:
        """What FFmpeg writes to and ffprobe reads: the temporary file's descriptor."""
        return f"file:/dev/fd/{self.fd}"

    @property
    def fds(self) -> list[int]:
        return [] if self.fd is None else [self.fd]

    def lend(self, user: TaskUser | None) -> None:
        """The task user may write the file (FFmpeg reopens /dev/fd/N: the file's own mode is
        checked); it never gets the directory."""
        if user is not None and self.fd is not None:
            self._chown(user.uid, user.gid)

    def take_back(self, user: TaskUser | None) -> None:
        """After the encode: the worker's again, readable by all (quality runs as the task
        user and reads it), no longer writable by the task user."""
        if self.fd is None:
            return
        if user is not None:
            self._chown(os.geteuid(), os.getegid())
        try:
            os.fchmod(self.fd, FILE_MODE)
        except OSError as exc:
            raise self._error(exc, "its mode cannot be set") from None

    def _chown(self, uid: int, gid: int) -> None:
        try:
            os.fchown(self.fd, uid, gid)  # type: ignore[arg-type]
        except OSError as exc:
            # A root-squashed NFS export, for one: the worker cannot hand the file over.
            raise WorkerFaultError(f"output {self.shown!r}: the temporary file cannot be given to "
                                   f"uid {uid}: {exc.strerror}") from None

    def size(self) -> int:
        return os.fstat(self.fd).st_size if self.fd is not None else 0

    # -------------------------------------------------------------- after the encode
    def publish(self) -> None:
        """Renames the temporary file to its final name: never over an existing file unless the
        task said overwrite. Refused if the temporary name no longer holds our file."""
        assert self.dir_fd is not None and self.fd is not None
        mine, there = os.fstat(self.fd), self._stat(self.temp_name)
        if there is None or (there.st_dev, there.st_ino) != (mine.st_dev, mine.st_ino):
            raise RunnerError(f"output {self.shown!r}: the temporary file {self.temp_name} was "
                              "replaced or removed during the encode")
        try:
            if self.overwrite:
                os.rename(self.temp_name, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
            else:
                self._rename_noreplace()
        except FileExistsError:
            raise RunnerError(f"output {self.shown!r} appeared during the encode; give --overwrite "
                              "to replace it") from None
        except OSError as exc:
            raise self._error(exc, f"{self.temp_name} cannot be renamed to {self.name}") from None
        self.published = True

    def _rename_noreplace(self) -> None:
        try:
            renameat2(self.dir_fd, self.temp_name, self.dir_fd, self.name, RENAME_NOREPLACE)  # type: ignore[arg-type]
            return
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
        # A file system without RENAME_NOREPLACE (NFS, for one): a hard link fails if the name
        # exists, which is just as atomic; then the temporary name goes.
        os.link(self.temp_name, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd,
                follow_symlinks=False)
        self._unlink(self.temp_name)

    def close(self) -> None:
        """Removes the temporary file unless it was published; closes the descriptors."""
        if self.dir_fd is not None and self.fd is not None and not self.published:
            there = self._stat(self.temp_name)
            mine = os.fstat(self.fd)
            if there is not None and (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino):
                self._unlink(self.temp_name)
        for fd in (self.fd, self.dir_fd):
            if fd is not None:
                os.close(fd)
        self.fd = self.dir_fd = None

    # -------------------------------------------------------------- helpers
    def _stat(self, name: str, dir_fd: int | None = None) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=self.dir_fd if dir_fd is None else dir_fd,
                           follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._error(exc, f"{name} cannot be looked at") from None

    def _unlink(self, name: str) -> None:
        try:
            os.unlink(name, dir_fd=self.dir_fd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise self._error(exc, f"{name} cannot be removed") from None

    def _error(self, exc: OSError, what: str) -> RunnerError:
        """A file-system error in the output root: a full or read-only disk is the worker's, a
        refusal (permissions) the task's, as everywhere (base.fault_of)."""
        kind = WorkerFaultError if fault_of(exc) == Fault.WORKER else RunnerError
        return kind(f"output {self.shown!r}: {what}: {exc.strerror or exc}")


_libc = None


def renameat2(olddirfd: int, old: str, newdirfd: int, new: str, flags: int) -> None:
    """renameat2(2); OSError(ENOSYS) where the C library does not have it."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    function = getattr(_libc, "renameat2", None)
    if function is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    if function(olddirfd, os.fsencode(old), newdirfd, os.fsencode(new), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def parse_root_flags(
    inputs: list[str], outputs: list[str]
) -> tuple[list[Path], dict[str, StorageRoot]]:
    """The worker's --input-root and --output-root flags: (unnamed input directories, named
    roots). `NAME=PATH` names a root; a plain PATH (--input-root only) is an unnamed input
    directory, as before roots had names. CloudqError for a bad name, a repeated name, a path
    that is not a directory here, an output root this worker cannot write."""
    from cloudq.errors import CloudqError
    from cloudq.specs.roots import name_problem

    plain: list[Path] = []
    named: dict[str, StorageRoot] = {}
    for flag, values, writable in (("--input-root", inputs, False), ("--output-root", outputs, True)):
        for value in values:
            name, sep, path = str(value).partition("=")
            if not sep or name.startswith("/") or name.startswith("."):
                if writable:
                    raise CloudqError(f"{flag} {value!r}: give NAME=PATH, e.g. out=/srv/encoded")
                plain.append(Path(value))
                continue
            if problem := name_problem(name):
                raise CloudqError(f"{flag} {value!r}: {problem}")
            if name in named:
                raise CloudqError(f"{flag} {value!r}: root {name!r} is given twice")
            real = Path(os.path.realpath(path or "."))
            if not path or not real.is_dir():
                raise CloudqError(f"{flag} {value!r}: {path or '(empty)'} is not a directory here")
            if writable and not os.access(real, os.W_OK | os.X_OK):
                raise CloudqError(f"{flag} {value!r}: {real} is not writable by this worker")
            named[name] = StorageRoot(name, real, writable)
    return plain, named
