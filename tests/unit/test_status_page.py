"""The status page's WSGI application against an in-process master: escaping, the JSON API
matching `ctl --json`, filters checked by queue's own parser, and nothing but GET."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from cloudq.commands import Context, dispatch
from cloudq.master.core import Master
from cloudq.render import render_json
from cloudq.status import status_app
from tests.unit.test_commands import worker
from tests.unit.test_master_core import Clock

HOSTILE = "<script>alert(1)</script>"


def call(app: Any, path: str, method: str = "GET", query: str = "") -> tuple[str, dict[str, str], str]:
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        seen["status"], seen["headers"] = status, dict(headers)

    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query,
               "wsgi.input": io.BytesIO()}
    body = b"".join(app(environ, start_response)).decode()
    assert int(seen["headers"]["Content-Length"]) == len(body.encode())
    return seen["status"], seen["headers"], body


@pytest.fixture
def master() -> Master:
    master = Master(clock=Clock())  # still time: two reads of `status` agree
    worker(master, "w1", cores=2.0)
    master.submit([{"kind": "exec", "spec": {"argv": ["sleep", "60"]}, "resources": {"cpu_cores": 2.0}},
                   {"kind": "exec", "spec": {"argv": ["echo", HOSTILE]}, "resources": {"cpu_cores": 64.0}}])
    master.report("w1", 1, [{"task": "t1", "attempt": 1, "state": "running"}])
    return master


def test_the_page_shows_workers_running_and_queued_tasks_with_every_value_escaped(master: Master) -> None:
    status, headers, body = call(status_app(master), "/")
    assert status == "200 OK" and headers["Content-Type"].startswith("text/html")
    assert "script-src" not in headers["Content-Security-Policy"]  # default-src 'none': no script
    assert "<script" not in body.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert "w1" in body and "t1" in body and "t2" in body
    assert "needs 64 cores" in body or "Insufficient CPU" in body  # the queued task's reason
    assert '<meta http-equiv="refresh"' in body


def test_the_api_answers_what_ctl_json_answers(master: Master) -> None:
    app = status_app(master)
    for name in ("status", "workers", "queue"):
        status, headers, body = call(app, f"/api/{name}")
        assert status == "200 OK" and headers["Content-Type"] == "application/json"
        expected = json.loads(render_json(dispatch(Context(master), [name])))
        assert json.loads(body) == expected, name
    _, _, body = call(app, "/api/queue", query="state=running&limit=5")
    assert [t["id"] for t in json.loads(body)] == ["t1"]


@pytest.mark.parametrize(("path", "method", "query", "status"), [
    ("/", "POST", "", "405 Method Not Allowed"),
    ("/api/queue", "DELETE", "", "405 Method Not Allowed"),
    ("/api/cancel", "GET", "", "404 Not Found"),
    ("/../etc/passwd", "GET", "", "404 Not Found"),
    ("/api/queue", "GET", "state=nonsense", "400 Bad Request"),
    ("/api/queue", "GET", "limit=-1", "400 Bad Request"),
    ("/api/queue", "GET", "argv=cancel", "400 Bad Request"),
    ("/api/queue", "GET", "&".join(f"state=queued{i}" for i in range(50)), "400 Bad Request"),
])
def test_anything_but_a_read_is_refused(master: Master, path: str, method: str, query: str,
                                        status: str) -> None:
    got, _, body = call(status_app(master), path, method, query)
    assert got == status, body
    assert master.get("t2").state.value == "queued"
