"""`cloudq ctl`: one command against a running master, through the same registry as the shell.

A listing too large for one reply comes in pages (commands/pages.py): each Result names the
command line of the next page, and ctl follows them, writing JSON out as the pages arrive; the
output is the same single JSON value, or the same table, that one reply would have given.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from cloudq import defaults
from cloudq.client import Client
from cloudq.commands import Result, parse
from cloudq.commands.follow import end_line, follow_logs, follow_show, following
from cloudq.commands.registry import files_to_send
from cloudq.commands.tasks import ended_result
from cloudq.errors import CloudqError
from cloudq.render import json_list_chunks, render, render_error, render_json


def run_ctl(master: str, tls_dir: Path | None, argv: list[str], as_json: bool,
            timeout_s: float = defaults.SYNC_REQUEST_TIMEOUT_S) -> int:
    try:
        cmd, args = parse(argv)  # refuse a bad line here, before connecting
        if cmd.name == "watch":
            raise CloudqError(WATCH_REFUSED)
        files = files_to_send(argv)
        with Client(master, tls_dir, timeout_s=timeout_s) as client:
            if cmd.name == "wait":
                return _wait(client, args.ids, args.timeout, as_json)
            if following(args):
                return _follow(client, cmd.name, args, argv, as_json)
            if getattr(args, "wait", False):
                return _submit_and_wait(client, argv, files, as_json)
            pages = client.pages(argv, files)
            first = next(pages)
            if first.next_argv is None:
                _print_whole(first, as_json)
            elif as_json:
                _stream_json(first, pages)
            else:
                print(render(_joined(first, pages)))
    except (CloudqError, ConnectionError) as err:
        sys.stdout.flush()
        print(render_error(err), file=sys.stderr)
        return 1
    return 0


WATCH_REFUSED = ("watch redraws a terminal and works only in the master> shell; from a script, "
                 "run the command again yourself, e.g. `watch -n 2 cloudq ctl queue`")


def _wait(client: Client, ids: list[str], timeout: float | None, as_json: bool) -> int:
    """`wait ID...`: until every task has ended. Exit status 0 when all completed, 1 when one
    failed, died or was cancelled, 2 when the timeout came first; the tasks are printed."""
    try:
        ended = client.wait(ids, timeout)
        code = 0 if all(view["state"] == "completed" for view in ended.values()) else 1
    except TimeoutError as err:
        ended = {}
        print(f"error: {err}", file=sys.stderr)
        code = 2
    result = ended_result([ended.get(i) or client.get(i) for i in ids])
    print(render_json(result) if as_json else render(result), flush=True)
    return code


def _submit_and_wait(client: Client, argv: list[str], files: dict[str, str], as_json: bool) -> int:
    """`task ... --wait`: submits, then waits for what it submitted (one task or an array)."""
    result = client.command(argv, files)
    data = result.data or {}
    ids = data.get("tasks") or [data["id"]]
    if not as_json:
        print(result.status, flush=True)
    return _wait(client, ids, None, as_json)


def _follow(client: Client, name: str, args: argparse.Namespace, argv: list[str],
            as_json: bool) -> int:
    """`logs ID --follow`, `show ID --follow`: the same `call` every POLL_S until the task
    ends; Ctrl-C stops following (exit status 130), the task goes on."""
    def fetch() -> Result:
        return client.command(argv)

    def wait(seconds: float) -> bool:
        time.sleep(seconds)
        return False

    try:
        if name == "logs":
            last = follow_logs(fetch, wait, sys.stdout, as_json=as_json, raw=args.raw)
        else:
            last = follow_show(fetch, wait, sys.stdout, render, as_json=as_json)
    except KeyboardInterrupt:
        sys.stdout.flush()
        print(f"\n{end_line(args.id, None)}", file=sys.stderr)
        return 130
    if not as_json and not getattr(args, "raw", False):
        print(end_line(args.id, last), flush=True)
    return 0


def _joined(first: Result, pages: Iterator[Result]) -> Result:
    """One Result of every page: the first page's title and status, every row and record."""
    for page in pages:
        first.rows.extend(page.rows)
        first.data.extend(page.data or [])
    first.next_argv = None
    return first


def _print_whole(result: Result, as_json: bool) -> None:
    if as_json:
        print(render_json(result))
    elif result.raw:
        sys.stdout.write(result.status)  # as it is, for `> file`: no newline added
    else:
        print(render(result))


def _stream_json(first: Result, pages: Iterator[Result]) -> None:
    """The JSON list of every page's records, written as the pages arrive."""
    def items() -> Iterator[object]:
        yield from first.data or []
        for page in pages:
            sys.stdout.flush()
            yield from page.data or []

    for chunk in json_list_chunks(items()):
        sys.stdout.write(chunk)
    sys.stdout.write("\n")
