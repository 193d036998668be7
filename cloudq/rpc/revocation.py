"""Certificate revocation: `cloudq certs revoke DIR NAME` and the master's check of it.

The list is a standard X.509 CRL signed by the cluster CA, `DIR/revoked.pem` (readable with
`openssl crl -in revoked.pem -text`). Revoking adds the certificate's serial number, writes the
list whole and renames it into place, and removes the revoked certificate and key from DIR so
that `cloudq certs issue DIR NAME` can make a new one (with a new serial).

The master reads the list at start and again whenever the file changes (checked at every
handshake and once a second): a revoked certificate is refused at its next handshake, and its
open connections are closed. A list that is not signed by the cluster's CA, or cannot be read,
is an error at start; once running, the last good list is kept and the error logged, as a
master that stopped admitting everyone because of a bad file would stop the cluster.
"""

from __future__ import annotations

import datetime
import logging
import os
import threading
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from cloudq.errors import CloudqError

log = logging.getLogger("cloudq.rpc")

CRL_FILE = "revoked.pem"
CRL_VALID_DAYS = 3650  # the list is re-signed at every revocation; this only bounds an old copy


def revoke(directory: Path, name: str) -> int:
    """Adds `name`'s certificate to the list and removes its files; returns its serial."""
    from cloudq.rpc import tls

    if name in (tls.MASTER_NAME, tls.ADMIN_NAME) or name in tls.RESERVED_FILES:
        raise CloudqError(f"{name!r} is not a worker certificate; to replace the master's or the "
                          "operators' certificate, make a new CA (`cloudq certs init`)")
    cert_path = directory / f"{name}.pem"
    if not cert_path.is_file():
        raise CloudqError(f"no certificate {cert_path} (already revoked, or never issued here)")
    if not (directory / "ca.key").is_file():
        raise CloudqError(f"no CA key in {directory}: revoke where the certificates were issued")
    ca_cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
    serial = x509.load_pem_x509_certificate(cert_path.read_bytes()).serial_number
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateRevocationListBuilder()
               .issuer_name(ca_cert.subject)
               .last_update(now).next_update(now + datetime.timedelta(days=CRL_VALID_DAYS)))
    for entry in _read(directory / CRL_FILE, ca_cert) or ():
        if entry.serial_number != serial:
            builder = builder.add_revoked_certificate(entry)
    builder = builder.add_revoked_certificate(
        x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build())
    crl = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    staged = directory / f".{CRL_FILE}.new"
    staged.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    os.replace(staged, directory / CRL_FILE)  # the master never reads half a list
    cert_path.unlink()
    (directory / f"{name}.key").unlink(missing_ok=True)
    return serial


def _read(path: Path, ca_cert: x509.Certificate) -> x509.CertificateRevocationList | None:
    """The list at `path`, checked against the CA; None when there is none."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise CloudqError(f"cannot read the revocation list {path}: {err.strerror}") from None
    try:
        crl = x509.load_pem_x509_crl(data)
    except ValueError:
        raise CloudqError(f"{path} is not a revocation list (PEM CRL)") from None
    if crl.issuer != ca_cert.subject or not crl.is_signature_valid(ca_cert.public_key()):  # type: ignore[arg-type]
        raise CloudqError(f"{path} is not signed by this cluster's CA")
    return crl


class Revocations:
    """The master's view of the list: which serial numbers are revoked, kept current."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / CRL_FILE
        self._ca = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
        self._serials: frozenset[int] = frozenset()
        self._seen: tuple[int, int, int] | None = None
        self._lock = threading.Lock()
        self.refresh(strict=True)

    def __contains__(self, serial: int | None) -> bool:
        return serial is not None and serial in self._serials

    def __len__(self) -> int:
        return len(self._serials)

    def refresh(self, strict: bool = False) -> bool:
        """Reads the list again if the file changed; True when the revoked set grew or shrank.
        `strict`: a bad list raises (at start) instead of being logged and passed over."""
        try:
            stat = self.path.stat()
            seen = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            seen = (0, 0, 0)
        with self._lock:
            if seen == self._seen:
                return False
            try:
                crl = _read(self.path, self._ca)
            except CloudqError as err:
                if strict:
                    raise
                log.error("%s; keeping the %d revocations read before", err, len(self._serials))
                self._seen = seen  # logged once per change of the file, not at every handshake
                return False
            serials = frozenset(entry.serial_number for entry in crl or ())
            self._seen = seen
            changed, self._serials = serials != self._serials, serials
        if changed:
            log.warning("revocation list read: %d certificate(s) revoked", len(serials))
        return changed
