"""Task specs: validation and the capabilities a worker needs, one module per kind.

Pure functions, no I/O: the master calls validate_spec on submit and stores the normalized copy;
the worker calls it again before running (it does not trust what came over the wire).
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

from cloudq.errors import SpecError
from cloudq.specs import container, ffmpeg, noop
from cloudq.specs import exec as exec_spec
from cloudq.specs.fields import check_mapping
from cloudq.specs.scenarios import CODECS, KNOWN_ENCODERS, Scenario, parse_scenario

# Every kind of task, once: the model, runners, the `task` command and docs/runners.md follow
# this list, and tests/unit/test_task_kinds.py checks that each of them covers every kind.
KINDS = ("ffmpeg", "container", "exec", "noop")

_MODULES: dict[str, ModuleType] = {
    "ffmpeg": ffmpeg,
    "container": container,
    "exec": exec_spec,
    "noop": noop,
}
assert tuple(_MODULES) == KINDS, "a task kind without a spec module, or one too many"

__all__ = [
    "CODECS",
    "KINDS",
    "KNOWN_ENCODERS",
    "Scenario",
    "capabilities_of",
    "parse_scenario",
    "required_capabilities",
    "validate_spec",
]


def _module(kind: Any) -> ModuleType:
    if not isinstance(kind, str) or kind not in _MODULES:
        shown = kind if isinstance(kind, str) and len(kind) <= 40 else type(kind).__name__
        raise SpecError(f"unknown task kind {shown!r} (known: {', '.join(KINDS)})")
    return _MODULES[kind]


def validate_spec(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Return a normalized copy of `spec` with defaults filled; raise SpecError if refused."""
    module = _module(kind)
    validate: Callable[[dict[str, Any]], dict[str, Any]] = module.validate
    return validate(check_mapping(spec, kind))


def required_capabilities(kind: str, spec: dict[str, Any]) -> frozenset[str]:
    """What a worker must advertise to run this task (see runners.capability_set)."""
    return capabilities_of(kind, validate_spec(kind, spec))


def capabilities_of(kind: str, normalized_spec: dict[str, Any]) -> frozenset[str]:
    """required_capabilities for a spec validate_spec already returned (not checked again)."""
    return _module(kind).required_capabilities(normalized_spec)
