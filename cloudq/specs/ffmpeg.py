"""The ffmpeg task spec: a scenario, an optional input file, where the output goes, and the
quality scores to measure.

Nothing a user writes here ever reaches FFmpeg as an option: the input is a plain file path or
`ROOT:PATH` below a storage root (no protocol, no leading '-'); the output a plain file name in
the task directory or `ROOT:PATH` below an output root (roots.py). The runner re-checks the
paths against the real file system before it starts anything.
"""

from __future__ import annotations

import re
from typing import Any

from cloudq.errors import SpecError
from cloudq.specs import roots
from cloudq.specs.fields import (
    check_bool,
    check_keys,
    check_number,
    check_str,
    comma_separated,
    describe,
)
from cloudq.specs.scenarios import Scenario, parse_scenario

FIELDS = ("scenario", "input", "duration_s", "bitrate", "preset", "output", "overwrite",
          "quality", "keep_task_dir")
QUALITY_METRICS = ("ssim", "psnr", "vmaf")  # the order they are measured and shown in
VMAF_CAPABILITY = "filter:libvmaf"  # a worker whose FFmpeg has libvmaf
DEFAULT_DURATION_S = 5.0
MAX_DURATION_S = 24 * 3600.0

# `name:` at the start is how FFmpeg picks a protocol (concat:, http:, file:, pipe:, data:...).
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
_BITRATE_RE = re.compile(r"(?P<num>\d{1,9}(?:\.\d{1,3})?)(?P<unit>[kKmM]?)\Z")
_OUTPUT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*\Z")
MIN_BITRATE_KBPS, MAX_BITRATE_KBPS = 16, 200_000


def validate(spec: dict[str, Any]) -> dict[str, Any]:
    check_keys(spec, "ffmpeg", FIELDS)
    if "scenario" not in spec:
        raise SpecError("ffmpeg spec needs a 'scenario', e.g. 720p30-h264")
    scenario = parse_scenario(check_str(spec["scenario"], "ffmpeg.scenario", max_len=64))
    source = _check_input(spec.get("input"))
    duration = spec.get("duration_s")
    if duration is None:
        # A synthetic source has no natural end; a file is encoded whole unless told otherwise.
        duration = DEFAULT_DURATION_S if source is None else None
    else:
        duration = check_number(
            duration, "ffmpeg.duration_s", minimum=0.0, maximum=MAX_DURATION_S, exclusive_min=True
        )
    return {
        "scenario": scenario.name,
        "input": source,
        "duration_s": duration,
        "bitrate": _check_bitrate(spec.get("bitrate"), scenario),
        "preset": _check_preset(spec.get("preset"), scenario),
        "output": _check_output(spec.get("output"), scenario),
        "overwrite": check_bool(spec.get("overwrite", False), "ffmpeg.overwrite"),
        "quality": _check_quality(spec.get("quality")),
        "keep_task_dir": check_bool(spec.get("keep_task_dir", False), "ffmpeg.keep_task_dir"),
    }


def required_capabilities(spec: dict[str, Any]) -> frozenset[str]:
    codec = parse_scenario(spec["scenario"]).codec
    caps = {"ffmpeg", codec.capability}
    if codec.gpu:
        caps.add("gpu")
    # .get: a spec stored before these fields existed has none of them.
    source, target = reference(spec.get("input")), reference(spec.get("output"))
    caps |= roots.capabilities([source[0]] if source else [], [target[0]] if target else [])
    if "vmaf" in (spec.get("quality") or ()):
        caps.add(VMAF_CAPABILITY)
    return frozenset(caps)


def reference(value: str | None) -> tuple[str, str] | None:
    """(root, path below it) of a validated input or output that names a root, else None."""
    if value is None or value.startswith("/"):
        return None
    return roots.split_reference(value)


def _check_input(value: Any) -> str | None:
    if value is None:
        return None
    path = check_str(value, "ffmpeg.input")
    if path.startswith("-"):
        raise SpecError(f"ffmpeg.input must not start with '-': {describe(path)}")
    if _SCHEME_RE.match(path):
        prefix, rest = path.split(":", 1)
        if prefix.lower() in roots.FFMPEG_PROTOCOLS or rest.startswith("//"):
            raise SpecError(f"ffmpeg.input must be a file path or ROOT:PATH, not a protocol or "
                            f"URL ({prefix}:): {describe(path)}")
        if problem := roots.name_problem(prefix):
            raise SpecError(f"ffmpeg.input {describe(path)}: {problem}")
        parts = roots.check_relative(rest, "ffmpeg.input", path)
        return f"{prefix}:{'/'.join(parts)}"
    if ".." in path.split("/"):
        raise SpecError(f"ffmpeg.input must not contain '..' components: {describe(path)}")
    if path.endswith("/"):
        raise SpecError(f"ffmpeg.input must name a file, not a directory: {describe(path)}")
    return path


def _check_bitrate(value: Any, scenario: Scenario) -> str:
    if value is None:
        return scenario.default_bitrate()
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise SpecError(
            f"ffmpeg.bitrate must be a string like '2500k' or '5M', got {describe(value)}"
        )
    match = _BITRATE_RE.match(str(value))
    if not match:
        raise SpecError(f"ffmpeg.bitrate must look like '2500k' or '5M', got {describe(value)}")
    scale = {"": 0.001, "k": 1, "m": 1000}[match["unit"].lower()]
    kbps = float(match["num"]) * scale
    if not MIN_BITRATE_KBPS <= kbps <= MAX_BITRATE_KBPS:
        raise SpecError(
            f"ffmpeg.bitrate {value!r} is outside {MIN_BITRATE_KBPS}k-{MAX_BITRATE_KBPS // 1000}M"
        )
    return f"{round(kbps)}k"


def _check_preset(value: Any, scenario: Scenario) -> str:
    codec = scenario.codec
    if value is None:
        return codec.default_preset
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # SVT-AV1 presets are numbers; accept 8 as well as "8"
    if not isinstance(value, str) or value not in codec.presets:
        raise SpecError(
            f"ffmpeg.preset {describe(value)} is not allowed for {codec.name} "
            f"(allowed: {', '.join(codec.presets)})"
        )
    return value


def _check_output(value: Any, scenario: Scenario) -> str:
    containers = scenario.codec.containers
    if value is None:
        return f"output.{containers[0]}"
    name = check_str(value, "ffmpeg.output", max_len=roots.MAX_PATH_CHARS)
    if (found := roots.split_reference(name)) is not None:
        return _check_root_output(name, *found, scenario)
    if len(name) > 255:
        raise SpecError(f"ffmpeg.output is too long ({len(name)} characters, at most 255)")
    if "/" in name:
        raise SpecError(
            f"ffmpeg.output must be a plain file name in the task directory, not a path: "
            f"{describe(name)}"
        )
    if ".." in name:
        raise SpecError(f"ffmpeg.output must not contain '..': {describe(name)}")
    if not _OUTPUT_RE.match(name):
        raise SpecError(
            "ffmpeg.output must start with a letter, digit or '_' and use only letters, digits, "
            f"'.', '_' and '-': {describe(name)}"
        )
    _check_extension(name, name, scenario)
    return name


def _check_root_output(given: str, root: str, path: str, scenario: Scenario) -> str:
    """`out:encoded/ep1-720p.webm`: a file below an output root, in directories the worker
    creates if missing; every component a plain name."""
    if problem := roots.name_problem(root):
        raise SpecError(f"ffmpeg.output {describe(given)}: {problem}")
    parts = roots.check_relative(path, "ffmpeg.output", given)
    for part in parts:
        if len(part) > 255 or not _OUTPUT_RE.match(part):
            raise SpecError(
                f"ffmpeg.output {describe(given)}: each part of the path must start with a "
                f"letter, digit or '_' and use only letters, digits, '.', '_' and '-' "
                f"(got {describe(part)})"
            )
    _check_extension(parts[-1], given, scenario)
    return f"{root}:{'/'.join(parts)}"


def _check_extension(name: str, given: str, scenario: Scenario) -> None:
    containers = scenario.codec.containers
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if ext not in containers:
        raise SpecError(
            f"ffmpeg.output {describe(given)}: {scenario.codec.name} needs a "
            f"{' or '.join('.' + c for c in containers)} file"
        )


def _check_quality(value: Any) -> list[str]:
    """`["ssim", "psnr"]` or `"ssim,psnr"`: the scores to measure after the encode."""
    if value is None:
        return []
    value = comma_separated(value)
    if not isinstance(value, list | tuple):
        raise SpecError(f"ffmpeg.quality must be a list of metrics such as ['ssim', 'psnr'], "
                        f"got {type(value).__name__}")
    asked = set()
    for item in value:
        if not isinstance(item, str) or item.lower() not in QUALITY_METRICS:
            raise SpecError(f"ffmpeg.quality: unknown metric {describe(item)} "
                            f"(known: {', '.join(QUALITY_METRICS)})")
        asked.add(item.lower())
    return [metric for metric in QUALITY_METRICS if metric in asked]
