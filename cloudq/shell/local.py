"""Commands of the `master>` shell itself, not of the master: they change what this terminal
shows (notices) or how it leaves (quit --force), so they are not in the shared registry, which
`cloudq ctl` and the master's RPC service also serve.

Their parsers are CommandParsers like the registry's, so a mistake reads the same, and the
completer offers their options as it offers the registry's.
"""

from __future__ import annotations

from cloudq.commands.registry import CommandParser

NOTICE_MODES = ("on", "errors", "off")


def _notices_parser() -> CommandParser:
    parser = CommandParser(prog="notices", add_help=False,
                           description="Which notices print above the prompt.")
    parser.add_argument("mode", nargs="?", choices=NOTICE_MODES,
                        help="on: every notice; errors: failures, dead tasks and lost or "
                             "quarantined workers only; off: none (default: show the mode)")
    return parser


def _quit_parser() -> CommandParser:
    parser = CommandParser(prog="quit", add_help=False,
                           description="Leave the shell and stop the master.")
    parser.add_argument("--force", "-force", "-f", action="store_true",
                        help="do not ask, even when tasks are running")
    return parser


LOCAL: dict[str, CommandParser] = {"notices": _notices_parser(), "quit": _quit_parser()}
QUIT_WORDS = ("quit", "exit")  # the registry's quit and its alias: the shell asks before either
