"""`cloudq certs revoke`: a revoked worker is refused at its next handshake and its open
connections are closed at once; the list is a file the master reads again when it changes and
at every start; a list not signed by the cluster's CA is refused."""

from __future__ import annotations

import re
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from cloudq.errors import AuthError, CloudqError
from cloudq.rpc import tls
from cloudq.rpc.client import MasterClient
from cloudq.rpc.revocation import CRL_FILE, Revocations, revoke
from tests.cluster.harness import ROOT, MasterProc, wait_until
from tests.e2e.conftest import free_port


def _certs(tmp: Path) -> Path:
    directory = tmp / "ca"
    tls.init_cluster(directory, ["w1", "w2"], ["127.0.0.1"])
    return directory


def _worker_copy(ca: Path, name: str, into: Path) -> Path:
    """What an operator copies to a worker's machine: the CA's certificate and the worker's pair."""
    into.mkdir()
    for file in ("ca.pem", f"{name}.pem", f"{name}.key"):
        shutil.copy2(ca / file, into / file)
    return into


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cloudq", *argv], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)


def test_a_revoked_worker_is_cut_off_at_once_and_refused_until_reissued(cluster, tmp_path):
    ca = _certs(tmp_path)
    w1_dir = _worker_copy(ca, "w1", tmp_path / "w1-machine")
    master = cluster.start_master("--tls-dir", str(ca))
    master._client = MasterClient(master.address, ca)  # the harness's ctl speaks as the admin
    w1 = cluster.start_worker("w1", "--tls-dir", str(w1_dir), "--cpu-cores", "1", "--max-tasks", "1")
    task = master.ctl("task", "--exec", "sleep 600", "--retries", "1")
    assert master.wait_state(task["id"], "running")["worker"] == "w1"
    cluster.start_worker("w2", "--tls-dir", str(ca), "--cpu-cores", "1", "--max-tasks", "1")

    done = _cli("certs", "revoke", str(ca), "w1")
    revoked_at = time.monotonic()
    assert done.returncode == 0, done.stderr
    assert re.match(r"revoked 'w1' \(serial [0-9a-f]+\) in .*revoked\.pem", done.stdout), done.stdout
    assert not (ca / "w1.pem").exists() and not (ca / "w1.key").exists()

    # Its open connections are closed within the master's once-a-second check...
    w1.wait_for_line(re.compile(r"lost the master"), timeout=10)
    cut_off_s = time.monotonic() - revoked_at
    # ...and every handshake after is refused, saying why (the worker keeps its task running
    # and retries, as it does after any refusal, until its lease tells it to stop the task).
    w1.wait_for_line(re.compile(r"is revoked; issue a new one"), timeout=10)
    with MasterClient(master.address, w1_dir, identity="w1") as as_w1, \
            pytest.raises(AuthError, match=r"certificate of 'w1' \(serial [0-9a-f]+\) is revoked"):
        as_w1.call("ping")
    # Its lease runs out like any lost worker's: the task is retried on the other worker.
    master.wait_worker("w1", status="offline", timeout=15)
    moved = wait_until(lambda: (t := master.task(task["id"]))["worker"] == "w2" and t, 15, "the retry on w2")
    assert moved["attempt"] == 2
    print(f"\nrevoked worker cut off {cut_off_s:.2f} s after `cloudq certs revoke`")
    assert cut_off_s < 3.0

    # The other worker is untouched, and the revocation outlives a master restart.
    master.stop()
    master = cluster.start_master("--tls-dir", str(ca), port=master.port)
    master._client = MasterClient(master.address, ca)
    master.wait_worker("w2", status="busy")  # back, with the retry re-adopted
    with MasterClient(master.address, w1_dir, identity="w1") as as_w1, \
            pytest.raises(AuthError, match="is revoked"):
        as_w1.call("ping")

    # A new certificate for the name (a new serial) is let in.
    assert _cli("certs", "issue", str(ca), "w1").returncode == 0
    with MasterClient(master.address, ca, identity="w1") as renewed:
        assert renewed.call("ping")["identity"] == "w1"


def test_revoke_refuses_what_it_cannot_revoke(tmp_path):
    ca = _certs(tmp_path)
    for name, message in (("cloudq-master", "not a worker certificate"), ("admin", "not a worker certificate"),
                          ("ghost", "no certificate")):
        done = _cli("certs", "revoke", str(ca), name)
        assert done.returncode == 2 and message in done.stderr, (name, done.stderr)
    worker_only = _worker_copy(ca, "w2", tmp_path / "w2-machine")
    done = _cli("certs", "revoke", str(worker_only), "w2")
    assert done.returncode == 2 and "no CA key" in done.stderr, done.stderr
    assert not (ca / CRL_FILE).exists()  # nothing was written by a refused revocation


def test_a_list_not_signed_by_the_cluster_ca_is_refused(tmp_path):
    ca = _certs(tmp_path)
    other = tmp_path / "other"
    tls.init_cluster(other, ["w9"], ["127.0.0.1"])
    revoke(other, "w9")
    shutil.copy(other / CRL_FILE, ca / CRL_FILE)
    with pytest.raises(CloudqError, match="not signed by this cluster's CA"):
        Revocations(ca)
    (ca / CRL_FILE).write_text("not a list\n")
    with pytest.raises(CloudqError, match="is not a revocation list"):
        Revocations(ca)
    # A master will not start on it, and says which file is wrong.
    master = subprocess.run(
        [sys.executable, "-m", "cloudq", "master", "--no-shell", "--port", "0", "--data-dir",
         str(tmp_path / "data"), "--tls-dir", str(ca)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert master.returncode == 2 and f"{ca / CRL_FILE} is not a revocation list" in master.stderr


def test_a_running_master_keeps_its_last_good_list(tmp_path):
    ca = _certs(tmp_path)
    serial = revoke(ca, "w1")
    revocations = Revocations(ca)
    assert serial in revocations and len(revocations) == 1
    good = (ca / CRL_FILE).read_bytes()
    (ca / CRL_FILE).write_text("torn\n")  # e.g. a hand edit gone wrong
    assert revocations.refresh() is False
    assert serial in revocations  # still refused: a bad file never lets anyone back in
    with pytest.raises(CloudqError, match="is not a revocation list"):
        revoke(ca, "w2")  # nor does revoking over it drop what it held
    (ca / CRL_FILE).write_bytes(good)
    revoke(ca, "w2")
    assert revocations.refresh() is True and len(revocations) == 2


def test_a_revoked_certificate_is_counted_at_the_metrics_endpoint(tmp_path):
    ca = _certs(tmp_path)
    w1_dir = _worker_copy(ca, "w1", tmp_path / "w1-machine")
    revoke(ca, "w1")
    http_port = free_port()
    master = MasterProc(tmp_path / "data", "--tls-dir", str(ca), "--metrics-port", str(http_port))
    try:
        for _ in range(2):
            with pytest.raises(AuthError, match="is revoked"), \
                    MasterClient(master.address, w1_dir, identity="w1") as as_w1:
                as_w1.call("ping")
        context = ssl.create_default_context(cafile=str(ca / "ca.pem"))
        context.check_hostname = False  # the master's certificate names cloudq-master
        page = urllib.request.urlopen(f"https://127.0.0.1:{http_port}/metrics", context=context,
                                      timeout=10).read().decode()
        assert 'cloudq_rpc_rejected_total{reason="revoked"} 2.0' in page
    finally:
        master.stop()
