"""Output taller than the terminal goes through a pager, as pgcli does: `less -SRXF` (long
lines scroll sideways instead of wrapping, colours pass, the screen is not cleared on exit,
and less leaves at once when the text fits after all), plus `K`, so Ctrl-C leaves the pager
as it leaves any other command's output.

`$CLOUDQ_PAGER` chooses another pager (`off` or empty for none), then `$PAGER`; `$LESS`, when
set, replaces the options. Not a terminal (a pipe, a file): no pager.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from typing import TextIO

LESS_OPTIONS = "-SRXFK"
OFF = ("", "off", "none", "no")


def pager_argv() -> list[str] | None:
    """The pager to run, or None for none."""
    chosen = os.environ.get("CLOUDQ_PAGER")
    if chosen is not None:
        return None if chosen.strip().lower() in OFF else shlex.split(chosen)
    chosen = os.environ.get("PAGER")
    if chosen:
        return shlex.split(chosen)
    return ["less"] if shutil.which("less") else None


def too_tall(text: str, rows: int) -> bool:
    """Taller than the terminal, keeping a row for the prompt after it."""
    return text.count("\n") + 1 > rows - 1


def show(text: str, out: TextIO | None = None) -> None:
    """Prints `text`, through the pager when it is taller than the terminal. Ctrl-C ends the
    pager (KeyboardInterrupt reaches the caller once the pager has gone, terminal restored)."""
    out = out or sys.stdout
    argv = pager_argv() if out.isatty() else None
    if argv is None or not too_tall(text, shutil.get_terminal_size().lines):
        print(text, file=out, flush=True)
        return
    env = {**os.environ, "LESS": os.environ.get("LESS") or LESS_OPTIONS}
    out.flush()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, env=env)
    except OSError:  # no such pager: print it plainly
        print(text, file=out, flush=True)
        return
    interrupted = False
    try:
        try:
            assert proc.stdin is not None
            proc.stdin.write(text.encode("utf-8", errors="replace") + b"\n")
            proc.stdin.close()
        except BrokenPipeError:
            pass  # left the pager before reading it all
        proc.wait()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if proc.poll() is None:
            if interrupted:
                proc.terminate()
            proc.wait()
    if interrupted:
        raise KeyboardInterrupt
