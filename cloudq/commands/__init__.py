"""Operator commands: importing this package registers every command in the registry."""

from cloudq.commands import cluster, controls, history, tasks  # noqa: F401 - imported for their registrations
from cloudq.commands.registry import COMMANDS, Context, Result, dispatch, parse, split_line

__all__ = ["COMMANDS", "Context", "Result", "dispatch", "parse", "split_line"]
