"""Exec and ffmpeg tasks of a root worker run as an unprivileged task user: they cannot read
the worker's environment or TLS key, they write in a directory of their own, and nothing they
start outlives them, not even a process that left their process group with setsid.

Each check is made twice where it can be: confined (the worker's way on root) and as the
worker itself, so the test shows that the first one is refused what the second one gets.
"""

from __future__ import annotations

import os
import stat
import time

import psutil
import pytest

from cloudq.rpc import tls
from cloudq.worker.runners import RunStatus, run_task
from cloudq.worker.runners.confine import TaskUser, task_user

from .conftest import Background, probe, read_fifo

UID_BASE = 1_900_000_000  # no account has uids up here: free for a uid per slot


@pytest.fixture(scope="module")
def nobody() -> TaskUser:
    if os.geteuid() != 0:
        pytest.fail("confinement is a root worker's: run these tests as root")
    user = task_user("nobody")
    assert user is not None
    return user


@pytest.fixture
def confined(make_ctx, open_dir, nobody):
    """RunContext factory for tasks in `open_dir`, as nobody unless `user` says otherwise."""
    counter = iter(range(1000))

    def make(kind: str, spec: dict, **overrides):
        work_dir = open_dir / f"task{next(counter)}"
        work_dir.mkdir(mode=0o700)
        return make_ctx(kind, spec, work_dir=work_dir, **{"user": nobody, **overrides})

    return make


def detach(pid_file: str, seconds: int) -> str:
    """Shell text: a sleeper that leaves the task's session (setsid) and writes its pid down
    once it has (so the group kill at the task's end cannot have caught it first)."""
    return f"setsid sh -c 'echo $$ >> {pid_file}; exec sleep {seconds}' &"


def await_lines(pid_file: str, count: int) -> str:
    """Shell text: wait until the pid file has `count` lines."""
    return f"while [ $(cat {pid_file} 2>/dev/null | wc -l) -lt {count} ]; do sleep 0.01; done"


def reap_if_ours(pid: int) -> None:
    """A sleeper killed by the test itself, re-parented to this process (a subreaper)."""
    if psutil.Process(pid).ppid() == os.getpid():
        os.waitpid(pid, 0)


def pids_gone(pids: list[int], timeout: float = 2.0) -> list[int]:
    """Awaits the end of processes the runner SIGKILLed (the kernel ends them asynchronously);
    returns those that still exist, zombies included (a zombie was not reaped)."""
    deadline = time.monotonic() + timeout
    while (left := [p for p in pids if psutil.pid_exists(p)]) and time.monotonic() < deadline:
        time.sleep(0.01)
    return left


def test_a_task_cannot_read_the_workers_environment_or_tls_key(confined, open_dir):
    tls_dir = open_dir / "tls"
    tls.init_cluster(tls_dir, ["w1"], ["localhost"])
    tls_dir.chmod(0o755)  # only the key's own mode stands between the task and the key
    key = next(tls_dir.glob("w1*key*"))
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    script = f"cat /proc/{os.getpid()}/environ | head -c 20; echo; cat {key} | head -c 40"
    as_nobody = run_task(confined("exec", {"argv": ["sh", "-c", script]}))
    as_worker = run_task(confined("exec", {"argv": ["sh", "-c", script]}, user=None))
    print(f"\nas nobody: {as_nobody.log_tail!r}\nas the worker: {as_worker.log_tail[:70]!r}")
    assert "PRIVATE KEY" in as_worker.log_tail  # the same command, unconfined, reads both
    assert "PRIVATE KEY" not in as_nobody.log_tail
    assert f"/proc/{os.getpid()}/environ: Permission denied" in as_nobody.log_tail
    assert f"cat: {key}: Permission denied" in as_nobody.log_tail


@pytest.mark.parametrize("swap", ["ln -s {key} task.log", "ln {key} task.log", "mkfifo task.log"])
def test_a_task_cannot_swap_its_log_for_a_secret(confined, open_dir, swap):
    # The task owns its directory, so it can put a link to a secret (or a FIFO, which would
    # block a reader) where task.log was; the worker reads the log's tail as root.
    key = open_dir / "worker.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    key.chmod(0o600)
    script = f"echo before; rm -f task.log; {swap.format(key=key)}; echo after"
    result = run_task(confined("exec", {"argv": ["sh", "-c", script]}))
    print(f"\n{swap.split()[0]}: status {result.status}, log tail {result.log_tail!r}")
    assert "PRIVATE KEY" not in result.log_tail
    assert result.log_tail == ""


def test_a_task_gets_a_fresh_environment_and_no_privileges(confined, monkeypatch):
    monkeypatch.setenv("CLOUDQ_TEST_SECRET", "do-not-leak")
    ctx = confined("exec", {"argv": ["env"], "env": {"MINE": "1"}})
    result = run_task(ctx)
    assert result.status == RunStatus.COMPLETED, result.error
    names = {line.split("=", 1)[0] for line in result.log_tail.splitlines()}
    assert names == {"PATH", "HOME", "LANG", "MINE", "CLOUDQ_TASK_ID", "CLOUDQ_ATTEMPT",
                     "CLOUDQ_WORK_DIR", "CUDA_VISIBLE_DEVICES"}  # fmt: skip
    ids = run_task(confined("exec", {"argv": ["sh", "-c", "id -u; id -G"]})).log_tail.split()
    assert ids == ["65534", "65534"]  # nobody, in nogroup only: no supplementary groups


def test_a_task_writes_its_outputs_in_its_own_directory(confined, nobody):
    ctx = confined("exec", {"argv": ["sh", "-c", "echo result > out.txt; echo $HOME"],
                            "cwd": "run/here"})  # fmt: skip
    result = run_task(ctx)
    assert result.status == RunStatus.COMPLETED, result.log_tail
    out = ctx.work_dir / "run" / "here" / "out.txt"
    assert out.read_text() == "result\n"
    assert result.log_tail.strip() == str(ctx.work_dir)  # $HOME, reachable by its path
    owners = {p: (p.stat().st_uid, stat.S_IMODE(p.stat().st_mode))
              for p in (ctx.work_dir, ctx.work_dir / "run", out)}  # fmt: skip
    assert owners[ctx.work_dir] == (nobody.uid, 0o700)
    assert owners[ctx.work_dir / "run"][0] == owners[out][0] == nobody.uid


def test_a_detached_process_ends_with_its_task(confined):
    # The shell starts two sleepers that leave its session (setsid; one through a double
    # fork, a subshell that exits at once) and exits once both are detached.
    script = f"{detach('pids', 1000)} ({detach('pids', 1001)}); {await_lines('pids', 2)}"
    ctx = confined("exec", {"argv": ["sh", "-c", script]})
    result = run_task(ctx)
    ended = time.monotonic()
    assert result.status == RunStatus.COMPLETED
    pids = [int(p) for p in (ctx.work_dir / "pids").read_text().split()]
    assert len(pids) == 2
    assert pids_gone(pids) == [], "a detached process outlived its task"
    print(f"\ndetached sleepers {pids} gone {1000 * (time.monotonic() - ended):.0f} ms after "
          f"the task's end")


def test_without_confinement_a_detached_process_would_survive(confined):
    # The control for the test above: as the worker itself (a non-root worker's way), only
    # the process group is ended, so the setsid sleeper lives on. The test then kills it.
    script = f"{detach('pids', 1002)} {await_lines('pids', 1)}"
    ctx = confined("exec", {"argv": ["sh", "-c", script]}, user=None)
    assert run_task(ctx).status == RunStatus.COMPLETED
    (pid,) = [int(p) for p in (ctx.work_dir / "pids").read_text().split()]
    try:
        assert psutil.Process(pid).cmdline() == ["sleep", "1002"]
    finally:
        psutil.Process(pid).kill()
        reap_if_ours(pid)


def test_with_a_uid_per_slot_tasks_cannot_touch_each_other(confined, nobody):
    first, second = nobody.for_slot(UID_BASE, 0), nobody.for_slot(UID_BASE, 1)
    # The first task keeps a detached process running and a secret in its directory.
    script = f"echo secret > mine; {detach('pid', 1003)} {await_lines('pid', 1)}"
    holder = confined("exec", {"argv": ["sh", "-c", script]}, user=first)
    assert run_task(holder).status == RunStatus.COMPLETED
    assert pids_gone([int((holder.work_dir / "pid").read_text())]) == []
    # Run a long one as `first` in the background, then a prying one as `second`.
    keeper = confined("exec", {"argv": ["sh", "-c", f"{detach('ready', 1004)} sleep 300"]},
                      user=first, timeout_s=None)  # fmt: skip
    os.mkfifo(keeper.work_dir / "ready", 0o666)
    (keeper.work_dir / "ready").chmod(0o666)  # the task user writes its sleeper's pid into it
    running = Background(keeper).start()
    sleeper = int(read_fifo(keeper.work_dir / "ready"))
    prying = f"cat {holder.work_dir}/mine; ls {keeper.work_dir}; kill {sleeper}; echo done"
    pry = run_task(confined("exec", {"argv": ["sh", "-c", prying]}, user=second))
    print(f"\nas uid {second.uid}: {pry.log_tail!r}")
    assert "secret" not in pry.log_tail
    assert "Permission denied" in pry.log_tail and "Operation not permitted" in pry.log_tail
    assert psutil.pid_exists(sleeper), "the end of another uid's task killed this task's process"
    result, _ = running.cancel_and_wait(5)
    assert result.status == RunStatus.CANCELLED
    assert pids_gone([sleeper]) == []


def test_with_a_shared_uid_the_end_of_one_task_spares_another_tasks_tree(confined):
    # Both run as nobody: the sweep at the first one's end must leave the second one's child,
    # which is still below its task's leader.
    keeper = confined("exec", {"argv": ["sh", "-c", "sleep 1005 & echo $! > ready; wait"]},
                      timeout_s=None)  # fmt: skip
    os.mkfifo(keeper.work_dir / "ready", 0o666)
    (keeper.work_dir / "ready").chmod(0o666)
    running = Background(keeper).start()
    child = int(read_fifo(keeper.work_dir / "ready"))
    assert run_task(confined("exec", {"argv": ["true"]})).status == RunStatus.COMPLETED
    assert psutil.Process(child).cmdline() == ["sleep", "1005"]
    result, _ = running.cancel_and_wait(5)
    assert result.status == RunStatus.CANCELLED
    assert pids_gone([child]) == []


def test_ffmpeg_runs_as_the_task_user(confined, nobody, sample_video):
    # The input is opened by the worker and handed over as a descriptor; the output is written
    # by FFmpeg running as nobody.
    ctx = confined("ffmpeg", {"scenario": "360p30-h264", "input": str(sample_video)},
                   input_roots=[sample_video.parent])  # fmt: skip
    result = run_task(ctx)
    assert result.status == RunStatus.COMPLETED, result.error
    output = ctx.work_dir / "output.mp4"
    assert output.stat().st_uid == nobody.uid
    assert float(probe(output)["format"]["duration"]) == pytest.approx(1.0, abs=0.15)
