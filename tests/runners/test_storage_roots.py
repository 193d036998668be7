"""Storage roots on a worker, for real: FFmpeg reads `ROOT:PATH` inputs and writes `ROOT:PATH`
outputs under a temporary name that is renamed into place only once ffprobe accepts it; nothing
leaves its root; quality scores are measured against the source; containers get the roots as
mounts and exec tasks as variables."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from cloudq.worker.runners import RunStatus, run_task
from cloudq.worker.runners.base import StorageRoot
from cloudq.worker.runners.confine import task_user
from tests.runners.conftest import BUSYBOX, Background, probe

VP9 = {"scenario": "480p30-vp9", "preset": "realtime"}


@pytest.fixture
def roots(tmp_path: Path, sample_video: Path) -> dict[str, StorageRoot]:
    """media (an input root holding in/clip.mp4) and out (an output root), apart."""
    media, out = tmp_path / "mnt-a" / "media", tmp_path / "mnt-b" / "encoded"
    (media / "in").mkdir(parents=True)
    out.mkdir(parents=True)
    shutil.copy(sample_video, media / "in" / "clip.mp4")
    return {"media": StorageRoot("media", media), "out": StorageRoot("out", out, writable=True)}


def leftovers(directory: Path) -> list[str]:
    """Temporary files (ours start with '.') left in an output directory."""
    return [name for name in os.listdir(directory) if name.startswith(".")]


def test_output_is_written_below_its_root_and_renamed_into_place(make_ctx, roots, ffmpeg_tools):
    seen = []
    ctx = make_ctx("ffmpeg", {**VP9, "input": "media:in/clip.mp4", "output": "out:enc/clip-480p.webm"},
                   roots=roots, on_progress=seen.append)  # fmt: skip
    result = run_task(ctx)
    assert result.status == RunStatus.COMPLETED, result.error
    final = roots["out"].path / "enc" / "clip-480p.webm"
    info = probe(final)
    video = next(s for s in info["streams"] if s["codec_type"] == "video")
    assert (video["codec_name"], video["width"], video["height"]) == ("vp9", 854, 480)
    assert leftovers(final.parent) == []
    out = result.output
    assert out["path"] == "out:enc/clip-480p.webm" and out["host_path"] == str(final)
    assert out["size_bytes"] == final.stat().st_size > 0
    assert out["resolution"] == "854x480" and out["codec"] == "vp9"
    assert out["duration_s"] == pytest.approx(1.0, abs=0.2)
    assert out["bitrate_kbps"] > 0 and out["encode_speed"] > 0
    assert stat.S_IMODE(final.stat().st_mode) == 0o644
    assert "quality" not in out and all(p.get("phase") is None for p in seen)
    assert not (ctx.work_dir / "clip-480p.webm").exists()  # nothing in the task directory


def test_an_existing_output_is_kept_unless_the_task_says_overwrite(make_ctx, roots, ffmpeg_tools):
    final = roots["out"].path / "clip.webm"
    final.write_bytes(b"the old file")
    spec = {**VP9, "duration_s": 0.5, "output": "out:clip.webm"}
    refused = run_task(make_ctx("ffmpeg", spec, roots=roots))
    assert refused.status == RunStatus.FAILED and refused.fault == "task"
    assert refused.error == "output 'out:clip.webm' exists; give --overwrite to replace it"
    assert final.read_bytes() == b"the old file" and leftovers(final.parent) == []

    replaced = run_task(make_ctx("ffmpeg", {**spec, "overwrite": True}, roots=roots))
    assert replaced.status == RunStatus.COMPLETED, replaced.error
    assert probe(final)["streams"][0]["codec_name"] == "vp9"
    assert leftovers(final.parent) == []


def test_the_input_itself_is_never_overwritten(make_ctx, roots, ffmpeg_tools):
    both = {"media": roots["media"], "out": StorageRoot("out", roots["media"].path, writable=True)}
    before = (roots["media"].path / "in" / "clip.mp4").read_bytes()
    spec = {"scenario": "360p30-h264", "input": "media:in/clip.mp4", "output": "out:in/clip.mp4",
            "overwrite": True}  # fmt: skip
    result = run_task(make_ctx("ffmpeg", spec, roots=both))
    assert result.status == RunStatus.FAILED and "would overwrite the input" in result.error
    assert (roots["media"].path / "in" / "clip.mp4").read_bytes() == before


def test_symlinks_in_an_output_path_are_never_followed(make_ctx, roots, tmp_path, ffmpeg_tools):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (roots["out"].path / "link").symlink_to(elsewhere)
    (elsewhere / "victim.webm").write_bytes(b"precious")
    (roots["out"].path / "victim.webm").symlink_to(elsewhere / "victim.webm")
    for output, message in (("out:link/x.webm", "link is a symlink; outputs never follow links"),
                            ("out:link/sub/x.webm", "link is a symlink"),
                            ("out:victim.webm", "exists and is a symlink; refusing to replace it")):
        ctx = make_ctx("ffmpeg", {**VP9, "duration_s": 0.5, "output": output, "overwrite": True},
                       roots=roots)  # fmt: skip
        result = run_task(ctx)
        assert result.status == RunStatus.FAILED, output
        assert message in result.error, result.error
        assert os.listdir(ctx.work_dir) == []  # refused before FFmpeg started
    assert sorted(os.listdir(elsewhere)) == ["victim.webm"]
    assert (elsewhere / "victim.webm").read_bytes() == b"precious"
    assert leftovers(roots["out"].path) == []


def test_an_input_may_not_lead_out_of_its_root(make_ctx, roots, sample_video, ffmpeg_tools):
    media = roots["media"].path
    (media / "escape.mp4").symlink_to(sample_video)  # outside the root
    (media / "inside.mp4").symlink_to(media / "in" / "clip.mp4")  # stays inside: fine
    escaped = run_task(make_ctx("ffmpeg", {**VP9, "input": "media:escape.mp4"}, roots=roots))
    assert escaped.status == RunStatus.FAILED
    assert "outside its root media" in escaped.error
    missing = run_task(make_ctx("ffmpeg", {**VP9, "input": "media:in/nothing.mp4"}, roots=roots))
    assert missing.status == RunStatus.FAILED and "does not exist" in missing.error
    inside = run_task(make_ctx("ffmpeg", {**VP9, "input": "media:inside.mp4", "duration_s": 0.5},
                               roots=roots))  # fmt: skip
    assert inside.status == RunStatus.COMPLETED, inside.error


def test_a_root_the_worker_lacks_is_the_workers_fault(make_ctx, roots, ffmpeg_tools):
    result = run_task(make_ctx("ffmpeg", {**VP9, "output": "out:x.webm"},
                               roots={"media": roots["media"]}))  # fmt: skip
    assert result.status == RunStatus.FAILED and result.fault == "worker"
    assert "has no storage root 'out'" in result.error
    read_only = {"out": StorageRoot("out", roots["out"].path, writable=False)}
    result = run_task(make_ctx("ffmpeg", {**VP9, "output": "out:x.webm"}, roots=read_only))
    assert result.fault == "worker" and "is not an output root" in result.error


def test_a_failed_or_cancelled_encode_leaves_no_temporary_file(make_ctx, roots, ffmpeg_tools):
    (roots["media"].path / "text.mp4").write_text("not a video\n" * 100)
    bad = run_task(make_ctx("ffmpeg", {**VP9, "input": "media:text.mp4", "output": "out:bad.webm"},
                            roots=roots))  # fmt: skip
    assert bad.status == RunStatus.FAILED and "not a media file" in bad.error
    assert os.listdir(roots["out"].path) == []

    ctx = make_ctx("ffmpeg", {"scenario": "1080p30-vp9", "preset": "good", "duration_s": 120,
                              "output": "out:long.webm"}, roots=roots)  # fmt: skip
    running = Background(ctx).start()
    temp = roots["out"].path / f".long.webm.cloudq-{ctx.task_id}.tmp"
    deadline = 30.0
    while not (temp.exists() and temp.stat().st_size > 0) and deadline > 0 and not running.done.is_set():
        running.done.wait(0.05)
        deadline -= 0.05
    assert temp.exists(), "the encode never wrote its temporary file"
    result, _ = running.cancel_and_wait(5)
    assert result.status == RunStatus.CANCELLED
    assert os.listdir(roots["out"].path) == []


def test_a_task_user_writes_the_output_through_its_descriptor_only(make_ctx, roots, ffmpeg_tools):
    user = task_user("nobody")
    if user is None:
        pytest.fail("these tests run as root, so that tasks run as a task user")
    # The roots are below the test's private (0700) directory: nobody cannot even reach them.
    ctx = make_ctx("ffmpeg", {**VP9, "input": "media:in/clip.mp4", "output": "out:a/b.webm",
                              "quality": ["ssim"]}, roots=roots, user=user)  # fmt: skip
    result = run_task(ctx)
    assert result.status == RunStatus.COMPLETED, result.error
    final = roots["out"].path / "a" / "b.webm"
    info = final.stat()
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (os.geteuid(), 0o644)  # taken back
    assert 0.5 < result.output["quality"]["ssim"] <= 1.0


def test_quality_scores_of_a_file_and_of_the_synthetic_source(make_ctx, roots, ffmpeg_tools):
    seen = []
    ctx = make_ctx("ffmpeg", {**VP9, "input": "media:in/clip.mp4", "output": "out:q.webm",
                              "quality": "ssim,psnr"}, roots=roots, on_progress=seen.append)  # fmt: skip
    result = run_task(ctx)
    assert result.status == RunStatus.COMPLETED, result.error
    scores = result.output["quality"]
    assert list(scores) == ["ssim", "psnr"]
    assert 0.5 < scores["ssim"] <= 1.0 and 20 < scores["psnr"] <= 100
    quality = [p for p in seen if p.get("phase") == "quality"]
    assert quality and quality[-1]["quality_percent"] == 100.0 and quality[-1]["percent"] == 100.0

    synthetic = run_task(make_ctx("ffmpeg", {"scenario": "360p30-h264", "duration_s": 1,
                                             "quality": ["psnr", "ssim"]}))  # fmt: skip
    assert synthetic.status == RunStatus.COMPLETED, synthetic.error
    assert 0.5 < synthetic.output["quality"]["ssim"] <= 1.0
    assert synthetic.output["path"] == "output.mp4"  # in the task directory

    # A starved bitrate scores lower than a generous one: the scores measure the encode.
    low = run_task(make_ctx("ffmpeg", {"scenario": "360p30-h264", "duration_s": 1, "bitrate": "16k",
                                       "quality": ["ssim"]}))  # fmt: skip
    assert low.output["quality"]["ssim"] < synthetic.output["quality"]["ssim"]


def test_vmaf_without_libvmaf_is_the_workers_fault(make_ctx, ffmpeg_tools):
    from cloudq.worker.runners.capabilities import ffmpeg_filters

    if "libvmaf" in (ffmpeg_filters() or ()):
        pytest.fail("this FFmpeg has libvmaf; the test needs one without it")
    result = run_task(make_ctx("ffmpeg", {"scenario": "360p30-h264", "quality": ["vmaf"]}))
    assert result.status == RunStatus.FAILED and result.fault == "worker"
    assert "has no libvmaf filter" in result.error


def test_exec_tasks_find_their_roots_in_the_environment(make_ctx, roots):
    spec = {"argv": ["sh", "-c", "env | grep ^CLOUDQ_ROOT_ | sort"], "input_roots": ["media"],
            "output_roots": ["out"]}  # fmt: skip
    result = run_task(make_ctx("exec", spec, roots=roots))
    assert result.status == RunStatus.COMPLETED, result.error
    assert result.log_tail.splitlines() == [f"CLOUDQ_ROOT_MEDIA={roots['media'].path}",
                                            f"CLOUDQ_ROOT_OUT={roots['out'].path}"]
    unnamed = run_task(make_ctx("exec", {"argv": ["sh", "-c", "env | grep -c ^CLOUDQ_ROOT_ || true"]},
                                roots=roots))  # fmt: skip
    assert unnamed.log_tail.strip() == "0"  # only the roots it names


def test_containers_get_only_their_roots_read_only_or_read_write(make_ctx, roots, docker_client):
    (roots["media"].path / "in" / "note.txt").write_text("from the share\n")
    script = ("cat $CLOUDQ_ROOT_MEDIA/in/note.txt > $CLOUDQ_ROOT_OUT/copy.txt && "
              "(touch /roots/media/x 2>/dev/null && echo media-writable || echo media-read-only); "
              "ls /roots")  # fmt: skip
    spec = {"image": BUSYBOX, "command": ["sh", "-c", script], "input_roots": ["media"],
            "output_roots": ["out"]}  # fmt: skip
    result = run_task(make_ctx("container", spec, roots=roots))
    assert result.status == RunStatus.COMPLETED, (result.error, result.log_tail)
    assert (roots["out"].path / "copy.txt").read_text() == "from the share\n"
    assert result.log_tail.split() == ["media-read-only", "media", "out"]
    assert not (roots["media"].path / "x").exists()

    bare = run_task(make_ctx("container", {"image": BUSYBOX, "command": ["ls", "/roots"]}, roots=roots))
    assert bare.status == RunStatus.FAILED  # no roots named: nothing of the host is mounted


def test_the_worker_flags_name_roots(tmp_path):
    from cloudq.errors import CloudqError
    from cloudq.worker.runners.storage import parse_root_flags

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    plain, named = parse_root_flags([f"media={tmp_path}/a", str(tmp_path)], [f"out={tmp_path}/b"])
    assert plain == [tmp_path]  # a plain path keeps working as before
    assert named == {"media": StorageRoot("media", tmp_path / "a", False),
                     "out": StorageRoot("out", tmp_path / "b", True)}
    for inputs, outputs, message in (
        ([f"Media={tmp_path}"], [], "must be 1 to 32 lower-case"),
        ([f"http={tmp_path}"], [], "is an FFmpeg protocol name"),
        ([f"media={tmp_path}/a", f"media={tmp_path}/b"], [], "given twice"),
        ([f"media={tmp_path}/a"], [f"media={tmp_path}/b"], "given twice"),
        ([f"media={tmp_path}/nothing"], [], "is not a directory here"),
        ([], [str(tmp_path)], "give NAME=PATH"),
    ):
        with pytest.raises(CloudqError, match=message):
            parse_root_flags(inputs, outputs)

