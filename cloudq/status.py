"""The status page on the master's HTTP port: `/` for a person, `/api/...` for a script.

Every section is a read command of the shared registry (status, workers, queue, events), run
through a read-only gate, so the page shows what `master>` and `cloudq ctl` show and can change
nothing. The page is rendered on the server, refreshes itself, loads nothing from elsewhere,
and escapes every value (task names, commands and reasons are what users typed); the response
forbids scripts outright (Content-Security-Policy), so a value that slipped through escaping
still could not run. `/api/status`, `/api/queue` and `/api/workers` answer the JSON of
`cloudq ctl --json status|queue|workers`; `/api/queue` takes queue's filters as query
parameters (`?state=running&worker=w1&limit=50`).
"""

from __future__ import annotations

import html
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl

from cloudq.commands import parse
from cloudq.commands.gate import Gate, Guard
from cloudq.commands.registry import Context, Result, run
from cloudq.errors import CloudqError
from cloudq.render import neutralise, render_json

log = logging.getLogger("cloudq.status")

REFRESH_S = 5
SECTIONS: tuple[tuple[str, list[str]], ...] = (
    ("Workers", ["workers"]),
    ("Running", ["queue", "--state", "running", "--limit", "200"]),
    ("Queue, in the order it will be served", ["queue", "--state", "queued", "--limit", "200"]),
    ("Recent events", ["events", "--limit", "50"]),
)
API: dict[str, list[str]] = {"status": ["status"], "queue": ["queue"], "workers": ["workers"]}
QUEUE_FILTERS = ("state", "worker", "queue", "owner", "name", "limit")  # /api/queue?...
HEADERS_HTML = [
    ("Content-Type", "text/html; charset=utf-8"),
    # No script, no frame, nothing from elsewhere: only the page's own inline style.
    ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; "
                                "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
]
STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.3em;margin:0 0 .3em} h2{font-size:1.05em;margin:1.4em 0 .4em}
table{border-collapse:collapse;width:100%} td,th{padding:.2em .6em;text-align:left;
vertical-align:top;border-bottom:1px solid #ddd;white-space:pre-wrap;word-break:break-word}
th{background:#f3f3f3;font-weight:600} .muted{color:#777} .summary td{border:0;padding:.1em .8em .1em 0}
.s-running,.s-available,.s-completed{color:#116611} .s-queued,.s-busy,.s-held,.s-retrying{color:#8a6d00}
.s-failed,.s-dead,.s-offline,.s-quarantined{color:#b00020}
"""
_STATE_WORDS = frozenset({"running", "available", "completed", "queued", "busy", "held", "retrying",
                          "failed", "dead", "offline", "quarantined"})

App = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def status_app(master: Any, title: str = "cloudq") -> App:
    """The WSGI application for `/` and `/api/...`."""

    def read(argv: list[str]) -> Result:
        cmd, args = parse(argv)
        return run(Context(Gate(master, Guard(read_only=True)), local=False), cmd, args)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method, path = environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO", "/")
        if method not in ("GET", "HEAD"):
            return _reply(start_response, "405 Method Not Allowed", b"read only\n",
                          [("Content-Type", "text/plain"), ("Allow", "GET, HEAD")])
        try:
            if path == "/":
                body = page(read, title).encode()
                return _reply(start_response, "200 OK", body, HEADERS_HTML)
            name = path.removeprefix("/api/")
            if path.startswith("/api/") and name in API:
                argv = API[name] + (_queue_options(environ.get("QUERY_STRING", ""))
                                    if name == "queue" else [])
                body = (render_json(read(argv)) + "\n").encode()
                return _reply(start_response, "200 OK", body, [("Content-Type", "application/json"),
                                                               ("Cache-Control", "no-store")])
        except CloudqError as err:
            return _reply(start_response, "400 Bad Request", f"{err}\n".encode(),
                          [("Content-Type", "text/plain; charset=utf-8")])
        return _reply(start_response, "404 Not Found", b"not found\n", [("Content-Type", "text/plain")])

    return app


def _reply(start_response: Callable[..., Any], status: str, body: bytes,
           headers: list[tuple[str, str]]) -> list[bytes]:
    start_response(status, [*headers, ("Content-Length", str(len(body)))])
    return [body]


def _queue_options(query: str) -> list[str]:
    """`?state=running&limit=50` as queue's own options, which check them."""
    argv: list[str] = []
    try:
        pairs = parse_qsl(query, keep_blank_values=True, max_num_fields=len(QUEUE_FILTERS))
    except ValueError as err:
        raise CloudqError(f"bad query: {err}") from None
    for key, value in pairs:
        if key not in QUEUE_FILTERS:
            raise CloudqError(f"unknown parameter {key[:40]!r}; known: {', '.join(QUEUE_FILTERS)}")
        argv.append(f"--{key}={value}")
    return argv


def page(read: Callable[[list[str]], Result], title: str) -> str:
    """The whole page: a summary line, then one table per section."""
    summary = read(["status"])
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f'<meta http-equiv="refresh" content="{REFRESH_S}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)} status</title><style>{STYLE}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="muted">As of {_e(time.strftime("%Y-%m-%d %H:%M:%S"))}; '
        f"this page refreshes every {REFRESH_S} s.</p>",
        _summary(summary.data or {}),
    ]
    for heading, argv in SECTIONS:
        try:
            result = read(argv)
        except CloudqError as err:
            parts.append(f"<h2>{_e(heading)}</h2><p>{_e(str(err))}</p>")
            continue
        parts.append(_section(heading, result))
    parts.append("</body></html>")
    return "".join(parts)


def _summary(data: dict[str, Any]) -> str:
    tasks = {k: v for k, v in (data.get("tasks") or {}).items() if v}
    workers = {k: v for k, v in (data.get("workers") or {}).items() if v}
    wait = data.get("oldest_wait_s")
    cells = [
        ("tasks", ", ".join(f"{v} {k}" for k, v in tasks.items()) or "none"),
        ("workers", ", ".join(f"{v} {k}" for k, v in workers.items()) or "none registered"),
        ("queued", str(data.get("queued", 0))),
        ("oldest wait", f"{wait:.0f} s" if isinstance(wait, int | float) else "-"),
        ("up", f"{data.get('uptime_s', 0):.0f} s"),
    ]
    row = "".join(f"<td><b>{_e(k)}</b> {_e(v)}</td>" for k, v in cells)
    return f'<table class="summary"><tr>{row}</tr></table>'


def _section(heading: str, result: Result) -> str:
    count = f' <span class="muted">({_e(result.title)})</span>' if result.title else ""
    if not result.rows:
        note = result.status or "none"
        return f'<h2>{_e(heading)}{count}</h2><p class="muted">{_e(note)}</p>'
    head = "".join(f"<th>{_e(str(h))}</th>" for h in result.headers)
    body = "".join("<tr>" + "".join(_cell(value) for value in row) + "</tr>" for row in result.rows)
    return f"<h2>{_e(heading)}{count}</h2><table><tr>{head}</tr>{body}</table>"


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    css = f' class="s-{text}"' if text in _STATE_WORDS else ""  # a state, not a move
    return f"<td{css}>{_e(text)}</td>"


def _e(text: str) -> str:
    """As text in HTML: control characters shown as the shell shows them, markup escaped."""
    return html.escape(neutralise(text), quote=True)
