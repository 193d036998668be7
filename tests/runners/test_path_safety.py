"""File-system escapes that only a worker can see: symlinks, inputs outside the input roots,
odd files. Each is refused with a clear error before any process starts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cloudq.worker.runners import RunStatus, run_task

from .conftest import BUSYBOX, task_containers

pytestmark = pytest.mark.usefixtures("ffmpeg_tools")

H264 = {"scenario": "360p30-h264", "duration_s": 1}


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory no task may write to or read from."""
    path = tmp_path / "outside"
    path.mkdir()
    (path / "precious.mp4").write_bytes(b"do not overwrite")
    return path


def assert_refused(result, message: str) -> None:
    assert result.status == RunStatus.FAILED
    assert result.exit_code is None
    assert message in result.error, result.error


def linked_work_dir(tmp_path: Path, target: Path) -> Path:
    link = tmp_path / "linked-task"
    link.symlink_to(target, target_is_directory=True)
    return link


@pytest.mark.parametrize(
    ("kind", "spec"),
    [
        ("ffmpeg", H264),
        ("exec", {"argv": ["touch", "ran"]}),
        ("container", {"image": BUSYBOX, "command": ["true"]}),
    ],  # fmt: skip
)
def test_symlinked_work_dir_is_refused(kind, spec, make_ctx, tmp_path, outside, docker_client):
    ctx = make_ctx(kind, spec, work_dir=linked_work_dir(tmp_path, outside))
    result = run_task(ctx)
    assert_refused(result, "is a symlink; refusing to write through it")
    assert sorted(os.listdir(outside)) == ["precious.mp4"]
    assert task_containers(docker_client, ctx.task_id) == []


def test_output_symlink_is_not_followed(make_ctx, outside):
    ctx = make_ctx("ffmpeg", {**H264, "output": "out.mp4"})
    (ctx.work_dir / "out.mp4").symlink_to(outside / "precious.mp4")
    result = run_task(ctx)
    assert_refused(result, "output 'out.mp4' is a symlink in the task directory")
    assert (outside / "precious.mp4").read_bytes() == b"do not overwrite"
    assert sorted(os.listdir(ctx.work_dir)) == ["out.mp4"]  # no log: nothing started


def test_planted_log_symlink_is_not_followed(make_ctx, outside):
    ctx = make_ctx("exec", {"argv": ["echo", "overwrite"]})
    (ctx.work_dir / "task.log").symlink_to(outside / "precious.mp4")
    result = run_task(ctx)
    assert_refused(result, "cannot be written")
    assert (outside / "precious.mp4").read_bytes() == b"do not overwrite"


def test_input_outside_the_input_roots(make_ctx, sample_video, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    ctx = make_ctx("ffmpeg", {**H264, "input": str(sample_video)}, input_roots=[root])
    result = run_task(ctx)
    assert_refused(result, "is outside the allowed input directories")
    assert os.listdir(ctx.work_dir) == []


def test_input_symlink_escaping_the_root(make_ctx, sample_video, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "clip.mp4").symlink_to(sample_video)
    ctx = make_ctx("ffmpeg", {**H264, "input": "clip.mp4"}, input_roots=[root])
    assert_refused(run_task(ctx), "is outside the allowed input directories")
    assert os.listdir(ctx.work_dir) == []


def test_input_symlink_in_the_task_dir_escaping(make_ctx, sample_video):
    ctx = make_ctx("ffmpeg", {**H264, "input": "clip.mp4"})
    (ctx.work_dir / "clip.mp4").symlink_to(sample_video)
    assert_refused(run_task(ctx), "is outside the allowed input directories")
    assert os.listdir(ctx.work_dir) == ["clip.mp4"]


def test_absolute_input_without_roots(make_ctx):
    ctx = make_ctx("ffmpeg", {**H264, "input": "/etc/hostname"})
    assert_refused(run_task(ctx), "is outside the allowed input directories")


def test_input_that_is_a_fifo_does_not_hang(make_ctx):
    ctx = make_ctx("ffmpeg", {**H264, "input": "pipe.mp4"})
    os.mkfifo(ctx.work_dir / "pipe.mp4")
    assert_refused(run_task(ctx), "input 'pipe.mp4' is not a regular file")


def test_input_that_is_a_directory(make_ctx):
    ctx = make_ctx("ffmpeg", {**H264, "input": "clips"})
    (ctx.work_dir / "clips").mkdir()
    assert_refused(run_task(ctx), "input 'clips' is not a regular file")


def test_missing_input(make_ctx):
    ctx = make_ctx("ffmpeg", {**H264, "input": "nothing-here.mp4"})
    assert_refused(run_task(ctx), "was not found in the allowed input directories")


def test_output_over_the_input(make_ctx, sample_video):
    ctx = make_ctx("ffmpeg", {**H264, "input": "clip.mp4", "output": "clip.mp4"})
    (ctx.work_dir / "clip.mp4").write_bytes(sample_video.read_bytes())
    assert_refused(run_task(ctx), "the output would overwrite the input")
    assert (ctx.work_dir / "clip.mp4").read_bytes() == sample_video.read_bytes()


def test_exec_cwd_through_a_symlink(make_ctx, outside):
    ctx = make_ctx("exec", {"argv": ["touch", "ran"], "cwd": "sub/deeper"})
    (ctx.work_dir / "sub").symlink_to(outside, target_is_directory=True)
    assert_refused(run_task(ctx), "resolves outside the task directory")
    assert sorted(os.listdir(outside)) == ["precious.mp4"]  # not even a directory was made
