"""`cloudq ctl` as operators run it: a separate process, JSON out, errors on stderr."""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import rpyc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from rpyc.utils.server import ThreadedServer

from cloudq.rpc import tls
from tests.cluster.harness import ROOT


def ctl(address: str, *words: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cloudq", "ctl", "--master", address, *words],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_ctl_json_listings_and_errors(cluster, tmp_path):
    master = cluster.start_master()
    cluster.start_worker("w1")
    made = ctl(master.address, "task", "--exec", "echo hi", "--name", "greet", "--json")
    assert made.returncode == 0, made.stderr
    task = json.loads(made.stdout)
    assert task["name"] == "greet" and task["kind"] == "exec"
    master.wait_state(task["id"], "completed")

    batch = tmp_path / "tasks.txt"
    batch.write_text('--noop --name n1\n{"kind": "noop", "name": "n2"}\n')
    submitted = json.loads(ctl(master.address, "submit", str(batch), "--json").stdout)
    assert [t["name"] for t in submitted] == ["n1", "n2"] and all(t["id"] for t in submitted)

    shown = json.loads(ctl(master.address, "--json", "show", task["id"]).stdout)
    assert shown["state"] == "completed" and shown["result"]["log_tail"].strip() == "hi"
    listing = json.loads(ctl(master.address, "queue", "--state", "completed", "--json").stdout)
    assert all({"id", "state", "worker", "attempt", "reason"} <= set(t) for t in listing)
    workers = json.loads(ctl(master.address, "workers", "--json").stdout)
    assert workers[0]["name"] == "w1" and workers[0]["status"] in ("available", "busy")
    table = ctl(master.address, "workers")
    assert table.returncode == 0 and "w1" in table.stdout and "available" in table.stdout

    for words, message in (
        (("show", "t999"), "no task 't999'"),
        (("task", "--queue", "urgent", "--noop"), "unknown queue class 'urgent'"),
        (("frobnicate",), "unknown command 'frobnicate'"),
        (("quit",), "only works in the master's own shell"),
        (("submit", str(tmp_path / "missing.txt")), "cannot read"),
    ):
        bad = ctl(master.address, *words)
        assert bad.returncode != 0 and message in bad.stderr, (words, bad.stderr)
        assert bad.stdout == ""
    gone = ctl("127.0.0.1:1", "status")
    assert gone.returncode != 0 and "cannot reach the master" in gone.stderr


# ---------------------------------------------------------------------- pages, raw bytes, errors

def test_ctl_lists_more_than_one_frame_holds_in_pages(cluster, tmp_path):
    """600 queued tasks with 120 KB argvs: 70+ MB of records, over the 64 MiB frame limit that
    once made `ctl --json queue --limit 100000` fail. ctl follows the pages and prints one JSON
    list, and one table."""
    master = cluster.start_master()  # no worker: everything stays queued, in serve order
    argv = ["echo", *(["y" * 4000] * 30)]
    submitted = []
    for batch in range(3):  # 24 MB a file: under the 32 MiB argument limit
        path = tmp_path / f"batch{batch}.jsonl"
        path.write_text("".join(json.dumps({"kind": "exec", "name": f"fat{batch}-{i}", "spec": {"argv": argv}})
                                + "\n" for i in range(200)))
        made = ctl(master.address, "--json", "submit", str(path))
        assert made.returncode == 0, made.stderr
        submitted += [t["id"] for t in json.loads(made.stdout)]
    assert len(submitted) == 600

    started = time.monotonic()
    listing = ctl(master.address, "--json", "queue", "--limit", "100000")
    took = time.monotonic() - started
    assert listing.returncode == 0, listing.stderr
    tasks = json.loads(listing.stdout)
    print(f"\n600 fat tasks: {len(listing.stdout) >> 20} MiB of JSON in {took:.1f}s")
    assert len(listing.stdout) > 64 << 20
    assert [t["id"] for t in tasks] == submitted  # each once, in serve order
    assert all(t["spec"]["argv"] == argv for t in tasks)

    table = ctl(master.address, "queue", "--state", "queued", "--limit", "100000")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0] == "600 queued tasks" and lines[-1] == "600 queued"
    # A row per task, or (wider than the terminal) a block per task whose first line is its id.
    ids = [m.group(1) for line in lines[1:-1] if (m := re.match(r"(?:id\s+)?(t\d+)\b", line))]
    assert ids == submitted, table.stdout[:2000]


HOSTILE_OUTPUT = b"\x1b]0;PWNED\x07\x1b[2J\rFAKE: all tasks completed\n\xc2\x9b31m\x7f\n"


def test_ctl_logs_neutralised_and_raw(cluster, tmp_path):
    master = cluster.start_master()
    cluster.start_worker("w1")
    fmt = "".join(f"\\{byte:03o}" for byte in HOSTILE_OUTPUT)  # printf writes these bytes
    task = json.loads(ctl(master.address, "--json", "task", "--exec", f"printf '{fmt}'").stdout)
    master.wait_state(task["id"], "completed")

    shown = ctl(master.address, "logs", task["id"])
    assert shown.returncode == 0, shown.stderr
    assert "\\x1b]0;PWNED\\x07\\x1b[2J\\rFAKE: all tasks completed" in shown.stdout
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f]", shown.stdout), repr(shown.stdout)

    raw = tmp_path / "out"
    with raw.open("wb") as out:
        done = subprocess.run([sys.executable, "-m", "cloudq", "ctl", "--master", master.address, "logs",
                               task["id"], "--raw"], stdout=out, stderr=subprocess.PIPE, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    got = raw.read_bytes()
    print(f"\nlogs: {len(shown.stdout)} visible characters; --raw: {len(got)} bytes")
    assert got == HOSTILE_OUTPUT

    bad = ctl(master.address, "queue", "--limit", "100000000000000000000")
    assert bad.returncode == 1 and "--limit/-limit: must be from 1 to 10000000" in bad.stderr
    assert "islice" not in bad.stderr


def _expired_admin(certs: Path, into: Path) -> Path:
    """A copy of the cluster's TLS directory whose admin certificate expired yesterday."""
    shutil.copytree(certs, into)
    ca_cert = x509.load_pem_x509_certificate((certs / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((certs / "ca.key").read_bytes(), None)
    key = serialization.load_pem_private_key((certs / "admin.key").read_bytes(), None)
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, tls.ADMIN_NAME)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=30))
            .not_valid_after(now - datetime.timedelta(days=1))
            .sign(ca_key, hashes.SHA256()))
    (into / "admin.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return into


def test_ctl_names_tls_mistakes(cluster, tmp_path):
    certs, other = tmp_path / "certs", tmp_path / "other"
    tls.init_cluster(certs, [], ["127.0.0.1"])
    tls.init_cluster(other, [], ["127.0.0.1"])
    mixed = tmp_path / "mixed"  # this cluster's CA, another cluster's admin certificate
    shutil.copytree(certs, mixed)
    for name in ("admin.pem", "admin.key"):
        shutil.copy(other / name, mixed / name)
    expired = _expired_admin(certs, tmp_path / "expired")

    master = cluster.start_master("--tls-dir", str(certs))
    plain = cluster.start_master(data="plain")
    cases = [
        (master.address, (), "requires TLS: give --tls-dir"),
        (master.address, ("--tls-dir", str(mixed)),
         "refused our certificate (" + str(mixed / "admin.pem") + "): not from this cluster's CA"),
        (master.address, ("--tls-dir", str(expired)), "admin.pem expired on"),
        (master.address, ("--tls-dir", str(other)), "is not the cluster's master"),
        (plain.address, ("--tls-dir", str(certs)), "does not use TLS (it was started with --insecure): connect with --insecure"),
    ]
    for address, flags, message in cases:
        done = subprocess.run([sys.executable, "-m", "cloudq", "ctl", "--master", address, *flags, "status"],
                              capture_output=True, text=True, timeout=60, cwd=ROOT)
        print(f"\n{' '.join(flags) or 'no TLS'}: {done.stderr.strip()}")
        assert done.returncode == 1 and message in done.stderr, done.stderr
        assert "closed the connection" not in done.stderr
    ok = subprocess.run([sys.executable, "-m", "cloudq", "ctl", "--master", master.address, "--tls-dir",
                         str(certs), "status"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert ok.returncode == 0 and ok.stdout.startswith("cloudq status"), ok.stderr


def test_ctl_says_when_the_master_does_not_answer(cluster):
    master = cluster.start_master()
    master.proc.send_signal(signal.SIGSTOP)  # it accepts (the kernel does) but never answers
    try:
        started = time.monotonic()
        done = ctl(master.address, "--timeout", "2", "status")
        took = time.monotonic() - started
    finally:
        master.proc.send_signal(signal.SIGCONT)
    print(f"\na stopped master: ctl gave up after {took:.1f}s: {done.stderr.strip()}")
    assert done.returncode == 1 and "did not answer within 2 s" in done.stderr
    assert "result expired" not in done.stderr
    assert took < 2 + 3  # one timeout, not a second one for the close handshake
    assert ctl(master.address, "status").returncode == 0


class _FatService(rpyc.Service):
    """A master stand-in whose every answer is over the client's 64 MiB frame limit."""

    def exposed_call(self, raw):
        return json.dumps({"ok": True, "value": {"status": os.urandom(36 << 20).hex()}})


def test_ctl_says_when_a_reply_is_over_the_frame_limit():
    server = ThreadedServer(_FatService, hostname="127.0.0.1", port=0,
                            protocol_config={"allow_public_attrs": False})
    threading.Thread(target=server.start, daemon=True).start()
    try:
        done = ctl(f"127.0.0.1:{server.port}", "status")
    finally:
        server.close()
    print(f"\na 72 MB reply: {done.stderr.strip()}")
    assert done.returncode == 1
    assert "the master's reply was too large (limit 64 MiB); ask for less, e.g. with --limit" in done.stderr
