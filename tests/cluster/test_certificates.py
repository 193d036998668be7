"""Who is refused at the door, every time, with an error that says why, and with nothing changed
on the master: plain TCP, TLS without a client certificate, a certificate from another CA, an
expired one and one not yet valid (both signed by the cluster's own CA), the master's own
certificate presented by a client, a worker's certificate posing as the master, an operator's
command from a worker's certificate, and a worker's certificate acting as another worker.

One master with a worker and a finished task serves the whole module; around each attack its
views (status, every task with its history, workers, events) must stay the same, and the
master counts each refused handshake (cloudq_rpc_rejected_total{reason="tls_handshake"})."""

from __future__ import annotations

import contextlib
import datetime
import shutil
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cloudq.client import Client
from cloudq.errors import AuthError
from cloudq.rpc import client as rpc_client
from cloudq.rpc import tls
from cloudq.rpc.client import MasterClient
from tests.chaos.hostile_rpc import cluster_view, diff
from tests.chaos.peers import TlsCluster, tls_cluster

pytestmark = pytest.mark.timeout(180)

ATTEMPTS = 3  # each attack, repeated: refused every time
RPC_FRAME = b"\x00\x00\x00\x10\x00" + b"x" * 17  # an RPyC frame header and some bytes
DAY = datetime.timedelta(days=1)


@dataclass
class Guarded:
    cluster: TlsCluster
    operator: Client
    tmp: Path

    @contextlib.contextmanager
    def unchanged(self, handshakes_refused: int = 0) -> Iterator[None]:
        """Asserts that the master's views are the same after the block, that it still
        answers, and that it counted at least `handshakes_refused` refused handshakes."""
        before, rejected = cluster_view(self.operator), self.cluster.rejections()
        yield
        assert diff(before, cluster_view(self.operator)) == []
        assert self.cluster.alive()
        counted = self.cluster.rejections()["tls_handshake"] - rejected["tls_handshake"]
        assert counted >= handshakes_refused, f"{counted} refused handshakes counted"

    def client_dir(self, name: str, cert: Path, key: Path, ca: Path | None = None) -> Path:
        """What a client machine holds: a CA certificate to check the master by, and a pair."""
        directory = self.tmp / f"client-{name}"
        directory.mkdir(exist_ok=True)
        shutil.copy(ca or self.cluster.certs / "ca.pem", directory / "ca.pem")
        shutil.copy(cert, directory / f"{name}.pem")
        shutil.copy(key, directory / f"{name}.key")
        return directory


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guarded]:
    tmp = tmp_path_factory.mktemp("certificates")
    with tls_cluster(tmp, ["w2"], worker="w1") as cluster, cluster.client() as operator:
        task = operator.submit(kind="noop", name="before-the-attacks")
        assert operator.wait([task.id], timeout=30)[task.id]["state"] == "completed"
        yield Guarded(cluster, operator, tmp)


def _signed_by_the_cluster_ca(certs: Path, name: str, not_before: datetime.datetime,
                              not_after: datetime.datetime, into: Path) -> tuple[Path, Path]:
    """A worker certificate for `name` with the given dates, signed with the cluster CA's own
    key: everything about it is right but its dates."""
    ca_cert = x509.load_pem_x509_certificate((certs / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((certs / "ca.key").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    into.mkdir(exist_ok=True)
    cert_path, key_path = into / f"{name}.pem", into / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def _refused(pem: str, alert: str) -> str:
    """The client's error for a certificate the master refused at the handshake: it names the
    certificate, and the master's alert, unless that was lost as the master closed at once
    (then the end of the connection is named)."""
    return (rf"the master at \S+ refused our certificate \(\S*/{pem}\): .* "
            rf"\[({alert}|EOF occurred in violation of protocol.*|.*Connection reset by peer.*)\]$")


def _closed_or_alert(sock: socket.socket) -> bytes | str:
    """What came back on a refused connection: b"" (closed), a TLS alert record's first
    bytes, or the alert OpenSSL read (e.g. TLSV13_ALERT_CERTIFICATE_REQUIRED)."""
    try:
        return sock.recv(100)
    except ssl.SSLError as err:
        return str(err.reason)
    except ConnectionResetError:
        return b""
    finally:
        sock.close()


def test_plain_tcp_is_refused(guarded: Guarded) -> None:
    address, host, port = guarded.cluster.master.address, guarded.cluster.master.host, guarded.cluster.master.port
    with guarded.unchanged(handshakes_refused=ATTEMPTS):
        for _ in range(ATTEMPTS):
            with pytest.raises(AuthError, match="requires TLS: give --tls-dir"):
                MasterClient(address).call("ping")
            plain = socket.create_connection((host, port), timeout=10)
            plain.sendall(RPC_FRAME)  # RPC with no TLS at all: never read as a frame
            reply = _closed_or_alert(plain)
            assert reply == b"" or reply[:1] == b"\x15", reply  # closed, or a TLS alert record


def test_tls_without_a_client_certificate_is_refused(guarded: Guarded) -> None:
    master = guarded.cluster.master
    no_certificate = ssl.create_default_context(cafile=str(guarded.cluster.certs / "ca.pem"))
    no_certificate.check_hostname = False
    with guarded.unchanged(handshakes_refused=ATTEMPTS):
        for _ in range(ATTEMPTS):
            # Under TLS 1.3 our side of the handshake ends first; the master's verdict is the
            # first thing to read.
            sock = no_certificate.wrap_socket(socket.create_connection((master.host, master.port), timeout=10))
            assert _closed_or_alert(sock) == "TLSV13_ALERT_CERTIFICATE_REQUIRED"


def test_a_certificate_from_another_ca_is_refused(guarded: Guarded, tmp_path: Path) -> None:
    tls.init_cluster(tmp_path / "other-ca", ["w1"], ["127.0.0.1"])
    other = tmp_path / "other-ca"
    # It trusts the cluster's CA (so it would take the real master) but shows a certificate
    # for the same name signed by another CA.
    posing = guarded.client_dir("w1", other / "w1.pem", other / "w1.key")
    with guarded.unchanged(handshakes_refused=ATTEMPTS):
        for _ in range(ATTEMPTS):
            with pytest.raises(AuthError, match=_refused("w1.pem", "tlsv1_alert_(unknown_ca|decrypt_error)")):
                MasterClient(guarded.cluster.master.address, posing, identity="w1").call("ping")
    # And a client of that other cluster refuses our master for its part.
    with pytest.raises(AuthError, match="is not the cluster's master"):
        MasterClient(guarded.cluster.master.address, other, identity="w1")


@pytest.mark.parametrize(("name", "dates", "own_check", "alert"), [
    ("w-expired", (-30 * DAY, -DAY), r"expired on \d{4}-\d\d-\d\d", "sslv3_alert_certificate_expired"),
    ("w-not-yet", (DAY, 30 * DAY), r"is not valid before \d{4}-\d\d-\d\d .*check this machine's clock",
     "sslv3_alert_bad_certificate"),
], ids=["expired", "not-yet-valid"])
def test_a_certificate_out_of_its_dates_is_refused(guarded: Guarded, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  name: str, dates: tuple[datetime.timedelta, datetime.timedelta],
                                                  own_check: str, alert: str) -> None:
    now = datetime.datetime.now(datetime.UTC)
    cert, key = _signed_by_the_cluster_ca(guarded.cluster.certs, name, now + dates[0], now + dates[1], tmp_path)
    directory = guarded.client_dir(name, cert, key)
    address = guarded.cluster.master.address
    with guarded.unchanged(handshakes_refused=ATTEMPTS):
        # The client sees it first, and says so before dialling...
        with pytest.raises(AuthError, match=rf"our certificate .*{name}\.pem {own_check}"):
            MasterClient(address, directory, identity=name)
        # ...and a client whose clock disagrees (its own check passes) is refused by the master.
        monkeypatch.setattr(rpc_client, "check_own_certificate", lambda *args: None)
        for _ in range(ATTEMPTS):
            with pytest.raises(AuthError, match=_refused(f"{name}.pem", alert)):
                MasterClient(address, directory, identity=name).call("ping")


def test_the_masters_own_certificate_cannot_connect_as_a_client(guarded: Guarded) -> None:
    certs = guarded.cluster.certs
    posing = guarded.client_dir("master", certs / "master.pem", certs / "master.key")
    with guarded.unchanged(handshakes_refused=ATTEMPTS):
        for _ in range(ATTEMPTS):  # it is for serving only (its key usage): refused at the handshake
            with pytest.raises(AuthError, match=_refused("master.pem", "sslv3_alert_unsupported_certificate")):
                MasterClient(guarded.cluster.master.address, posing, identity="master").call("ping")


def test_a_worker_certificate_cannot_pose_as_the_master(guarded: Guarded) -> None:
    """An impostor serving with a valid worker certificate from the same CA: the worker
    refuses it during the handshake and sends it nothing."""
    certs = guarded.cluster.certs
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs / "w2.pem", certs / "w2.key")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    told: list[bytes | str] = []

    def impostor() -> None:
        for _ in range(ATTEMPTS):
            conn, _ = listener.accept()
            conn.settimeout(10)
            try:
                told.append(context.wrap_socket(conn, server_side=True).recv(100))
            except (ssl.SSLError, OSError) as err:
                told.append(type(err).__name__)  # the handshake never completed
                conn.close()

    thread = threading.Thread(target=impostor, daemon=True)
    thread.start()
    worker = guarded.client_dir("w1", certs / "w1.pem", certs / "w1.key")
    with guarded.unchanged():
        for _ in range(ATTEMPTS):
            # A worker's certificate is for connecting only (its key usage), and not in the
            # master's name: either one gives it away.
            with pytest.raises(AuthError, match=r"127\.0\.0\.1:\d+ is not the cluster's master "
                                                r"\((unsuitable certificate purpose|Hostname mismatch)"):
                MasterClient(f"127.0.0.1:{port}", worker, identity="w1")
    thread.join(timeout=10)
    listener.close()
    assert len(told) == ATTEMPTS and all(isinstance(t, str) or t == b"" for t in told), told


def test_an_operator_command_from_a_worker_certificate_is_refused(guarded: Guarded) -> None:
    task = guarded.operator.queue(state="completed")[0]["id"]
    calls = [("call", {"argv": ["status"]}), ("call", {"argv": ["cancel", task]}),
             ("call", {"argv": ["drain", "w1"]}), ("submit", {"tasks": [{"kind": "noop"}]}),
             ("wait", {"ids": [task], "wait_s": 0}), ("feed", {"after": None})]
    with guarded.unchanged(), MasterClient(guarded.cluster.master.address, guarded.cluster.certs,
                                           identity="w2") as as_w2:
        assert as_w2.call("ping")["identity"] == "w2"  # let in, as itself
        for method, payload in calls * ATTEMPTS:
            with pytest.raises(AuthError, match="certificate 'w2' may not run operator commands"):
                as_w2.call(method, payload)


def test_a_worker_certificate_cannot_act_as_another_worker(guarded: Guarded) -> None:
    running = [[guarded.operator.queue(state="completed")[0]["id"], 1]]
    calls = [("register", {"facts": {"name": "w1", "cpu_cores": 64.0, "mem_gb": 64.0}, "running": running}),
             ("fetch", {"name": "w1", "session": 1, "wait_s": 0}),
             ("report", {"name": "w1", "session": 1, "reports": [], "sample": {"cpu_percent": 99.0}}),
             ("leave", {"name": "w1", "session": 1})]
    with guarded.unchanged(), MasterClient(guarded.cluster.master.address, guarded.cluster.certs,
                                           identity="w2") as as_w2:
        for method, payload in calls * ATTEMPTS:
            with pytest.raises(AuthError, match="certificate 'w2' may not act as worker 'w1'"):
                as_w2.call(method, payload)
    assert guarded.cluster.worker.proc.poll() is None  # w1 itself is still there, untouched
