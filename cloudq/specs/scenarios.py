"""FFmpeg scenarios: `<height>p<fps>-<codec>`, e.g. `720p30-h264`.

A scenario names what a transcoding farm is asked for (a rung of a bitrate ladder in one codec);
this module maps it to a frame size, a frame rate, an encoder family and the settings that are
allowed with it. Pure data, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cloudq.errors import SpecError

# 16:9 frame sizes by height; widths are even so every encoder accepts them.
WIDTHS = {360: 640, 480: 854, 720: 1280, 1080: 1920, 2160: 3840}
MIN_FPS, MAX_FPS = 24, 60

# Default video bitrate (kbit/s) per height at up to 30 fps; above 30 fps it is 1.5x.
# libvpx in real-time mode needs a target: without one it ran slower than real time here.
LADDER_KBPS = {360: 800, 480: 1200, 720: 2500, 1080: 5000, 2160: 16000}

_X26X_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow")
_VPX_PRESETS = ("realtime", "good")
_SVT_PRESETS = tuple(str(n) for n in range(4, 14))
_NVENC_PRESETS = tuple(f"p{n}" for n in range(1, 8))


@dataclass(frozen=True)
class Codec:
    """One codec choice of a scenario.

    encoders: the FFmpeg encoders that can do it, best first (the runner takes the first one
    the worker has). capability: what the worker must advertise (see required_capabilities).
    """

    name: str
    encoders: tuple[str, ...]
    capability: str
    containers: tuple[str, ...]  # allowed output extensions, default first
    audio_encoder: str
    presets: tuple[str, ...]
    default_preset: str
    gpu: bool = False


# fmt: off
CODECS: dict[str, Codec] = {
    "h264": Codec("h264", ("libx264",), "encoder:libx264", ("mp4", "mkv"), "aac",
                  _X26X_PRESETS, "veryfast"),
    "h265": Codec("h265", ("libx265",), "encoder:libx265", ("mp4", "mkv"), "aac",
                  _X26X_PRESETS, "veryfast"),
    "vp8": Codec("vp8", ("libvpx",), "encoder:libvpx", ("webm", "mkv"), "libopus",
                 _VPX_PRESETS, "realtime"),
    "vp9": Codec("vp9", ("libvpx-vp9",), "encoder:libvpx-vp9", ("webm", "mkv"), "libopus",
                 _VPX_PRESETS, "realtime"),
    # Either AV1 encoder will do: the worker advertises "encoder:av1" when it has one of them.
    "av1": Codec("av1", ("libsvtav1", "libaom-av1"), "encoder:av1", ("mp4", "mkv"), "aac",
                 _SVT_PRESETS, "10"),
    "h264-nvenc": Codec("h264-nvenc", ("h264_nvenc",), "encoder:h264_nvenc", ("mp4", "mkv"),
                        "aac", _NVENC_PRESETS, "p4", gpu=True),
    "h265-nvenc": Codec("h265-nvenc", ("hevc_nvenc",), "encoder:hevc_nvenc", ("mp4", "mkv"),
                        "aac", _NVENC_PRESETS, "p4", gpu=True),
}
# fmt: on

# Every encoder a scenario can use; the worker only reports these.
KNOWN_ENCODERS = tuple(sorted({enc for codec in CODECS.values() for enc in codec.encoders}))
AV1_ENCODERS = CODECS["av1"].encoders

_SCENARIO_RE = re.compile(r"(?P<height>\d{3,4})p(?P<fps>\d{2})-(?P<codec>[a-z0-9-]+)\Z")


@dataclass(frozen=True)
class Scenario:
    height: int
    fps: int
    codec: Codec

    @property
    def width(self) -> int:
        return WIDTHS[self.height]

    @property
    def name(self) -> str:
        return f"{self.height}p{self.fps}-{self.codec.name}"

    def default_bitrate(self) -> str:
        kbps = LADDER_KBPS[self.height]
        if self.fps > 30:
            kbps = kbps * 3 // 2
        return f"{kbps}k"


def parse_scenario(value: str) -> Scenario:
    match = _SCENARIO_RE.match(value)
    if not match:
        raise SpecError(
            f"ffmpeg.scenario {value!r} is not of the form <height>p<fps>-<codec>, e.g. 720p30-h264"
        )
    height, fps, codec = int(match["height"]), int(match["fps"]), match["codec"]
    if height not in WIDTHS:
        known = ", ".join(str(h) for h in WIDTHS)
        raise SpecError(f"ffmpeg.scenario {value!r}: height {height} is not one of {known}")
    if not MIN_FPS <= fps <= MAX_FPS:
        raise SpecError(f"ffmpeg.scenario {value!r}: {fps} fps is outside {MIN_FPS}-{MAX_FPS}")
    if codec not in CODECS:
        raise SpecError(
            f"ffmpeg.scenario {value!r}: unknown codec {codec!r} (known: {', '.join(CODECS)})"
        )
    return Scenario(height, fps, CODECS[codec])


def scenario_names() -> list[str]:
    """The scenarios worth listing in help: every height at 30 fps, in every codec."""
    return [f"{h}p30-{c}" for c in CODECS for h in WIDTHS]
