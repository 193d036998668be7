"""Tab completion as a plain function of the line and a snapshot of live names: no terminal."""

from __future__ import annotations

from pathlib import Path

import pytest
from prompt_toolkit.completion import CompleteEvent, ThreadedCompleter
from prompt_toolkit.document import Document

from cloudq.commands import COMMANDS
from cloudq.shell.completion import Live, RegistryCompleter, complete_line

LIVE = Live(task_ids=("t12", "t11", "t3", "t1"), workers=("worker-1", "worker-2", "gpu-1"),
            labels=("gpu=a100", "zone=eu"), images=("alpine:latest", "docker.io/user/task:latest"),
            locks=("db", "license"))


def test_the_first_word_completes_commands_aliases_and_shell_commands() -> None:
    everything = complete_line("")
    for cmd in COMMANDS.values():
        assert cmd.name in everything and set(cmd.aliases) <= set(everything)
    assert "notices" in everything  # the shell's own
    assert complete_line("worke") == ["workers"]
    assert complete_line("workf") == ["workflow", "workflows"]
    assert complete_line("no") == ["nodes", "notices"]
    assert complete_line("frob") == []


@pytest.mark.parametrize(("line", "expected"), [
    ("task -cpu_c", ["-cpu_cores"]),
    ("task --cpu_c", ["--cpu_cores"]),
    ("task worker-1 alpine:latest -cpu_cores 2.0 -me", ["-mem", "-mem_gb"]),
    ("task --ex", ["--exec"]),
    ("queue -st", ["-state"]),
    ("logs t1 --r", ["--raw"]),
    ("quit --f", ["--force"]),
])
def test_options_complete_in_the_form_typed(line: str, expected: list[str]) -> None:
    assert complete_line(line, LIVE) == expected


def test_hidden_options_are_not_offered() -> None:
    offered = complete_line("queue --", LIVE)
    assert "--state" in offered and "--cursor" not in offered and "--offset" not in offered


@pytest.mark.parametrize(("line", "expected"), [
    ("task --queue ", ["live", "default", "batch"]),
    ("task -queue b", ["batch"]),
    ("task --priority ", ["high", "medium", "low"]),
    ("queue --state r", ["running", "retrying"]),
    ("task --scenario 720p30-h26", ["720p30-h264", "720p30-h265", "720p30-h264-nvenc",
                                    "720p30-h265-nvenc"]),
    ("task --label ", ["gpu=a100", "zone=eu"]),
    ("task --lock l", ["license"]),
    ("task --name ", []),  # a free value: nothing to offer
    ("notices ", ["on", "errors", "off"]),
])
def test_option_values(line: str, expected: list[str]) -> None:
    assert complete_line(line, LIVE) == expected


def test_task_ids_most_recent_first_and_worker_names() -> None:
    assert complete_line("show ", LIVE) == ["t12", "t11", "t3", "t1"]
    assert complete_line("logs t1", LIVE) == ["t12", "t11", "t1"]
    assert complete_line("why t3", LIVE) == ["t3"]
    assert complete_line("drain w", LIVE) == ["worker-1", "worker-2"]
    # task [WORKER] IMAGE: workers and known images; after options too
    assert complete_line("task -cpu_cores 8.0 wor", LIVE) == ["worker-1", "worker-2"]
    assert complete_line("task worker-1 alp", LIVE) == ["alpine:latest"]
    assert complete_line("task worker-1 alpine:latest ", LIVE) == []  # two words at most


def test_help_topics_and_files(tmp_path: Path) -> None:
    assert complete_line("help qu", LIVE) == ["queue", "quit"]
    (tmp_path / "jobs.txt").write_text("")
    (tmp_path / "jobs.d").mkdir()
    assert complete_line(f"submit {tmp_path}/jo", LIVE) == [f"{tmp_path}/jobs.d/", f"{tmp_path}/jobs.txt"]


def test_inside_an_open_quote_or_after_an_unknown_command_nothing_is_offered() -> None:
    assert complete_line('task --exec "echo', LIVE) == []
    assert complete_line("frobnicate -", LIVE) == []


def test_the_prompt_completer_replaces_the_word_being_typed() -> None:
    completer = ThreadedCompleter(RegistryCompleter(lambda: LIVE))
    document = Document("task -cpu_c")
    (completion,) = completer.get_completions(document, CompleteEvent(completion_requested=True))
    assert (completion.text, completion.start_position) == ("-cpu_cores", -len("-cpu_c"))
    after = document.text[:len(document.text) + completion.start_position] + completion.text
    assert after == "task -cpu_cores"
