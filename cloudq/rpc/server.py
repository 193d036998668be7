"""The master's listening side: a bounded, authenticated RPyC ThreadedServer.

- TLS with client certificates when a TLS directory is given; the certificate's name becomes
  the connection's identity. Without TLS (`--insecure`) every peer is trusted.
- The handshake and RPyC setup must finish within HANDSHAKE_TIMEOUT_S, and one address may
  have at most MAX_HANDSHAKES_PER_ADDRESS connections in their handshake at once: a client
  that opens sockets and never speaks holds few of them, so it cannot fill the listener and
  shut out operators and workers connecting from elsewhere.
- Connection slots (ConnectionSlots): a cap in total, a cap per certificate, and a few slots
  only an operator may take. A peer over a cap is answered `connection limit reached` on its
  first call and closed; sockets beyond twice the total are closed at once.
- A connection that sends nothing for IDLE_TIMEOUT_S is closed.
- Frames are bounded (protocol.BoundedChannel), smaller for workers' certificates, and what
  they inflate to is drawn from one budget for the whole process.
- The listener survives accept() errors (a descriptor flood): it logs, pauses and goes on.
- A revoked certificate (revocation.py) is refused at its handshake, and the connections it
  holds are closed as soon as the list changes (checked every REVOCATION_CHECK_S).
- Every refusal is counted by reason (Rejections), for the metrics endpoint.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import socket
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rpyc
from rpyc.core.stream import SocketStream
from rpyc.utils.authenticators import AuthenticationError
from rpyc.utils.server import ThreadedServer

from cloudq import defaults
from cloudq.errors import AuthError, CloudqError, LimitError
from cloudq.rpc import tls
from cloudq.rpc.protocol import (
    INFLATE_BUDGET,
    PEER_MAX_FRAME_BYTES,
    PROTOCOL_CONFIG,
    BoundedChannel,
    FrameTooLarge,
    InflateBudgetSpent,
    failure,
)
from cloudq.rpc.revocation import Revocations

log = logging.getLogger("cloudq.rpc")
log.setLevel(logging.WARNING)  # rpyc logs every accept at INFO: too chatty for operators

# accept() errors that pass: out of descriptors or buffers, or a peer gone before we took it.
TRANSIENT_ACCEPT_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM,
                           errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR,
                           errno.EAGAIN}
ACCEPT_PAUSE_S = 0.1  # after a failed accept(): time for descriptors to come back
REFUSAL_LINGER_S = 2.0  # a refused peer has this long to make the call that tells it why
ALERT_LINGER_S = 0.2  # a refused TLS peer has this long to read the alert that says why
REVOCATION_CHECK_S = 1.0  # how often the listener looks for a changed revocation list


@dataclass(frozen=True)
class Identity:
    """Who is on the other end. `name` is None for trusted (non-TLS) peers; `serial` is the
    certificate's serial number, which revocation goes by."""

    name: str | None
    trusted: bool = False
    serial: int | None = None

    @property
    def is_admin(self) -> bool:
        return self.trusted or self.name == tls.ADMIN_NAME

    def may_act_as_worker(self, worker: str) -> bool:
        return self.trusted or self.name == worker


# Why a connection or a frame was refused, as Rejections counts it.
REJECTION_REASONS = (
    "connection_limit",  # over the total of connections (ConnectionSlots)
    "peer_limit",  # one certificate over its own cap
    "overflow",  # sockets beyond twice the total, closed before any handshake
    "tls_handshake",  # the TLS handshake failed or timed out
    "certificate",  # a certificate whose name may not connect as a client
    "revoked",  # a certificate on the cluster's revocation list
    "handshake_flood",  # one address over its connections still in their handshake
    "malformed_frame",  # a frame RPyC could not decode: the connection is closed
    "frame_too_large",  # a frame, or what it inflates to, over the limit
    "inflate_budget",  # no room in the process's inflate budget in time
)


class Rejections:
    """Refusals by reason: counts that only grow, read by the metrics endpoint."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter(dict.fromkeys(REJECTION_REASONS, 0))
        self._lock = threading.Lock()

    def add(self, reason: str) -> None:
        with self._lock:
            self._counts[reason] += 1

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class ConnectionSlots:
    """Who holds how many connections, and whether one more may stay.

    A worker needs two (fetch and report), more while it reconnects; `cloudq ctl` one per call.
    Without TLS every peer is the same trusted identity, so only the total applies."""

    def __init__(self, total: int = defaults.MAX_CONNECTIONS,
                 per_peer: int = defaults.MAX_CONNECTIONS_PER_PEER,
                 admin_reserve: int = defaults.ADMIN_RESERVED_CONNECTIONS) -> None:
        self.total, self.per_peer, self.admin_reserve = total, per_peer, admin_reserve
        self.held: Counter[str | None] = Counter()
        self.rejections = Rejections()
        self._lock = threading.Lock()

    def take(self, identity: Identity) -> str | None:
        """None when the slot is granted, otherwise why not (told to the peer)."""
        with self._lock:
            count = sum(self.held.values())
            limit = self.total if identity.is_admin else self.total - self.admin_reserve
            if count >= limit:
                self.rejections.add("connection_limit")
                return (f"connection limit reached: the master holds {count} connections "
                        f"(limit {limit}{'' if identity.is_admin else ' for non-operators'})")
            if identity.name is not None and not identity.is_admin and (
                self.held[identity.name] >= self.per_peer
            ):
                self.rejections.add("peer_limit")
                return (f"connection limit reached: {identity.name!r} already holds "
                        f"{self.held[identity.name]} connections (limit {self.per_peer})")
            self.held[identity.name] += 1
            return None

    def give(self, identity: Identity) -> None:
        with self._lock:
            self.held[identity.name] -= 1
            if self.held[identity.name] <= 0:
                del self.held[identity.name]


class Refusal(rpyc.Service):
    """Serves a peer that may not stay (over a limit, revoked): every call answers why."""

    def __init__(self, reason: CloudqError) -> None:
        self.reply = failure(reason)

    def _rpyc_getattr(self, name: str) -> Any:
        return lambda *args: self.reply


class Authenticator:
    def __init__(self, context: ssl.SSLContext | None, rejections: Rejections | None = None) -> None:
        self.context = context
        self.rejections = rejections or Rejections()

    def __call__(self, sock: socket.socket) -> tuple[Any, Identity]:
        sock.settimeout(defaults.HANDSHAKE_TIMEOUT_S)
        if self.context is None:
            return sock, Identity(None, trusted=True)
        wrapped = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        try:
            wrapped.do_handshake()
        except (ssl.SSLError, OSError) as err:
            self.rejections.add("tls_handshake")
            _close_after_alert(wrapped)
            raise AuthenticationError(f"TLS handshake failed: {err}") from None
        name = tls.peer_name(wrapped.getpeercert())
        if not name or name == tls.MASTER_NAME:
            wrapped.close()
            self.rejections.add("certificate")
            raise AuthenticationError(f"certificate name {name!r} may not connect as a client")
        return wrapped, Identity(name, serial=tls.peer_serial(wrapped.getpeercert(binary_form=True)))


def _close_after_alert(sock: ssl.SSLSocket) -> None:
    """Closes a refused handshake's socket so that the peer reads our alert (which says why):
    our side ends first, and what the peer still sends is read, for at most ALERT_LINGER_S;
    closing with unread data would reset the connection and lose the alert on the way."""
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_WR)  # the socket's own: TLS is over
        deadline = time.monotonic() + ALERT_LINGER_S
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if not socket.socket.recv(sock, 4096):
                break
    sock.close()


class BoundedServer(ThreadedServer):
    def __init__(self, *args: Any, slots: ConnectionSlots | None = None,
                 idle_timeout_s: float = defaults.IDLE_TIMEOUT_S,
                 revocations: Revocations | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.slots = slots or ConnectionSlots()
        self.rejections = self.slots.rejections  # the server counts its own refusals there too
        self.idle_timeout_s = idle_timeout_s
        self.revocations = revocations
        self.accept_errors = 0  # figures for status and tests
        self._last_accept_warning = 0.0
        self._live: dict[BoundedChannel, Identity] = {}  # served connections, for revocation
        self._live_lock = threading.Lock()
        self._handshakes: Counter[str] = Counter()  # by peer address, until authenticated
        self._handshaking = threading.local()  # the address this thread's handshake counts for
        self._next_revocation_check = 0.0

    def start(self) -> None:
        """Serves until close(). Unlike rpyc's, an error never ends the loop: a listener that
        closed on one bad accept() would leave a live-looking master nobody can reach."""
        self._listen()
        while self.active:
            try:
                self.accept()  # returns at least every listener_timeout
                if time.monotonic() >= self._next_revocation_check:
                    self._next_revocation_check = time.monotonic() + REVOCATION_CHECK_S
                    self.check_revocations()
            except Exception:  # noqa: BLE001 - keep listening whatever one connection did
                if self.active:
                    log.exception("accepting a connection failed; listening on")
                    time.sleep(ACCEPT_PAUSE_S)
        self.close()

    def check_revocations(self) -> None:
        """Reads a changed revocation list and closes the connections of revoked certificates."""
        if self.revocations is None or not self.revocations.refresh():
            return
        with self._live_lock:
            revoked = [(channel, identity) for channel, identity in self._live.items()
                       if identity.serial in self.revocations]
        for channel, identity in revoked:
            log.warning("closing a connection of %s: its certificate was revoked", identity.name)
            # The socket's own shutdown, not SSLSocket's: it wakes the thread serving the
            # connection, which then ends it as a peer that left.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(channel.stream.sock, socket.SHUT_RDWR)

    def accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except TimeoutError:
            return
        except OSError as err:
            if not self.active:
                return
            self._accept_failed(err)
            return
        if len(self.clients) >= 2 * self.slots.total:  # slots are counted after the handshake
            self.rejections.add("overflow")
            sock.close()
            return
        try:
            address = sock.getpeername()[0]
        except OSError:  # gone already
            sock.close()
            return
        with self._live_lock:
            if self._handshakes[address] >= defaults.MAX_HANDSHAKES_PER_ADDRESS:
                self.rejections.add("handshake_flood")
                sock.close()
                return
            self._handshakes[address] += 1
        sock.setblocking(True)
        self.clients.add(sock)
        self._start_handshake(sock, address)

    def _handshake_over(self) -> None:
        """This thread's connection is past its handshake (authenticated, or refused)."""
        address = getattr(self._handshaking, "address", None)
        if address is not None:
            self._handshaking.address = None
            self._uncount_handshake(address)

    def _uncount_handshake(self, address: str) -> None:
        with self._live_lock:
            self._handshakes[address] -= 1
            if self._handshakes[address] <= 0:
                del self._handshakes[address]

    def _handshake_then_serve(self, sock: socket.socket, address: str) -> None:
        self._handshaking.address = address
        try:
            self._authenticate_and_serve_client(sock)
        finally:
            self._handshake_over()  # a failed handshake never reaches _serve_client

    def _accept_failed(self, err: OSError) -> None:
        self.accept_errors += 1
        now = time.monotonic()
        if now - self._last_accept_warning > 10:  # a flood must not flood the log too
            self._last_accept_warning = now
            log.warning("accept() failed: %s (%d so far); pausing %.1fs and listening on",
                        err.strerror or err, self.accept_errors, ACCEPT_PAUSE_S)
        if err.errno not in TRANSIENT_ACCEPT_ERRORS:
            log.error("unexpected accept() error %s", err)
        time.sleep(ACCEPT_PAUSE_S)

    def _start_handshake(self, sock: socket.socket, address: str) -> None:
        # Small request/reply messages: without this, Nagle and delayed ACKs add ~40 ms a call.
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._handshake_then_serve, args=(sock, address),
                             daemon=True).start()
        except (OSError, RuntimeError) as err:  # a peer already gone, or no thread to be had
            log.warning("dropping a new connection: %s", err)
            self._uncount_handshake(address)
            self.clients.discard(sock)
            sock.close()

    def _serve_client(self, sock: Any, credentials: Any) -> None:
        self._handshake_over()
        identity = credentials if isinstance(credentials, Identity) else Identity(None)
        refusal = self._revoked(identity)
        if refusal is None:
            limit = self.slots.take(identity)
            refusal = LimitError(limit) if limit is not None else None
        holds_slot = refusal is None
        channel: BoundedChannel | None = None
        try:
            channel = BoundedChannel(SocketStream(sock))
            channel.budget = INFLATE_BUDGET
            if not identity.is_admin:
                channel.max_frame = PEER_MAX_FRAME_BYTES
            config = dict(self.protocol_config, credentials=identity,
                          endpoints=(sock.getsockname(), sock.getpeername()), logger=self.logger)
            if refusal is None:
                with self._live_lock:
                    self._live[channel] = identity
                # Again, now that it is listed: a list read in between would have missed it.
                refusal = self._revoked(identity)
            if refusal is not None:
                log.warning("refusing %s: %s", identity.name or "a peer", refusal)
                conn = Refusal(refusal)._connect(channel, config)
                self._serve(conn, channel, REFUSAL_LINGER_S, deadline=time.monotonic() + REFUSAL_LINGER_S)
                return
            conn = self.service._connect(channel, config)
            self._serve(conn, channel, self.idle_timeout_s)
        finally:
            if holds_slot:
                self.slots.give(identity)
            with self._live_lock:
                self._live.pop(channel, None)

    def _revoked(self, identity: Identity) -> AuthError | None:
        """Why `identity` may not connect, if its certificate is revoked."""
        if self.revocations is None:
            return None
        self.check_revocations()  # a list changed a moment ago counts for this handshake
        if identity.serial not in self.revocations:
            return None
        self.rejections.add("revoked")
        return AuthError(f"the certificate of {identity.name!r} (serial {identity.serial:x}) is "
                         "revoked; issue a new one with `cloudq certs issue`")

    def _serve(self, conn: rpyc.Connection, channel: BoundedChannel, idle_s: float,
               deadline: float | None = None) -> None:
        """Serves requests until the peer leaves, stays silent for idle_s, or the deadline
        passes. Each request is handled before the next is read, so the inflate budget is
        given back right after."""
        channel.stream.sock.settimeout(None)  # set up: requests may now wait (long-poll fetch)
        try:
            while not conn.closed:
                try:
                    served = conn.serve(idle_s)
                finally:
                    channel.release()
                if not served or (deadline is not None and time.monotonic() > deadline):
                    break
        except InflateBudgetSpent:
            self.rejections.add("inflate_budget")
        except FrameTooLarge:
            self.rejections.add("frame_too_large")
        except (EOFError, OSError):
            pass
        except Exception as err:  # noqa: BLE001 - a frame RPyC cannot decode ends only this connection
            self.rejections.add("malformed_frame")
            log.debug("closing a connection that sent a malformed frame: %r", err)
        finally:
            # The channel first: rpyc's own close would send a goodbye and wait up to the
            # request timeout for a peer that may never answer.
            channel.close()
            with contextlib.suppress(Exception):
                conn.close()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def start_server(
    service: rpyc.Service, host: str, port: int, tls_dir: Path | None, insecure: bool,
    slots: ConnectionSlots | None = None, idle_timeout_s: float = defaults.IDLE_TIMEOUT_S,
) -> BoundedServer:
    """Binds and starts serving in a background thread. Off loopback, TLS or --insecure."""
    if tls_dir is None and not is_loopback(host) and not insecure:
        raise CloudqError(
            f"refusing to listen on {host} without TLS: give --tls-dir (make one with "
            f"`cloudq certs init DIR`) or say --insecure"
        )
    context = tls.server_context(tls_dir) if tls_dir else None
    slots = slots or ConnectionSlots()
    server = BoundedServer(
        service, hostname=host, port=port, authenticator=Authenticator(context, slots.rejections),
        protocol_config=dict(PROTOCOL_CONFIG), listener_timeout=0.5, logger=log, slots=slots,
        idle_timeout_s=idle_timeout_s, revocations=Revocations(tls_dir) if tls_dir else None,
    )
    server._listen()  # listening before we return, so the port is known and close() is safe
    thread = threading.Thread(target=server.start, name="rpc-server", daemon=True)
    thread.start()
    return server
