"""Storage roots: named directories a worker shares with the farm (`--input-root media=/mnt/nas`,
`--output-root out=/srv/encoded`), and the `ROOT:PATH` references tasks make to them.

A task never names a path on a worker's disk: it names a root and a path below it
(`media:shows/ep1.mkv`), and each worker resolves that under its own mount point, so machines
that mount the same share in different places run the same task. A task needs the roots it
names (capabilities `root:NAME`, and `root-rw:NAME` for one it writes to), so it is placed only
on workers that have them; the placement reason says which is missing.

Pure: no I/O. The worker side (resolving, confining, writing) is cloudq.worker.runners.storage.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from cloudq.errors import SpecError
from cloudq.specs.fields import comma_separated, describe

ROOT_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,31}\Z")
# What FFmpeg reads as a protocol before a ':' (ffmpeg -protocols, and a few more that builds
# may have). These are never root names, so an input such as `concat:a|b` keeps being refused
# as a protocol rather than read as a root that no worker has.
FFMPEG_PROTOCOLS = frozenset({
    "async", "bluray", "cache", "concat", "concatf", "crypto", "data", "fd", "ffrtmpcrypt",
    "ffrtmphttp", "file", "ftp", "gopher", "gophers", "hls", "http", "httpproxy", "https",
    "icecast", "ipfs", "ipns", "librist", "libsmbclient", "libsrt", "libssh", "md5", "mmsh",
    "mmst", "pipe", "prompeg", "rist", "rtmp", "rtmpe", "rtmps", "rtmpt", "rtmpte", "rtmpts",
    "rtp", "sctp", "sftp", "smb", "srt", "srtp", "subfile", "tcp", "tee", "tls", "udp",
    "udplite", "unix", "zmq", "amqp", "android_content",
})
# `name:` at the start of a string: a root reference, or what FFmpeg would take for a protocol.
PREFIX_RE = re.compile(r"(?P<prefix>[A-Za-z][A-Za-z0-9+.-]*):(?P<rest>.*)\Z", re.DOTALL)
# One component of an output path: what a farm names its files, nothing a shell or FFmpeg
# could read as more (and never starting with '.', so never one of our temporary names).
COMPONENT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*\Z")
MAX_PATH_CHARS = 1024
MAX_DEPTH = 32
MAX_TASK_ROOTS = 16

READ_PREFIX, WRITE_PREFIX = "root:", "root-rw:"
ENV_PREFIX = "CLOUDQ_ROOT_"
CONTAINER_BASE = "/roots"  # where a container finds its roots: /roots/NAME


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a root name, or None when it can."""
    if not ROOT_NAME_RE.match(name):
        return (f"root name {describe(name)} must be 1 to 32 lower-case letters, digits or '_', "
                "starting with a letter")
    if name in FFMPEG_PROTOCOLS:
        return f"root name {name!r} is an FFmpeg protocol name; choose another"
    return None


def split_reference(value: str) -> tuple[str, str] | None:
    """("media", "shows/ep1.mkv") for `media:shows/ep1.mkv`; None when `value` has no `name:`
    prefix at all (a plain path). The prefix is not checked here (name_problem does)."""
    match = PREFIX_RE.match(value)
    if match is None:
        return None
    return match["prefix"], match["rest"]


def read_capability(name: str) -> str:
    return READ_PREFIX + name


def write_capability(name: str) -> str:
    return WRITE_PREFIX + name


def capabilities(reads: Iterable[str], writes: Iterable[str]) -> set[str]:
    """What a task that reads `reads` and writes `writes` needs of a worker."""
    return {read_capability(n) for n in reads} | {write_capability(n) for n in writes}


def worker_capabilities(roots: Iterable[tuple[str, bool]]) -> set[str]:
    """What a worker with these (name, writable) roots advertises: every root can be read, an
    output root can be written as well."""
    have = set()
    for name, writable in roots:
        have.add(read_capability(name))
        if writable:
            have.add(write_capability(name))
    return have


def describe_capability(capability: str) -> str:
    """A capability as a placement reason says it."""
    if capability.startswith(WRITE_PREFIX):
        return f"output root {capability[len(WRITE_PREFIX):]} ({capability})"
    if capability.startswith(READ_PREFIX):
        return f"storage root {capability[len(READ_PREFIX):]} ({capability})"
    return capability


def env_name(name: str) -> str:
    """CLOUDQ_ROOT_MEDIA for root `media`: where an exec task finds it."""
    return ENV_PREFIX + name.upper()


def container_path(name: str) -> str:
    return f"{CONTAINER_BASE}/{name}"


def check_root_name(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise SpecError(f"{field} must be a root name, got {type(value).__name__}")
    name = value[:-1] if value.endswith(":") else value  # `media:` names the whole root
    if problem := name_problem(name):
        raise SpecError(f"{field}: {problem}")
    return name


def check_root_list(value: Any, field: str) -> list[str]:
    """A list of root names (or one string, comma-separated): sorted, without repeats."""
    if value is None:
        return []
    value = comma_separated(value)
    if not isinstance(value, list | tuple):
        raise SpecError(f"{field} must be a list of root names, got {type(value).__name__}")
    if len(value) > MAX_TASK_ROOTS:
        raise SpecError(f"{field}: at most {MAX_TASK_ROOTS} roots, got {len(value)}")
    return sorted({check_root_name(item, f"{field}[{i}]") for i, item in enumerate(value)})


def check_relative(path: str, field: str, shown: str) -> list[str]:
    """The components of a path below a root: not absolute, no '..', no empty part."""
    if not path:
        raise SpecError(f"{field} names a root but no path below it: {describe(shown)}")
    if len(path) > MAX_PATH_CHARS:
        raise SpecError(f"{field} is too long ({len(path)} characters, at most {MAX_PATH_CHARS})")
    if path.startswith("/"):
        raise SpecError(f"{field} must be a path below its root, not an absolute path: "
                        f"{describe(shown)}")
    parts = path.split("/")
    if ".." in parts:
        raise SpecError(f"{field} must not contain '..' components (it would leave its root): "
                        f"{describe(shown)}")
    if path.endswith("/"):
        raise SpecError(f"{field} must name a file, not a directory: {describe(shown)}")
    parts = [part for part in parts if part not in ("", ".")]
    if not parts:
        raise SpecError(f"{field} must name a file below its root: {describe(shown)}")
    if len(parts) > MAX_DEPTH:
        raise SpecError(f"{field} is too deep ({len(parts)} directories, at most {MAX_DEPTH})")
    return parts
