"""Real master and worker processes on loopback, for the cluster tests and benchmarks."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from cloudq.commands import Result
from cloudq.rpc.client import MasterClient

ROOT = Path(__file__).resolve().parents[2]
_LISTENING = re.compile(r"listening on (\S+):(\d+)")


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    """Polls a condition that lives in another process; fails with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def task_processes(task_id: str, attempt: int | None = None) -> list[psutil.Process]:
    """Live `sleep` processes started by a task (its runner sets CLOUDQ_TASK_ID/CLOUDQ_ATTEMPT)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if (proc.info["cmdline"] or [])[:1] != ["sleep"]:
                continue
            env = proc.environ()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if env.get("CLOUDQ_TASK_ID") == task_id and (
            attempt is None or env.get("CLOUDQ_ATTEMPT") == str(attempt)
        ):
            found.append(proc)
    return found


class Proc:
    """A child process whose output is collected by a thread (so its pipe never fills)."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.lines: list[str] = []
        self._seen = threading.Condition()
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, cwd=ROOT,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._seen:
                self.lines.append(line.rstrip("\n"))
                self._seen.notify_all()
        with self._seen:
            self._seen.notify_all()

    def wait_for_line(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        with self._seen:
            while True:
                for line in self.lines:
                    match = pattern.search(line)
                    if match:
                        return match
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise AssertionError(f"no line matching {pattern.pattern!r}; output:\n" + self.output())
                self._seen.wait(left)

    def output(self) -> str:
        return "\n".join(self.lines[-60:])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise


def _plain_unless_tls(flags: tuple[str, ...]) -> tuple[str, ...]:
    """Test processes talk plain RPC (--insecure) unless a test gives them certificates: most
    tests are about something else, and the default TLS has tests of its own."""
    return flags if "--tls-dir" in flags or "--insecure" in flags else (*flags, "--insecure")


class MasterProc(Proc):
    def __init__(self, data_dir: Path, *extra: str, port: int = 0, env: dict[str, str] | None = None,
                 prefix: tuple[str, ...] = ()):
        """`prefix` runs the master under another command, e.g. ("prlimit", "--nofile=256")."""
        argv = [*prefix, sys.executable, "-m", "cloudq", "master", "--no-shell", "--port", str(port),
                "--data-dir", str(data_dir), *_plain_unless_tls(extra)]
        super().__init__(argv, env)
        match = self.wait_for_line(_LISTENING, timeout=30)
        self.host, self.port = match.group(1), int(match.group(2))
        self.address = f"{self.host}:{self.port}"
        self._client: MasterClient | None = None

    def client(self) -> MasterClient:
        if self._client is None:
            self._client = MasterClient(self.address)
        return self._client

    def ctl(self, *argv: str) -> Any:
        """Runs a registry command over RPC, as `cloudq ctl --json` does; returns its data (a
        listing's pages joined, as ctl joins them)."""
        page = Result.from_dict(self.client().call("call", {"argv": list(argv), "files": {}}))
        data = page.data
        while page.next_argv:
            page = Result.from_dict(self.client().call("call", {"argv": page.next_argv, "files": {}}))
            data = data + page.data
        return data

    def task(self, task_id: str) -> dict[str, Any]:
        return self.ctl("show", task_id)

    def worker(self, name: str) -> dict[str, Any] | None:
        return next((w for w in self.ctl("workers") if w["name"] == name), None)

    def wait_worker(self, name: str, status: str = "available", timeout: float = 30) -> dict[str, Any]:
        return wait_until(lambda: (w := self.worker(name)) and w["status"] == status and w,
                          timeout, f"worker {name} to be {status}")

    def wait_state(self, task_id: str, states: set[str] | str, timeout: float = 30) -> dict[str, Any]:
        wanted = {states} if isinstance(states, str) else states
        return wait_until(lambda: (t := self.task(task_id))["state"] in wanted and t,
                          timeout, f"task {task_id} to reach {wanted}")

    def close_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def kill(self) -> None:
        self.close_client()
        super().kill()

    def stop(self, timeout: float = 15) -> int:
        self.close_client()
        return super().stop(timeout)


class WorkerProc(Proc):
    def __init__(self, master: str, name: str, work_dir: Path, *extra: str,
                 env: dict[str, str] | None = None, module: str = "cloudq",
                 prefix: tuple[str, ...] = ()) -> None:
        """`module`: what `python -m` runs, given `worker` and the flags (a stand-in for
        `cloudq`, e.g. tests.e2e.fake_gpu_worker). `prefix` runs the worker under a command
        that ends by exec-ing it, so signals reach the worker itself, e.g. ("ip", "netns",
        "exec", NAME)."""
        argv = [*prefix, sys.executable, "-m", module, "worker", "--master", master, "--name", name,
                "--work-dir", str(work_dir / name), *_plain_unless_tls(extra)]
        super().__init__(argv, env)
        self.name = name
