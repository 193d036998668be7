"""The exec runner against real processes: exit codes, logs, literal argv, cancel and timeout
killing the whole process group."""

from __future__ import annotations

import os
import time
from pathlib import Path

from cloudq.worker.runners import RunStatus, run_task, tail_log

from .conftest import Background, group_gone, live_group_members, read_fifo

# Two background sleepers and a waiting shell; the shell reports its pid (= the group id) once
# both children exist, through a FIFO the test reads.
SPAWNER = "sleep 300 & sleep 300 & echo $$ > ready; wait"


def test_exit_code_and_log_tail(make_ctx):
    ctx = make_ctx("exec", {"argv": ["sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 7"]})
    result = run_task(ctx)
    assert result.status == RunStatus.FAILED
    assert result.exit_code == 7
    assert result.error == "exited with code 7"
    assert "to-stdout" in result.log_tail and "to-stderr" in result.log_tail
    assert (ctx.work_dir / "task.log").read_text() == result.log_tail


def test_success_runs_in_task_dir_with_minimal_env(make_ctx, monkeypatch):
    monkeypatch.setenv("CLOUDQ_TEST_SECRET", "do-not-leak")
    ctx = make_ctx("exec", {"argv": ["sh", "-c", "pwd; env"], "env": {"MY_VAR": "x y"}})
    result = run_task(ctx)
    assert result.status == RunStatus.COMPLETED and result.exit_code == 0
    assert result.error is None
    lines = result.log_tail.splitlines()
    assert lines[0] == str(ctx.work_dir.resolve())
    assert "MY_VAR=x y" in lines
    assert f"HOME={ctx.work_dir}" in lines
    assert f"CLOUDQ_TASK_ID={ctx.task_id}" in lines
    assert "CUDA_VISIBLE_DEVICES=" in lines  # no GPU given: none visible
    assert not any("do-not-leak" in line for line in lines)


def test_argv_is_passed_literally_never_through_a_shell(make_ctx):
    hostile = ["$(touch pwned)", "`touch pwned2`", "; touch pwned3", "| cat /etc/passwd",
               "&& echo hi", "*", "$HOME", "'quoted'", "a\nb"]  # fmt: skip
    ctx = make_ctx("exec", {"argv": ["printf", "[%s]\\n", *hostile]})
    result = run_task(ctx)
    assert result.status == RunStatus.COMPLETED
    for item in hostile:
        assert f"[{item}]" in result.log_tail
    assert sorted(os.listdir(ctx.work_dir)) == ["task.log"]  # nothing was touched


def test_cwd_is_a_subdirectory_created_inside_the_task_dir(make_ctx):
    ctx = make_ctx("exec", {"argv": ["pwd"], "cwd": "sub/dir"})
    result = run_task(ctx)
    assert result.status == RunStatus.COMPLETED
    assert result.log_tail.strip() == str((ctx.work_dir / "sub" / "dir").resolve())


def test_missing_program_fails_with_127(make_ctx):
    result = run_task(make_ctx("exec", {"argv": ["no-such-program-cloudq"]}))
    assert result.status == RunStatus.FAILED
    assert result.exit_code == 127
    assert "cannot run 'no-such-program-cloudq'" in result.error
    assert "No such file" in result.error


def test_killed_by_signal_is_reported(make_ctx):
    result = run_task(make_ctx("exec", {"argv": ["sh", "-c", "kill -9 $$"]}))
    assert result.status == RunStatus.FAILED
    assert result.exit_code == 137
    assert result.error == "killed by signal 9 (exit code 137)"


def test_cancel_kills_every_child(make_ctx):
    ctx = make_ctx("exec", {"argv": ["sh", "-c", SPAWNER]}, timeout_s=None)
    os.mkfifo(ctx.work_dir / "ready")
    task = Background(ctx).start()
    pgid = int(read_fifo(ctx.work_dir / "ready"))
    assert len(live_group_members(pgid)) == 3  # the shell and its two sleepers
    result, took = task.cancel_and_wait(5)
    assert result.status == RunStatus.CANCELLED
    assert took < 5.0
    assert "cancelled" in result.error
    assert group_gone(pgid) == []


def test_timeout_kills_the_group_and_says_timed_out(make_ctx):
    ctx = make_ctx("exec", {"argv": ["sh", "-c", SPAWNER]}, timeout_s=1.0)
    os.mkfifo(ctx.work_dir / "ready")
    task = Background(ctx).start()
    pgid = int(read_fifo(ctx.work_dir / "ready"))
    assert task.done.wait(1.0 + 5.0), "timeout did not end the task within timeout + 5 s"
    result = task.result
    assert result.status == RunStatus.TIMED_OUT
    assert 1.0 <= result.duration_s < 6.0
    assert result.error == "timed out after 1 s: the process group was killed"
    assert group_gone(pgid) == []


def test_term_ignoring_children_are_killed_after_the_grace(make_ctx):
    script = "trap '' TERM; sleep 300 & echo $$ > ready; while :; do wait; done"
    ctx = make_ctx("exec", {"argv": ["sh", "-c", script]}, timeout_s=None)
    os.mkfifo(ctx.work_dir / "ready")
    task = Background(ctx).start()
    pgid = int(read_fifo(ctx.work_dir / "ready"))
    result, took = task.cancel_and_wait(5)
    assert result.status == RunStatus.CANCELLED
    assert took < 5.0
    assert group_gone(pgid) == []


def test_background_children_do_not_outlive_a_finished_task(make_ctx):
    ctx = make_ctx("exec", {"argv": ["sh", "-c", "sleep 300 & echo $$"]})
    result = run_task(ctx)
    assert result.status == RunStatus.COMPLETED
    assert group_gone(int(result.log_tail.strip())) == []


def test_noop_completes_and_is_cancellable(make_ctx):
    done = run_task(make_ctx("noop", {"sleep_s": 0}))
    assert (done.status, done.exit_code) == (RunStatus.COMPLETED, 0)
    ctx = make_ctx("noop", {"sleep_s": 300}, timeout_s=None)
    result, took = Background(ctx).start().cancel_and_wait(5)
    assert result.status == RunStatus.CANCELLED and took < 1.0
    timed = run_task(make_ctx("noop", {"sleep_s": 300}, timeout_s=0.05))
    assert timed.status == RunStatus.TIMED_OUT


def test_tail_log_keeps_the_end_in_whole_lines(tmp_path: Path):
    assert tail_log(tmp_path) == ""
    lines = [f"line {i:05d}" for i in range(5000)]
    (tmp_path / "task.log").write_text("\n".join(lines) + "\n")
    tail = tail_log(tmp_path, max_bytes=1000)
    assert len(tail.encode()) <= 1000
    assert tail.endswith("line 04999\n")
    assert tail.splitlines()[0] in lines  # the cut-off line was dropped, not shown half


def test_duration_is_measured(make_ctx):
    started = time.monotonic()
    result = run_task(make_ctx("exec", {"argv": ["sleep", "0.2"]}))
    assert result.status == RunStatus.COMPLETED
    assert 0.2 <= result.duration_s <= time.monotonic() - started


def test_result_is_plain_json(make_ctx):
    import json

    result = run_task(make_ctx("exec", {"argv": ["sh", "-c", "echo ok; exit 2"]}))
    data = json.loads(json.dumps(result.to_dict()))
    assert data["status"] == "failed" and data["exit_code"] == 2
    assert data["log_tail"] == "ok\n"
