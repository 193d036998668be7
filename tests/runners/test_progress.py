"""FFmpeg -progress parsing, with a fake clock: percentages, throttling, a failing callback."""

from __future__ import annotations

from cloudq.worker.runners.progress import ProgressParser


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def block(out_time_us: int | str, fps: str = "60.0", speed: str = "2.0x", end: bool = False):
    return [
        b"frame=10\n",
        f"fps={fps}\n".encode(),
        f"out_time_us={out_time_us}\n".encode(),
        f"speed={speed}\n".encode(),
        b"progress=end\n" if end else b"progress=continue\n",
    ]


def test_blocks_become_reports():
    reports: list[dict] = []
    clock = Clock()
    parser = ProgressParser(4.0, reports.append, clock)
    parser.feed_lines(block("N/A", fps="0.00", speed="N/A"))
    clock.now = 0.5
    parser.feed_lines(block(1_000_000))
    clock.now = 1.0
    parser.feed_lines(block(4_000_000, end=True))
    assert [r["percent"] for r in reports] == [0.0, 25.0, 100.0]
    assert reports[0]["speed"] is None and reports[0]["out_time_s"] is None
    assert reports[1] == {"percent": 25.0, "fps": 60.0, "speed": 2.0, "out_time_s": 1.0,
                          "done": False}  # fmt: skip
    assert reports[-1]["done"] is True


def test_at_most_about_two_reports_a_second_but_the_end_always():
    reports: list[dict] = []
    clock = Clock()
    parser = ProgressParser(10.0, reports.append, clock)
    for i in range(10):  # ten blocks within 0.1 s
        clock.now = i * 0.01
        parser.feed_lines(block(i * 100_000))
    parser.feed_lines(block(1_000_000, end=True))
    assert [r["percent"] for r in reports] == [0.0, 100.0]
    assert parser.last["done"]


def test_percent_never_goes_backwards_and_stays_below_100_until_the_end():
    reports: list[dict] = []
    clock = Clock()
    parser = ProgressParser(1.0, reports.append, clock)
    for t, us in enumerate([800_000, 500_000, 2_000_000]):
        clock.now = t
        parser.feed_lines(block(us))
    assert [r["percent"] for r in reports] == [80.0, 80.0, 99.9]


def test_unknown_length_gives_no_percent():
    reports: list[dict] = []
    parser = ProgressParser(None, reports.append)
    parser.feed_lines(block(1_000_000))
    assert reports[0]["percent"] is None and reports[0]["out_time_s"] == 1.0


def test_a_failing_callback_does_not_stop_the_parser():
    calls = []

    def broken(report: dict) -> None:
        calls.append(report)
        raise RuntimeError("boom")

    clock = Clock()
    parser = ProgressParser(1.0, broken, clock)
    parser.feed_lines(block(100_000))
    clock.now = 1.0
    parser.feed_lines(block(1_000_000, end=True))
    assert len(calls) == 2
    assert parser.last["percent"] == 100.0
