"""Standby masters on a real PostgreSQL: two masters share one store, one leads, the other
takes over when the leader is killed or stopped past its lease; a deposed leader writes
nothing; a restarted database is waited out. Workers and clients are given both masters."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from cloudq.client import Client
from cloudq.errors import CloudqError
from cloudq.rpc import tls
from cloudq.rpc.client import MasterClient
from tests.cluster.harness import ROOT, MasterProc, WorkerProc, wait_until
from tests.e2e.conftest import free_port
from tests.postgres import PostgresServer

# Worker lease 10 s: a failover (a 3 s leader lease, then the load) fits well inside it, so
# running tasks are re-adopted, not retried. A rare processor tick: what happens is event-driven.
MASTER_FLAGS = ("--lease", "10", "--heartbeat", "0.5", "--interval", "300")


class Pair:
    """Two masters on one PostgreSQL database, and the workers given both."""

    def __init__(self, tmp: Path, url: str) -> None:
        self.tmp, self.url = tmp, url
        self.masters: dict[str, MasterProc] = {}
        self.workers: list[WorkerProc] = []

    def start_master(self, name: str, *extra: str) -> MasterProc:
        proc = MasterProc(self.tmp / name, "--store", self.url, *MASTER_FLAGS, *extra)
        self.masters[name] = proc
        return proc

    @property
    def addresses(self) -> str:
        return ",".join(m.address for m in self.masters.values())

    def start_worker(self, name: str, *extra: str) -> WorkerProc:
        worker = WorkerProc(self.addresses, name, self.tmp / "work", *extra)
        self.workers.append(worker)
        return worker

    def client(self) -> Client:
        return Client(self.addresses)

    def leader(self) -> tuple[str, MasterProc]:
        roles = {name: role(m) for name, m in self.masters.items()}
        leaders = [name for name, r in roles.items() if r == "leader"]
        assert len(leaders) == 1, roles
        return leaders[0], self.masters[leaders[0]]

    def stop(self) -> None:
        for proc in [*self.workers, *self.masters.values()]:
            with contextlib.suppress(Exception):
                if proc.proc.poll() is None:
                    proc.proc.send_signal(signal.SIGCONT)
                proc.stop(timeout=15)


def role(master: MasterProc) -> str | None:
    """What a master says it is (its own answer to ping, not followed to the leader)."""
    if master.proc.poll() is not None:
        return None
    try:
        with Client(master.address, timeout_s=2) as c:
            return c.ping()["role"]
    except (CloudqError, ConnectionError, OSError):
        return None


@pytest.fixture
def pair(tmp_path: Path, postgres: PostgresServer) -> Iterator[Pair]:
    p = Pair(tmp_path, postgres.new_database())
    try:
        yield p
    finally:
        p.stop()


def every_task(cq: Client) -> list[dict]:
    """Every task the master holds: those not finished, then each final state."""
    tasks = cq.queue(limit=1_000_000)
    for state in ("completed", "failed", "cancelled", "dead"):
        tasks += cq.queue(state=state, limit=1_000_000)
    return tasks


def _rows(url: str, sql: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def test_one_master_leads_and_the_standby_points_at_it(pair: Pair) -> None:
    ports = {"a": free_port(), "b": free_port()}
    a = pair.start_master("a", "--metrics-port", str(ports["a"]))
    b = pair.start_master("b", "--metrics-port", str(ports["b"]))
    assert role(a) == "leader" and role(b) == "standby"
    assert f"standby, the leader is {a.address}" in b.output()
    pair.start_worker("w1")
    with Client(f"{b.address},{a.address}") as cq:  # the standby first: the call is followed
        done = cq.submit(kind="noop", name="hello").wait(timeout=30)
        assert done["state"] == "completed" and done["worker"] == "w1"
        status = cq.command(["status"]).data["leadership"]
        assert status["role"] == "leader" and status["epoch"] == 1
        # The masters seen are looked up at each lease renewal (every second).
        wait_until(lambda: {m["address"]: m["role"] for m in cq.command(["status"]).data[
            "leadership"]["masters"]} == {a.address: "leader", b.address: "standby"}, 5,
            "both masters in status")
    ctl = subprocess.run([sys.executable, "-m", "cloudq", "ctl", "--master", f"{b.address},{a.address}",
                          "--json", "status"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert ctl.returncode == 0, ctl.stderr
    assert json.loads(ctl.stdout)["leadership"]["role"] == "leader"  # ctl, too, went to the leader
    with Client(b.address) as only_standby:  # given the standby alone, it is told the leader
        assert only_standby.ping() == {**only_standby.ping(), "role": "standby", "leader": a.address}
        assert only_standby.get(done["id"])["state"] == "completed"  # and goes there
        assert only_standby._rpc.address == a.address

    def metric(master: str, name: str) -> float:
        url = f"http://127.0.0.1:{ports[master]}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")))

    assert metric("a", "cloudq_master_is_leader") == 1 and metric("a", "cloudq_master_epoch") == 1
    assert metric("b", "cloudq_master_is_leader") == 0
    with pytest.raises(urllib.error.HTTPError) as page:  # a standby's status page names the leader
        urllib.request.urlopen(f"http://127.0.0.1:{ports['b']}/", timeout=5)
    assert page.value.code == 503 and f"the leader is {a.address}" in page.value.read().decode()


def test_masters_share_one_certificate_and_tls_clients_follow_the_leader(
        pair: Pair, tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    tls.init_cluster(certs, ["w1"], ["localhost", "127.0.0.1"])
    a = pair.start_master("a", "--tls-dir", str(certs))
    b = pair.start_master("b", "--tls-dir", str(certs))
    pair.start_worker("w1", "--tls-dir", str(certs))
    with Client(f"{b.address},{a.address}", tls_dir=certs) as cq:
        assert cq.ping()["role"] == "standby"  # ping is answered where it is asked
        done = cq.submit(kind="noop", name="over-tls").wait(timeout=30)
        assert done["state"] == "completed" and done["worker"] == "w1"
        assert cq._rpc.address == a.address


def _submit(client: Client, acked: list[str], stop: threading.Event, errors: list[str]) -> None:
    """Batches of 50 no-ops with names never used twice; a batch whose call failed is not
    acknowledged (it may or may not have been stored) and its names are not reused."""
    batch_no = 0
    while not stop.is_set() and len(acked) < 5000:
        names = [f"n{batch_no}.{i}" for i in range(50)]
        batch_no += 1
        try:
            client.submit_many([{"kind": "noop", "name": n} for n in names])
            acked.extend(names)
        except (CloudqError, ConnectionError) as err:
            errors.append(str(err))
            time.sleep(0.05)


def test_leader_killed_during_submits_the_standby_takes_over_and_loses_nothing(
        pair: Pair, task_writable_dir: Path) -> None:
    a = pair.start_master("a")
    pair.start_master("b")
    assert role(a) == "leader"
    for name in ("w1", "w2"):
        pair.start_worker(name, "--max-tasks", "8", "--cpu-cores", "8")
    cq = pair.client()
    wait_until(lambda: len(cq.workers()) == 2, 30, "both workers registered")
    marks = task_writable_dir
    # Tasks that run across the failover: each run leaves a line, so a second run would show.
    long_ids = [cq.submit(kind="exec", name=f"long{n}", spec={
        "argv": ["sh", "-c", f"echo $CLOUDQ_ATTEMPT >> {marks}/long{n}; sleep 6"]}).id
        for n in range(4)]
    wait_until(lambda: all(cq.get(i)["state"] == "running" for i in long_ids), 20, "long tasks running")

    acked: list[str] = []
    errors: list[str] = []
    stop = threading.Event()
    submitter = threading.Thread(target=_submit, args=(pair.client(), acked, stop, errors), daemon=True)
    submitter.start()
    wait_until(lambda: len(acked) >= 1500, 60, "1,500 acknowledged submissions")
    a.kill()
    killed_at = time.monotonic()
    b = pair.masters["b"]
    wait_until(lambda: role(b) == "leader", 10, "the standby to lead", every=0.02)
    took_over_s = time.monotonic() - killed_at
    submitter.join(timeout=120)
    stop.set()
    assert len(acked) >= 5000, f"only {len(acked)} acknowledged; errors: {errors[-3:]}"
    assert took_over_s <= 5.0, f"the standby led {took_over_s:.1f} s after the kill"
    print(f"\nstandby led {took_over_s:.2f} s after kill -9 of the leader; "
          f"{len(errors)} submit calls failed during the failover")

    with Client(b.address) as cq2:
        ended = cq2.wait([t["id"] for t in every_task(cq2)], timeout=120)
        tasks = every_task(cq2)
        by_name: dict[str, list[dict]] = {}
        for task in tasks:
            by_name.setdefault(task["name"], []).append(task)
        lost = [n for n in acked if n not in by_name]
        assert not lost, f"{len(lost)} acknowledged tasks lost, e.g. {lost[:5]}"
        duplicated = [n for n, found in by_name.items() if len(found) > 1]
        assert not duplicated, f"tasks stored twice: {duplicated[:5]}"
        assert all(t["state"] == "completed" for t in ended.values()), \
            {t["state"] for t in ended.values()}
        # An assignment committed by the old leader but never delivered to its worker is
        # retried when the worker re-registers without it: a second attempt of a task whose
        # first never ran. The long tasks below prove that nothing that ran was run again.
        retried = [t["id"] for t in ended.values() if t["attempt"] > 1]
        assert all(t["attempt"] <= 2 for t in ended.values()), retried
        print(f"{len(retried)} tasks took a second attempt (an assignment lost with the leader)")
        for n, task_id in enumerate(long_ids):
            assert (marks / f"long{n}").read_text().split() == ["1"], f"long{n} ran twice"
            story = [e["reason"] for e in cq2.get(task_id)["events"]]
            assert "re-adopted after reconnect" in story, story
        workers = {w["name"]: w["status"] for w in cq2.workers()}
        assert workers == {"w1": "available", "w2": "available"}, workers


def test_a_leader_stopped_past_its_lease_is_deposed_and_writes_nothing(pair: Pair) -> None:
    """A client keeps submitting to the leader itself (never following a refusal) while it is
    stopped, so a call is in flight when it wakes up believing it leads. No worker: the
    database must hold still meanwhile, so that any change in it could only be the old
    leader's."""
    a = pair.start_master("a")
    b = pair.start_master("b")
    with pair.client() as cq:
        held = cq.submit(kind="noop", name="held", target_worker="nowhere").id  # never placed
    answers: list[str] = []
    acked: list[str] = []
    stop = threading.Event()

    def submit_to_a() -> None:
        with MasterClient(a.address, timeout_s=60) as old:
            n = 0
            while not stop.is_set():
                n += 1
                try:  # _call_here: to this master itself, never followed to another
                    old._call_here("submit", {"tasks": [{"kind": "noop", "name": f"a{n}"}]})
                    acked.append(f"a{n}")
                except (CloudqError, ConnectionError) as err:
                    answers.append(str(err))
                    return

    submitter = threading.Thread(target=submit_to_a, daemon=True)
    submitter.start()
    wait_until(lambda: len(acked) >= 20, 30, "submissions to the leader")
    a.proc.send_signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    wait_until(lambda: role(b) == "leader", 15, "the standby to lead", every=0.05)
    print(f"\nstandby led {time.monotonic() - stopped_at:.2f} s after SIGSTOP of the leader")
    stored = _rows(pair.url, "SELECT id, record::text FROM cloudq_tasks ORDER BY id")
    events = _rows(pair.url, "SELECT count(*) FROM cloudq_events")
    acked_before = len(acked)

    a.proc.send_signal(signal.SIGCONT)
    a.wait_for_line(re.compile("stepping down to standby"), timeout=15)
    submitter.join(timeout=30)
    stop.set()
    print(f"the old leader answered the call in flight: {answers} ({len(acked) - acked_before} "
          f"acknowledged after it woke)")
    # Refused by the fence, or its session already ended by the database (it sat inside a
    # transaction past the lease), or the master stepped down first: never written.
    assert answers and re.search("no longer leads|not the leader|stepped down|did not commit",
                                 answers[0]), answers
    wait_until(lambda: role(a) == "standby", 10, "the old leader to be a standby")
    assert _rows(pair.url, "SELECT id, record::text FROM cloudq_tasks ORDER BY id") == stored
    assert _rows(pair.url, "SELECT count(*) FROM cloudq_events") == events
    stored_names = {name for (name,) in _rows(pair.url, "SELECT record->>'name' FROM cloudq_tasks")}
    assert set(acked) <= stored_names  # whatever it acknowledged had been committed
    with Client(f"{a.address},{b.address}") as cq:
        assert cq.get(held)["state"] == "queued"
        assert cq.submit(kind="noop", name="after")["state"] == "queued"  # the new leader writes
        assert cq._rpc.address == b.address and cq.ping()["role"] == "leader"  # followed


def test_a_restarted_database_is_waited_out_without_a_master_restart(
        pair: Pair, postgres: PostgresServer) -> None:
    a = pair.start_master("a")
    pair.start_worker("w1")
    acked: list[str] = []
    errors: list[str] = []
    stop = threading.Event()
    with pair.client() as cq:
        wait_until(lambda: cq.workers(), 30, "the worker registered")
        submitter = threading.Thread(target=_submit, args=(pair.client(), acked, stop, errors),
                                     daemon=True)
        submitter.start()
        wait_until(lambda: len(acked) >= 500, 60, "500 acknowledged submissions")
        postgres.stop(signal.SIGQUIT)  # immediate shutdown, as after a crash
        time.sleep(1.0)  # an outage the length of a quick restart
        postgres.start()
        submitter.join(timeout=120)
        stop.set()
        assert len(acked) >= 5000, f"only {len(acked)} acknowledged; errors: {errors[-3:]}"
        assert any("store unavailable" in e for e in errors), errors[:3]
        assert a.proc.poll() is None  # the same master process throughout
        tasks = {t["name"] for t in every_task(cq)}
        lost = [n for n in acked if n not in tasks]
        assert not lost, f"{len(lost)} acknowledged tasks lost, e.g. {lost[:5]}"
        stored = {name for (name,) in _rows(pair.url, "SELECT record->>'name' FROM cloudq_tasks")}
        assert set(acked) <= stored
