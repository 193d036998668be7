"""Who may talk to the master, and what it accepts: TLS identities, protocol options, hostile calls."""

from __future__ import annotations

import contextlib
import json
import random
import socket
import ssl
import threading
from pathlib import Path

import pytest
import rpyc

from cloudq.errors import AuthError, CloudqError, ValidationError
from cloudq.master.seat import Seat
from cloudq.rpc import tls
from cloudq.rpc.client import MasterClient
from cloudq.rpc.protocol import PROTOCOL_CONFIG
from cloudq.rpc.server import start_server


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tls")
    tls.init_cluster(directory, ["w1", "w2"], ["localhost", "127.0.0.1"])
    return directory


@pytest.fixture(scope="module")
def foreign_certs(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("other-ca")
    tls.init_cluster(directory, ["w1"], ["127.0.0.1"])
    return directory


def test_protocol_options_are_hardened():
    for option in ("allow_pickle", "allow_public_attrs", "allow_all_attrs", "allow_setattr",
                   "allow_delattr", "import_custom_exceptions", "instantiate_custom_exceptions",
                   "include_local_traceback"):
        assert PROTOCOL_CONFIG[option] is False, option
    assert PROTOCOL_CONFIG["sync_request_timeout"] > 0


def test_server_runs_with_the_hardened_options(cluster):
    from cloudq.master.core import Master
    from cloudq.master.service import make_service
    from cloudq.rpc.server import start_server

    server = start_server(make_service(Seat(Master())), "127.0.0.1", 0, None, insecure=False)
    try:
        for key, value in PROTOCOL_CONFIG.items():
            assert server.protocol_config[key] == value
    finally:
        server.close()


def test_the_rpc_server_never_listens_off_loopback_without_tls():
    """The last guard under the command line (which makes certificates unless told --insecure):
    no plain listener off loopback unless asked for."""
    with pytest.raises(CloudqError, match="refusing to listen on 0.0.0.0 without TLS"):
        start_server(rpyc.Service(), "0.0.0.0", 0, None, insecure=False)


def test_tls_cluster_runs_tasks_and_checks_identities(cluster, certs, foreign_certs):
    master = cluster.start_master("--tls-dir", str(certs))
    cluster.master._client = MasterClient(master.address, certs)  # ctl speaks as the admin
    cluster.start_worker("w1", "--tls-dir", str(certs))
    task = master.ctl("task", "--exec", "echo over tls")
    assert master.wait_state(task["id"], "completed")["worker"] == "w1"

    # A worker's certificate cannot act as another worker, nor run operator commands.
    with MasterClient(master.address, certs, identity="w2") as as_w2:
        assert as_w2.call("ping")["identity"] == "w2"
        with pytest.raises(AuthError, match="may not act as worker 'w1'"):
            as_w2.call("register", {"facts": {"name": "w1", "cpu_cores": 1, "mem_gb": 1}})
        with pytest.raises(AuthError, match="may not run operator commands"):
            as_w2.call("call", {"argv": ["status"]})

    # No TLS at all, TLS without a certificate, and a certificate from another CA: all refused
    # before any RPC frame is read.
    with pytest.raises((ConnectionError, CloudqError)):
        MasterClient(master.address).call("ping")
    plain = socket.create_connection((master.host, master.port), timeout=5)
    plain.sendall(b"\x00\x00\x00\x10\x00" + b"x" * 17)  # an RPyC frame header, no TLS
    assert _refused(plain)
    no_cert = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    no_cert.check_hostname = False
    try:
        raw = no_cert.wrap_socket(socket.create_connection((master.host, master.port), timeout=5))
        raw.sendall(b"\x00\x00\x00\x10\x00" + b"x" * 17)
        assert _refused(raw)
    except (ssl.SSLError, ConnectionResetError):
        pass  # refused during the handshake itself
    with pytest.raises((AuthError, ConnectionError, CloudqError)):
        MasterClient(master.address, foreign_certs).call("ping")
    assert master.ctl("status")["tasks"]["completed"] == 1  # the master is unharmed


def _refused(sock: socket.socket) -> bool:
    """The peer closed, reset, or answered only with a TLS alert record."""
    try:
        data = sock.recv(100)
    except (ConnectionResetError, ssl.SSLError):
        return True
    finally:
        sock.close()
    return data == b"" or data.startswith(b"\x15")


def test_worker_refuses_a_server_that_is_not_the_master(certs):
    """An impostor with a valid worker certificate from the same CA is still not the master."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs / "w2.pem", certs / "w2.key")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve_once() -> None:
        conn, _ = listener.accept()
        with contextlib.suppress(ssl.SSLError, OSError):
            context.wrap_socket(conn, server_side=True)

    thread = threading.Thread(target=serve_once, daemon=True)
    thread.start()
    with pytest.raises(AuthError, match="is not the cluster's master"):
        MasterClient(f"127.0.0.1:{port}", certs, identity="w1")
    thread.join(timeout=5)
    listener.close()


def _hostile_payloads(rng: random.Random) -> list[tuple[str, object]]:
    methods = ["register", "fetch", "report", "submit", "call", "ping"]
    junk = [None, 1, -1, 1e308, "x" * 5000, [], {}, [[]], {"name": 5}, True, "-rf", "../../etc",
            {"name": "w", "session": "1"}, {"tasks": [{"kind": "exec", "spec": {"argv": []}}]},
            {"argv": ["quit"]}, {"argv": ["task", "--exec"]}, {"argv": [1, 2]},
            {"facts": {"name": "x; rm -rf /", "cpu_cores": "NaN"}}, {"reports": [1, 2]},
            {"name": "nobody", "session": 1, "wait_s": 1e9}, {"tasks": "not a list"}]
    return [(rng.choice(methods), rng.choice(junk)) for _ in range(1000)]


def test_hostile_rpc_calls_get_clear_errors_and_change_nothing(cluster):
    master = cluster.start_master()
    client = master.client()
    before = master.ctl("status")["tasks"]
    crashes = 0
    for method, payload in _hostile_payloads(random.Random(7)):
        try:
            client.call(method, payload)
        except (ValidationError, AuthError, CloudqError) as err:
            assert str(err) and "internal error" not in str(err), (method, payload, err)
        except ConnectionError:
            crashes += 1
    # Arguments that are not JSON text (a dict would travel as a netref) are refused.
    assert "arguments must be JSON text" in json.loads(client.conn.root.submit({"tasks": []}))["error"]
    assert crashes == 0
    assert master.ctl("status")["tasks"] == before


def test_certs_issue_never_hands_out_or_replaces_an_identity(tmp_path):
    tls.init_cluster(tmp_path, ["w1"], [])
    master_pem = (tmp_path / "master.pem").read_bytes()
    for name in ("cloudq-master", "cloudq-admin", "master", "admin", "ca", "w1"):
        with pytest.raises(CloudqError, match="reserved|exists"):
            tls.issue_worker(tmp_path, name)
    assert (tmp_path / "master.pem").read_bytes() == master_pem
    assert [p.name for p in tls.issue_worker(tmp_path, "w9")] == ["w9.pem", "w9.key"]
    with pytest.raises(CloudqError, match="ca.pem exists"):
        tls.init_cluster(tmp_path, [], [])
