"""docs/commands.md lists every registered command, with its aliases, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

from cloudq.commands import COMMANDS

DOC = Path(__file__).resolve().parents[2] / "docs" / "commands.md"
_ROW = re.compile(r"^\| \[`(?P<usage>[^`]+)`\]\(#(?P<anchor>[^)]+)\) \|(?P<aliases>[^|]*)\|")


def _table() -> dict[str, set[str]]:
    rows = {}
    for line in DOC.read_text().splitlines():
        if match := _ROW.match(line):
            aliases = set(re.findall(r"`([^`]+)`", match.group("aliases")))
            rows[match.group("usage").split()[0]] = aliases
    return rows


def test_the_command_table_lists_every_registered_command_and_its_aliases():
    table = _table()
    assert set(table) == set(COMMANDS), "docs/commands.md and the registry disagree"
    for name, cmd in COMMANDS.items():
        assert table[name] == set(cmd.aliases), f"{name}: aliases in the docs differ"


def test_every_command_has_a_section_the_table_links_to():
    text = DOC.read_text()
    headings = {_anchor(h) for h in re.findall(r"^#{2,3} (.+)$", text, re.MULTILINE)}
    for line in text.splitlines():
        if match := _ROW.match(line):
            assert match.group("anchor") in headings, f"no section for {match.group('usage')}"


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as dashes."""
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")
