"""The noop task spec: does nothing (optionally for a while) and completes.

Used by benchmarks and tests to measure the queue itself, without the cost of real work.
"""

from __future__ import annotations

from typing import Any

from cloudq.specs.fields import check_keys, check_number

FIELDS = ("sleep_s",)
MAX_SLEEP_S = 24 * 3600.0


def validate(spec: dict[str, Any]) -> dict[str, Any]:
    check_keys(spec, "noop", FIELDS)
    sleep_s = spec.get("sleep_s", 0.0)
    return {"sleep_s": check_number(sleep_s, "noop.sleep_s", minimum=0.0, maximum=MAX_SLEEP_S)}


def required_capabilities(spec: dict[str, Any]) -> frozenset[str]:
    return frozenset()
