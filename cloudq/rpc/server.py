"""The master's listening side: a bounded, authenticated RPyC ThreadedServer.

- TLS with client certificates when a TLS directory is given; the certificate's name becomes
  the connection's identity. Without TLS (loopback, or `--insecure`) every peer is trusted.
- The TLS handshake and RPyC setup must finish within HANDSHAKE_TIMEOUT_S.
- At most MAX_CONNECTIONS peers; more are closed at once.
- Frames are bounded (protocol.BoundedChannel).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rpyc
from rpyc.core.stream import SocketStream
from rpyc.utils.authenticators import AuthenticationError
from rpyc.utils.server import ThreadedServer

from cloudq import defaults
from cloudq.errors import CloudqError
from cloudq.rpc import tls
from cloudq.rpc.protocol import PROTOCOL_CONFIG, BoundedChannel

log = logging.getLogger("cloudq.rpc")
log.setLevel(logging.WARNING)  # rpyc logs every accept at INFO: too chatty for operators


@dataclass(frozen=True)
class Identity:
    """Who is on the other end. `name` is None for trusted (non-TLS) peers."""

    name: str | None
    trusted: bool = False

    @property
    def is_admin(self) -> bool:
        return self.trusted or self.name == tls.ADMIN_NAME

    def may_act_as_worker(self, worker: str) -> bool:
        return self.trusted or self.name == worker


class Authenticator:
    def __init__(self, context: ssl.SSLContext | None) -> None:
        self.context = context

    def __call__(self, sock: socket.socket) -> tuple[Any, Identity]:
        sock.settimeout(defaults.HANDSHAKE_TIMEOUT_S)
        if self.context is None:
            return sock, Identity(None, trusted=True)
        try:
            wrapped = self.context.wrap_socket(sock, server_side=True)
        except (ssl.SSLError, OSError) as err:
            raise AuthenticationError(f"TLS handshake failed: {err}") from None
        name = tls.peer_name(wrapped.getpeercert())
        if not name or name == tls.MASTER_NAME:
            wrapped.close()
            raise AuthenticationError(f"certificate name {name!r} may not connect as a client")
        return wrapped, Identity(name)


class BoundedServer(ThreadedServer):
    def __init__(self, *args: Any, max_connections: int = defaults.MAX_CONNECTIONS, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.max_connections = max_connections

    def _accept_method(self, sock: socket.socket) -> None:
        if len(self.clients) > self.max_connections:
            log.warning("connection limit %d reached; closing a new connection", self.max_connections)
            self.clients.discard(sock)
            sock.close()
            return
        # Small request/reply messages: without this, Nagle and delayed ACKs add ~40 ms a call.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super()._accept_method(sock)

    def _serve_client(self, sock: Any, credentials: Any) -> None:
        addrinfo = sock.getpeername()
        config = dict(self.protocol_config, credentials=credentials,
                      endpoints=(sock.getsockname(), addrinfo), logger=self.logger)
        conn = self.service._connect(BoundedChannel(SocketStream(sock)), config)
        sock.settimeout(None)  # set up: from now on requests may wait (long-poll fetch)
        self._handle_connection(conn)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def start_server(
    service: rpyc.Service, host: str, port: int, tls_dir: Path | None, insecure: bool
) -> BoundedServer:
    """Binds and starts serving in a background thread. Off loopback, TLS or --insecure."""
    if tls_dir is None and not is_loopback(host) and not insecure:
        raise CloudqError(
            f"refusing to listen on {host} without TLS: give --tls-dir (make one with "
            f"`cloudq certs init DIR`) or say --insecure"
        )
    context = tls.server_context(tls_dir) if tls_dir else None
    server = BoundedServer(
        service, hostname=host, port=port, authenticator=Authenticator(context),
        protocol_config=dict(PROTOCOL_CONFIG), listener_timeout=0.5, logger=log,
    )
    server._listen()  # listening before we return, so the port is known and close() is safe
    thread = threading.Thread(target=server.start, name="rpc-server", daemon=True)
    thread.start()
    return server
