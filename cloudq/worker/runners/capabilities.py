"""What this worker can run: FFmpeg, its encoders and quality filters, a Docker engine; and the
capability strings (as required_capabilities returns them) that the master matches tasks
against.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from typing import Any

from cloudq.specs.ffmpeg import VMAF_CAPABILITY
from cloudq.specs.scenarios import AV1_ENCODERS, KNOWN_ENCODERS

PROBE_TIMEOUT_S = 10.0
_ENCODER_LINE = re.compile(r"^\s*V\S{5}\s+(\S+)\s", re.MULTILINE)
_FILTER_LINE = re.compile(r"^\s*\S{2,3}\s+(\S+)\s+\S+->\S+", re.MULTILINE)
QUALITY_FILTERS = ("ssim", "psnr", "libvmaf")  # the filters quality scores need

_lock = threading.Lock()
_encoders_cached: tuple[tuple[str, ...] | None] | None = None  # a box, so None can be cached
_filters_cached: tuple[tuple[str, ...] | None] | None = None
_docker_cached: tuple[bool, str | None] | None = None


def detect_capabilities(refresh: bool = False) -> dict[str, Any]:
    """{"ffmpeg": bool, "encoders": [...], "docker": bool, "docker_error": str | None}.

    Cached for the process (a few hundred ms of probing); refresh=True probes again, e.g. after
    the Docker engine came back.
    """
    global _docker_cached
    encoders = ffmpeg_encoders(refresh)
    with _lock:
        if _docker_cached is None or refresh:
            _docker_cached = _docker_status()
        docker_ok, docker_error = _docker_cached
    return {
        "ffmpeg": encoders is not None,
        "encoders": list(encoders or []),
        "filters": list(ffmpeg_filters(refresh) or []) if encoders is not None else [],
        "docker": docker_ok,
        "docker_error": docker_error,
    }


def ffmpeg_encoders(refresh: bool = False) -> tuple[str, ...] | None:
    """The scenario encoders this worker's FFmpeg has (cached), or None without FFmpeg."""
    global _encoders_cached
    with _lock:
        if _encoders_cached is None or refresh:
            found = _ffmpeg_encoders()
            _encoders_cached = (None if found is None else tuple(found),)
        return _encoders_cached[0]


def ffmpeg_filters(refresh: bool = False) -> tuple[str, ...] | None:
    """The quality filters this worker's FFmpeg has (cached), or None without FFmpeg."""
    global _filters_cached
    with _lock:
        if _filters_cached is None or refresh:
            found = _ffmpeg_list("-filters", _FILTER_LINE, QUALITY_FILTERS)
            _filters_cached = (None if found is None else tuple(found),)
        return _filters_cached[0]


def capability_set(caps: dict[str, Any], gpus: int) -> frozenset[str]:
    """The strings that required_capabilities() asks for, from detect_capabilities() output."""
    have: set[str] = set()
    if caps.get("ffmpeg"):
        have.add("ffmpeg")
        encoders = set(caps.get("encoders") or [])
        have.update(f"encoder:{name}" for name in encoders)
        if encoders & set(AV1_ENCODERS):
            have.add("encoder:av1")  # either AV1 encoder will do; the runner picks one
        if "libvmaf" in (caps.get("filters") or ()):
            have.add(VMAF_CAPABILITY)  # ssim and psnr are in every build; VMAF is optional
    if caps.get("docker"):
        have.add("docker")
    if gpus > 0:
        have.add("gpu")
    return frozenset(have)


def _ffmpeg_encoders() -> list[str] | None:
    """The scenario encoders this FFmpeg build has, or None when FFmpeg/ffprobe are missing."""
    return _ffmpeg_list("-encoders", _ENCODER_LINE, KNOWN_ENCODERS)


def _ffmpeg_list(option: str, line: re.Pattern[str], known: tuple[str, ...]) -> list[str] | None:
    """Which of `known` FFmpeg lists for `option` (-encoders, -filters), or None when
    FFmpeg/ffprobe are missing or fail."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None or shutil.which("ffprobe") is None:
        return None
    try:
        done = subprocess.run(
            [ffmpeg, "-hide_banner", "-nostdin", option],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=PROBE_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    listed = set(line.findall(done.stdout.decode("utf-8", "replace")))
    return [name for name in known if name in listed]


def _docker_status() -> tuple[bool, str | None]:
    try:
        import docker

        client = docker.from_env(timeout=PROBE_TIMEOUT_S)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # no SDK, no socket, engine down, permission denied
        return False, f"{type(exc).__name__}: {exc}"
    return True, None
