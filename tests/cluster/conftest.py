from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.cluster.harness import MasterProc, Proc, WorkerProc

# Fast leases so a lost worker is noticed within a few seconds; a processor tick so rare that
# anything happening sooner must have been event-driven.
FAST = ("--lease", "3", "--heartbeat", "0.5", "--interval", "300")


class Cluster:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[Proc] = []
        self.master: MasterProc | None = None

    def start_master(self, *extra: str, port: int = 0, data: str = "data",
                     prefix: tuple[str, ...] = ()) -> MasterProc:
        self.master = MasterProc(self.tmp / data, *FAST, *extra, port=port, prefix=prefix)
        self.procs.append(self.master)
        return self.master

    def start_worker(self, name: str, *extra: str, wait: bool = True) -> WorkerProc:
        assert self.master is not None
        worker = WorkerProc(self.master.address, name, self.tmp / "work", *extra)
        self.procs.append(worker)
        if wait:
            self.master.wait_worker(name)
        return worker

    def stop(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                proc.stop(timeout=10)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str, int], Path]]:
    """tmpfs(name, size_mb): a small file system of the test's own (to fill up), mounted under
    tmp_path; every one is unmounted afterwards."""
    mounts: list[Path] = []

    def mount(name: str, size_mb: int) -> Path:
        path = tmp_path / name
        path.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(path)],
                       check=True)
        mounts.append(path)
        return path

    yield mount
    for path in mounts:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.stop()

