"""The ffmpeg runner: encode one scenario into the task directory or below an output root, and
report what came out.

Order of work: choose the encoder this worker has, check the output and input paths against the
real file system, open the input ourselves (FFmpeg only ever sees /dev/fd/N), make the output's
temporary file below its root (storage.py), run FFmpeg as its own process group with progress
on a pipe, then ffprobe the output, measure its quality if asked (quality.py), and only then
rename it into place. Anything refused before the start leaves no process, no log and no file
behind; an encode that fails leaves no temporary file.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from cloudq.errors import RunnerError
from cloudq.specs.ffmpeg import reference
from cloudq.specs.scenarios import Scenario, parse_scenario
from cloudq.worker.runners import ffprobe, quality, storage
from cloudq.worker.runners.base import (
    RunContext,
    RunResult,
    RunStatus,
    WorkerFaultError,
    fault_of,
    finished,
    open_log,
    refused_by,
    tail_log,
)
from cloudq.worker.runners.capabilities import ffmpeg_encoders, ffmpeg_filters
from cloudq.worker.runners.energy import EnergyMeter
from cloudq.worker.runners.ffmpeg_args import Job, build_argv, input_url
from cloudq.worker.runners.paths import give_task_dir, open_input, output_path
from cloudq.worker.runners.process import DEFAULT_PATH, describe_outcome, start, supervise
from cloudq.worker.runners.progress import ProgressParser
from cloudq.worker.runners.quality import Measure, QualityError
from cloudq.worker.runners.storage import RootOutput, root_of

READER_JOIN_S = 5.0


def run(ctx: RunContext) -> RunResult:
    started = time.monotonic()
    spec = ctx.spec
    scenario = parse_scenario(spec["scenario"])
    input_fd: int | None = None
    target: RootOutput | None = None
    try:
        encoder = choose_encoder(scenario, ctx)
        if "vmaf" in spec["quality"]:
            _check_vmaf(ctx)
        total_s = spec["duration_s"]
        if spec["input"] is not None:
            input_fd, real_input = _open_source(ctx, spec["input"])
        place = reference(spec["output"])
        if place is None:  # a plain name: in the task directory
            output, url = output_path(ctx.work_dir, spec["output"]), None
            if input_fd is not None and real_input == output:
                raise RunnerError("the output would overwrite the input")
        else:
            root = root_of(ctx, place[0], write=True)
            target = RootOutput(root, place[1], ctx.task_id, spec["overwrite"])
            target.create(input_fd)
            output, url = target.host_path, target.url
        if input_fd is not None:
            total_s = _encode_length(input_fd, spec["duration_s"])
        job = Job(scenario, encoder, spec["preset"], spec["bitrate"], spec["duration_s"],
                  output, input_fd, url)  # fmt: skip
        return _encode(ctx, job, target, total_s, started)
    except RunnerError as exc:
        return refused_by(started, exc)
    finally:
        if target is not None:
            target.close()  # the temporary file goes, unless it was renamed into place
        if input_fd is not None:
            os.close(input_fd)


def _open_source(ctx: RunContext, name: str) -> tuple[int, Path]:
    """The input: `ROOT:PATH` below one of this worker's roots, or a plain path in the task
    directory or an unnamed --input-root."""
    place = reference(name)
    if place is not None:
        return storage.open_input(ctx, *place)
    return open_input(name, ctx.work_dir, ctx.input_roots)


def _check_vmaf(ctx: RunContext) -> None:
    if "libvmaf" not in (ffmpeg_filters() or ()):
        # The master placed it here because this worker said it had libvmaf.
        raise WorkerFaultError(f"ffmpeg on {ctx.worker_label} has no libvmaf filter")


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


def _encode(
    ctx: RunContext, job: Job, target: RootOutput | None, total_s: float | None, started: float
) -> RunResult:
    meter = EnergyMeter(ctx.gpu_indices) if job.scenario.codec.gpu else None
    parser = ProgressParser(total_s, ctx.on_progress)
    pass_fds = [job.input_fd] if job.input_fd is not None else []
    pass_fds += target.fds if target is not None else []
    if ctx.user is not None:  # FFmpeg parses untrusted media: never as root
        give_task_dir(ctx.work_dir, ctx.user)
    if target is not None:
        target.lend(ctx.user)
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
        facts = _after_encode(ctx, job, target, total_s, started, pass_fds)
    except QualityError as exc:
        return finished(ctx, exc.status, outcome.exit_code, started, str(exc), {}, fault_of(exc))
    except RunnerError as exc:
        return finished(ctx, RunStatus.FAILED, outcome.exit_code, started, str(exc), {},
                        fault_of(exc))  # fmt: skip
    facts.update(_encode_facts(job, facts, encode_s, parser.last))
    if meter and (joules := meter.joules()) is not None:
        facts["gpu_energy_j"] = joules
    return finished(ctx, RunStatus.COMPLETED, outcome.exit_code, started, None, facts)


def _after_encode(
    ctx: RunContext,
    job: Job,
    target: RootOutput | None,
    total_s: float | None,
    started: float,
    pass_fds: list[int],
) -> dict[str, Any]:
    """Probe the output, measure its quality if asked, then put it in place: what the result
    says about it. RunnerError when any of it fails (the temporary file is then removed)."""
    if target is not None:
        target.take_back(ctx.user)
    url = target.url if target is not None else f"file:{job.output}"
    try:
        facts = ffprobe.video_facts(ffprobe.probe(url, pass_fds=target.fds if target else ()))
    except RunnerError as exc:
        raise RunnerError(f"ffmpeg finished but its output is unusable: {exc}") from None
    metrics = tuple(ctx.spec["quality"])
    if metrics:
        # Run as the task user in the task directory: a plain name there is ./NAME.
        output_url = target.url if target is not None else f"file:./{job.output.name}"
        what = Measure(job.scenario, metrics, output_url, job.input_fd, job.duration_s)
        facts["quality"] = quality.measure(ctx, what, pass_fds, facts.get("duration_s") or total_s,
                                           started, _env(ctx, job))  # fmt: skip
    if target is not None:
        target.publish()
        facts["path"], facts["host_path"] = target.shown, str(target.host_path)
    else:
        facts["path"] = job.output.name  # in the task directory, gone with it
    if facts.get("width") and facts.get("height"):
        facts["resolution"] = f"{facts['width']}x{facts['height']}"
    return facts


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
