"""Paged listings over RPC: every task once, in order, each page under the byte budget; the
shell gets everything at once; numeric options are bounded with a clear message."""

from __future__ import annotations

import orjson
import pytest

from cloudq.commands import Context, dispatch, pages
from cloudq.errors import ValidationError
from cloudq.master.core import Master


def _master(count: int, argv_chars: int = 0) -> Master:
    master = Master()
    argv = ["echo", *(["y" * 4000] * (argv_chars // 4000))]
    for start in range(0, count, 5000):
        master.submit([{"kind": "exec", "name": f"n{i}", "spec": {"argv": argv}}
                       for i in range(start, min(start + 5000, count))])
    return master


def _read_all(master: Master, argv: list[str]) -> tuple[list, list[int], str]:
    ctx = Context(master, local=False)
    result = dispatch(ctx, argv)
    title, data, sizes = result.title, list(result.data), [len(orjson.dumps(result.to_dict()))]
    while result.next_argv:
        result = dispatch(ctx, result.next_argv)
        assert len(result.rows) == len(result.data)
        data += result.data
        sizes.append(len(orjson.dumps(result.to_dict())))
    return data, sizes, title


@pytest.mark.parametrize(("count", "argv_chars"), [(30_000, 0), (400, 120_000)])
def test_a_long_listing_comes_in_pages_under_the_budget(count: int, argv_chars: int) -> None:
    master = _master(count, argv_chars)
    data, sizes, title = _read_all(master, ["queue", "--state", "queued", "--limit", "100000"])
    print(f"\n{count} tasks ({argv_chars} argv chars each): {len(sizes)} pages, "
          f"largest {max(sizes) >> 20} MiB, {sum(sizes) >> 20} MiB in all")
    assert title == f"{count} queued tasks"
    assert [t["id"] for t in data] == [t.id for t in master.queued()]
    assert len(sizes) > 1 and max(sizes) <= pages.PAGE_BYTES + (256 << 10)
    assert len(pages.SNAPSHOTS) == 0  # the last page dropped its cursor


def test_the_shell_gets_the_whole_listing_in_one_result() -> None:
    master = _master(30_000)
    result = dispatch(Context(master), ["queue", "--limit", "100000"])
    assert len(result.rows) == 30_000 and result.next_argv is None


def test_pages_show_tasks_as_they_are_now_and_skip_forgotten_ones() -> None:
    master = _master(20_000)
    ctx = Context(master, local=False)
    first = dispatch(ctx, ["queue", "--limit", "100000"])
    listed = len(first.data)
    later = master.queued()[listed:listed + 2]
    master.cancel(later[0].id)
    del master.tasks[later[1].id]  # as pruning does
    data, _, _ = _read_all(master, first.next_argv)
    assert data[0]["id"] == later[0].id and data[0]["state"] == "cancelled"
    assert later[1].id not in {t["id"] for t in data}
    assert listed + len(data) == 20_000 - 1


def test_an_unknown_cursor_says_to_run_the_command_again() -> None:
    with pytest.raises(ValidationError, match="cursor has expired or is unknown"):
        dispatch(Context(Master(), local=False), ["queue", "--cursor", "nope", "--offset", "5"])


def test_a_big_submit_replies_in_pages_too(tmp_path) -> None:
    master = Master()
    batch = tmp_path / "batch.txt"
    batch.write_text("".join(f"--noop --name n{i}\n" for i in range(20_000)))
    ctx = Context(master, files={str(batch): batch.read_text()}, local=False)
    result = dispatch(ctx, ["submit", str(batch)])
    assert result.title == "Submitted 20000 tasks" and result.status == "ids t1 to t20000"
    assert result.headers == ["id", "name", "state", "worker"] and result.next_argv
    data, _, _ = _read_all(master, result.next_argv)
    assert [t["name"] for t in result.data + data] == [f"n{i}" for i in range(20_000)]


@pytest.mark.parametrize(("value", "message"), [
    ("100000000000000000000", "must be from 1 to 10000000"),
    ("0", "must be from 1 to 10000000"),
    ("-5", "must be from 1 to 10000000"),
    ("many", "'many' is not a whole number"),
])
def test_limit_is_bounded_with_a_clear_message(value: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message) as caught:
        dispatch(Context(Master()), ["queue", "--limit", value])
    assert "islice" not in str(caught.value)


def test_a_cursor_that_looks_like_a_flag_still_reads_its_pages(monkeypatch) -> None:
    """A cursor once began with "-" (1 in 64 of urlsafe tokens), and argparse took it for a flag."""
    monkeypatch.setattr(pages.secrets, "token_hex", lambda n: "-looks-like-a-flag")
    master = _master(400, 120_000)
    data, sizes, _ = _read_all(master, ["queue", "--state", "queued", "--limit", "1000"])
    assert len(sizes) > 1 and [t["id"] for t in data] == [t.id for t in master.queued()]
