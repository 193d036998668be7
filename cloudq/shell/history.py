"""The prompt's history file.

It holds command lines, task arguments and environment included, so it is readable by its
owner only (0600, also when it existed before with wider permissions). A line enters it only
once it has parsed: a refused line (a typo, a 200 KB paste) is neither written nor recalled.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

from prompt_toolkit.history import FileHistory

MODE = 0o600


class ShellHistory(FileHistory):
    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self.path = path
        self._open().close()
        os.chmod(path, MODE)  # a file made before this version may be 0644

    def append_string(self, string: str) -> None:
        """The prompt calls this when a line is entered: ignored here; the shell calls `keep`
        once it knows the line parses."""

    def keep(self, line: str) -> None:
        super().append_string(line)  # into this session's memory, and through store_string

    def store_string(self, string: str) -> None:
        # FileHistory's format, written through a descriptor made with mode 0600.
        with self._open() as out:
            out.write(f"\n# {datetime.datetime.now()}\n".encode())
            for line in string.split("\n"):
                out.write(f"+{line}\n".encode("utf-8", errors="replace"))

    def _open(self):  # type: ignore[no-untyped-def]
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, MODE)
        return os.fdopen(fd, "ab")
