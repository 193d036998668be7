"""The renderer: control sequences from task data never reach the terminal, errors stay short,
and paged JSON is the same text as one reply's."""

from __future__ import annotations

import json
import re

import pytest

from cloudq.commands import Result
from cloudq.render import (
    ERROR_CHARS,
    json_list_chunks,
    neutralise,
    render,
    render_error,
    render_json,
    text_width,
)

# Anything a terminal acts on: C0 but newline and tab, DEL, C1. What the renderer prints must have none.
ACTIVE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")

TITLE_BEL = "\x1b]0;PWNED\x07"  # OSC 0: set the window title, ended by BEL
TITLE_ST = "\x1b]2;PWNED\x1b\\"  # OSC 2, ended by ST (ESC \)
CLEAR = "\x1b[2J"  # CSI: erase the screen
C1_CLEAR = "\x9b2J"  # the same, with the 8-bit CSI
FAKE_LINE = "all good\rFAKE: t1 completed"  # \r returns the cursor and overwrites the line
HOSTILE = [TITLE_BEL, TITLE_ST, CLEAR, C1_CLEAR, FAKE_LINE, "\x1b", "\x07\x08\x7f\x00", "\x1bc"]


@pytest.mark.parametrize(("text", "shown"), [
    (CLEAR, "\\x1b[2J"),
    (TITLE_BEL, "\\x1b]0;PWNED\\x07"),
    (TITLE_ST, "\\x1b]2;PWNED\\x1b\\"),
    (C1_CLEAR, "\\x9b2J"),
    (FAKE_LINE, "all good\\rFAKE: t1 completed"),
    ("lone \x1b at the end \x1b", "lone \\x1b at the end \\x1b"),
    ("bell\x07 bs\x08 del\x7f nul\x00", "bell\\x07 bs\\x08 del\\x7f nul\\x00"),
    ("two\nlines\tand a tab", "two\nlines\tand a tab"),
    ("plain text, ünïcödé, 🙂", "plain text, ünïcödé, 🙂"),
])
def test_neutralise_shows_control_characters_as_escapes(text: str, shown: str) -> None:
    assert neutralise(text) == shown
    assert not ACTIVE.search(neutralise(text))


def test_cells_keep_one_line() -> None:
    assert neutralise("a\nb\tc\r", one_line=True) == "a\\nb\\tc\\r"


def test_every_c0_c1_and_del_character_is_neutralised() -> None:
    every = "".join(chr(c) for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)])
    out = neutralise(every)
    assert not ACTIVE.search(out)
    assert out.count("\\") == len(every) - 2  # all but newline and tab
    print(f"\n{len(every)} control characters in, {len(out)} visible characters out")


def _hostile_result(vertical: bool) -> Result:
    rows = [[f"k{i}", text] for i, text in enumerate(HOSTILE)] if vertical else \
        [[f"t{i}", text, "queued", text] for i, text in enumerate(HOSTILE)]
    return Result(title=f"Task {TITLE_BEL}", headers=["id", f"name{CLEAR}", "state", "reason"],
                  rows=rows, status=f"{FAKE_LINE}\n{C1_CLEAR}", vertical=vertical, data=HOSTILE)


@pytest.mark.parametrize("width", [200, 40])  # 40: too wide, printed as key/value blocks
@pytest.mark.parametrize("vertical", [False, True])
def test_rendered_results_carry_no_control_sequence(vertical: bool, width: int) -> None:
    text = render(_hostile_result(vertical), width=width)
    assert not ACTIVE.search(text), repr(text)
    assert "\\x1b]0;PWNED\\x07" in text and "\\rFAKE" in text
    # A newline inside a cell never makes a line of its own.
    assert not any(line.startswith("FAKE") for line in text.splitlines())


def test_json_output_escapes_control_characters() -> None:
    text = render_json(_hostile_result(False))
    assert not ACTIVE.search(text)
    assert json.loads(text) == HOSTILE


def test_raw_result_is_printed_unchanged() -> None:
    log = f"{TITLE_BEL}{CLEAR}{FAKE_LINE}\n"
    assert render(Result(status=log, raw=True)) == log


def test_errors_are_neutralised_and_capped() -> None:
    assert render_error(f"no task {TITLE_BEL!s}") == "error: no task \\x1b]0;PWNED\\x07"
    huge = "x" * 200_000
    text = render_error(f"unknown command {huge!r}; type `help` for the list")
    print(f"\nan error echoing a 200,000-character word prints {len(text)} characters")
    assert len(text) < 300 and text.endswith("... type `help` for the list")
    many = render_error(" ".join(["word"] * 100_000))
    assert len(many) <= ERROR_CHARS + 60 and many.endswith("more characters)")


@pytest.mark.parametrize("items", [[], [1], [{"a": [1, {"b": None}], "c": "\x1b"}, "x", [], {}],
                                   [{"id": f"t{i}", "spec": {"argv": ["echo", str(i)]}} for i in range(5)]])
def test_json_list_chunks_match_one_dump(items: list) -> None:
    assert "".join(json_list_chunks(iter(items))) == json.dumps(items, indent=2)


LONG_REASON = "Fits on none of 3 workers. worker-1: Insufficient CPU: worker has 2.00 available, " \
    "task requires 8.00; worker-2: Insufficient memory: worker has 1.0 GB available, task requires 16.0 GB"


def _queue(reason: str = LONG_REASON) -> Result:
    return Result(title="2 unfinished tasks", headers=["id", "kind", "state", "worker", "reason"],
                  rows=[["t1", "exec", "queued", "", reason], ["t2", "container", "running", "worker-1", "Running"]])


@pytest.mark.parametrize("width", [80, 120])
def test_a_long_reason_is_cut_before_the_table_changes_layout(width: int) -> None:
    text = render(_queue(), width=width)
    print(f"\n{text}")
    lines = text.splitlines()
    assert "RECORD" not in text and max(map(len, lines)) <= width
    assert lines[1].split() == ["id", "kind", "state", "worker", "reason"]
    row = next(line for line in lines if line.startswith("t1"))
    assert row.endswith("…") and "Fits on none of 3 workers" in row


def test_a_table_that_cannot_fit_prints_records() -> None:
    text = render(_queue(), width=30)
    assert text.splitlines()[1] == "-[ RECORD 1 ]" + "-" * 17
    assert "state   queued" in text


def test_records_on_demand_and_colours_only_when_asked() -> None:
    text = render(_queue("short"), width=200, vertical=True)
    assert "-[ RECORD 2 ]" in text and "worker  worker-1" in text
    plain = render(_queue("short"), width=200)
    assert "\x1b" not in plain
    coloured = render(_queue("short"), width=200, colour=True)
    assert "\x1b[33mqueued\x1b[0m" in coloured and "\x1b[32mrunning\x1b[0m" in coloured
    # Colour codes do not count as width: the columns line up as without them.
    strip = re.compile(r"\x1b\[[0-9;]*m")
    assert strip.sub("", coloured) == plain
    # And they are the only escapes: task data is neutralised before they are added.
    hostile = render(_queue(f"{CLEAR}boom"), width=200, colour=True)
    assert "\\x1b[2J" in hostile and not ACTIVE.search(strip.sub("", hostile))


def test_headers_wrap_before_free_text_is_cut_short() -> None:
    result = Result(headers=["id", "cpu/mem/disk/gpu", "in queue", "reason"],
                    rows=[["t1", "2/0/0/0", "4s", "x" * 30 + " the end!"]])
    text = render(result, width=70)  # 78 on one line
    print(f"\n{text}")
    lines = text.splitlines()
    assert lines[0].split() == ["id", "cpu/mem/", "in", "reason"]
    assert lines[1].split() == ["disk/gpu", "queue"]
    assert max(map(len, lines)) <= 70 and lines[-1].endswith("the end!")  # the reason is whole


# A realistic queue, through the registry: long reasons, long image names, GPU tasks, a task
# that never fits, one pinned to a worker that has not registered, one retrying on a lost worker.
QUEUE_HEADERS = ["id", "kind", "target", "image", "owner", "needs", "state", "class", "wait",
                 "passes", "reason"]
LONG_IMAGE = "registry.example.com/ml-team/bert-large-finetune-with-a-long-name:2024.06.01-cuda12"


def _real_queue() -> Result:
    from cloudq.commands import Context, dispatch, split_line
    from cloudq.master.core import Master, MasterConfig
    from tests.unit.test_master_core import Clock

    clock = Clock()
    master = Master(config=MasterConfig(lease_s=10.0), clock=clock)
    facts = {"cpu_cores": 16.0, "mem_gb": 64.0, "storage_gb": 500.0, "max_tasks": 1,
             "capabilities": ["docker", "ffmpeg"], "gpus": [{"index": 0, "name": "A100", "mem_gb": 40.0}]}
    for name in ("gpu-worker-1", "gpu-worker-2"):
        master.register({"name": name, **facts}, [])

    def run(line: str) -> Result:
        return dispatch(Context(master), split_line(line))

    run(f"task {LONG_IMAGE} -cpu_cores 8 -mem 32 -gpu 1 --owner alice --queue live --priority high")
    run("task ghcr.io/acme/encoder:1.4 -cpu 12 -mem 8 -storage 50 --owner ann")
    run("task --exec 'python train.py --epochs 100 --lr 0.001 --data /mnt/datasets/imagenet' -cpu 4")
    run("task --scenario 1080p60-h265 -cpu 8 --owner bob --queue batch --priority low")
    run("task worker-9 --scenario 720p30-h264 --owner dave")
    run("task --noop -cpu 64 -mem 512 -gpu 4 --owner carol --queue batch")
    clock.now += 64
    master.heartbeat("gpu-worker-1", {})
    clock.now += 10
    master.tick()  # gpu-worker-2 missed its lease: its task retries, with the reason why
    return run("queue")


@pytest.mark.parametrize("width", [80, 200])
def test_the_queue_is_a_table_of_every_column_at_80_and_200_columns(width: int) -> None:
    result = _real_queue()
    assert result.headers == QUEUE_HEADERS
    text = render(result, width=width)
    print(f"\n{text}")
    lines = text.splitlines()
    assert "RECORD" not in text and max(map(len, lines)) <= width
    assert lines[1].split() == QUEUE_HEADERS  # every header, whole, on one line
    assert set(lines[2]) == {"-", " "}
    rows = lines[3:-1]
    assert [row.split()[0] for row in rows] == [view["id"] for view in result.data]  # one line each
    states = {row.split()[0]: row for row in rows}
    assert all(view["state"] in states[view["id"]] for view in result.data)
    never = next(v["id"] for v in result.data if v["never_fits"])
    assert "Never" in states[never]
    if width == 200:
        gpu = next(v["id"] for v in result.data if v["resources"]["gpus"] == 4)
        assert "64c 512G 4g" in states[gpu] and "batch/med" in states[gpu]
        assert "12c 8G d50G" in text and "live/hi" in text and "1m14s" in text
        assert any(row.endswith("…") for row in rows)  # a long reason is cut, not the layout


def test_free_text_is_cut_before_names_and_names_in_the_middle() -> None:
    result = Result(headers=["id", "image", "state", "reason"],
                    rows=[["t1", LONG_IMAGE, "queued", "x" * 100 + " the end"]])
    text = render(result, width=150)
    row = text.splitlines()[-1]
    assert LONG_IMAGE in row and row.endswith("…") and max(map(len, text.splitlines())) <= 150
    narrow = render(result, width=60).splitlines()[-1]
    print(f"\n{narrow}")
    image = narrow.split()[1]
    assert "…" in image and image.startswith("regi") and image.endswith("cuda12")  # middle cut
    assert len(narrow) <= 60


def test_the_json_of_a_queue_is_the_task_views_not_the_cells() -> None:
    result = _real_queue()
    data = json.loads(render_json(result))
    assert [v["id"] for v in data] == [row[0] for row in result.rows]
    views = {v["id"]: v for v in data}
    assert views["t1"]["resources"]["gpus"] == 1 and views["t1"]["spec"]["image"] == LONG_IMAGE
    assert (views["t1"]["queue"], views["t1"]["priority"]) == ("live", "high")
    assert {"in_queue_s", "placement_attempts", "never_fits", "reason"} <= set(views["t6"])


def test_wide_characters_take_two_columns_and_stay_aligned() -> None:
    result = Result(headers=["id", "name", "state"],
                    rows=[["t1", "漢字の名前" * 6, "queued"], ["t2", "🙂 plain", "running"]])
    for width in (200, 30):
        lines = render(result, width=width).splitlines()
        print("\n" + "\n".join(lines))
        assert max(text_width(line) for line in lines) <= width
        # the state column starts at the same terminal column on every row
        starts = {text_width(line[:line.rindex(" ") + 1]) for line in lines[2:]}
        assert len(starts) == 1, lines
