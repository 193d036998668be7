"""Operator commands: importing this package registers every command in the registry."""

from cloudq.commands import (  # noqa: F401 - imported for their registrations
    cluster,
    controls,
    history,
    tasks,
    workflows,
)
from cloudq.commands.registry import COMMANDS, Context, Result, dispatch, parse, split_line

__all__ = ["COMMANDS", "Context", "Result", "dispatch", "parse", "split_line"]
