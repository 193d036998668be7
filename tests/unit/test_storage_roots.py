"""Storage roots and quality scores on the master's side: the `task` line, placement by root,
what `show` prints of an output, and the quality histogram."""

from __future__ import annotations

import pytest

from cloudq.commands import Context, dispatch, split_line
from cloudq.errors import ValidationError
from cloudq.master.core import Master, MasterConfig
from cloudq.metrics import master_registry
from tests.unit.test_master_core import Clock
from tests.unit.test_metrics import scrape, value

ENCODER = ["ffmpeg", "encoder:libvpx-vp9"]


@pytest.fixture
def master() -> Master:
    return Master(config=MasterConfig(lease_s=10.0), clock=Clock())


def run(master: Master, line: str):
    return dispatch(Context(master), split_line(line))


def worker(master: Master, name: str, capabilities: list[str]) -> int:
    facts = {"name": name, "cpu_cores": 4.0, "mem_gb": 16.0, "storage_gb": 100.0,
             "max_tasks": 4, "capabilities": capabilities}
    return master.register(facts, [])["session"]


def test_the_task_line_names_roots_overwrite_quality_and_keep_task_dir(master):
    task = run(master, "task --scenario 480p30-vp9 --input media:in/clip.mkv "
                       "--output out:clip-480p.webm --overwrite --quality ssim,psnr --keep-task-dir").data
    assert task["spec"] | {"input": "media:in/clip.mkv", "output": "out:clip-480p.webm",
                           "overwrite": True, "quality": ["ssim", "psnr"],
                           "keep_task_dir": True} == task["spec"]
    box = run(master, "task busybox --input media: --input scratch --output out -cmd ls").data
    assert (box["spec"]["input_roots"], box["spec"]["output_roots"]) == (["media", "scratch"], ["out"])
    exe = run(master, "task --exec ls --input media,out --keep-task-dir").data
    assert exe["spec"]["input_roots"] == ["media", "out"] and exe["spec"]["keep_task_dir"] is True
    for line, message in (
        ("task --scenario 480p30-vp9 --output out:../x.webm", "must not contain '..'"),
        ("task --scenario 480p30-vp9 --input a:x --input b:y", "takes one --input"),
        ("task --exec ls --quality ssim", "--quality is for FFmpeg tasks"),
        ("task --exec ls --overwrite", "--overwrite is for FFmpeg tasks"),
        ("task --noop --output out", "a no-op has no inputs"),
    ):
        with pytest.raises(ValidationError, match=message):
            run(master, line)


def test_a_task_waits_for_a_worker_with_its_roots_and_says_which_is_missing(master):
    worker(master, "reader", [*ENCODER, "root:media"])
    worker(master, "wrong-way", [*ENCODER, "root:media", "root:out"])  # out only to read
    task = run(master, "task --scenario 480p30-vp9 --input media:in/clip.mkv "
                       "--output out:clip.webm").data
    assert task["state"] == "queued"
    why = run(master, f"why {task['id']}").data
    assert why["workers"]["reader"] == ("Missing capability: worker lacks output root out "
                                        "(root-rw:out)")
    assert "output root out" in why["workers"]["wrong-way"]
    assert "output root out" in why["never_fits"]
    worker(master, "farm", [*ENCODER, "root:media", "root:out", "root-rw:out"])
    assert master.get(task["id"]).worker == "farm"
    vmaf = run(master, "task --scenario 480p30-vp9 --quality vmaf").data
    assert "filter:libvmaf" in run(master, f"why {vmaf['id']}").data["workers"]["farm"]


def test_show_prints_the_output_its_quality_and_a_kept_task_dir(master):
    session = worker(master, "w1", [*ENCODER, "root-rw:out", "root:out"])
    task = run(master, "task --scenario 480p30-vp9 --output out:enc/clip.webm --quality ssim,psnr").data
    output = {"path": "out:enc/clip.webm", "host_path": "/mnt/b/enc/clip.webm", "size_bytes": 1_234_567,
              "duration_s": 4.02, "codec": "vp9", "resolution": "854x480", "bitrate_kbps": 812.5,
              "encode_speed": 3.1, "quality": {"ssim": 0.98123, "psnr": 38.2},
              "task_dir": "/tmp/cloudq-work/w1/t1.1"}
    master.report("w1", session, [{"task": task["id"], "attempt": 1, "state": "completed",
                                   "result": {"status": "completed", "output": output}}])
    rows = dict((row[0], row[1]) for row in run(master, f"show {task['id']}").rows)
    assert rows["output"] == ("out:enc/clip.webm (/mnt/b/enc/clip.webm on w1), 1.2 MB, 4.02 s, "
                              "vp9 854x480, 812.5 kbit/s, encoded at 3.1x")
    assert rows["quality"] == "ssim 0.98123, psnr 38.2 dB"
    assert rows["task dir"] == "/tmp/cloudq-work/w1/t1.1 on w1 (kept)"


def test_quality_scores_are_a_histogram_by_metric(master):
    registry, _ = master_registry(master)
    session = worker(master, "w1", ENCODER)
    scores = ({"ssim": 0.97, "psnr": 41.0}, {"ssim": 0.6, "vmaf": 88.0}, {"ssim": "odd", "bogus": 1.0})
    for quality in scores:
        task = run(master, "task --scenario 480p30-vp9").data
        master.report("w1", session, [{"task": task["id"], "attempt": 1, "state": "completed",
                                       "result": {"status": "completed",
                                                  "output": {"quality": quality}}}])
    samples = scrape(registry)
    assert value(samples, "cloudq_transcode_quality_count", metric="ssim") == 2
    assert value(samples, "cloudq_transcode_quality_sum", metric="ssim") == pytest.approx(1.57)
    assert value(samples, "cloudq_transcode_quality_bucket", metric="ssim", le="0.6") == 1
    assert value(samples, "cloudq_transcode_quality_bucket", metric="ssim", le="0.97") == 2
    assert value(samples, "cloudq_transcode_quality_count", metric="psnr") == 1
    assert value(samples, "cloudq_transcode_quality_bucket", metric="psnr", le="40.0") == 0
    assert value(samples, "cloudq_transcode_quality_count", metric="vmaf") == 1
    assert not [key for key in samples if dict(key[1]).get("metric") == "bogus"]
