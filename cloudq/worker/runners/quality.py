"""Quality scores of an encode: FFmpeg's ssim, psnr and (where it has it) libvmaf filters, run
after the encode on the output against its source.

The source goes through the same scaling the encode did (fit inside the frame keeping the
aspect ratio, padded, resampled to the scenario's rate), so the two are compared frame for frame
at the same size; for the synthetic source the same test pattern is made again. Both streams
start at time 0 (setpts), the comparison ends with the shorter one. The filters pass their
first input through, so they are chained: one decode of each file, whatever the metrics.

The scores are the filters' own summaries on FFmpeg's log: SSIM `All:` (0 to 1), PSNR
`average:` (dB; identical frames, infinite, are recorded as MAX_PSNR_DB), VMAF `VMAF score:`
(0 to 100). FFmpeg runs as the task's process does (the task user, its own process group,
cancel and the task's time limit), and reports progress, so a long measurement is not taken
for a stall.
"""

from __future__ import annotations

import re
import subprocess
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from cloudq.errors import RunnerError
from cloudq.specs.scenarios import Scenario
from cloudq.worker.runners.base import RunContext, RunStatus, WorkerFaultError
from cloudq.worker.runners.ffmpeg_args import input_url
from cloudq.worker.runners.process import describe_outcome, start, supervise
from cloudq.worker.runners.progress import ProgressParser

FILTERS = {"ssim": "ssim", "psnr": "psnr", "vmaf": "libvmaf"}
MAX_PSNR_DB = 100.0
READER_JOIN_S = 5.0
_SCORES = {
    "ssim": re.compile(r"\bSSIM Y:.*\bAll:(?P<value>[0-9.]+|inf)"),
    "psnr": re.compile(r"\bPSNR y:.*\baverage:(?P<value>[0-9.]+|inf)"),
    "vmaf": re.compile(r"\bVMAF score[:=]\s*(?P<value>[0-9.]+)"),
}
_DIGITS = {"ssim": 5, "psnr": 3, "vmaf": 3}


class QualityError(RunnerError):
    """The measurement did not give the scores: FFmpeg failed or printed none (`failed`), or it
    was cancelled or ran out of the task's time (`status` says which)."""

    def __init__(self, message: str, status: RunStatus = RunStatus.FAILED) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Measure:
    """What one measurement compares."""

    scenario: Scenario
    metrics: tuple[str, ...]
    output_url: str  # the encoded file
    source_fd: int | None  # the input file; None: the synthetic source
    duration_s: float | None  # how much of the source was encoded; None: all of it


def build_argv(measure: Measure, ffmpeg: str = "ffmpeg") -> list[str]:
    sc = measure.scenario
    if measure.source_fd is None:
        length = f":duration={measure.duration_s:.3f}" if measure.duration_s is not None else ""
        source = ["-f", "lavfi", "-i", f"testsrc2=size={sc.width}x{sc.height}:rate={sc.fps}{length}"]
        shape = ""
    else:
        limit = ["-t", f"{measure.duration_s:.3f}"] if measure.duration_s is not None else []
        source = [*limit, "-protocol_whitelist", "file,pipe", "-i", input_url(measure.source_fd)]
        shape = (f"scale={sc.width}:{sc.height}:force_original_aspect_ratio=decrease,"
                 f"pad={sc.width}:{sc.height}:(ow-iw)/2:(oh-ih)/2,setsar=1,fps={sc.fps},")
    count = len(measure.metrics)
    refs = "".join(f"[r{i}]" for i in range(count))
    graph = [
        "[0:v]settb=AVTB,setpts=PTS-STARTPTS,setsar=1,format=yuv420p[q]",
        f"[1:v]{shape}settb=AVTB,setpts=PTS-STARTPTS,setsar=1,format=yuv420p,split={count}{refs}",
    ]
    last = "q"
    for i, metric in enumerate(measure.metrics):
        graph.append(f"[{last}][r{i}]{FILTERS[metric]}=shortest=1[q{i}]")
        last = f"q{i}"
    return [
        ffmpeg, "-nostdin", "-hide_banner", "-nostats", "-loglevel", "info",
        "-progress", "pipe:1", "-stats_period", "0.5",
        "-protocol_whitelist", "file,pipe", "-i", measure.output_url,
        *source,
        "-filter_complex", ";".join(graph),
        "-map", f"[{last}]", "-f", "null", "-",
    ]  # fmt: skip


def parse_scores(lines: list[str], metrics: tuple[str, ...]) -> dict[str, float]:
    """The scores from FFmpeg's log lines; QualityError if one is missing."""
    scores: dict[str, float] = {}
    for metric in metrics:
        pattern = _SCORES[metric]
        found = [m for line in lines if (m := pattern.search(line))]
        if not found:
            raise QualityError(f"ffmpeg printed no {metric} score")
        text = found[-1]["value"]
        value = MAX_PSNR_DB if text == "inf" else float(text)
        scores[metric] = round(min(value, MAX_PSNR_DB), _DIGITS[metric])
    return scores


def measure(
    ctx: RunContext,
    what: Measure,
    pass_fds: list[int],
    total_s: float | None,
    started: float,
    env: dict[str, str],
) -> dict[str, float]:
    """Runs the measurement to its end; the scores, or QualityError. A cancel or the task's
    time limit ends it like the encode (QualityError carrying the status)."""
    parser = ProgressParser(total_s, _as_quality(ctx.on_progress))
    try:
        proc = start(build_argv(what), cwd=ctx.work_dir, env=env, stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, pass_fds=pass_fds, user=ctx.user)  # fmt: skip
    except OSError as exc:
        raise WorkerFaultError(f"ffmpeg could not start to measure quality: {exc.strerror or exc}") from None
    assert proc.stdout is not None and proc.stderr is not None
    log = _LogLines(proc.stderr, tuple(_SCORES[m] for m in what.metrics))
    progress = threading.Thread(target=parser.feed_lines, args=(proc.stdout,), daemon=True)
    progress.start()
    outcome = supervise(proc, ctx, started)
    progress.join(READER_JOIN_S)
    log.thread.join(READER_JOIN_S)
    proc.stdout.close()
    proc.stderr.close()
    if outcome.status != RunStatus.COMPLETED:
        error = describe_outcome(outcome, ctx.timeout_s) or str(outcome.status)
        if outcome.status == RunStatus.FAILED:
            error = f"ffmpeg {error}: {log.last_error()}"
        raise QualityError(f"quality measurement {error}", outcome.status)
    return parse_scores(log.scores, what.metrics)


def _as_quality(on_progress: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    """Progress of the measurement, reported as such: the encode stays at 100 %."""

    def report(update: dict[str, Any]) -> None:
        on_progress({**update, "percent": 100.0, "done": False, "phase": "quality",
                     "quality_percent": update.get("percent")})

    return report


class _LogLines:
    """Reads FFmpeg's log on a thread of its own, keeping the score lines and the last few."""

    def __init__(self, stream: BinaryIO, patterns: tuple[re.Pattern[str], ...]) -> None:
        self.scores: list[str] = []
        self.tail: deque[str] = deque(maxlen=20)
        self._patterns = patterns
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream: BinaryIO) -> None:
        for raw in stream:
            line = raw.decode("utf-8", "replace").strip()
            if not line:
                continue
            if any(p.search(line) for p in self._patterns) and len(self.scores) < 100:
                self.scores.append(line)
            self.tail.append(line[:300])

    def last_error(self) -> str:
        lines = [line for line in self.tail if line != "Conversion failed!"]
        return lines[-1] if lines else "no message"
