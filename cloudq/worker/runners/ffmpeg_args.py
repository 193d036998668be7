"""The FFmpeg command line for a scenario: pure, so it can be read and tested on its own.

Every value placed on the command line comes from a validated spec (numbers, allow-listed
presets, a bitrate that matched a pattern) or from the runner itself (the input as /dev/fd/N,
the output as `file:./NAME` in the task directory or as /dev/fd/N of the temporary file below
an output root, FFmpeg's working directory). No user string is ever put where FFmpeg could
read it as an option or a protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cloudq.specs.scenarios import Scenario

STATS_PERIOD_S = 0.5  # how often FFmpeg writes a progress block
MUXERS = {"mp4": "mp4", "mkv": "matroska", "webm": "webm"}
AUDIO_BITRATE = {"aac": "128k", "libopus": "96k"}


@dataclass(frozen=True)
class Job:
    """What one encode needs, already checked."""

    scenario: Scenario
    encoder: str  # the concrete FFmpeg encoder chosen for this worker
    preset: str
    bitrate: str
    duration_s: float | None  # None: the whole input
    output: Path  # absolute: inside the task directory, or the final path below an output root
    input_fd: int | None = None  # an open input file; None for the synthetic source
    output_url: str | None = None  # given: where FFmpeg writes (a descriptor); else ./NAME


def build_argv(job: Job, ffmpeg: str = "ffmpeg") -> list[str]:
    return [
        ffmpeg,
        "-nostdin",
        "-hide_banner",
        "-y",
        "-nostats",
        "-progress", "pipe:1",
        "-stats_period", f"{STATS_PERIOD_S:g}",
        *_inputs(job),
        *_video(job),
        *_audio(job),
        *(["-t", f"{job.duration_s:.3f}"] if job.duration_s is not None else []),
        "-f", MUXERS[job.output.suffix.lstrip(".").lower()],
        # Relative to FFmpeg's working directory, the task directory, which the worker enters
        # before it drops to the task user: that user need not be able to walk its parents.
        job.output_url or f"file:./{job.output.name}",
    ]  # fmt: skip


def input_url(fd: int) -> str:
    return f"file:/dev/fd/{fd}"


def _inputs(job: Job) -> list[str]:
    sc = job.scenario
    if job.input_fd is None:
        # Synthetic source: a moving test pattern and a tone, made at the target size and rate.
        length = f":duration={job.duration_s:.3f}" if job.duration_s is not None else ""
        return [
            "-f", "lavfi", "-i", f"testsrc2=size={sc.width}x{sc.height}:rate={sc.fps}{length}",
            "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000{length}",
            "-map", "0:v:0", "-map", "1:a:0",
        ]  # fmt: skip
    return [
        "-protocol_whitelist", "file,pipe",
        "-i", input_url(job.input_fd),
        "-map", "0:v:0", "-map", "0:a:0?",
        # Fit inside the target frame keeping the aspect ratio, pad the rest.
        "-vf", (
            f"scale={sc.width}:{sc.height}:force_original_aspect_ratio=decrease,"
            f"pad={sc.width}:{sc.height}:(ow-iw)/2:(oh-ih)/2,setsar=1"
        ),
        "-r", str(sc.fps),
    ]  # fmt: skip


def _video(job: Job) -> list[str]:
    return [
        "-c:v", job.encoder,
        *encoder_options(job.encoder, job.preset),
        "-b:v", job.bitrate,
        "-g", str(job.scenario.fps * 2),  # a keyframe every 2 s, as streaming ladders use
        "-pix_fmt", "yuv420p",
    ]  # fmt: skip


def _audio(job: Job) -> list[str]:
    codec = job.scenario.codec.audio_encoder
    return ["-c:a", codec, "-b:a", AUDIO_BITRATE[codec], "-ar", "48000", "-ac", "2"]


def encoder_options(encoder: str, preset: str) -> list[str]:
    """Speed settings per encoder; VP8/VP9 real-time so that CPU workers keep up."""
    if encoder in ("libx264", "libx265"):
        extra = ["-x265-params", "log-level=warning"] if encoder == "libx265" else []
        return ["-preset", preset, *extra]
    if encoder in ("libvpx", "libvpx-vp9"):
        deadline, cpu_used = ("realtime", "8") if preset == "realtime" else ("good", "4")
        row_mt = ["-row-mt", "1"] if encoder == "libvpx-vp9" else []
        return ["-deadline", deadline, "-cpu-used", cpu_used, *row_mt]
    if encoder == "libsvtav1":
        return ["-preset", preset]
    if encoder == "libaom-av1":
        # libaom has no SVT presets; map them onto its real-time speed levels (0-8).
        cpu_used = min(8, max(5, int(preset) - 2))
        return ["-usage", "realtime", "-cpu-used", str(cpu_used), "-row-mt", "1"]
    if encoder in ("h264_nvenc", "hevc_nvenc"):
        return ["-preset", preset]
    raise ValueError(f"no options known for encoder {encoder!r}")
