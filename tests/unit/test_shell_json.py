"""`--json` in the shell: the flag is taken out of the line anywhere, as `cloudq ctl` does, and
Tab offers it."""

from __future__ import annotations

from cloudq.shell.completion import complete_line
from cloudq.shell.loop import json_request


def test_json_is_taken_from_anywhere_in_the_line() -> None:
    assert json_request(["queue", "--json", "--state", "queued"]) == (["queue", "--state", "queued"], True)
    assert json_request(["-json", "workers"]) == (["workers"], True)
    assert json_request(["logs", "t1"]) == (["logs", "t1"], False)
    assert json_request(["task", "--exec", "echo --json"]) == (["task", "--exec", "echo --json"], False)


def test_tab_offers_json() -> None:
    assert "--json" in complete_line("queue --js")
    assert "-json" in complete_line("show t1 -j")
    assert "--json" not in complete_line("notices --j")  # the shell's own commands: no data
