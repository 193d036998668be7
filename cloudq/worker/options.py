"""What a worker is started with: the master it joins, what it offers, where and as whom its
tasks run.

A module of its own because the agent's loops, its connection to the master and its task side
all read these settings, and none of them should import another just to name their type.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

from cloudq import defaults
from cloudq.worker.runners.base import StorageRoot


@dataclass
class WorkerOptions:
    master: str
    name: str = field(default_factory=socket.gethostname)
    max_tasks: int = defaults.MAX_TASKS
    labels: dict[str, str] = field(default_factory=dict)
    cpu_cores: float | None = None  # default: what the machine has
    mem_gb: float | None = None
    work_dir: Path = Path("/tmp/cloudq-work")
    tls_dir: Path | None = None
    allow_pull: bool = False
    input_roots: tuple[Path, ...] = ()  # unnamed: plain input paths may lie below them
    roots: dict[str, StorageRoot] = field(default_factory=dict)  # --input-root/--output-root NAME=PATH
    keep_task_dirs: bool = False
    container_mem_default_gb: float | None = None  # default: offered memory / max_tasks
    exec_user: str = "nobody"  # who a root worker runs exec and ffmpeg tasks as
    exec_uid_base: int | None = None  # given: task slot N runs as uid exec_uid_base + N
    metrics_port: int = 0  # the worker's own Prometheus endpoint; 0: off
    metrics_bind: str = defaults.BIND  # the address it listens on
