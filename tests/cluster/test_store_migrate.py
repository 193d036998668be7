"""`cloudq store migrate`: an embedded store moved into PostgreSQL, as an operator runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg

from cloudq.client import Client
from tests.cluster.harness import ROOT, MasterProc
from tests.postgres import PostgresServer


def cloudq(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cloudq", *argv], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def _stable(task: dict) -> tuple:
    """What a restart keeps (not the placement's reason of the moment or the time queued)."""
    return tuple(task[k] for k in ("name", "state", "kind", "queue", "priority", "attempt"))


def test_an_embedded_store_moves_to_postgresql_whole(tmp_path: Path, postgres: PostgresServer) -> None:
    data = tmp_path / "data"
    master = MasterProc(data, "--interval", "300")
    try:
        with Client(master.address) as cq:
            ids = [t.id for t in cq.submit_many([{"kind": "noop", "name": f"job{i}"} for i in range(300)])]
            cancelled = cq.cancel(ids[0])["state"]
            before = {t["id"]: t for t in cq.queue(limit=1000)}
            events_before = len(list(cq.events()))
        url = postgres.new_database()
        running = cloudq("store", "migrate", "--from", str(data), "--to", url)
        assert running.returncode == 2 and "in use by" in running.stderr  # the master holds it
    finally:
        master.stop()  # stopped here in any case: the migration needs its lock released

    done = cloudq("store", "migrate", "--from", str(data), "--to", url)
    assert done.returncode == 0, done.stderr
    assert "copied 300 tasks" in done.stdout and f"--store {url}" in done.stdout
    again = cloudq("store", "migrate", "--from", str(data), "--to", url)
    assert again.returncode == 2 and "already holds 300 tasks" in again.stderr
    empty = cloudq("store", "migrate", "--from", str(tmp_path / "nothing"), "--to", url)
    assert empty.returncode == 2 and "holds no cloudq store" in empty.stderr
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM cloudq_tasks").fetchone() == (300,)

    on_pg = MasterProc(tmp_path / "pg", "--store", url, "--interval", "300")
    try:
        with Client(on_pg.address) as cq:
            after = {t["id"]: t for t in cq.queue(limit=1000)}
            assert {i: _stable(t) for i, t in after.items()} == {i: _stable(t) for i, t in before.items()}
            assert cq.get(ids[0])["state"] == cancelled == "cancelled"
            assert len(list(cq.events())) >= events_before
            new = cq.submit(kind="noop", name="after")
            assert int(new.id[1:]) > max(int(i[1:]) for i in ids)  # ids go on, never reused
    finally:
        on_pg.stop()
