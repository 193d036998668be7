"""Durable state for the master: a checksummed journal with group commit, and periodic
TinyDB checkpoints written atomically in the background. See docs/store.md."""

from __future__ import annotations

from cloudq.store.changes import Encoded, dumps
from cloudq.store.store import LoadedState, Store

__all__ = ["Encoded", "LoadedState", "Store", "dumps"]
