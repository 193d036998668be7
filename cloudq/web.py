"""The master's HTTP edge: a small threaded server for /metrics and the status page that cannot
eat the master's descriptors or threads. At most `max_connections` at once (more get a 503 and
are closed), and a connection that sends no complete request within `idle_timeout_s` is
closed. With an SSL context it serves HTTPS: the handshake runs in the connection's own thread,
bounded by the same timeout, so a slow or silent client never holds up the others."""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from cloudq import defaults

log = logging.getLogger("cloudq.web")

_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n"
         b"Retry-After: 1\r\n\r\n")


class _QuietHandler(WSGIRequestHandler):
    timeout = defaults.HTTP_IDLE_TIMEOUT_S  # socket timeout: a silent client is dropped

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        return  # Prometheus scrapes every few seconds: no line per request


class BoundedHTTPServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # a burst of scrapes or refusals waits in the kernel, not in SYN retries

    def __init__(self, address: tuple[str, int], app: Callable[..., Any],
                 max_connections: int = defaults.HTTP_MAX_CONNECTIONS,
                 idle_timeout_s: float = defaults.HTTP_IDLE_TIMEOUT_S,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        handler = type("Handler", (_QuietHandler,), {"timeout": idle_timeout_s})
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)
        self.set_app(app)
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self.ssl_context = ssl_context
        self.open_connections = 0
        self.refused = 0
        self._count_lock = threading.Lock()

    def get_request(self) -> tuple[socket.socket, Any]:
        try:
            return super().get_request()
        except OSError as err:
            if err.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                time.sleep(0.1)  # out of descriptors: let some come back rather than spin
            raise

    def verify_request(self, request: Any, client_address: Any) -> bool:
        with self._count_lock:
            if self.open_connections >= self.max_connections:
                self.refused += 1
                busy = True
            else:
                self.open_connections += 1
                busy = False
        if busy:
            try:
                request.setblocking(False)
                request.send(_BUSY)
            except OSError:
                pass
        return not busy

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            if self.ssl_context is not None:
                request = self._handshake(request)
                if request is None:
                    return
            super().process_request_thread(request, client_address)
        finally:
            with self._count_lock:
                self.open_connections -= 1

    def _handshake(self, request: socket.socket) -> ssl.SSLSocket | None:
        assert self.ssl_context is not None
        try:
            request.settimeout(self.idle_timeout_s)
            wrapped = self.ssl_context.wrap_socket(request, server_side=True,
                                                   do_handshake_on_connect=False)
            wrapped.do_handshake()
            return wrapped
        except (OSError, ValueError) as err:  # plain HTTP, a port scan, a client that left
            log.debug("TLS handshake from a client failed: %s", err)
            with contextlib.suppress(OSError):
                request.close()
            return None

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("HTTP request from %s failed", client_address, exc_info=True)


App = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def route(apps: dict[str, App], default: App) -> App:
    """One WSGI application from several: by exact path, else `default`."""
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        return apps.get(environ.get("PATH_INFO", ""), default)(environ, start_response)
    return app


def serve_http(app: App, host: str, port: int, **options: Any) -> BoundedHTTPServer:
    """Binds and serves in a background thread; `shutdown()` stops it. `options`: the limits
    and `ssl_context` of BoundedHTTPServer."""
    server = BoundedHTTPServer((host, port), app, **options)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server
