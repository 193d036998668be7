"""The ffmpeg runner with the real FFmpeg: short encodes checked by the test's own ffprobe."""

from __future__ import annotations

import os
import random
import shutil
import threading

import pytest

from cloudq.worker.runners import RunStatus, run_task

from .conftest import Background, probe

pytestmark = pytest.mark.usefixtures("ffmpeg_tools")

TRANSCODES = [
    # scenario, seconds, codec, width, height, output name
    ("480p30-vp9", 2.0, "vp9", 854, 480, "output.webm"),
    ("720p30-h264", 3.0, "h264", 1280, 720, "output.mp4"),
    ("360p30-vp8", 2.0, "vp8", 640, 360, "output.webm"),
    ("360p24-av1", 1.0, "av1", 640, 360, "output.mp4"),
]


@pytest.mark.parametrize(("scenario", "seconds", "codec", "width", "height", "name"), TRANSCODES)
def test_real_transcode(make_ctx, scenario, seconds, codec, width, height, name):
    reports: list[dict] = []
    ctx = make_ctx("ffmpeg", {"scenario": scenario, "duration_s": seconds},
                   on_progress=reports.append)  # fmt: skip
    result = run_task(ctx)
    assert result.status == RunStatus.COMPLETED, result.error
    assert result.exit_code == 0

    info = probe(ctx.work_dir / name)
    video = next(s for s in info["streams"] if s["codec_type"] == "video")
    assert (video["codec_name"], video["width"], video["height"]) == (codec, width, height)
    assert float(info["format"]["duration"]) == pytest.approx(seconds, abs=0.15)
    assert any(s["codec_type"] == "audio" for s in info["streams"])

    out = result.output
    assert (out["codec"], out["width"], out["height"]) == (codec, width, height)
    assert out["duration_s"] == pytest.approx(seconds, abs=0.15)
    assert out["size_bytes"] == (ctx.work_dir / name).stat().st_size
    assert out["encode_speed"] > 0
    assert "gpu_energy_j" not in out

    # Progress: reported while running (first report below 100 %), never backwards, ends at 100.
    percents = [r["percent"] for r in reports]
    assert len(percents) >= 2
    assert percents[0] < 100.0
    assert percents == sorted(percents)
    assert percents[-1] == 100.0 and reports[-1]["done"]


def test_progress_is_reported_in_steps_during_a_longer_encode(make_ctx):
    reports: list[dict] = []
    ctx = make_ctx("ffmpeg", {"scenario": "720p30-h264", "duration_s": 4},
                   on_progress=reports.append)  # fmt: skip
    assert run_task(ctx).status == RunStatus.COMPLETED
    middle = [r["percent"] for r in reports if 0 < r["percent"] < 100]
    assert middle, f"no intermediate progress in {reports}"
    assert all(r["fps"] is None or r["fps"] >= 0 for r in reports)


def test_file_input_from_an_input_root(make_ctx, sample_video):
    ctx = make_ctx("ffmpeg", {"scenario": "360p30-h264", "input": sample_video.name,
                              "output": "small.mkv"},
                   input_roots=[sample_video.parent])  # fmt: skip
    result = run_task(ctx)
    assert result.status == RunStatus.COMPLETED, result.error
    info = probe(ctx.work_dir / "small.mkv")
    video = next(s for s in info["streams"] if s["codec_type"] == "video")
    assert (video["width"], video["height"]) == (640, 360)  # scaled and padded to the rung
    assert float(info["format"]["duration"]) == pytest.approx(1.0, abs=0.15)


def test_file_input_staged_in_the_task_dir(make_ctx, sample_video):
    ctx = make_ctx("ffmpeg", {"scenario": "360p30-vp8", "input": "in/clip.mp4"})
    (ctx.work_dir / "in").mkdir()
    shutil.copy(sample_video, ctx.work_dir / "in" / "clip.mp4")
    result = run_task(ctx)
    assert result.status == RunStatus.COMPLETED, result.error
    assert result.output["codec"] == "vp8"


def test_cancel_stops_ffmpeg_within_5_s(make_ctx):
    started = threading.Event()
    ctx = make_ctx("ffmpeg", {"scenario": "1080p60-h265", "duration_s": 600},
                   on_progress=lambda report: started.set(), timeout_s=None)  # fmt: skip
    task = Background(ctx).start()
    assert started.wait(30), "ffmpeg never reported progress"
    result, took = task.cancel_and_wait(5)
    assert result.status == RunStatus.CANCELLED
    assert took < 5.0
    assert result.error == "cancelled: the process group was killed"


def test_timeout_stops_ffmpeg(make_ctx):
    ctx = make_ctx("ffmpeg", {"scenario": "1080p60-h265", "duration_s": 600}, timeout_s=1.0)
    result = run_task(ctx)
    assert result.status == RunStatus.TIMED_OUT
    assert result.duration_s < 1.0 + 5.0
    assert "timed out after 1 s" in result.error


def test_an_unreadable_input_fails_before_encoding(make_ctx):
    ctx = make_ctx("ffmpeg", {"scenario": "360p30-h264", "input": "garbage.mp4"})
    # Fixed bytes: now and then random ones happen to look like a raw stream to ffprobe.
    (ctx.work_dir / "garbage.mp4").write_bytes(random.Random(7).randbytes(4096))
    result = run_task(ctx)
    assert result.status == RunStatus.FAILED
    assert "input is not a media file FFmpeg can read" in result.error
    assert sorted(os.listdir(ctx.work_dir)) == ["garbage.mp4"]


def test_nvenc_without_a_gpu_is_refused(make_ctx):
    ctx = make_ctx("ffmpeg", {"scenario": "720p30-h264-nvenc", "duration_s": 1})
    result = run_task(ctx)
    assert result.status == RunStatus.FAILED
    assert result.error == "720p30-h264-nvenc needs a GPU, and none was assigned to this task"
    assert os.listdir(ctx.work_dir) == []
