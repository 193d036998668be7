"""End-to-end helpers: the real `master>` shell in a private tmux server, free loopback ports,
the external tools these tests drive (which must be installed: a missing one fails), and a
metrics cluster: a master and workers with their HTTP ports, and a real Prometheus scraping
them."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from cloudq.rpc import tls
from cloudq.rpc.client import MasterClient
from tests.cluster.harness import ROOT, MasterProc, Proc, WorkerProc, wait_until

PROMPT = "master>"  # the prompt as capture-pane shows it, trailing space stripped
NOTICE = re.compile(r"^\[\d\d:\d\d:\d\d\] ")  # a notice printed above the prompt
_LISTENING = re.compile(r"listening on (\S+):(\d+)")


def require_tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed (not on PATH); the end-to-end tests need it"
    return path


def free_port() -> int:
    """A loopback port that was free a moment ago (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def procs_mentioning(text: str) -> list[psutil.Process]:
    """Live processes whose command line mentions `text` (a test's unique temporary dir)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["status"] != psutil.STATUS_ZOMBIE and any(text in arg for arg in cmdline):
            found.append(proc)
    return found


def _tmux_env() -> dict[str, str]:
    """The environment for tmux (and so for the master in it). Built from os.environ on purpose:
    GNU readline, once loaded in this process, exports COLUMNS=80 and LINES=24 into the C-level
    environment a plain subprocess inherits, and the shell would then size its tables for 80
    columns instead of the pane's 200."""
    return {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "TMUX")}


def _ended(pid: int) -> bool:
    """The process has exited: gone, or a zombie nobody has reaped."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _masters_under(pid: int) -> list[psutil.Process]:
    """The `cloudq master` processes among `pid` and its descendants."""
    try:
        top = psutil.Process(pid)
        tree = [top, *top.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    found = []
    for proc in tree:
        with contextlib.suppress(psutil.Error):
            argv = proc.cmdline()
            if "cloudq" in argv and "master" in argv:
                found.append(proc)
    return found


class TmuxShell:
    """One `cloudq master` with its interactive shell, in a tmux server of its own (own socket,
    no user config), so nothing here touches anybody else's tmux."""

    def __init__(self, tmp: Path) -> None:
        self.tmux = require_tool("tmux")
        self.tmp = tmp
        self.data_dir = tmp / "data"
        self.work_dir = tmp / "work"
        self.history = tmp / "history"
        self.socket = f"cloudq-e2e-{uuid.uuid4().hex[:12]}"
        self.session = "master"
        self.socket_path: Path | None = None
        self.pane_pid = 0
        self.address = ""

    def client(self, identity: str = "cloudq-admin") -> MasterClient:
        """An RPC client of this master with the certificates its first start made in its data
        directory: the operator's, or a worker's (issued here on first use)."""
        certs = self.data_dir / "tls"
        if identity != tls.ADMIN_NAME:
            tls.ensure_worker(certs, identity)
        return MasterClient(self.address, certs, identity=identity)

    def start(self, *extra: str, width: int = 200, height: int = 50,
              env: dict[str, str] | None = None) -> TmuxShell:
        """Starts the master in a `width` x `height` pane, with `env` added to its environment."""
        conf = self.tmp / "tmux.conf"
        # remain-on-exit: when the master ends, the pane stays so its exit status can be read.
        conf.write_text("set -g remain-on-exit on\nset -g history-limit 50000\n")
        command = shlex.join([  # the start script with arguments, as the README gives it
            str(ROOT / "runMaster.sh"), "--port", "0",
            "--data-dir", str(self.data_dir), "--local-workers", "1", "--interval", "300",
            # Task directories under this test's tmp dir, which also names the worker uniquely.
            "--local-worker-args", f"--work-dir {self.work_dir}", *extra,
        ])
        settings = {"CLOUDQ_HISTORY": str(self.history), **(env or {})}
        self._tmux("-f", str(conf), "new-session", "-d", "-s", self.session, "-x", str(width),
                   "-y", str(height), "-c", str(ROOT),
                   *(arg for key, value in settings.items() for arg in ("-e", f"{key}={value}")), command)
        self.socket_path = Path(self._tmux("display-message", "-p", "#{socket_path}").strip())
        self.pane_pid = int(self._pane_format("#{pane_pid}"))
        match = self.wait(lambda: _LISTENING.search(self.screen()), 30, "the 'listening on' line")
        self.address = f"{match.group(1)}:{match.group(2)}"
        self.wait_prompt(after=-1)
        return self

    # ------------------------------------------------------------------ tmux plumbing
    def _tmux(self, *args: str) -> str:
        done = subprocess.run([self.tmux, "-L", self.socket, *args], capture_output=True,
                              text=True, timeout=10, env=_tmux_env())
        assert done.returncode == 0, f"tmux {' '.join(args)} failed: {done.stderr.strip()}"
        return done.stdout

    def _pane_format(self, fmt: str) -> str:
        return self._tmux("list-panes", "-t", self.session, "-F", fmt).strip()

    def lines(self, notices: bool = False) -> list[str]:
        """Everything the pane has shown (scrollback and screen) up to the cursor's line,
        wrapped lines joined, with trailing blank lines dropped: the last line is where the
        cursor's prompt is (the toolbar and a completion menu below it are left out).

        Notices (`[HH:MM:SS] ...`) come whenever the cluster changes, so they are left out
        too, unless asked for: a command's output is then the same whenever they come."""
        text = self._tmux("capture-pane", "-p", "-J", "-S", "-", "-E", self._cursor_row(),
                          "-t", self.session)
        lines = [line.rstrip() for line in text.splitlines()]
        if not notices:
            lines = [line for line in lines if not NOTICE.match(line)]
        while lines and not lines[-1]:
            lines.pop()
        return lines

    def _cursor_row(self) -> str:
        """The cursor's row on the screen, or the screen's last row once the pane is dead."""
        row, dead, height = self._pane_format("#{cursor_y} #{pane_dead} #{pane_height}").split()
        return str(int(height) - 1) if dead == "1" else row

    def screen(self) -> str:
        return "\n".join(self.lines())

    def styled_lines(self) -> list[str]:
        """As lines(), with the colours as escape sequences."""
        text = self._tmux("capture-pane", "-p", "-e", "-J", "-S", "-", "-E", self._cursor_row(),
                          "-t", self.session)
        return [line.rstrip() for line in text.splitlines()]

    def type(self, text: str) -> None:
        self._tmux("send-keys", "-t", self.session, "-l", text)

    def key(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", self.session, *keys)

    # ------------------------------------------------------------------ as a person would
    def current_line(self) -> str:
        lines = self.lines()
        return lines[-1] if lines else ""

    def wait(self, predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
        """wait_until, with the screen as it is at the deadline in the failure message."""
        try:
            return wait_until(predicate, timeout, what, every)
        except AssertionError as err:
            raise AssertionError(f"{err}; the pane shows:\n{self.tail()}") from None

    def wait_line(self, line: str, timeout: float = 10) -> None:
        """Waits until the cursor's line reads exactly `line` (the prompt included)."""
        self.wait(lambda: self.current_line() == line, timeout, f"the current line to be {line!r}")

    def wait_prompt(self, after: int, timeout: float = 20) -> int:
        """Waits for an empty `master>` prompt on a line past index `after`; returns its index."""
        def ready() -> int | None:
            lines = self.lines()
            last = len(lines) - 1
            return last if last > after and lines[last] == PROMPT else None

        return self.wait(ready, timeout, f"an empty prompt after line {after}")

    def idle_prompt(self) -> int:
        """Index of the empty prompt the shell is sitting at (fails if it is not at one)."""
        return self.wait_prompt(after=-1, timeout=10)

    def run(self, line: str, timeout: float = 20) -> list[str]:
        """Types a line and Enter at an empty prompt; returns what was printed before the next
        prompt came back."""
        start = self.idle_prompt()
        typed = f"{PROMPT} {line}"
        self.type(line)
        # startswith: a suggestion from history may be shown after the cursor.
        self.wait(lambda: self.current_line().startswith(typed), 10, f"the typed line {line!r}",
                  every=0.05)
        self.key("Enter")
        end = self.wait_prompt(after=start, timeout=timeout)
        lines = self.lines()
        assert lines[start].startswith(typed), f"the command line was {lines[start]!r}"
        return lines[start + 1:end]

    def run_until(self, line: str, check: Callable[[list[str]], object], timeout: float,
                  what: str) -> list[str]:
        """Runs `line` again and again until its output passes `check`."""
        seen: list[list[str]] = []

        def attempt() -> list[str] | None:
            out = self.run(line)
            seen.append(out)
            return out if check(out) else None

        try:
            return wait_until(attempt, timeout, what, every=0.3)
        except AssertionError as err:
            last = "\n".join(seen[-1]) if seen else "(nothing)"
            raise AssertionError(f"{err}; last output of {line!r}:\n{last}") from None

    def tail(self, count: int = 40) -> str:
        try:
            return "\n".join(self.lines()[-count:])
        except AssertionError as err:
            return f"(no pane: {err})"

    def pane_dead(self) -> tuple[bool, int | None]:
        dead, status = self._pane_format("#{pane_dead} #{pane_dead_status}").partition(" ")[::2]
        return dead == "1", int(status) if status.strip() else None

    def wait_exit(self, timeout: float = 30) -> int:
        """Waits for the pane's process to end; returns its exit status.

        Debian's tmux is built with libutempter, whose helper briefly installs its own SIGCHLD
        handler when a pane's pty closes; a child that exits in that window is left a zombie and
        its status never read (tmux/tmux#311, #4559), and the pane is then never marked dead.
        The workaround given there: send the tmux server (our own, private one) a SIGCHLD,
        which makes it reap the pane's process. So whenever the process has ended (gone or a
        zombie) and tmux has no status yet, the server is nudged.

        A process still running at the deadline is asked for its threads' stacks (SIGUSR1,
        faulthandler), which it prints into the pane, so the failure says what it waits for."""
        server = int(self._tmux("display-message", "-p", "#{pid}").strip())

        def status() -> tuple[int] | None:
            dead, code = self.pane_dead()
            if code is not None:
                return (code,)
            if dead or _ended(self.pane_pid):
                os.kill(server, signal.SIGCHLD)
            return None

        try:
            return wait_until(status, timeout, "the pane's process to exit", every=0.2)[0]
        except AssertionError as err:
            running = not _ended(self.pane_pid)
            if running:
                for proc in _masters_under(self.pane_pid):
                    proc.send_signal(signal.SIGUSR1)
                with contextlib.suppress(AssertionError):
                    wait_until(lambda: "most recent call first" in self.screen(), 5, "a stack dump")
            raise AssertionError(f"{err} (the process is {'still running' if running else 'gone'}); "
                                 f"the pane shows:\n{self.tail(120)}") from None

    def local_worker(self) -> psutil.Process:
        """The master's local worker process, found by its command line (our unique work dir)."""
        def find() -> psutil.Process | None:
            procs = [p for p in procs_mentioning(str(self.work_dir))
                     if "worker" in p.info["cmdline"]]
            return procs[0] if len(procs) == 1 else None

        return wait_until(find, 15, f"one local worker process with {self.work_dir} in its command line")

    def close(self) -> None:
        """Kills the tmux server and anything of this test that outlived it."""
        with contextlib.suppress(Exception):
            subprocess.run([self.tmux, "-L", self.socket, "kill-server"], capture_output=True,
                           timeout=10, env=_tmux_env())
        leftovers = procs_mentioning(f"{self.tmp}{os.sep}")
        for proc in leftovers:
            with contextlib.suppress(psutil.Error):
                proc.terminate()
        _gone, alive = psutil.wait_procs(leftovers, timeout=5)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        if self.socket_path is not None:
            self.socket_path.unlink(missing_ok=True)


def worker_row(out: list[str], name: str = "worker-1") -> list[str] | None:
    """The row of worker `name` in what `workers` printed, split in words."""
    return next((line.split() for line in out if line.split()[:1] == [name]), None)


def worker_available(out: list[str]) -> bool:
    row = worker_row(out)
    return row is not None and row[1] == "available"


@pytest.fixture
def start_shell(tmp_path: Path) -> Iterator[Callable[..., TmuxShell]]:
    """Starts a fresh master shell for one test (arguments as TmuxShell.start's); stopped (tmux
    server killed) even on failure."""
    shells: list[TmuxShell] = []

    def start(*extra: str, **options: Any) -> TmuxShell:
        tmp = tmp_path / f"shell{len(shells)}"
        tmp.mkdir()
        shell = TmuxShell(tmp)
        shells.append(shell)  # registered before it starts, so a failed start is cleaned up too
        return shell.start(*extra, **options)

    try:
        yield start
    finally:
        for shell in shells:
            shell.close()


def shared_shell_fixture(width: int = 200, height: int = 50) -> Any:
    """A module-scoped `shared_shell` fixture: one master shell in a `width` x `height` pane,
    with its local worker available, that the module's tests share (they find task ids in
    what the shell prints, so they do not depend on each other's order). A module says
    `shared_shell = shared_shell_fixture(...)` and its tests take `shell`."""

    @pytest.fixture(scope="module")
    def shared_shell(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TmuxShell]:
        shell = TmuxShell(tmp_path_factory.mktemp("shell"))
        try:
            shell.start(width=width, height=height)
            shell.run_until("workers", worker_available, 30, "worker-1 to be available in `workers`")
            yield shell
        finally:
            shell.close()

    return shared_shell


@pytest.fixture
def shell(shared_shell: TmuxShell) -> TmuxShell:
    """The module's shared shell (see shared_shell_fixture), at an empty prompt: a test that
    failed halfway may have left a line."""
    if shared_shell.current_line() != PROMPT:
        shared_shell.key("C-c")
        shared_shell.wait_prompt(after=-1)
    return shared_shell


# ---------------------------------------------------------------------- metrics cluster
JOB = "cloudq-e2e"  # the job Prometheus scrapes the master as
WORKER_JOB = "cloudq-e2e-workers"  # ...and workers' own endpoints as


def http_get(url: str, timeout: float = 5) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        assert response.status == 200, f"GET {url}: HTTP {response.status}"
        return response.read().decode()


class Prometheus:
    """A real Prometheus on loopback, scraping every second, with its own data directory."""

    def __init__(self, tmp: Path, target_port: int, worker_ports: tuple[int, ...] = ()) -> None:
        binary = require_tool("prometheus")
        self.port = free_port()
        tmp.mkdir(parents=True, exist_ok=True)
        config = tmp / "prometheus.yml"
        jobs = [(JOB, [target_port])] + ([(WORKER_JOB, list(worker_ports))] if worker_ports else [])
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n" + "".join(
                f"  - job_name: {job}\n    static_configs:\n"
                f"      - targets: [{', '.join(repr(f'127.0.0.1:{port}') for port in ports)}]\n"
                for job, ports in jobs)
        )
        self.proc = Proc([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                          f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"])

    def wait_ready(self, timeout: float = 30) -> None:
        def ready() -> bool:
            assert self.proc.proc.poll() is None, "prometheus exited:\n" + self.proc.output()
            try:
                return "Ready" in http_get(f"http://127.0.0.1:{self.port}/-/ready", timeout=2)
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                return False

        wait_until(ready, timeout, "prometheus to be ready", every=0.2)

    def query(self, promql: str) -> list[dict]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        answer = json.loads(http_get(url))
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def value(self, promql: str) -> float | None:
        """The one sample a query returns, or None while there is none yet."""
        result = self.query(promql)
        assert len(result) <= 1, f"{promql} returned several series: {result}"
        return float(result[0]["value"][1]) if result else None

    def wait_value(self, promql: str, expected: float, timeout: float = 30) -> None:
        seen: list[float | None] = []

        def check() -> bool:
            seen.append(self.value(promql))
            return seen[-1] == expected

        try:
            wait_until(check, timeout, f"{promql} == {expected} in prometheus", every=0.3)
        except AssertionError as err:
            raise AssertionError(f"{err}; last value {seen[-1:]}; prometheus output:\n"
                                 + self.proc.output()) from None

    def stop(self) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):  # then Proc.stop has killed it
            self.proc.stop(timeout=15)


@pytest.fixture
def start_prometheus(tmp_path: Path) -> Iterator[Callable[..., Prometheus]]:
    """start(master_metrics_port, worker_ports=()): a ready Prometheus scraping them; stopped
    at the end of the test."""
    started: list[Prometheus] = []

    def start(target_port: int, worker_ports: tuple[int, ...] = ()) -> Prometheus:
        prom = Prometheus(tmp_path / f"prometheus{len(started)}", target_port, worker_ports)
        started.append(prom)
        prom.wait_ready()
        return prom

    try:
        yield start
    finally:
        for prom in started:
            prom.stop()


@dataclass
class Worker:
    """A worker to start: its name and flags; `metrics` gives it its own endpoint
    (--metrics-port), `fake_gpu` a fake NVML with one GPU (tests/e2e/fake_gpu_worker.py)."""

    name: str
    flags: tuple[str, ...] = ()
    metrics: bool = False
    fake_gpu: bool = False


@dataclass
class Cluster:
    master: MasterProc
    port: int  # the master's HTTP port (/metrics)
    workers: list[WorkerProc]
    worker_ports: dict[str, int] = field(default_factory=dict)  # by name, those with --metrics-port

    def submit(self, *tasks: dict) -> list[str]:
        return [t["id"] for t in self.master.client().call("submit", {"tasks": list(tasks)})]


@pytest.fixture
def start_cluster(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """start(*workers, master_flags=()): a master with its HTTP port (processor pass every
    second, so TTLs expire and waiting tasks are looked at) and the workers, each available.
    Everything is stopped at the end of the test, even on a failure."""
    masters: list[MasterProc] = []
    workers: list[WorkerProc] = []

    def start(*specs: Worker, master_flags: tuple[str, ...] = ()) -> Cluster:
        port = free_port()
        master = MasterProc(tmp_path / f"data{len(masters)}", "--metrics-port", str(port),
                            "--interval", "1", *master_flags)
        masters.append(master)
        cluster = Cluster(master, port, [])
        for spec in specs:
            flags = list(spec.flags)
            if spec.metrics:
                cluster.worker_ports[spec.name] = free_port()
                flags += ["--metrics-port", str(cluster.worker_ports[spec.name])]
            worker = WorkerProc(master.address, spec.name, tmp_path / "work", *flags,
                                module="tests.e2e.fake_gpu_worker" if spec.fake_gpu else "cloudq")
            workers.append(worker)
            cluster.workers.append(worker)
        for worker in cluster.workers:
            master.wait_worker(worker.name)
        return cluster

    try:
        yield start
    finally:
        for worker in workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.stop()
        for master in masters:
            with contextlib.suppress(subprocess.TimeoutExpired):
                master.stop()
