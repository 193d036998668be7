"""`cloudq ctl`: one command against a running master, through the same registry as the shell."""

from __future__ import annotations

import sys
from pathlib import Path

from cloudq.commands import Result
from cloudq.commands.registry import files_to_send, parse
from cloudq.errors import CloudqError
from cloudq.render import render, render_json
from cloudq.rpc.client import MasterClient


def run_ctl(master: str, tls_dir: Path | None, argv: list[str], as_json: bool) -> int:
    try:
        parse(argv)  # refuse a bad line here, before connecting
        files = files_to_send(argv)
        with MasterClient(master, tls_dir) as client:
            result = Result.from_dict(client.call("call", {"argv": argv, "files": files}))
    except (CloudqError, ConnectionError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(render_json(result) if as_json else render(result))
    return 0
