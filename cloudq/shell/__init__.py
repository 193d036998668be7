"""The `master>` shell: a prompt-toolkit prompt over the shared command registry.

Ctrl-C at the prompt cancels the line; during a command it stops the shell's wait, never a
change to the master halfway (jobs.py). Ctrl-D leaves. An error prints in red and the loop
goes on.
"""

from cloudq.shell.completion import RegistryCompleter, complete_line
from cloudq.shell.loop import run_shell

__all__ = ["RegistryCompleter", "complete_line", "run_shell"]
