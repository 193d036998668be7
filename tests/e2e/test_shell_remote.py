"""`cloudq shell --master` against a master running as a service, as an operator would use it:
the master from `./runMaster.sh --no-shell` and a worker from `./runWorker.sh`, with their
arguments and TLS certificates, and the shell in a tmux pane. The same checks as the master's
own shell: the seed lines and their replies (in the master's own shell too), completion, a notice above the half-typed line,
watch and Ctrl-C, a change refused under watch, and quit, which leaves the master running."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cloudq.rpc.client import MasterClient
from tests.cluster.harness import ROOT, Proc
from tests.e2e.conftest import PROMPT, TmuxShell
from tests.e2e.test_shell_tmux import field, submitted_id, worker_available

pytestmark = pytest.mark.timeout(300)

CLI = str(ROOT / ".venv" / "bin" / "cloudq")
BANNER = "cloudq shell on the master at"


class RemoteShell(TmuxShell):
    """`cloudq shell` in a tmux pane, against a master elsewhere."""

    def connect(self, address: str, tls_dir: Path, width: int) -> RemoteShell:
        conf = self.tmp / "tmux.conf"
        conf.write_text("set -g remain-on-exit on\nset -g history-limit 50000\n")
        command = shlex.join([CLI, "shell", "--master", address, "--tls-dir", str(tls_dir)])
        self._tmux("-f", str(conf), "new-session", "-d", "-s", self.session, "-x", str(width),
                   "-y", "50", "-c", str(ROOT), "-e", f"CLOUDQ_HISTORY={self.history}", command)
        self.pane_pid = int(self._pane_format("#{pane_pid}"))
        self.address = address
        self.wait(lambda: any(line.startswith(BANNER) for line in self.lines()), 60, "the banner")
        self.wait_prompt(after=-1)
        return self


class Cluster:
    """A master as a service and one 4-core worker, both from the start scripts, with TLS."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.certs = tmp / "certs"
        self.procs: list[Proc] = []
        self.address = ""

    def start(self) -> Cluster:
        certs = Proc([CLI, "certs", "init", str(self.certs), "--workers", "worker-1,big-1"])
        assert certs.proc.wait(timeout=60) == 0, certs.output()
        master = self._spawn([str(ROOT / "runMaster.sh"), "--no-shell", "--port", "0",
                              "--data-dir", str(self.tmp / "data"), "--tls-dir", str(self.certs),
                              "--interval", "300"])
        match = master.wait_for_line(re.compile(r"listening on (\S+):(\d+)"), timeout=120)
        self.address = f"{match.group(1)}:{match.group(2)}"
        worker = self._spawn([str(ROOT / "runWorker.sh"), "--master", self.address,
                              "--tls-dir", str(self.certs), "--name", "worker-1",
                              "--cpu-cores", "4", "--mem-gb", "16", "--max-tasks", "4",
                              "--work-dir", str(self.tmp / "work")])
        worker.wait_for_line(re.compile(r"registered with .* as worker-1"), timeout=120)
        return self

    def _spawn(self, argv: list[str]) -> Proc:
        proc = Proc(argv)
        self.procs.append(proc)
        return proc

    @property
    def master(self) -> Proc:
        return self.procs[0]

    def client(self, identity: str = "admin") -> MasterClient:
        return MasterClient(self.address, self.certs, identity=identity)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop(timeout=20)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def remote(cluster: Cluster, tmp_path: Path) -> Iterator[RemoteShell]:
    (tmp_path / "pane").mkdir()
    shell = RemoteShell(tmp_path / "pane")
    try:
        yield shell.connect(cluster.address, cluster.certs, width=200)
    finally:
        shell.close()


def _tab(shell: TmuxShell, typed: str, expected: str) -> None:
    shell.type(typed)
    shell.wait_line(f"{PROMPT} {typed}".rstrip())
    shell.key("Tab")
    shell.wait_line(f"{PROMPT} {expected}")
    print(f"  {typed!r} + Tab -> {expected!r}")
    shell.key("C-c")
    shell.idle_prompt()


def _seed_lines(shell: TmuxShell) -> str:
    """The issue's four lines on a 4-core, 16 GB worker-1, with their replies; returns t4."""
    shell.run_until("workers", worker_available, 30, "worker-1 to be available")
    out = shell.run("task worker-1 docker.io/user/task:latest -cpu_cores 8.0")
    print("\n" + "\n".join(out))
    assert out[0] == ("Task t1 queued: Insufficient CPU: worker has 4.00 available, task requires "
                      "8.00. Will be assigned when resources become available.")
    assert out[1].startswith("Warning: no registered worker can ever run it as asked: needs 8 cores")
    out = shell.run("task worker-1 alpine:latest -cpu_cores 2.0")
    assert out[0] == "Task t2 assigned to worker-1.", out
    out = shell.run("task worker-1 docker.io/user/image:latest -cpu_cores 4.0 -mem 8.0")
    # t2 holds 2 cores until the worker finds it has no alpine image: either is the truth.
    assert re.fullmatch(r"Task t3 (assigned to worker-1\.|queued: Insufficient CPU: worker has 2\.00 "
                        r"available, task requires 4\.00\. Will be assigned when resources become "
                        r"available\.)", out[0]), out
    out = shell.run("task --scenario 720p30-h264 --priority high --queue live --duration 60 --bitrate 1M")
    task_id = submitted_id(out)
    assert task_id == "t4" and re.match(r"Task t4 (queued|assigned)", out[0]), out
    shell.run_until(f"show {task_id}", lambda o: field(o, "queue") == "live"
                    and field(o, "priority") == "high", 10, "t4 live/high")
    assert shell.run(f"cancel {task_id}")[0] == f"{task_id} cancelled"
    return task_id


def test_the_seed_lines_in_the_masters_own_shell(start_shell: Callable[..., TmuxShell],
                                                 tmp_path: Path) -> None:
    work = tmp_path / "shell0" / "work"  # where start_shell puts the local worker's tasks
    shell = start_shell("--local-worker-args", f"--work-dir {work} --cpu-cores 4 --mem-gb 16")
    _seed_lines(shell)


def test_the_seed_lines_completion_and_quit_through_a_remote_shell(
        cluster: Cluster, remote: RemoteShell) -> None:
    shell = remote
    task_id = _seed_lines(shell)

    print("completion over RPC:")
    _tab(shell, "task -cpu_c", "task -cpu_cores")
    shell.wait(lambda: _completes(shell, "why t", "why t4"), 15, "ids fetched from the master")
    _tab(shell, "drain wor", "drain worker-1")
    shell.key("Up")
    shell.wait_line(f"{PROMPT} cancel {task_id}")
    shell.key("C-c")
    shell.idle_prompt()

    # A change under watch is refused before it is sent; a read is watched until Ctrl-C.
    assert shell.run("watch cancel t1")[0].startswith("error: watch runs only commands that read")
    start = shell.idle_prompt()
    shell.type("watch -n 1 queue")
    shell.key("Enter")
    shell.wait(lambda: "Every 1s: queue" in shell._tmux("capture-pane", "-p", "-t", shell.session),
               15, "the watch screen")
    shell.key("C-c")
    shell.wait_prompt(after=start)
    assert "stopped watching queue" in shell.lines()

    # quit leaves the shell; the master and its worker go on.
    shell.type("quit")
    shell.key("Enter")
    assert shell.wait_exit() == 0
    assert cluster.master.proc.poll() is None
    with cluster.client() as admin:
        workers = admin.call("call", {"argv": ["workers"], "files": {}})["data"]
    assert [(w["name"], w["status"]) for w in workers] == [("worker-1", "available")]


def _completes(shell: TmuxShell, typed: str, expected: str) -> bool:
    """Whether Tab turns `typed` into `expected` now (ids arrive with the shell's next read).
    With several candidates the first Tab opens the menu and the second takes the first, which
    is the most recent id."""
    shell.type(typed)
    shell.wait_line(f"{PROMPT} {typed}")
    try:
        for _ in range(2):
            shell.key("Tab")
            try:
                shell.wait_line(f"{PROMPT} {expected}", timeout=1.5)
                return True
            except AssertionError:
                continue
        return False
    finally:
        shell.key("C-c")
        shell.idle_prompt()


def test_a_notice_over_rpc_prints_above_the_half_typed_line(
        cluster: Cluster, remote: RemoteShell) -> None:
    shell = remote
    task_id = submitted_id(shell.run("task -cpu_cores 64 --name waits --exec true"))
    half = 'task --name half-typed --exec "echo not yet'
    shell.type(half)
    shell.wait_line(f"{PROMPT} {half}")
    with cluster.client("big-1") as big:
        big.call("register", {"facts": {"name": "big-1", "cpu_cores": 128.0, "mem_gb": 256.0},
                              "running": []})
        pattern = re.compile(rf"^\[\d\d:\d\d:\d\d\] {task_id} assigned to big-1 after .*\d+s in queue$")
        notice = shell.wait(lambda: next((line for line in shell.lines(notices=True)
                                          if pattern.match(line)), None), 15, "the assignment notice")
        shell.wait(lambda: shell.lines(notices=True)[-1] == f"{PROMPT} {half}", 10,
                   "the half-typed line redrawn below the notice")
        lines = shell.lines(notices=True)
        print(f"\n{notice}\n{lines[-1]}")
        assert lines.index(notice) < len(lines) - 1
        start = len(shell.lines()) - 1
        shell.type(' now"')
        shell.key("Enter")
        end = shell.wait_prompt(after=start)
        out = shell.lines()[start:end]
        assert out[0] == f'{PROMPT} {half} now"' and submitted_id(out[1:]) != task_id
    toolbar = shell._tmux("capture-pane", "-p", "-t", shell.session).rstrip("\n").splitlines()[-1]
    assert re.search(r"workers \d/2 up \| running \d+ \| queued \d+", toolbar), toolbar
