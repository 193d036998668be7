"""Secure by default on a shared machine: `./runMaster.sh` makes a cluster CA in its data
directory on the first start and talks only TLS, even on loopback. Its own user's `cloudq ctl`
and local worker find the certificates by themselves; another local user, who cannot read
them, is refused however it tries."""

from __future__ import annotations

import json
import os
import pwd
import re
import socket
import ssl
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from cloudq.rpc import tls
from cloudq.rpc.client import MasterClient
from tests.cluster.harness import ROOT, Proc

pytestmark = pytest.mark.timeout(180)
CLI = str(ROOT / ".venv" / "bin" / "cloudq")


def test_the_default_start_uses_tls_and_refuses_another_local_user(tmp_path: Path, task_writable_dir: Path):
    data = tmp_path / "data"
    env = {"CLOUDQ_DATA_DIR": str(data)}  # as an operator would export it, or run from the checkout
    master = Proc([str(ROOT / "runMaster.sh"), "--no-shell", "--port", "0", "--local-workers", "1",
                   "--local-worker-args", f"--work-dir {tmp_path / 'work'}"], env)
    try:
        match = master.wait_for_line(re.compile(r"listening on (\S+):(\d+) .*; TLS, certificates in (\S+)\)"),
                                     timeout=120)
        address, certs = f"{match.group(1)}:{match.group(2)}", Path(match.group(3))
        assert certs == data / "tls"
        assert stat.S_IMODE(certs.stat().st_mode) == 0o700
        assert all(stat.S_IMODE(key.stat().st_mode) == 0o600 for key in certs.glob("*.key"))
        assert {"ca.pem", "master.pem", "admin.pem", "worker-1.pem"} <= {p.name for p in certs.iterdir()}

        # The operator's ctl, with no TLS flag at all; the local worker joined over TLS too.
        submitted = _ctl(env, address, "task", "--exec", "echo hello", "--wait")
        assert submitted["state"] == "completed" and submitted["worker"] == "worker-1", submitted

        # Another user of the machine. What its attempts load lazily is loaded here first: the
        # child can no longer read this interpreter's library once it has become that user.
        "127.0.0.1".encode("idna")
        tls.client_context(_warm_up_ca(tmp_path / "warm"), "admin")
        attempts = _as_user("nobody", lambda: _intrude(address, certs, task_writable_dir))
        print("\nanother local user: " + "; ".join(f"{k}: {v}" for k, v in attempts.items()))
        assert attempts["reads the master's key"] == "PermissionError"
        assert "requires TLS" in attempts["plain RPC, as before"]
        assert "permission denied" in attempts["the master's certificates"]
        assert "is not the cluster's master" in attempts["a CA of its own"]
        assert attempts["a CA of its own, not checking the master"] == "closed"
        assert attempts["raw frames"] == "closed"
        assert _ctl(env, address, "status")["tasks"]["completed"] == 1  # nothing it did got in
    finally:
        master.stop(timeout=30)


def _warm_up_ca(directory: Path) -> Path:
    tls.init_cluster(directory, [], ["127.0.0.1"])
    return directory


def _ctl(env: dict[str, str], address: str, *words: str) -> dict:
    done = Proc([CLI, "ctl", "--master", address, "--json", *words], env)
    assert done.proc.wait(timeout=60) == 0, done.output()
    return json.loads("\n".join(done.lines))


def _intrude(address: str, certs: Path, writable: Path) -> dict[str, str]:
    """Every way in another user has: what each attempt ran into."""
    out: dict[str, str] = {}
    try:
        (certs / "admin.key").read_bytes()
        out["reads the master's key"] = "read it"
    except OSError as err:
        out["reads the master's key"] = type(err).__name__
    own = writable / "intruder"
    tls.init_cluster(own, [], ["127.0.0.1"])
    for label, tls_dir in (("plain RPC, as before", None), ("the master's certificates", certs),
                           ("a CA of its own", own)):
        try:
            with MasterClient(address, tls_dir, timeout_s=10) as client:
                out[label] = f"got in: {client.call('ping')}"
        except Exception as err:  # noqa: BLE001 - the message is what is checked
            out[label] = str(err)
    host, port = address.rsplit(":", 1)
    blind = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # an intruder need not check who answers
    blind.check_hostname, blind.verify_mode = False, ssl.CERT_NONE
    blind.load_cert_chain(own / "admin.pem", own / "admin.key")
    out["a CA of its own, not checking the master"] = _frame_answered(
        lambda: blind.wrap_socket(socket.create_connection((host, int(port)), timeout=10)))
    out["raw frames"] = _frame_answered(lambda: socket.create_connection((host, int(port)), timeout=10))
    return out


def _frame_answered(connect: Callable[[], socket.socket]) -> str:
    """Sends an RPyC frame header: 'closed' when the master only hangs up (or alerts)."""
    try:
        with connect() as sock:
            sock.sendall(b"\x00\x00\x00\x10\x00" + b"x" * 17)
            return "closed" if sock.recv(100)[:1] in (b"", b"\x15") else "answered"
    except (ssl.SSLError, OSError):
        return "closed"


def _as_user(user: str, attempt: Callable[[], dict[str, str]]) -> dict[str, str]:
    """Runs `attempt` in a child process that has become `user` (no supplementary groups): the
    same client code another local user would run."""
    entry = pwd.getpwnam(user)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 0
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
            os.write(write, json.dumps(attempt()).encode())
        except BaseException as err:  # noqa: BLE001 - reported to the parent
            os.write(write, json.dumps({"error": repr(err)}).encode())
            status = 1
        finally:
            os._exit(status)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        result = json.loads(pipe.read() or b"{}")
    _, status = os.waitpid(pid, 0)
    assert status == 0 and "error" not in result, result
    return result
