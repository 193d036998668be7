from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cloudq.store import Store


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def open_store(data_dir: Path) -> Iterator[Callable[..., Store]]:
    """Make stores on ``data_dir`` (loaded by the caller); every one is closed at the end."""
    made: list[Store] = []

    def make(**options: object) -> Store:
        store = Store(data_dir, **options)  # type: ignore[arg-type]
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()
