"""Hostile containers against the real Docker engine: a fork bomb, a memory hog, writes outside
the allowed mounts, network egress and the Docker socket. Each fails inside its limits, and the
host is checked from outside: its process count, its files, its listening socket."""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudq.worker.runners import Fault, RunContext, RunStatus, run_task
from cloudq.worker.runners.container import MIB, PIDS_LIMIT, SCRATCH
from tests.cluster.harness import wait_until

from .conftest import BUSYBOX, running, task_containers

# Processes the host may gain beside the container's own while it runs: the engine's shim and
# runc, and whatever else this machine does meanwhile.
HOST_SLACK = 64


def container_ctx(make_ctx, script: str, **overrides: Any) -> RunContext:
    spec = {"image": BUSYBOX, "command": ["sh", "-c", script], **overrides.pop("spec", {})}
    return make_ctx("container", spec, **overrides)


def host_processes() -> int:
    return sum(1 for name in os.listdir("/proc") if name.isdigit())


def pids_cgroup(pid: int) -> Path:
    """The pids cgroup directory of a host process: the v1 pids hierarchy, else the v2 one."""
    unified = None
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "pids" in controllers.split(","):
            return Path("/sys/fs/cgroup/pids") / path.lstrip("/")
        if controllers == "":
            unified = Path("/sys/fs/cgroup") / path.lstrip("/")
    assert unified is not None, f"no pids cgroup for process {pid}"
    return unified


class ProcessSampler:
    """Samples, until stopped, the container's pids cgroup (its count, its own high-water mark
    where the kernel keeps one, its refused forks) and the host's process count."""

    def __init__(self, cgroup: Path) -> None:
        self.cgroup = cgroup
        self.container_peak = 0
        self.host_peak = 0
        self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.host_peak = max(self.host_peak, host_processes())
            try:
                counts = [int((self.cgroup / name).read_text())
                          for name in ("pids.current", "pids.peak")
                          if (self.cgroup / name).exists()]  # fmt: skip
                self.refused = refused_forks(self.cgroup)
            except OSError:  # the container is gone
                continue
            self.container_peak = max(self.container_peak, *counts)

    def __enter__(self) -> ProcessSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)


def refused_forks(cgroup: Path) -> int:
    """How many forks the pids cgroup refused ("max N" in pids.events)."""
    events = dict(line.split() for line in (cgroup / "pids.events").read_text().splitlines())
    return int(events["max"])


# Every bomber forks itself until a fork is refused; PID 1 becomes a sleep that never reaps, so
# the dead bombers stay zombies and the container sits at its pids limit until it is killed.
FORK_BOMB = "bomb() { while :; do bomb & done; }; bomb & exec sleep 600"


def test_a_fork_bomb_is_held_at_the_pids_limit_until_the_timeout_kills_it(make_ctx, docker_client):
    ctx = container_ctx(make_ctx, FORK_BOMB, timeout_s=3.0)
    baseline = host_processes()
    with running(docker_client, ctx) as (task, container):
        cgroup = pids_cgroup(container.attrs["State"]["Pid"])
        with ProcessSampler(cgroup) as sampler:
            wait_until(lambda: refused_forks(cgroup) > 0, 10, "the pids limit to refuse a fork")
            assert task.done.wait(15), "the timed-out bomb was not killed"
    result = task.result
    assert result is not None
    peak = sampler.container_peak
    print(f"\nfork bomb: {sampler.refused} forks refused, {peak} pids at peak (limit {PIDS_LIMIT}), "
          f"host +{sampler.host_peak - baseline} processes at peak, "
          f"{result.status} after {result.duration_s:.2f} s")
    assert result.status == RunStatus.TIMED_OUT
    assert result.error == "timed out after 3 s: the container was killed"
    assert result.fault == Fault.TASK
    assert result.duration_s < 3.0 + 5.0
    assert "can't fork" in result.log_tail  # the refusals as the bombers saw them
    assert peak == PIDS_LIMIT  # it reached the limit and never went past it
    assert sampler.host_peak - baseline <= PIDS_LIMIT + HOST_SLACK
    # Killed means gone: its cgroup removed, the host back to where it was.
    wait_until(lambda: not cgroup.exists(), 10, "the container's cgroup to be removed")
    wait_until(lambda: host_processes() <= baseline + HOST_SLACK, 10,
               "the host's process count to come back")  # fmt: skip


# Forks sleeps until the limit refuses one: the loop's subshell dies of it, and the main shell
# counts (with a glob: a fork would be refused too) what its pid namespace holds.
FORK_LOOP = ("( while sleep 600 & do :; done ); refused=$?; "
             "set -- /proc/[0-9]*; echo \"processes at the refusal: $#\"; exit $refused")


def test_a_fork_loop_is_refused_at_the_limit_and_the_task_fails(make_ctx, docker_client):
    ctx = container_ctx(make_ctx, FORK_LOOP)
    result = run_task(ctx)
    print(f"\nfork loop: {result.status} after {result.duration_s:.2f} s: "
          f"{result.log_tail.strip()!r}")
    assert result.status == RunStatus.FAILED
    assert result.exit_code == 2  # the shell's status for a fork it could not make
    assert result.error == "container exited with code 2"
    assert "can't fork: Resource temporarily unavailable" in result.log_tail
    # PID 1, the refused subshell gone, and the sleeps: the limit to one process.
    assert f"processes at the refusal: {PIDS_LIMIT - 1}" in result.log_tail
    assert task_containers(docker_client, ctx.task_id) == []


HOG_MIB = 32
# The hog is a child: the kernel kills it, PID 1 lives on and exits 0, which must not hide the
# OOM kill. The container reads its own memory high-water mark (cgroup v1, else v2).
PEAK = ("cat /sys/fs/cgroup/memory/memory.max_usage_in_bytes /sys/fs/cgroup/memory.peak "
        "2>/dev/null")
HOGS = {
    "anonymous-memory": "tail /dev/zero",  # buffers a line that never ends
    "scratch-tmpfs": "dd if=/dev/zero of=/tmp/fill bs=1M count=64",  # /tmp counts as memory
}


@pytest.mark.parametrize("hog", HOGS, ids=list(HOGS))
def test_a_memory_hog_is_oom_killed_at_its_limit(make_ctx, docker_client, hog):
    script = f'{HOGS[hog]}; echo "hog ended with $?"; {PEAK}; exit 0'
    ctx = container_ctx(make_ctx, script,
                        resources={"cpu_cores": 1.0, "mem_gb": HOG_MIB / 1024, "gpus": 0})
    result = run_task(ctx)
    lines = result.log_tail.splitlines()
    peak = int(lines[-1])
    print(f"\nmemory hog ({hog}): {result.status} after {result.duration_s:.2f} s, "
          f"peak {peak / MIB:.1f} MiB of {HOG_MIB} MiB")
    assert result.status == RunStatus.FAILED
    assert result.fault == Fault.TASK
    assert result.error == (f"memory limit exceeded ({HOG_MIB} MiB): "
                            "the container was OOM-killed")  # fmt: skip
    assert result.exit_code == 0  # PID 1 survived; the engine's OOMKilled flag still tells
    assert "hog ended with 137" in lines  # SIGKILLed by the kernel
    assert 0 < peak <= HOG_MIB * MIB
    assert task_containers(docker_client, ctx.task_id) == []


def writes_script(marker: str) -> str:
    """Tries every way to write outside the container's scratch space, then holds on a FIFO so
    the host can look at the live container; exits with the number of writes that got through."""
    targets = (f"/{marker} /etc/{marker} /bin/{marker} /etc/hosts /etc/resolv.conf /etc/hostname "
               "/proc/sys/kernel/core_pattern /sys/fs/cgroup/x")  # fmt: skip
    return f"""
escaped=0
for path in {targets}; do
  if echo {marker} >> $path; then echo "WROTE $path"; escaped=$((escaped+1));
  else echo "refused $path"; fi
done
if mount -t tmpfs none /mnt; then echo "WROTE mount"; escaped=$((escaped+1)); fi
if mknod /tmp/disk b 8 0; then echo "WROTE mknod"; escaped=$((escaped+1)); fi
echo {marker} > /tmp/{marker} && echo "scratch /tmp writable"
grep -v -E '^(overlay|proc|tmpfs|devpts|sysfs|cgroup|mqueue|shm) ' /proc/mounts | \
  sed 's/^/host-backed: /'
mkfifo /tmp/hold && exec 3<>/tmp/hold && echo ready
read -t 30 line <&3
exit $escaped
"""


def test_writes_outside_the_scratch_space_are_refused_and_the_host_is_untouched(
    make_ctx, docker_client
):
    marker = f"cloudq-escape-{uuid.uuid4().hex[:8]}"
    core_pattern = Path("/proc/sys/kernel/core_pattern").read_text()
    ctx = container_ctx(make_ctx, writes_script(marker))
    with running(docker_client, ctx) as (task, container):
        wait_until(lambda: "ready" in ctx.log_path.read_text().split(), 20, "the write attempts")
        container.reload()
        changes = container.diff()  # the engine's list of changes to the container's layer
        hosts = Path(container.attrs["HostsPath"]).read_text()
        # Release the hold through the container's own /tmp, as the host sees it.
        with open(f"/proc/{container.attrs['State']['Pid']}/root/tmp/hold", "w") as hold:
            hold.write("go\n")
        assert task.done.wait(20)
    result = task.result
    assert result is not None
    log = ctx.log_path.read_text()
    refused = [line.split()[1] for line in log.splitlines() if line.startswith("refused ")]
    print(f"\nwrites: {len(refused)} refused, layer changes {changes or []}, "
          f"{result.status} after {result.duration_s:.2f} s")
    assert result.status == RunStatus.COMPLETED, log
    assert result.exit_code == 0  # no write got through
    assert "WROTE" not in log
    assert "Read-only file system" in log  # the root file system, /etc/hosts, /proc/sys
    # No capabilities: no new mounts, no device nodes (the host's disk among them).
    assert "mount: permission denied" in log
    assert "mknod: /tmp/disk: Operation not permitted" in log
    assert len(refused) == 8
    assert "scratch /tmp writable" in log
    # The only host storage it sees is the engine's hosts, resolv.conf and hostname, read-only.
    # /proc/mounts fields after the prefix: source, target, type, options.
    host_backed = [line.split()[2:5:2] for line in log.splitlines()
                   if line.startswith("host-backed:")]  # fmt: skip
    assert sorted(target for target, _ in host_backed) == ["/etc/hostname", "/etc/hosts",
                                                           "/etc/resolv.conf"]  # fmt: skip
    assert all(options.split(",")[0] == "ro" for _, options in host_backed)
    # The host: no file of the marker, its own files as they were.
    # Nothing in its layer but the mount point the engine made for /tmp (this image has none).
    assert [change["Path"] for change in changes or []] in ([], [SCRATCH]), changes
    assert marker not in hosts
    assert Path("/proc/sys/kernel/core_pattern").read_text() == core_pattern
    for path in (Path("/") / marker, Path("/etc") / marker, Path("/bin") / marker,
                 Path("/tmp") / marker, ctx.work_dir / marker):  # fmt: skip
        assert not path.exists(), path


def test_scratch_space_is_the_tasks_storage_and_filling_it_fails_the_write(make_ctx):
    # 8 MiB of storage asked, 256 MiB of memory: /tmp is the smaller, and full means ENOSPC.
    resources = {"cpu_cores": 1.0, "mem_gb": 0.25, "storage_gb": 8 / 1024, "gpus": 0}
    ctx = container_ctx(make_ctx, "dd if=/dev/zero of=/tmp/fill bs=1M count=64", resources=resources)
    result = run_task(ctx)
    print(f"\nscratch: {result.status} after {result.duration_s:.2f} s: {result.error}")
    assert result.status == RunStatus.FAILED
    assert result.error == "container exited with code 1"
    assert "No space left on device" in result.log_tail
    assert "8+0 records out" in result.log_tail  # exactly the 8 MiB it asked for


@pytest.fixture
def host_service() -> Iterator[tuple[int, list[str]]]:
    """A TCP service on every host address (loopback and the Docker bridge's gateway among
    them); yields its port and the addresses of the peers that connected."""
    peers: list[str] = []
    server = socket.create_server(("0.0.0.0", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, peer = server.accept()
            except TimeoutError:
                continue
            peers.append(peer[0])
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], peers
    stop.set()
    thread.join(5)
    server.close()


def bridge_gateway(docker_client: Any) -> str:
    return docker_client.networks.get("bridge").attrs["IPAM"]["Config"][0]["Gateway"]


def connect(address: str, port: int) -> str:
    return f"nc -w 2 {address} {port} </dev/null && echo 'REACHED {address}'"


def test_no_egress_no_interface_and_no_host_service(make_ctx, docker_client, host_service):
    port, peers = host_service
    gateway = bridge_gateway(docker_client)
    probes = [connect(gateway, port), connect("127.0.0.1", port), connect("1.1.1.1", 443)]
    ctx = container_ctx(make_ctx, "ip -o link; " + "; ".join(probes) + "; true")
    result = run_task(ctx)
    log = result.log_tail
    links = [line.split(":")[1].strip().split("@")[0] for line in log.splitlines()
             if line[:1].isdigit()]  # fmt: skip
    assert result.status == RunStatus.COMPLETED, log
    assert links == ["lo"]
    assert "REACHED" not in log
    assert f"can't connect to remote host ({gateway}): Network is unreachable" in log
    assert "can't connect to remote host (1.1.1.1): Network is unreachable" in log
    # 127.0.0.1 is the container's own loopback: nothing listens there.
    assert "can't connect to remote host (127.0.0.1): Connection refused" in log
    assert peers == []

    # The same probe with a network proves it would have seen the host service.
    ctx = container_ctx(make_ctx, connect(gateway, port), spec={"network": True})
    reached = run_task(ctx)
    assert reached.status == RunStatus.COMPLETED, reached.log_tail
    assert f"REACHED {gateway}" in reached.log_tail
    wait_until(lambda: peers, 5, "the host service to see the networked container")
    print(f"\nno network: links {links}, the host service saw no connection; with a network "
          f"it saw {peers[0]}")


DOCKER_SOCKETS = "/var/run/docker.sock /run/docker.sock /run/containerd/containerd.sock"
SOCKET_PROBE = (
    f"for path in {DOCKER_SOCKETS}; do [ -e $path ] && echo \"PRESENT $path\"; done; "
    "find / -path /proc -prune -o -path /sys -prune -o -type s -print | sed 's/^/socket: /'; "
    "env | grep -i docker | sed 's/^/env: /'; "
    "set -- /proc/[0-9]*; echo \"processes visible: $#\"; "
    "nc -w 2 {gateway} 2375 </dev/null && echo REACHED-2375; "
    "nc -w 2 {gateway} 2376 </dev/null && echo REACHED-2376; true"
)


def test_the_docker_socket_is_out_of_reach(make_ctx, docker_client):
    assert Path("/var/run/docker.sock").is_socket()  # the host has one: its absence means it
    gateway = bridge_gateway(docker_client)
    ctx = container_ctx(make_ctx, SOCKET_PROBE.format(gateway=gateway))
    result = run_task(ctx)
    log = result.log_tail
    print(f"\ndocker socket: {log.strip()!r}")
    assert result.status == RunStatus.COMPLETED, log
    assert "PRESENT" not in log
    assert "socket:" not in log  # no unix socket anywhere in its file system
    assert "env:" not in log  # no DOCKER_HOST or the like either
    # Its own pid namespace: no /proc/PID/root of the engine to walk through.
    assert "processes visible: 1" in log
    assert "REACHED" not in log
    assert log.count("Network is unreachable") == 2  # the engine's TCP ports
