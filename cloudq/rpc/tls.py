"""Cluster certificates and TLS contexts.

`cloudq certs init DIR` makes a cluster CA and certificates signed by it:
  ca.pem / ca.key            the CA (keep ca.key off the workers)
  master.pem / master.key    the master; its names include MASTER_NAME, which every client
                             checks, so a worker's certificate cannot pose as the master
  admin.pem / admin.key      operators' `cloudq ctl`
  NAME.pem / NAME.key        one per worker; the certificate's name is the worker's identity

Both sides verify: the master requires a client certificate from the CA, and clients verify the
master's certificate *and* its name (rpyc.ssl_connect would skip the name check).

A master started without --tls-dir (and without --insecure) makes such a directory itself, in
its data directory, the first time (`ensure_cluster`): TLS even on loopback, so another user
of the machine, who cannot read those files, cannot connect. `cloudq ctl`, `cloudq shell` and
workers on the same machine find it there (`default_dir`).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cloudq.core.model import check_name
from cloudq.errors import AuthError, CloudqError

MASTER_NAME = "cloudq-master"
ADMIN_NAME = "cloudq-admin"
VALID_DAYS = 825


def init_cluster(directory: Path, workers: list[str], hosts: list[str]) -> list[Path]:
    """Creates the CA and the master, admin and worker certificates; refuses to overwrite a CA."""
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / "ca.pem").exists():
        raise CloudqError(f"{directory}/ca.pem exists; use `cloudq certs issue` to add certificates")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cloudq cluster CA")])
    now = datetime.datetime.now(datetime.UTC)
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS * 2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    written = _write_pair(directory, "ca", ca_cert, ca_key)
    written += issue(directory, MASTER_NAME, file_stem="master", extra_names=hosts)
    written += issue(directory, ADMIN_NAME, file_stem="admin")
    for worker in workers:
        written += issue_worker(directory, worker)
    return written


RESERVED_FILES = {"ca", "master", "admin"}


def default_dir(data_dir: Path) -> Path:
    """Where a master started without --tls-dir keeps its certificates: DATA_DIR/tls."""
    return data_dir / "tls"


def ensure_cluster(directory: Path, hosts: list[str]) -> bool:
    """Makes the CA and the master's and operators' certificates in `directory` unless they
    are there; True when made. The directory is its owner's alone (0700), as are the keys."""
    if (directory / "ca.pem").is_file():
        for stem, name in (("master", MASTER_NAME), ("admin", ADMIN_NAME)):
            if not (directory / f"{stem}.pem").is_file():  # half made, or someone removed it
                issue(directory, name, file_stem=stem, extra_names=hosts if stem == "master" else [])
        return False
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)
    init_cluster(directory, [], hosts)
    return True


def ensure_worker(directory: Path, name: str) -> bool:
    """A worker certificate for `name` in `directory`, issued when missing and the CA's key is
    at hand (a worker on the master's machine); True when issued."""
    if (directory / f"{name}.pem").is_file() or not os.access(directory / "ca.key", os.R_OK):
        return False
    issue_worker(directory, name)
    return True


def issue_worker(directory: Path, name: str) -> list[Path]:
    """`cloudq certs issue`: a worker certificate. Never the master's or admin's name, and never
    over an existing file (that would silently hand out or replace an identity)."""
    check_name("worker name", name)
    if name in (MASTER_NAME, ADMIN_NAME) or name in RESERVED_FILES:
        raise CloudqError(f"{name!r} is reserved; choose another worker name")
    if (directory / f"{name}.pem").exists() or (directory / f"{name}.key").exists():
        raise CloudqError(f"{directory}/{name}.pem exists; remove it first to re-issue")
    return issue(directory, name)


def issue(directory: Path, common_name: str, *, file_stem: str | None = None,
          extra_names: list[str] = ()) -> list[Path]:  # type: ignore[assignment]
    """A certificate for one identity, signed by the CA in `directory`."""
    check_name("certificate name", common_name)
    if not (directory / "ca.key").is_file():
        raise CloudqError(f"no CA in {directory}; make one with `cloudq certs init {directory}`")
    ca_cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(common_name)]
    for extra in extra_names:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(extra)))
        except ValueError:
            names.append(x509.DNSName(extra))
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(  # the master serves; everyone else only connects
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if common_name == MASTER_NAME
                                   else ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    return _write_pair(directory, file_stem or common_name, cert, key)


def _write_pair(directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> list[Path]:
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    return [cert_path, key_path]


def _files(directory: Path, stem: str) -> tuple[Path, Path, Path]:
    ca, cert, key = directory / "ca.pem", directory / f"{stem}.pem", directory / f"{stem}.key"
    for path in (ca, cert, key):
        try:
            with open(path, "rb"):
                pass
        except PermissionError:
            raise AuthError(f"cannot read TLS file {path}: permission denied (a cluster's "
                            "certificates are readable by the user who made them only)") from None
        except OSError:
            raise AuthError(f"TLS file {path} is missing; make it with `cloudq certs init {directory}`") from None
    return ca, cert, key


def server_context(directory: Path) -> ssl.SSLContext:
    """The master's side: its own certificate, and a client certificate from the CA required."""
    ca, cert, key = _files(directory, "master")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    context.load_verify_locations(ca)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def http_context(directory: Path) -> ssl.SSLContext:
    """The master's HTTP port (metrics, status page): its own certificate; no client
    certificate is asked for, as browsers and Prometheus have none."""
    _, cert, key = _files(directory, "master")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def client_context(directory: Path, identity: str) -> ssl.SSLContext:
    """A worker's or operator's side: present `identity`'s certificate, verify the master's name."""
    ca, cert, key = _files(directory, identity)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    context.load_verify_locations(ca)
    context.check_hostname = True  # against MASTER_NAME, whatever address we dialled
    return context


def peer_name(cert: dict | None) -> str | None:
    """The common name of a verified peer certificate (from SSLSocket.getpeercert())."""
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None


def peer_serial(der: bytes | None) -> int | None:
    """The serial number of a verified peer certificate (SSLSocket.getpeercert(True))."""
    return x509.load_der_x509_certificate(der).serial_number if der else None
