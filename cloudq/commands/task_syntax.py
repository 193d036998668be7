"""The `task` command line, turned into a task request (the same fields a JSON submission has).

    task [WORKER] IMAGE [-cpu_cores F] [-mem GB] [-storage GB] [-gpu N]     a container
    task [WORKER] --scenario 720p30-h264 [--input ROOT:PATH] [--output ROOT:PATH]
                  [--overwrite] [--quality ssim,psnr] [--duration S]        an FFmpeg transcode
    task [WORKER] --exec "CMD ARGS" [--input ROOT] [--output ROOT]          a plain command
    common: --queue live|default|batch --priority high|medium|low --lock NAME[:N]
            --retries N --timeout S --ttl S --label k=v --name NAME --owner NAME
            --keep-task-dir

Options take one dash or two (`-mem 2` = `--mem 2`).
"""

from __future__ import annotations

import argparse
import json
import shlex
from typing import Any

from cloudq.commands.registry import CommandParser
from cloudq.errors import ValidationError


def _option(parser: argparse.ArgumentParser, name: str, *extra: str, **kwargs: Any) -> None:
    flags = [f"-{name}", f"--{name}", *extra]
    parser.add_argument(*flags, **kwargs)


def add_task_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("words", nargs="*", metavar="[WORKER] IMAGE",
                        help="target worker (optional) and, for a container, its image")
    _option(parser, "scenario", help="FFmpeg scenario, e.g. 720p30-h264")
    _option(parser, "exec", dest="exec_line", metavar='"CMD ARGS"', help="a plain command")
    _option(parser, "cmd", dest="container_cmd", metavar='"CMD ARGS"', help="container command")
    _option(parser, "noop", action="store_true", help="a no-op task (benchmarks)")
    _option(parser, "cpu_cores", "-cpu", "--cpu", type=float, help="CPU cores")
    _option(parser, "mem", "-mem_gb", "--mem_gb", type=float, help="memory in GB")
    _option(parser, "storage", "-storage_gb", "--storage_gb", type=float, help="disk in GB")
    _option(parser, "gpu", "-gpus", "--gpus", type=int, help="GPU count")
    _option(parser, "gpu_mem", "-gpu_mem_gb", "--gpu_mem_gb", type=float, help="memory per GPU in GB")
    _option(parser, "queue", help="live, default or batch")
    _option(parser, "priority", help="high, medium or low")
    _option(parser, "lock", action="append", help="named lock NAME[:N] (repeatable)")
    _option(parser, "label", action="append", help="k=v a worker must have (repeatable)")
    _option(parser, "retries", type=int, help="retries after a failure")
    _option(parser, "backoff", type=float, help="seconds before the first retry")
    _option(parser, "timeout", type=float, help="run time limit in seconds")
    _option(parser, "ttl", type=float, help="seconds it may wait in the queue")
    _option(parser, "name", help="a name to find it by")
    _option(parser, "owner", help="who it belongs to")
    _option(parser, "env", action="append", help="K=V for the command (repeatable)")
    _option(parser, "network", action="store_true", help="give a container network access")
    _option(parser, "input", action="append", metavar="ROOT:PATH",
            help="FFmpeg: the input file, ROOT:PATH below a storage root (default: a synthetic "
                 "source); container and exec: a storage root to read (repeatable)")
    _option(parser, "duration", type=float, help="FFmpeg seconds to encode")
    _option(parser, "bitrate", help="FFmpeg bitrate, e.g. 2500k")
    _option(parser, "preset", help="FFmpeg encoder preset")
    _option(parser, "output", action="append", metavar="ROOT:PATH",
            help="FFmpeg: where the output goes, ROOT:PATH below an output root (default: a "
                 "file in the task directory); container and exec: an output root (repeatable)")
    _option(parser, "overwrite", action="store_true",
            help="FFmpeg: replace an existing output file (default: refuse)")
    _option(parser, "quality", metavar="ssim,psnr[,vmaf]",
            help="FFmpeg: measure these quality scores of the output against its source")
    _option(parser, "keep_task_dir", "-keep-task-dir", "--keep-task-dir", action="store_true",
            help="keep the task directory on the worker after the task (for debugging)")
    _option(parser, "sleep", type=float, help="no-op: seconds to sleep")
    _option(parser, "after", action="append", metavar="ID[,ID...]",
            help="queue it only once these tasks completed (cancelled if one does not)")
    _option(parser, "after_any", "-after-any", "--after-any", action="append", metavar="ID[,ID...]",
            help="queue it once these tasks ended, in any way")


def request_from_args(args: argparse.Namespace) -> dict[str, Any]:
    kinds = [k for k, on in (("ffmpeg", args.scenario), ("exec", args.exec_line),
                             ("noop", args.noop or args.sleep is not None)) if on]
    if len(kinds) > 1:
        raise ValidationError(f"give one of an image, --scenario, --exec or --noop, not {' and '.join(kinds)}")
    words = list(args.words)
    kind = kinds[0] if kinds else "container"
    if len(words) > (2 if kind == "container" else 1):
        raise ValidationError(f"too many words: {' '.join(words)}; expected [WORKER]"
                              + (" IMAGE" if kind == "container" else ""))
    request: dict[str, Any] = {"kind": kind, "spec": _spec(kind, args, words)}
    target = words[0] if words else None
    if target:
        request["target_worker"] = target
    resources = {key: value for key, value in (
        ("cpu_cores", args.cpu_cores), ("mem_gb", args.mem), ("storage_gb", args.storage),
        ("gpus", args.gpu), ("gpu_mem_gb", args.gpu_mem)) if value is not None}
    if resources:
        request["resources"] = resources
    for field_name, value in (
        ("queue", args.queue), ("priority", args.priority), ("locks", args.lock),
        ("max_retries", args.retries), ("retry_backoff_s", args.backoff), ("timeout_s", args.timeout),
        ("ttl_s", args.ttl), ("name", args.name), ("owner", args.owner),
        ("after", args.after and ",".join(args.after)),
        ("after_any", args.after_any and ",".join(args.after_any)),
    ):
        if value is not None:
            request[field_name] = value
    if args.label:
        request["labels"] = ",".join(args.label)
    return request


def _spec(kind: str, args: argparse.Namespace, words: list[str]) -> dict[str, Any]:
    env = _env(args.env)
    if kind != "ffmpeg":
        for flag, given in (("--overwrite", args.overwrite), ("--quality", args.quality)):
            if given:
                raise ValidationError(f"{flag} is for FFmpeg tasks (--scenario)")
    if kind == "noop":
        if args.input or args.output or args.keep_task_dir:
            raise ValidationError("a no-op has no inputs, outputs or task directory")
        return {"sleep_s": args.sleep or 0.0}
    spec: dict[str, Any]
    if kind == "container":
        if not words:
            raise ValidationError("task needs an IMAGE, or --scenario, --exec or --noop")
        image = words.pop()
        spec = {"image": image, "env": env, "network": bool(args.network)}
        if args.container_cmd:
            spec["command"] = _split(args.container_cmd, "--cmd")
    elif kind == "exec":
        spec = {"argv": _split(args.exec_line, "--exec"), "env": env}
    else:
        spec = {"scenario": args.scenario}
        for key, value in (("input", _one(args.input, "--input")), ("duration_s", args.duration),
                           ("bitrate", args.bitrate), ("preset", args.preset),
                           ("output", _one(args.output, "--output")), ("quality", args.quality)):
            if value is not None:
                spec[key] = value
        if args.overwrite:
            spec["overwrite"] = True
    if kind != "ffmpeg":  # storage roots the command reads and writes: placed where they are
        if args.input:
            spec["input_roots"] = _roots(args.input)
        if args.output:
            spec["output_roots"] = _roots(args.output)
    if args.keep_task_dir:
        spec["keep_task_dir"] = True
    return spec


def _one(values: list[str] | None, flag: str) -> str | None:
    if not values:
        return None
    if len(values) > 1:
        raise ValidationError(f"an FFmpeg task takes one {flag}, got {len(values)}")
    return values[0]


def _roots(values: list[str]) -> list[str]:
    """`--input media --input out:` or `--input media,out`: root names (a trailing ':' and
    commas allowed); the spec checks them."""
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _split(line: str, flag: str) -> list[str]:
    try:
        argv = shlex.split(line)
    except ValueError as err:
        raise ValidationError(f"{flag}: {err}") from None
    if not argv:
        raise ValidationError(f"{flag} needs a command")
    return argv


def _env(items: list[str] | None) -> dict[str, str]:
    env = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValidationError(f"--env {item!r} must be K=V")
        env[key] = value
    return env


def parse_submit_line(line: str, parser: CommandParser) -> dict[str, Any] | None:
    """One line of a `submit` file: a JSON object, or the arguments of a `task` line."""
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    if line.startswith("{"):
        try:
            request = json.loads(line)
        except ValueError as err:
            raise ValidationError(f"not valid JSON: {err}") from None
        if not isinstance(request, dict):
            raise ValidationError("a JSON line must be an object of task fields")
        return request
    words = shlex.split(line) if line else []
    if words and words[0] == "task":
        words = words[1:]
    return request_from_args(parser.parse_args(words))
