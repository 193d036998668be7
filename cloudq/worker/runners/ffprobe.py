"""ffprobe as a library: read what a media file really holds, as JSON."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from typing import Any

from cloudq.errors import RunnerError

PROBE_TIMEOUT_S = 60.0


def probe(url: str, *, pass_fds: Sequence[int] = (), ffprobe: str = "ffprobe") -> dict[str, Any]:
    """ffprobe's JSON (format and streams) for a `file:` url; RunnerError if it cannot read it."""
    argv = [
        ffprobe, "-v", "error", "-hide_banner",
        "-protocol_whitelist", "file,pipe",
        "-print_format", "json", "-show_format", "-show_streams",
        url,
    ]  # fmt: skip
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            pass_fds=tuple(pass_fds),
            timeout=PROBE_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RunnerError(f"ffprobe could not run: {exc}") from None
    if done.returncode != 0:
        reason = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise RunnerError(
            f"ffprobe could not read the file: {reason[-1] if reason else done.returncode}"
        )
    try:
        return json.loads(done.stdout)
    except ValueError:
        raise RunnerError("ffprobe gave output that is not JSON") from None


def duration_s(info: dict[str, Any]) -> float | None:
    value = info.get("format", {}).get("duration")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def video_facts(info: dict[str, Any]) -> dict[str, Any]:
    """codec, width, height, duration and size of a probed file (its first video stream)."""
    streams = info.get("streams") or []
    video = next((s for s in streams if s.get("codec_type") == "video"), None)
    if video is None:
        raise RunnerError("the output has no video stream")
    fmt = info.get("format", {})
    return {
        "codec": video.get("codec_name"),
        "width": video.get("width"),
        "height": video.get("height"),
        "duration_s": duration_s(info),
        "size_bytes": int(fmt["size"]) if str(fmt.get("size", "")).isdigit() else None,
        "bitrate_kbps": round(int(fmt["bit_rate"]) / 1000, 1)
        if str(fmt.get("bit_rate", "")).isdigit()
        else None,
        "audio_codec": next(
            (s.get("codec_name") for s in streams if s.get("codec_type") == "audio"), None
        ),
    }
