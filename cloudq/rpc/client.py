"""Connecting to the master: workers and `cloudq ctl` use this, never rpyc.ssl_connect, which
would accept any certificate from the CA as the master."""

from __future__ import annotations

import contextlib
import socket
import ssl
from pathlib import Path
from typing import Any

import rpyc
from rpyc.core import consts
from rpyc.core.netref import syncreq
from rpyc.core.stream import SocketStream

from cloudq import defaults
from cloudq.errors import AuthError, CloudqError, ValidationError
from cloudq.rpc import tls
from cloudq.rpc.protocol import PROTOCOL_CONFIG, BoundedChannel, dumps, unwrap


def parse_address(text: str, default_port: int = defaults.PORT) -> tuple[str, int]:
    """'host:port', 'host', '[::1]:port'."""
    host, port = text, default_port
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            port = _port(rest[1:], text)
    elif text.count(":") == 1:
        host, raw_port = text.split(":")
        port = _port(raw_port, text)
    if not host:
        raise ValidationError(f"master address {text!r} has no host")
    return host, port


def _port(raw: str, text: str) -> int:
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ValidationError(f"master address {text!r}: port must be 1-65535")
    return int(raw)


class MasterClient:
    """One connection to the master; `call(method, payload)` sends JSON and unwraps the reply."""

    def __init__(self, address: str, tls_dir: Path | None = None, identity: str = tls.ADMIN_NAME,
                 timeout_s: float = defaults.SYNC_REQUEST_TIMEOUT_S) -> None:
        host, port = parse_address(address)
        self.address = f"{host}:{port}"
        sock = _dial(host, port)
        if tls_dir is not None:
            context = tls.client_context(tls_dir, "admin" if identity == tls.ADMIN_NAME else identity)
            try:
                sock = context.wrap_socket(sock, server_hostname=tls.MASTER_NAME)
            except ssl.SSLCertVerificationError as err:
                sock.close()
                raise AuthError(f"{self.address} is not the cluster's master: {err.verify_message}") from None
            except (ssl.SSLError, OSError) as err:
                sock.close()
                raise AuthError(f"TLS with {self.address} failed: {err}") from None
        config = dict(PROTOCOL_CONFIG, sync_request_timeout=timeout_s)
        try:
            self.conn = rpyc.connect_channel(BoundedChannel(SocketStream(sock)), config=config)
            sock.settimeout(None)
            self._root = self.conn.root
        except (EOFError, OSError) as err:
            sock.close()
            raise CloudqError(f"the master at {self.address} closed the connection: {err}") from None

    def call(self, method: str, payload: Any = None) -> Any:
        try:
            # One round trip (call-attribute) instead of two (get the method, then call it). The
            # plain name: the server finds exposed_<name> with one hasattr, where the prefixed
            # name would cost it a slower static lookup first.
            reply = syncreq(self._root, consts.HANDLE_CALLATTR, method, (dumps(payload),), ())
        except (EOFError, OSError) as err:
            raise ConnectionError(f"lost the master at {self.address}: {err}") from None
        return unwrap(reply)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing a dead connection must not raise
            self.conn.close()

    def __enter__(self) -> MasterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _dial(host: str, port: int) -> socket.socket:
    try:
        sock = socket.create_connection((host, port), timeout=defaults.HANDSHAKE_TIMEOUT_S)
    except OSError as err:
        raise ConnectionError(f"cannot reach the master at {host}:{port}: {err.strerror or err}") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock
