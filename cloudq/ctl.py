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
from cloudq.commands import Result, parse
from cloudq.commands.follow import end_line, follow_logs, follow_show, following
from cloudq.commands.registry import files_to_send
from cloudq.errors import CloudqError
from cloudq.render import json_list_chunks, render, render_error, render_json
from cloudq.rpc.client import MasterClient


def run_ctl(master: str, tls_dir: Path | None, argv: list[str], as_json: bool,
            timeout_s: float = defaults.SYNC_REQUEST_TIMEOUT_S) -> int:
    try:
        cmd, args = parse(argv)  # refuse a bad line here, before connecting
        if cmd.name == "watch":
            raise CloudqError(WATCH_REFUSED)
        files = files_to_send(argv)
        with MasterClient(master, tls_dir, timeout_s=timeout_s) as client:
            if following(args):
                return _follow(client, cmd.name, args, argv, as_json)
            pages = command_pages(client, argv, files)
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


def _follow(client: MasterClient, name: str, args: argparse.Namespace, argv: list[str],
            as_json: bool) -> int:
    """`logs ID --follow`, `show ID --follow`: the same `call` every POLL_S until the task
    ends; Ctrl-C stops following (exit status 130), the task goes on."""
    def fetch() -> Result:
        return call_command(client, argv)

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


def call_command(client: MasterClient, argv: list[str], files: dict[str, str] | None = None,
                 read_only: bool = False) -> Result:
    """Runs one command line on the master; a listing that comes in pages is returned whole.
    `read_only`: the master refuses the command if it would change anything."""
    pages = command_pages(client, argv, files or {}, read_only)
    return _joined(next(pages), pages)


def command_pages(client: MasterClient, argv: list[str], files: dict[str, str],
                  read_only: bool = False) -> Iterator[Result]:
    """The Result of a command line, then the further pages of its listing, if any."""
    page = Result.from_dict(client.call("call", {"argv": argv, "files": files, "read_only": read_only}))
    yield page
    while page.next_argv:
        argv = page.next_argv
        if not (isinstance(argv, list) and all(isinstance(word, str) for word in argv)):
            raise CloudqError("the master sent a malformed next-page line")
        page = Result.from_dict(client.call("call", {"argv": argv, "files": {}}))
        if not page.rows and page.next_argv:  # an empty page that promises more: stop looping
            raise CloudqError("the master sent an empty page of a listing")
        yield page


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
