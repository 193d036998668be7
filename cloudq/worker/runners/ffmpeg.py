"""The ffmpeg runner: encode one scenario into the task directory and report what came out.

Order of work: choose the encoder this worker has, check the output and input paths against the
real file system, open the input ourselves (FFmpeg only ever sees /dev/fd/N), run FFmpeg as its
own process group with progress on a pipe, then ffprobe the output. Anything refused before the
start leaves no process and no log behind.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from cloudq.errors import RunnerError
from cloudq.specs.scenarios import Scenario, parse_scenario
from cloudq.worker.runners import ffprobe
from cloudq.worker.runners.base import (
    RunContext,
    RunResult,
    RunStatus,
    WorkerFaultError,
    finished,
    open_log,
    refused_by,
    tail_log,
)
from cloudq.worker.runners.capabilities import ffmpeg_encoders
from cloudq.worker.runners.energy import EnergyMeter
from cloudq.worker.runners.ffmpeg_args import Job, build_argv, input_url
from cloudq.worker.runners.paths import give_task_dir, open_input, output_path
from cloudq.worker.runners.process import DEFAULT_PATH, describe_outcome, start, supervise
from cloudq.worker.runners.progress import ProgressParser

READER_JOIN_S = 5.0


def run(ctx: RunContext) -> RunResult:
    started = time.monotonic()
    spec = ctx.spec
    scenario = parse_scenario(spec["scenario"])
    input_fd: int | None = None
    try:
        encoder = choose_encoder(scenario, ctx)
        output = output_path(ctx.work_dir, spec["output"])
        total_s = spec["duration_s"]
        if spec["input"] is not None:
            input_fd, real_input = open_input(spec["input"], ctx.work_dir, ctx.input_roots)
            if real_input == output:
                raise RunnerError("the output would overwrite the input")
            total_s = _encode_length(input_fd, spec["duration_s"])
        job = Job(scenario, encoder, spec["preset"], spec["bitrate"], spec["duration_s"],
                  output, input_fd)  # fmt: skip
        return _encode(ctx, job, total_s, started)
    except RunnerError as exc:
        return refused_by(started, exc)
    finally:
        if input_fd is not None:
            os.close(input_fd)


def choose_encoder(scenario: Scenario, ctx: RunContext) -> str:
    """The first encoder of the scenario's codec that this worker's FFmpeg has."""
    available = ffmpeg_encoders()
    if available is None:
        raise WorkerFaultError(f"ffmpeg and ffprobe are not installed on {ctx.worker_label}")
    codec = scenario.codec
    if codec.gpu and not ctx.gpu_indices:
        raise RunnerError(f"{scenario.name} needs a GPU, and none was assigned to this task")
    for encoder in codec.encoders:
        if encoder in available:
            return encoder
    names = " or ".join(codec.encoders)
    # The master placed it here because this worker said it had the encoder.
    raise WorkerFaultError(f"encoder {names} is not available on {ctx.worker_label}")


def _encode_length(input_fd: int, limit_s: float | None) -> float | None:
    """How much media will be encoded: the input's length, cut to duration_s if given."""
    try:
        info = ffprobe.probe(input_url(input_fd), pass_fds=[input_fd])
    except RunnerError as exc:
        raise RunnerError(f"input is not a media file FFmpeg can read ({exc})") from None
    length = ffprobe.duration_s(info)
    if length is None:
        return limit_s
    return length if limit_s is None else min(length, limit_s)


def _encode(ctx: RunContext, job: Job, total_s: float | None, started: float) -> RunResult:
    meter = EnergyMeter(ctx.gpu_indices) if job.scenario.codec.gpu else None
    parser = ProgressParser(total_s, ctx.on_progress)
    pass_fds = [job.input_fd] if job.input_fd is not None else []
    if ctx.user is not None:  # FFmpeg parses untrusted media: never as root
        give_task_dir(ctx.work_dir, ctx.user)
    with open_log(ctx) as log:
        if meter:
            meter.start()
        encode_start = time.monotonic()
        try:
            proc = start(build_argv(job), cwd=ctx.work_dir, env=_env(ctx, job),
                         stdout=subprocess.PIPE, stderr=log, pass_fds=pass_fds,
                         user=ctx.user)  # fmt: skip
        except OSError as exc:
            raise WorkerFaultError(f"ffmpeg could not start: {exc.strerror or exc}") from None
    assert proc.stdout is not None
    reader = threading.Thread(target=parser.feed_lines, args=(proc.stdout,), daemon=True)
    reader.start()
    outcome = supervise(proc, ctx, started)
    encode_s = time.monotonic() - encode_start
    reader.join(READER_JOIN_S)
    proc.stdout.close()
    if outcome.status != RunStatus.COMPLETED:
        error = describe_outcome(outcome, ctx.timeout_s)
        if outcome.status == RunStatus.FAILED:
            error = f"ffmpeg {error}: {_last_error_line(ctx.work_dir)}"
        return finished(ctx, outcome.status, outcome.exit_code, started, error, {})
    try:
        facts = ffprobe.video_facts(ffprobe.probe(f"file:{job.output}"))
    except RunnerError as exc:
        return finished(ctx, RunStatus.FAILED, outcome.exit_code, started,
                       f"ffmpeg finished but its output is unusable: {exc}", {})  # fmt: skip
    facts.update(_encode_facts(job, facts, encode_s, parser.last))
    if meter and (joules := meter.joules()) is not None:
        facts["gpu_energy_j"] = joules
    return finished(ctx, RunStatus.COMPLETED, outcome.exit_code, started, None, facts)


def _env(ctx: RunContext, job: Job) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", DEFAULT_PATH), "HOME": str(ctx.work_dir),
           "LANG": "C.UTF-8"}  # fmt: skip
    if job.scenario.codec.gpu:
        # NVENC sees only this task's GPUs, numbered as NVML numbers them (PCI bus order).
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in ctx.gpu_indices)
    return env


def _encode_facts(
    job: Job, facts: dict[str, Any], encode_s: float, last: dict[str, Any]
) -> dict[str, Any]:
    media_s = facts.get("duration_s")
    speed = round(media_s / encode_s, 3) if media_s and encode_s > 0 else last.get("speed")
    return {
        "file": job.output.name,
        "scenario": job.scenario.name,
        "encoder": job.encoder,
        "preset": job.preset,
        "bitrate": job.bitrate,
        "encode_s": round(encode_s, 3),
        "encode_speed": speed,
        "fps": last.get("fps"),
    }


def _last_error_line(work_dir: Path) -> str:
    """FFmpeg's own reason, which is the last line before its generic closing words."""
    lines = [line.strip() for line in tail_log(work_dir, 2048).splitlines() if line.strip()]
    lines = [line for line in lines if line != "Conversion failed!"]
    return lines[-1] if lines else "no message"
