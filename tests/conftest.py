"""Fixtures every test folder may use."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.postgres import PostgresServer, postgres_server


def _outside_tmp_path(mode: int) -> Iterator[Path]:
    """A fresh directory under the system's temporary folder with `mode`: a root worker runs
    tasks as an unprivileged user, who cannot enter pytest's tmp_path (its parents are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="cloudq-test-"))
    path.chmod(mode)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory task users may enter (not write): where confined tasks get their directories."""
    yield from _outside_tmp_path(0o711)


@pytest.fixture
def task_writable_dir() -> Iterator[Path]:
    """A directory tasks may write into."""
    yield from _outside_tmp_path(0o777)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session; each test takes a database of its own
    (`postgres.new_database()`)."""
    with postgres_server() as server:
        yield server


@pytest.fixture(scope="session", autouse=True)
def _no_default_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Clients (ctl, shell, workers) look for the certificates of a master on this machine in
    the default data directory; in tests it is an empty one, never the checkout's `data/`."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CLOUDQ_DATA_DIR", str(tmp_path_factory.mktemp("default-data")))
        patch.delenv("CLOUDQ_TLS_DIR", raising=False)
        yield
