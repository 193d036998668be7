"""Accepted specs: what validate_spec fills in, what workers must have, and the FFmpeg command
line built from them."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloudq.specs import KINDS, parse_scenario, required_capabilities, validate_spec
from cloudq.specs.scenarios import CODECS, WIDTHS
from cloudq.worker.runners import capability_set
from cloudq.worker.runners.ffmpeg_args import Job, build_argv


def test_kinds():
    assert KINDS == ("ffmpeg", "container", "exec", "noop")


def test_ffmpeg_defaults():
    assert validate_spec("ffmpeg", {"scenario": "720p30-h264"}) == {
        "scenario": "720p30-h264",
        "input": None,
        "duration_s": 5.0,
        "bitrate": "2500k",
        "preset": "veryfast",
        "output": "output.mp4",
        "overwrite": False,
        "quality": [],
        "keep_task_dir": False,
    }
    vp9 = validate_spec("ffmpeg", {"scenario": "1080p60-vp9", "input": "in/a.mov"})
    assert vp9["output"] == "output.webm"
    assert vp9["duration_s"] is None  # a file input is encoded whole
    assert vp9["bitrate"] == "7500k"  # the 1080p rung, 1.5x above 30 fps
    assert vp9["preset"] == "realtime"


@pytest.mark.parametrize(
    ("given_rate", "normalized"),
    [("2500k", "2500k"), ("5M", "5000k"), ("2.5m", "2500k"), (800000, "800k"), ("64K", "64k")],
)
def test_bitrate_forms(given_rate, normalized):
    spec = validate_spec("ffmpeg", {"scenario": "360p30-h264", "bitrate": given_rate})
    assert spec["bitrate"] == normalized


def test_input_and_output_forms_that_are_fine():
    spec = validate_spec("ffmpeg", {"scenario": "480p25-av1", "input": "/srv/media/a b:c.mp4",
                                    "output": "clip_01-final.mkv", "preset": 8})  # fmt: skip
    assert spec["input"] == "/srv/media/a b:c.mp4"  # a colon after a '/' is no protocol
    assert spec["output"] == "clip_01-final.mkv"
    assert spec["preset"] == "8"


def test_container_exec_noop_defaults():
    assert validate_spec("container", {"image": "registry.local:5000/team/app@sha256:ab"}) == {
        "image": "registry.local:5000/team/app@sha256:ab",
        "command": None,
        "env": {},
        "network": False,
        "workdir": None,
        "input_roots": [],
        "output_roots": [],
        "keep_task_dir": False,
    }
    assert validate_spec("exec", {"argv": ["ls", "-l"], "cwd": "./out/"}) == {
        "argv": ["ls", "-l"],
        "env": {},
        "cwd": "out",
        "input_roots": [],
        "output_roots": [],
        "keep_task_dir": False,
    }
    assert validate_spec("exec", {"argv": ["ls"], "cwd": "."})["cwd"] is None
    assert validate_spec("noop", {}) == {"sleep_s": 0.0}


def test_root_references_are_normalized_and_needed_of_the_worker():
    spec = validate_spec("ffmpeg", {"scenario": "480p30-vp9", "input": "media:in/./clip 1.mkv",
                                    "output": "out:enc//clip-480p.webm", "quality": "psnr, SSIM",
                                    "overwrite": True})  # fmt: skip
    assert spec["input"] == "media:in/clip 1.mkv"  # any file name may be read
    assert spec["output"] == "out:enc/clip-480p.webm"
    assert spec["quality"] == ["ssim", "psnr"] and spec["overwrite"] is True
    assert validate_spec("ffmpeg", spec) == spec
    assert required_capabilities("ffmpeg", spec) == {
        "ffmpeg", "encoder:libvpx-vp9", "root:media", "root-rw:out"}  # fmt: skip
    assert "filter:libvmaf" in required_capabilities(
        "ffmpeg", {"scenario": "480p30-vp9", "quality": ["vmaf"]})
    container = validate_spec("container", {"image": "busybox", "input_roots": ["media:", "a"],
                                            "output_roots": "out"})  # fmt: skip
    assert (container["input_roots"], container["output_roots"]) == (["a", "media"], ["out"])
    assert required_capabilities("container", container) == {
        "docker", "root:a", "root:media", "root-rw:out"}  # fmt: skip
    assert required_capabilities("exec", {"argv": ["ls"], "output_roots": ["out"]}) == {
        "root-rw:out"}  # fmt: skip


def test_specs_stored_before_roots_existed_still_have_capabilities():
    from cloudq.specs import capabilities_of

    old = {"scenario": "480p30-vp9", "input": None, "duration_s": 5.0, "bitrate": "1200k",
           "preset": "realtime", "output": "output.webm"}  # fmt: skip
    assert capabilities_of("ffmpeg", old) == {"ffmpeg", "encoder:libvpx-vp9"}
    assert capabilities_of("exec", {"argv": ["ls"], "env": {}, "cwd": None}) == frozenset()
    assert capabilities_of("container", {"image": "busybox"}) == {"docker"}


def test_a_worker_advertises_its_roots_and_libvmaf():
    from cloudq.specs.roots import worker_capabilities

    assert worker_capabilities([("media", False), ("out", True)]) == {
        "root:media", "root:out", "root-rw:out"}  # an output root can be read too
    caps = {"ffmpeg": True, "encoders": ["libx264"], "filters": ["ssim", "psnr"], "docker": False}
    assert "filter:libvmaf" not in capability_set(caps, 0)
    assert "filter:libvmaf" in capability_set({**caps, "filters": ["libvmaf"]}, 0)


def test_validate_returns_a_copy():
    spec = {"argv": ["ls"], "env": {"A": "1"}}
    normalized = validate_spec("exec", spec)
    normalized["env"]["B"] = "2"
    normalized["argv"].append("x")
    assert spec == {"argv": ["ls"], "env": {"A": "1"}}


def test_required_capabilities():
    assert required_capabilities("ffmpeg", {"scenario": "480p30-vp9"}) == {
        "ffmpeg", "encoder:libvpx-vp9"}  # fmt: skip
    assert required_capabilities("ffmpeg", {"scenario": "720p30-h264-nvenc"}) == {
        "ffmpeg", "encoder:h264_nvenc", "gpu"}  # fmt: skip
    assert required_capabilities("ffmpeg", {"scenario": "720p30-av1"}) == {"ffmpeg", "encoder:av1"}
    assert required_capabilities("container", {"image": "busybox"}) == {"docker"}
    assert required_capabilities("exec", {"argv": ["true"]}) == frozenset()
    assert required_capabilities("noop", {}) == frozenset()


def test_capability_set_matches_required_capabilities():
    cpu_worker = {"ffmpeg": True, "encoders": ["libx264", "libaom-av1", "h264_nvenc"],
                  "docker": False, "docker_error": "no engine"}  # fmt: skip
    have = capability_set(cpu_worker, gpus=0)
    assert required_capabilities("ffmpeg", {"scenario": "720p30-h264"}) <= have
    assert required_capabilities("ffmpeg", {"scenario": "720p30-av1"}) <= have  # via libaom
    assert not required_capabilities("ffmpeg", {"scenario": "720p30-h264-nvenc"}) <= have
    assert not required_capabilities("container", {"image": "busybox"}) <= have
    gpu_worker = capability_set({**cpu_worker, "docker": True}, gpus=2)
    assert required_capabilities("ffmpeg", {"scenario": "720p30-h264-nvenc"}) <= gpu_worker
    assert "docker" in gpu_worker
    assert capability_set({"ffmpeg": False, "encoders": [], "docker": False}, 0) == frozenset()


@given(
    height=st.sampled_from(sorted(WIDTHS)),
    fps=st.integers(24, 60),
    codec=st.sampled_from(sorted(CODECS)),
    duration=st.floats(0.001, 86400),
    use_input=st.booleans(),
)
def test_every_scenario_validates_and_normalizing_twice_changes_nothing(
    height, fps, codec, duration, use_input
):
    spec = {"scenario": f"{height}p{fps}-{codec}", "duration_s": duration}
    if use_input:
        spec["input"] = "media/in.mp4"
    once = validate_spec("ffmpeg", spec)
    assert validate_spec("ffmpeg", once) == once
    assert once["preset"] in CODECS[codec].presets


def test_argv_never_carries_a_user_string_as_an_option():
    scenario = parse_scenario("720p30-h264")
    job = Job(scenario, "libx264", "veryfast", "2500k", 2.0, Path("/work/t1/output.mp4"), 7)
    argv = build_argv(job)
    assert argv[:4] == ["ffmpeg", "-nostdin", "-hide_banner", "-y"]
    assert argv[argv.index("-i") - 2 : argv.index("-i") + 2] == [
        "-protocol_whitelist", "file,pipe", "-i", "file:/dev/fd/7"]  # fmt: skip
    assert argv[-1] == "file:./output.mp4"
    assert argv[argv.index("-progress") + 1] == "pipe:1"
    assert argv[argv.index("-c:v") :][:4] == ["-c:v", "libx264", "-preset", "veryfast"]


def test_synthetic_source_and_realtime_vpx():
    job = Job(parse_scenario("480p30-vp9"), "libvpx-vp9", "realtime", "1200k", 1.5,
              Path("/w/output.webm"))  # fmt: skip
    argv = build_argv(job)
    assert "testsrc2=size=854x480:rate=30:duration=1.500" in argv
    assert argv.count("lavfi") == 2
    assert "-protocol_whitelist" not in argv
    assert argv[argv.index("-deadline") + 1] == "realtime"
    assert argv[argv.index("-cpu-used") + 1] == "8"
    assert argv[argv.index("-f", argv.index("-t")) + 1] == "webm"


def test_detect_capabilities_on_this_machine(ffmpeg_tools, docker_client):
    from cloudq.worker.runners import detect_capabilities

    caps = detect_capabilities(refresh=True)
    assert caps["ffmpeg"] is True
    assert {"libx264", "libvpx", "libvpx-vp9"} <= set(caps["encoders"])
    assert caps["docker"] is True and caps["docker_error"] is None
    have = capability_set(caps, gpus=0)
    assert required_capabilities("ffmpeg", {"scenario": "480p30-vp9"}) <= have
    assert "gpu" not in have
