"""Hostile specs: each is refused with a message that says what was wrong, and nothing runs.

Every case goes through validate_spec (what the master does on submit) and through run_task
(what a worker does if one got through anyway): the task fails, its directory stays empty (no
log, no output: no process was started), and no container carries its label.
"""

from __future__ import annotations

import math
import os

import pytest

from cloudq.errors import SpecError
from cloudq.specs import validate_spec
from cloudq.worker.runners import RunStatus, run_task

from .conftest import BUSYBOX, task_containers

H264 = {"scenario": "720p30-h264", "duration_s": 1}


def ffmpeg(**fields):
    return ("ffmpeg", {**H264, **fields})


def container(**fields):
    return ("container", {"image": BUSYBOX, "command": ["touch", "/tmp/ran"], **fields})


def exec_(**fields):
    return ("exec", {"argv": ["touch", "ran"], **fields})


HOSTILE = {
    # ffmpeg inputs: options, protocols and URLs, escapes
    "input-option": (ffmpeg(input="-i"), "must not start with '-'"),
    "input-filter-option": (ffmpeg(input="-filter_complex"), "must not start with '-'"),
    "input-concat": (ffmpeg(input="concat:a.mp4|b.mp4"), "not a protocol or URL (concat:)"),
    "input-http": (ffmpeg(input="http://example.com/a.mp4"), "not a protocol or URL (http:)"),
    "input-https": (ffmpeg(input="https://example.com/a.mp4"), "(https:)"),
    "input-rtmp": (ffmpeg(input="rtmp://host/live/key"), "not a protocol or URL (rtmp:)"),
    "input-file-scheme": (ffmpeg(input="file:/etc/passwd"), "not a protocol or URL (file:)"),
    "input-pipe": (ffmpeg(input="pipe:0"), "not a protocol or URL (pipe:)"),
    "input-data": (ffmpeg(input="data:video/mp4;base64,AAAA"), "(data:)"),
    "input-subfile": (ffmpeg(input="subfile:,start,0,end,9,,:/etc/passwd"), "(subfile:)"),
    "input-tcp": (ffmpeg(input="tcp://10.0.0.1:80"), "not a protocol or URL (tcp:)"),
    "input-parent": (ffmpeg(input="../secret.mp4"), "must not contain '..'"),
    "input-nested-parent": (ffmpeg(input="a/../../b.mp4"), "must not contain '..'"),
    "input-nul": (ffmpeg(input="a\x00b.mp4"), "must not contain NUL"),
    "input-newline": (ffmpeg(input="a\nb.mp4"), "must not contain control characters"),
    "input-empty": (ffmpeg(input=""), "ffmpeg.input must not be empty"),
    "input-not-string": (ffmpeg(input=5), "ffmpeg.input must be a string"),
    "input-directory": (ffmpeg(input="videos/"), "must name a file"),
    "input-huge": (ffmpeg(input="a" * 5000), "ffmpeg.input is too long"),
    # ffmpeg outputs: paths, options, hidden files, wrong containers
    "output-parent": (ffmpeg(output="../x.mp4"), "plain file name"),
    "output-absolute": (ffmpeg(output="/tmp/x.mp4"), "plain file name"),
    "output-slash": (ffmpeg(output="sub/x.mp4"), "plain file name"),
    "output-option": (ffmpeg(output="-y.mp4"), "must start with a letter, digit or '_'"),
    "output-hidden": (ffmpeg(output=".x.mp4"), "must start with a letter, digit or '_'"),
    "output-dotdot": (ffmpeg(output="a..mp4"), "must not contain '..'"),
    "output-wrong-ext": (ffmpeg(output="x.avi"), "h264 needs a .mp4 or .mkv file"),
    "output-webm-h264": (ffmpeg(output="x.webm"), "h264 needs a .mp4 or .mkv file"),
    "output-mp4-vp9": (
        ("ffmpeg", {"scenario": "480p30-vp9", "output": "x.mp4"}),
        "vp9 needs a .webm or .mkv file",
    ),  # fmt: skip
    "output-space": (ffmpeg(output="x y.mp4"), "use only letters, digits"),
    "output-huge": (ffmpeg(output="x" * 300 + ".mp4"), "ffmpeg.output is too long"),
    # storage roots: ROOT:PATH never leaves its root, and a root is never a protocol
    "root-input-parent": (ffmpeg(input="media:../etc/passwd"), "must not contain '..'"),
    "root-input-absolute": (ffmpeg(input="media:/etc/passwd"), "not an absolute path"),
    "root-input-no-path": (ffmpeg(input="media:"), "names a root but no path"),
    "root-input-upper": (ffmpeg(input="Media:a.mp4"), "root name 'Media' must be"),
    "root-input-protocol-upper": (ffmpeg(input="HTTP:x"), "not a protocol or URL (HTTP:)"),
    "root-input-cache": (ffmpeg(input="cache:a.mp4"), "not a protocol or URL (cache:)"),
    "root-output-parent": (ffmpeg(output="out:../x.mp4"), "must not contain '..'"),
    "root-output-nested-parent": (ffmpeg(output="out:a/../../x.mp4"), "must not contain '..'"),
    "root-output-absolute": (ffmpeg(output="out:/tmp/x.mp4"), "not an absolute path"),
    "root-output-hidden-dir": (ffmpeg(output="out:.git/x.mp4"), "each part of the path"),
    "root-output-option": (ffmpeg(output="out:-y.mp4"), "each part of the path"),
    "root-output-dir": (ffmpeg(output="out:enc/"), "must name a file"),
    "root-output-ext": (ffmpeg(output="out:a/x.webm"), "h264 needs a .mp4 or .mkv file"),
    "root-output-protocol": (ffmpeg(output="file:x.mp4"), "is an FFmpeg protocol name"),
    "root-output-deep": (ffmpeg(output="out:" + "d/" * 40 + "x.mp4"), "too deep"),
    "quality-unknown": (ffmpeg(quality=["ms-ssim"]), "unknown metric 'ms-ssim'"),
    "quality-not-list": (ffmpeg(quality=5), "must be a list of metrics"),
    "overwrite-not-bool": (ffmpeg(overwrite="yes"), "ffmpeg.overwrite must be true or false"),
    "container-root-path": (container(input_roots=["/etc"]), "root name '/etc' must be"),
    "container-root-protocol": (container(output_roots=["pipe"]), "is an FFmpeg protocol name"),
    "exec-root-not-list": (exec_(input_roots=5), "must be a list of root names"),
    # ffmpeg scenarios and numbers
    "scenario-codec": (ffmpeg(scenario="720p30-h263"), "unknown codec 'h263'"),
    "scenario-height": (ffmpeg(scenario="721p30-h264"), "height 721 is not one of"),
    "scenario-fps-high": (ffmpeg(scenario="720p90-h264"), "90 fps is outside 24-60"),
    "scenario-fps-low": (ffmpeg(scenario="720p23-h264"), "23 fps is outside 24-60"),
    "scenario-injection": (ffmpeg(scenario="720p30-h264; rm -rf /"), "not of the form"),
    "scenario-missing": (("ffmpeg", {"duration_s": 1}), "needs a 'scenario'"),
    "duration-nan": (ffmpeg(duration_s=math.nan), "must be a finite number"),
    "duration-inf": (ffmpeg(duration_s=math.inf), "must be a finite number"),
    "duration-negative": (ffmpeg(duration_s=-1), "must be > 0"),
    "duration-zero": (ffmpeg(duration_s=0), "must be > 0"),
    "duration-huge": (ffmpeg(duration_s=1e9), "must be <= 86400"),
    "duration-bool": (ffmpeg(duration_s=True), "must be a number, got bool"),
    "duration-string": (ffmpeg(duration_s="5"), "must be a number, got str"),
    "bitrate-unit": (ffmpeg(bitrate="5G"), "must look like '2500k'"),
    "bitrate-option": (ffmpeg(bitrate="-b:v 1k"), "must look like '2500k'"),
    "bitrate-tiny": (ffmpeg(bitrate="1k"), "is outside 16k-200M"),
    "preset-placebo": (ffmpeg(preset="placebo"), "not allowed for h264"),
    "preset-option": (ffmpeg(preset="-preset"), "not allowed for h264"),
    "preset-wrong-codec": (
        ("ffmpeg", {"scenario": "480p30-vp9", "preset": "ultrafast"}),
        "not allowed for vp9",
    ),  # fmt: skip
    "ffmpeg-extra-args": (ffmpeg(extra_args=["-f", "null"]), "unknown field 'extra_args'"),
    "ffmpeg-not-a-dict": (("ffmpeg", ["720p30-h264"]), "must be a mapping"),
    # containers
    "privileged": (container(privileged=True), "'privileged' is not allowed"),
    "volumes": (container(volumes={"/": {"bind": "/host"}}), "'volumes' is not allowed"),
    "binds": (container(binds=["/var/run/docker.sock:/sock"]), "'binds' is not allowed"),
    "mounts": (container(mounts=[]), "'mounts' is not allowed"),
    "cap-add": (container(cap_add=["SYS_ADMIN"]), "'cap_add' is not allowed"),
    "devices": (container(devices=["/dev/sda"]), "'devices' is not allowed"),
    "network-mode-host": (container(network_mode="host"), "'network_mode' is not allowed"),
    "pid-host": (container(pid_mode="host"), "'pid_mode' is not allowed"),
    "image-option": (container(image="-v/:/host"), "must not start with '-'"),
    "image-empty": (container(image=""), "container.image must not be empty"),
    "image-space": (container(image="busy box"), "must be a Docker reference"),
    "image-semicolon": (container(image="busybox;reboot"), "must be a Docker reference"),
    "image-missing": (("container", {"command": ["true"]}), "needs an 'image'"),
    "env-bad-key": (container(env={"BAD-KEY": "x"}), "bad variable name 'BAD-KEY'"),
    "env-digit-key": (container(env={"1X": "x"}), "bad variable name '1X'"),
    "env-not-string": (container(env={"A": 1}), "container.env[A] must be a string"),
    "command-string": (container(command="sh -c 'id'"), "not one string"),
    "workdir-relative": (container(workdir="tmp"), "must be an absolute path"),
    "network-not-bool": (container(network="yes"), "must be true or false"),
    "container-unknown": (container(entrypoint=["sh"]), "unknown field 'entrypoint'"),
    # exec
    "argv-empty": (("exec", {"argv": []}), "exec.argv must not be empty"),
    "argv0-empty": (("exec", {"argv": ["", "x"]}), "argv[0] (the program) must not be empty"),
    "argv-string": (("exec", {"argv": "touch ran"}), "must be a list of strings"),
    "argv-nul": (("exec", {"argv": ["touch", "a\x00b"]}), "must not contain NUL"),
    "argv-not-string": (("exec", {"argv": ["touch", 5]}), "exec.argv[1] must be a string"),
    "argv-many": (("exec", {"argv": ["touch"] * 5000}), "too many items (5000"),
    "argv-large": (("exec", {"argv": ["touch"] + ["x" * 4000] * 40}), "is too large"),
    "argv-item-long": (("exec", {"argv": ["touch", "x" * 5000]}), "is too long"),
    "cwd-absolute": (exec_(cwd="/etc"), "must be a relative path"),
    "cwd-parent": (exec_(cwd="../x"), "must not contain '..'"),
    "cwd-nested-parent": (exec_(cwd="a/../../x"), "must not contain '..'"),
    "env-many": (exec_(env={f"V{i}": "x" for i in range(300)}), "too many entries"),
    "env-value-long": (exec_(env={"V": "x" * 5000}), "exec.env[V] is too long"),
    "exec-shell": (exec_(shell=True), "unknown field 'shell'"),
    # noop and kinds
    "noop-nan": (("noop", {"sleep_s": math.nan}), "must be a finite number"),
    "noop-negative": (("noop", {"sleep_s": -1}), "must be >= 0"),
    "noop-bool": (("noop", {"sleep_s": True}), "must be a number, got bool"),
    "kind-unknown": (("shell", {"cmd": "id"}), "unknown task kind 'shell'"),
}


def test_there_are_at_least_fifty_cases():
    assert len(HOSTILE) >= 50


@pytest.mark.parametrize(("kind_spec", "message"), HOSTILE.values(), ids=HOSTILE.keys())
def test_refused_on_submit_and_on_the_worker(kind_spec, message, make_ctx, docker_client):
    kind, spec = kind_spec
    with pytest.raises(SpecError) as refused:
        validate_spec(kind, spec)
    assert message in str(refused.value)

    ctx = make_ctx(kind, spec)
    result = run_task(ctx)
    assert result.status == RunStatus.FAILED
    assert result.error.startswith("spec refused: ")
    assert message.replace("\n", " ") in result.error
    assert os.listdir(ctx.work_dir) == []  # no log, no output: nothing was started
    assert task_containers(docker_client, ctx.task_id) == []
