"""cloudq: a cluster task queue for transcoding farms and GPU/ML batch work.

`from cloudq import Client` gives the Python client (cloudq/client.py, docs/api.md). It is
loaded on first use, so importing the core (cloudq.core) never loads RPC.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Client", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Client":
        from cloudq.client import Client

        return Client
    raise AttributeError(f"module 'cloudq' has no attribute {name!r}")
