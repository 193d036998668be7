"""Storage roots across machines: two real worker processes mount the same shares (`media`,
`out`) in different places; a transcode names its input and output by root and each worker
finds them under its own mount point. Real FFmpeg; the output is checked with ffprobe."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from cloudq.errors import CloudqError

TRANSCODE = ("--scenario", "480p30-vp9", "--input", "media:in/clip.mkv",
             "--output", "out:clip-480p.webm", "--retries", "0")  # fmt: skip


def ffprobe(path: Path) -> dict:
    done = subprocess.run(["ffprobe", "-v", "error", "-print_format", "json", "-show_format",
                           "-show_streams", str(path)], capture_output=True, check=True, timeout=60)
    return json.loads(done.stdout)


@pytest.fixture
def mounts(tmp_path: Path) -> dict[str, Path]:
    """Two machines' views of the shares: /mnt-a/... and /elsewhere-b/..., the same clip in each."""
    for tool in ("ffmpeg", "ffprobe"):
        assert shutil.which(tool), f"{tool} is not installed: this test needs it"
    clip = tmp_path / "clip.mkv"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y",
                    "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25:duration=2",
                    "-f", "lavfi", "-i", "sine=duration=2",
                    "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "-shortest", str(clip)],
                   check=True, timeout=60)  # fmt: skip
    views = {"a": tmp_path / "mnt-a", "b": tmp_path / "elsewhere-b" / "nas"}
    for view in views.values():
        (view / "media" / "in").mkdir(parents=True)
        (view / "encoded").mkdir()
        shutil.copy(clip, view / "media" / "in" / "clip.mkv")
    return views


def test_a_transcode_reads_and_writes_by_root_on_workers_that_mount_them_apart(cluster, mounts):
    master = cluster.start_master()
    for name, view in mounts.items():
        cluster.start_worker(name, "--cpu-cores", "2", "--input-root", f"media={view / 'media'}",
                             "--output-root", f"out={view / 'encoded'}")  # fmt: skip
    ids = {name: master.ctl("task", name, *TRANSCODE, "--quality", "ssim,psnr",
                            *(["--keep-task-dir"] if name == "b" else []))["id"]
           for name in mounts}  # fmt: skip
    for name, task_id in ids.items():
        done = master.wait_state(task_id, {"completed", "failed", "dead"}, timeout=120)
        assert done["state"] == "completed", done["last_error"]
        final = mounts[name] / "encoded" / "clip-480p.webm"
        out = done["result"]["output"]
        assert out["path"] == "out:clip-480p.webm" and out["host_path"] == str(final)
        info = ffprobe(final)
        video = next(s for s in info["streams"] if s["codec_type"] == "video")
        assert (video["codec_name"], video["width"], video["height"]) == ("vp9", 854, 480)
        assert float(info["format"]["duration"]) == pytest.approx(2.0, abs=0.2)
        assert video["r_frame_rate"] == "30/1"
        assert int(info["format"]["size"]) == out["size_bytes"] == final.stat().st_size
        assert [n for n in os.listdir(final.parent) if n != "clip-480p.webm"] == []  # no temporary
        assert out["resolution"] == "854x480" and out["encode_speed"] > 0 and out["bitrate_kbps"] > 0
        scores = out["quality"]
        print(f"\n{name}: {out['size_bytes']} bytes, {out['encode_speed']}x, quality {scores}")
        assert 0.5 < scores["ssim"] <= 1.0 and 20.0 < scores["psnr"] <= 100.0
    kept = Path(master.task(ids["b"])["result"]["output"]["task_dir"])
    assert (kept / "task.log").is_file()  # --keep-task-dir: still there for debugging
    assert "task_dir" not in master.task(ids["a"])["result"]["output"]

    # The same task again: the file is there now, and is not replaced without --overwrite.
    again = master.ctl("task", "a", *TRANSCODE)["id"]
    done = master.wait_state(again, {"completed", "failed", "dead"}, timeout=60)
    assert done["state"] in ("failed", "dead")
    assert "exists; give --overwrite to replace it" in done["last_error"]
    replaced = master.ctl("task", "a", *TRANSCODE, "--overwrite")["id"]
    assert master.wait_state(replaced, {"completed", "failed", "dead"}, timeout=120)["state"] == "completed"


def test_escaping_outputs_are_refused_and_a_missing_root_is_waited_for_with_the_reason(cluster, mounts):
    master = cluster.start_master()
    view = mounts["a"]
    cluster.start_worker("reader", "--input-root", f"media={view / 'media'}")
    for output in ("out:../escape.webm", "out:/etc/passwd.webm", "out:a/../../escape.webm"):
        with pytest.raises(CloudqError, match="must not contain '..'|not an absolute path"):
            master.ctl("task", "--scenario", "480p30-vp9", "--output", output)
    task = master.ctl("task", *TRANSCODE)
    assert task["state"] == "queued"
    why = master.ctl("why", task["id"])
    assert why["workers"]["reader"] == "Missing capability: worker lacks output root out (root-rw:out)"
    assert "output root out" in (why["never_fits"] or "")
    # A worker with the root joins: the task goes there and writes below its own mount point.
    cluster.start_worker("writer", "--input-root", f"media={view / 'media'}",
                         "--output-root", f"out={view / 'encoded'}")  # fmt: skip
    done = master.wait_state(task["id"], {"completed", "failed", "dead"}, timeout=120)
    assert done["state"] == "completed" and done["worker"] == "writer", done["last_error"]
    assert (view / "encoded" / "clip-480p.webm").is_file()
    assert not (view.parent / "escape.webm").exists()
