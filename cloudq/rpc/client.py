"""Connecting to the master: workers and `cloudq ctl` use this, never rpyc.ssl_connect, which
would accept any certificate from the CA as the master.

When a connection fails, the error names the cause an operator can act on, not the socket
event it ended with ("closed the connection", "result expired"):

- a plain client at a TLS master: the master's TLS layer drops our first RPyC frame without a
  word, so on a failed plain connection we ask once more with a TLS ClientHello; a ServerHello
  back means the master requires TLS;
- our certificate refused: under TLS 1.3 the master's alert (unknown CA, expired...) comes at
  our first read after the handshake, that is within the connection set-up, and is named there;
  our own certificate's dates are checked before dialling, so an expired one says so plainly;
- no answer within the timeout: said as such, and the connection is dropped without the
  close handshake (which would wait a second timeout);
- a reply over the frame limit (protocol.FrameTooLarge, passed through by rpyc): said as such;
  the connection cannot be read further, so it is dropped and the next call dials again.
"""

from __future__ import annotations

import contextlib
import datetime
import socket
import ssl
from pathlib import Path
from typing import Any

import rpyc
from cryptography import x509
from rpyc.core import consts
from rpyc.core.netref import syncreq
from rpyc.core.stream import SocketStream

from cloudq import defaults
from cloudq.errors import AuthError, CloudqError, LimitError, NotLeaderError, ValidationError
from cloudq.rpc import tls
from cloudq.rpc.protocol import (
    MAX_FRAME_BYTES,
    PROTOCOL_CONFIG,
    BoundedChannel,
    FrameTooLarge,
    LeaderView,
    dumps,
    unwrap,
)

# OpenSSL's names for the alerts a TLS server sends when it does not accept a client certificate.
_REFUSED_CERTIFICATE = {
    "TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_CERTIFICATE_EXPIRED", "SSLV3_ALERT_BAD_CERTIFICATE",
    "TLSV1_ALERT_DECRYPT_ERROR", "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
    "SSLV3_ALERT_CERTIFICATE_REVOKED", "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED", "TLSV1_ALERT_ACCESS_DENIED",
}
# What each of those alerts says about our certificate, for the operator.
_REFUSAL_CAUSES = {
    "TLSV1_ALERT_UNKNOWN_CA": "not from this cluster's CA",
    "TLSV1_ALERT_DECRYPT_ERROR": "not from this cluster's CA",  # another CA of the same name
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "expired",
    "SSLV3_ALERT_BAD_CERTIFICATE": "not valid now (check this machine's clock) or damaged",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "not a client certificate (the master's own?)",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "revoked",
}
_CERT_HAS_EXPIRED = 10  # X509_V_ERR_CERT_HAS_EXPIRED, in SSLCertVerificationError.verify_code
# The server's certificate is from our CA but is not the master's: a worker's, or the wrong name.
_NOT_THE_MASTERS = {26, 62}  # X509_V_ERR_INVALID_PURPOSE, X509_V_ERR_HOSTNAME_MISMATCH


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
    """One connection to the master; `call(method, payload)` sends JSON and unwraps the reply.
    After a failure that leaves the connection unusable, the next call dials again.

    `address` may list several masters sharing one store ("a:18861,b:18861"): the client
    talks to the one that leads. A standby's answer names the leader and the call goes there;
    one it cannot reach is passed over for the next in the list. Replies carry the leader's
    epoch, and one from an epoch older than the newest seen (a deposed leader's) is refused,
    never acted on. `view` (the newest epoch, and which master led last) may be shared by the
    clients of one process: a worker's two channels go to the same leader.

    `timeout_s` bounds each call; setting up a connection is bounded by the handshake timeout,
    so a master that hangs (stopped, or cut off) costs a few seconds before the next is tried."""

    def __init__(self, address: str, tls_dir: Path | None = None, identity: str = tls.ADMIN_NAME,
                 timeout_s: float = defaults.SYNC_REQUEST_TIMEOUT_S,
                 view: LeaderView | None = None) -> None:
        self.addresses = [parse_address(part.strip()) for part in address.split(",") if part.strip()]
        if not self.addresses:
            raise ValidationError(f"master address {address!r} names no master")
        self.host, self.port = self.addresses[0]
        self.address = join_address(self.host, self.port)
        self.tls_dir = tls_dir
        self.stem = "admin" if identity == tls.ADMIN_NAME else identity
        self.timeout_s = timeout_s
        self.view = view if view is not None else LeaderView()
        self.conn: rpyc.Connection | None = None
        self._sock: socket.socket | None = None
        self._connect_any()

    def _go_to(self, host: str, port: int) -> None:
        self._drop()
        self.host, self.port = host, port
        self.address = join_address(host, port)

    def _connect_any(self) -> None:
        """The master that led or answered last (if known), else the current one, then each
        other one in the list, in order."""
        hint = self.view.prefer
        first = hint if hint is not None else (self.host, self.port)
        if first not in self.addresses:
            self.addresses.append(first)
        start = self.addresses.index(first)
        order = self.addresses[start:] + self.addresses[:start]
        for index, (host, port) in enumerate(order):
            if (host, port) != (self.host, self.port):
                self._go_to(host, port)
            try:
                self._connect()
            except ConnectionError:
                if self.view.prefer == (host, port):
                    self.view.prefer = None  # it does not answer: no longer a good first try
                if index == len(order) - 1:
                    raise
                continue
            if index and len(self.addresses) > 1:
                self.view.prefer = (host, port)  # the next connection need not wait for the others
            return

    def _connect(self) -> None:
        if self.tls_dir is not None:
            check_own_certificate(self.tls_dir, self.stem)
        sock = _dial(self.host, self.port)
        if self.tls_dir is not None:
            sock = self._handshake(sock, self.tls_dir)
        # The first exchange is bounded like the handshake: a master that hangs is passed over.
        config = dict(PROTOCOL_CONFIG, sync_request_timeout=min(self.timeout_s, defaults.HANDSHAKE_TIMEOUT_S))
        try:
            conn = rpyc.connect_channel(BoundedChannel(SocketStream(sock)), config=config)
            sock.settimeout(None)
            self._root = conn.root  # the first exchange: a refused certificate shows up here
            conn._config["sync_request_timeout"] = self.timeout_s
        except (EOFError, OSError) as err:
            sock.close()
            raise self._set_up_failed(err) from None
        self.conn, self._sock = conn, sock

    def _handshake(self, sock: socket.socket, tls_dir: Path) -> socket.socket:
        context = tls.client_context(tls_dir, self.stem)
        try:
            return context.wrap_socket(sock, server_hostname=tls.MASTER_NAME)
        except ssl.SSLCertVerificationError as err:
            sock.close()
            if err.verify_code == _CERT_HAS_EXPIRED:
                raise AuthError(f"the master's certificate at {self.address} has expired: "
                                f"{err.verify_message}") from None
            if err.verify_code in _NOT_THE_MASTERS:
                raise AuthError(f"{self.address} is not the cluster's master ({err.verify_message}): "
                                f"it shows a certificate from {tls_dir}/ca.pem that is not the "
                                "master's (a worker's?)") from None
            raise AuthError(f"{self.address} is not the cluster's master ({err.verify_message}): its "
                            f"certificate is not from {tls_dir}/ca.pem; is --tls-dir this "
                            "cluster's?") from None
        except (ssl.SSLError, OSError) as err:
            sock.close()
            if _refused_certificate(err):
                raise self._refused(err) from None
            if _not_tls(err) and _speaks_plain(self.host, self.port):
                raise AuthError(f"the master at {self.address} does not use TLS (it was started with "
                                "--insecure): connect with --insecure, without --tls-dir") from None
            raise AuthError(f"TLS with {self.address} failed: {err}") from None

    def _set_up_failed(self, err: BaseException) -> CloudqError | ConnectionError:
        if isinstance(err, TimeoutError):  # rpyc's AsyncResultTimeout is the builtin TimeoutError
            return self._timed_out(min(self.timeout_s, defaults.HANDSHAKE_TIMEOUT_S))
        if _refused_certificate(err):
            return self._refused(err)
        if self.tls_dir is not None and _cut_off(err):
            # The master's alert can be lost: it closes at once, and a reset drops the alert
            # still unread here. Right after a handshake it signed, that means our certificate.
            return self._refused(err)
        # Before FrameTooLarge: a TLS alert record read as a frame header is a huge length.
        if self.tls_dir is None and _speaks_tls(self.host, self.port):
            return AuthError(f"the master at {self.address} requires TLS: give --tls-dir, a directory "
                             "with ca.pem, admin.pem and admin.key (a master started without "
                             "--tls-dir made them in DATA_DIR/tls, readable by its own user only)")
        if isinstance(err, FrameTooLarge):
            return _too_large(self.address)
        return CloudqError(f"the master at {self.address} closed the connection: {err}")

    def _refused(self, err: BaseException) -> AuthError:
        found = _ssl_error(err)
        cause = _REFUSAL_CAUSES.get(str(found.reason) if found is not None else "",
                                    "not from this cluster's CA (or expired)")
        return AuthError(f"the master at {self.address} refused our certificate "
                         f"({self.tls_dir}/{self.stem}.pem): {cause} [{_alert(err)}]")

    def _timed_out(self, seconds: float | None = None) -> ConnectionError:
        return ConnectionError(f"the master at {self.address} did not answer within "
                               f"{seconds or self.timeout_s:g} s")

    def call(self, method: str, payload: Any = None) -> Any:
        """One call to the leader: a standby's refusal is followed to the leader it names (or,
        naming none, to the next master in the list), at most once around the list."""
        hops = len(self.addresses) + 1
        while True:
            try:
                reply = self._call_here(method, payload)
                if len(self.addresses) > 1:
                    self.view.prefer = (self.host, self.port)
                return reply
            except NotLeaderError as err:
                hops -= 1
                if hops <= 0 or not self._follow(err):
                    raise

    def _follow(self, err: NotLeaderError) -> bool:
        """Points the client at where `err` says the leader is; False when there is nowhere
        else to go (a single master, or the leader named is this one)."""
        if err.leader:
            try:
                host, port = parse_address(err.leader)
            except ValidationError:
                return False
            if (host, port) == (self.host, self.port):
                return False
            if (host, port) not in self.addresses:
                self.addresses.append((host, port))
        elif len(self.addresses) > 1:
            host, port = self._next_address()
        else:
            return False
        self._go_to(host, port)
        self.view.prefer = (host, port) if err.leader else None
        return True

    def _call_here(self, method: str, payload: Any) -> Any:
        if self.conn is None:
            self._connect_any()
        try:
            # One round trip (call-attribute) instead of two (get the method, then call it). The
            # plain name: the server finds exposed_<name> with one hasattr, where the prefixed
            # name would cost it a slower static lookup first.
            reply = syncreq(self._root, consts.HANDLE_CALLATTR, method, (dumps(payload),), ())
        except FrameTooLarge:
            self._drop()
            raise _too_large(self.address) from None
        except TimeoutError:
            timed_out = self._timed_out()
            self._forget_leader()
            raise timed_out from None
        except (EOFError, OSError) as err:
            lost = ConnectionError(f"lost the master at {self.address}: {err}")
            self._forget_leader()
            raise lost from None
        return unwrap(reply, self.view)

    def _forget_leader(self) -> None:
        """After a lost connection or a call that timed out: drop it, and, with several
        masters, start the next connection with the one after this (this one may hang)."""
        self._drop()
        if self.view.prefer == (self.host, self.port):
            self.view.prefer = None
        if len(self.addresses) > 1:
            self._go_to(*self._next_address())

    def _next_address(self) -> tuple[str, int]:
        """The master after the current one in the list (the first if it is not listed)."""
        here = (self.host, self.port)
        index = self.addresses.index(here) if here in self.addresses else -1
        return self.addresses[(index + 1) % len(self.addresses)]

    def _drop(self) -> None:
        """Forgets a connection that cannot be used any more. The socket is shut first, so that
        rpyc's close does not wait a full timeout for the master to acknowledge."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
        self.close()

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # closing a dead connection must not raise
                conn.close()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def __enter__(self) -> MasterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def join_address(host: str, port: int) -> str:
    """'host:port', with IPv6 hosts in brackets: the inverse of parse_address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _too_large(address: str) -> LimitError:
    return LimitError(f"the master's reply was too large (limit {MAX_FRAME_BYTES >> 20} MiB); "
                      "ask for less, e.g. with --limit")


def check_own_certificate(tls_dir: Path, stem: str) -> None:
    """Refuses our own certificate when it is out of its dates: the master would refuse it with
    an alert that cannot say which certificate, or why."""
    path = tls_dir / f"{stem}.pem"
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return  # missing or unreadable: tls.client_context names the file
    now = datetime.datetime.now(datetime.UTC)
    if now > cert.not_valid_after_utc:
        raise AuthError(f"our certificate {path} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; "
                        "issue a new one from the cluster's CA")
    if now < cert.not_valid_before_utc:
        raise AuthError(f"our certificate {path} is not valid before "
                        f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (check this machine's clock)")


def _ssl_error(err: BaseException) -> ssl.SSLError | None:
    """The SSLError behind an error: itself, or the one rpyc wrapped in EOFError."""
    for candidate in (err, *err.args):
        if isinstance(candidate, ssl.SSLError):
            return candidate
    return None


def _refused_certificate(err: BaseException) -> bool:
    found = _ssl_error(err)
    return found is not None and found.reason in _REFUSED_CERTIFICATE


def _cut_off(err: BaseException) -> bool:
    """The connection ended under us (EOF inside TLS, a reset), rather than with an answer."""
    return any(isinstance(e, ssl.SSLEOFError | ConnectionResetError | BrokenPipeError)
               for e in (err, *err.args))


def _not_tls(err: BaseException) -> bool:
    """A handshake that ended as a server without TLS would end it: closed, reset, or
    answered with bytes that are no TLS record."""
    found = _ssl_error(err)
    return isinstance(err, ssl.SSLEOFError | ConnectionResetError) or (
        found is not None and found.reason in ("WRONG_VERSION_NUMBER", "UNEXPECTED_EOF_WHILE_READING"))


def _alert(err: BaseException) -> str:
    found = _ssl_error(err)
    return str(found.reason).lower() if found is not None and found.reason else str(err)


def _speaks_tls(host: str, port: int) -> bool:
    """Whether a TLS server answers at host:port: sends a ClientHello, looks for a handshake
    record (0x16, version 3.x) in reply. Asked only after a plain connection failed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    engine = context.wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO())
    with contextlib.suppress(ssl.SSLWantReadError):
        engine.do_handshake()
    try:
        with socket.create_connection((host, port), timeout=defaults.HANDSHAKE_TIMEOUT_S) as sock:
            sock.sendall(outgoing.read())
            reply = sock.recv(3)
    except OSError:
        return False
    return len(reply) == 3 and reply[0] == 0x16 and reply[1] == 0x03


def _speaks_plain(host: str, port: int) -> bool:
    """Whether a master without TLS answers at host:port. Asked only after a TLS handshake failed."""
    try:
        with MasterClient(join_address(host, port), timeout_s=defaults.HANDSHAKE_TIMEOUT_S) as probe:
            probe.call("ping")
    except (CloudqError, ConnectionError, OSError):
        return False
    return True


def _dial(host: str, port: int) -> socket.socket:
    try:
        sock = socket.create_connection((host, port), timeout=defaults.HANDSHAKE_TIMEOUT_S)
    except OSError as err:
        raise ConnectionError(f"cannot reach the master at {host}:{port}: {err.strerror or err}") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock
