"""Field checks shared by every spec kind.

Each check takes the value and a dotted field name, and either returns the normalized value or
raises SpecError with a message that names the field and says what was wrong. No I/O here: the
master runs these on submit, before anything is stored or placed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from cloudq.errors import SpecError

MAX_STR = 4096  # longest single string anywhere in a spec
MAX_ARGV_ITEMS = 4096
MAX_ARGV_BYTES = 128 * 1024  # about what execve accepts for one argument block, with margin
MAX_ENV_ENTRIES = 256
MAX_ENV_BYTES = 128 * 1024

ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def describe(value: Any) -> str:
    """A short, safe rendering of a refused value for an error message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def comma_separated(raw: Any) -> Any:
    """A list given as one string, "a,b,c", as a list of its non-empty parts; anything else as
    it is (the caller checks it)."""
    if isinstance(raw, str):
        return [part.strip() for part in raw.split(",") if part.strip()]
    return raw


def check_mapping(spec: Any, kind: str) -> dict[str, Any]:
    if not isinstance(spec, Mapping):
        raise SpecError(f"{kind} spec must be a mapping of fields, got {type(spec).__name__}")
    for key in spec:
        if not isinstance(key, str):
            raise SpecError(f"{kind} spec: field names must be strings, got {describe(key)}")
    return dict(spec)


def check_keys(
    spec: Mapping[str, Any],
    kind: str,
    allowed: Iterable[str],
    forbidden: Mapping[str, str] | None = None,
) -> None:
    """Refuse unknown keys; keys in `forbidden` get their own reason (why they are never allowed)."""
    allowed = tuple(allowed)
    for key in spec:
        if forbidden and key in forbidden:
            raise SpecError(f"{kind} spec: '{key}' is not allowed: {forbidden[key]}")
        if key not in allowed:
            raise SpecError(
                f"{kind} spec: unknown field {describe(key)} (allowed: {', '.join(allowed)})"
            )


def check_str(
    value: Any,
    field: str,
    *,
    max_len: int = MAX_STR,
    allow_empty: bool = False,
    allow_control: bool = False,
) -> str:
    if not isinstance(value, str):
        raise SpecError(f"{field} must be a string, got {type(value).__name__}")
    if not value and not allow_empty:
        raise SpecError(f"{field} must not be empty")
    if len(value) > max_len:
        raise SpecError(f"{field} is too long ({len(value)} characters, at most {max_len})")
    if "\x00" in value:
        raise SpecError(f"{field} must not contain NUL bytes")
    if not allow_control and _CONTROL_RE.search(value):
        raise SpecError(f"{field} must not contain control characters")
    return value


def check_number(
    value: Any,
    field: str,
    *,
    minimum: float,
    maximum: float,
    exclusive_min: bool = False,
) -> float:
    """A finite int or float in range; bool is refused even though Python counts it as an int."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(f"{field} must be a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise SpecError(f"{field} must be a finite number, got {describe(value)}")
    too_low = number <= minimum if exclusive_min else number < minimum
    if too_low:
        bound = ">" if exclusive_min else ">="
        raise SpecError(f"{field} must be {bound} {minimum:g}, got {number:g}")
    if number > maximum:
        raise SpecError(f"{field} must be <= {maximum:g}, got {number:g}")
    return number


def check_bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise SpecError(f"{field} must be true or false, got {describe(value)}")
    return value


def check_argv(value: Any, field: str, *, allow_empty: bool = False) -> list[str]:
    """A list of strings passed to execve as is: no shell ever sees them, so any text but NUL
    is fine; only size is bounded."""
    if not isinstance(value, list | tuple):
        raise SpecError(f"{field} must be a list of strings, got {type(value).__name__}")
    if not value and not allow_empty:
        raise SpecError(f"{field} must not be empty")
    if len(value) > MAX_ARGV_ITEMS:
        raise SpecError(f"{field} has too many items ({len(value)}, at most {MAX_ARGV_ITEMS})")
    items = [
        check_str(item, f"{field}[{i}]", allow_empty=True, allow_control=True)
        for i, item in enumerate(value)
    ]
    total = sum(len(item.encode("utf-8", "surrogatepass")) + 1 for item in items)
    if total > MAX_ARGV_BYTES:
        raise SpecError(f"{field} is too large ({total} bytes, at most {MAX_ARGV_BYTES})")
    return items


def check_env(value: Any, field: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(
            f"{field} must be a mapping of names to strings, got {type(value).__name__}"
        )
    if len(value) > MAX_ENV_ENTRIES:
        raise SpecError(f"{field} has too many entries ({len(value)}, at most {MAX_ENV_ENTRIES})")
    env: dict[str, str] = {}
    total = 0
    for key, val in value.items():
        if not isinstance(key, str) or not ENV_KEY_RE.match(key) or len(key) > 256:
            raise SpecError(
                f"{field}: bad variable name {describe(key)} (must match [A-Za-z_][A-Za-z0-9_]*)"
            )
        env[key] = check_str(val, f"{field}[{key}]", allow_empty=True, allow_control=True)
        total += len(key) + len(val.encode("utf-8", "surrogatepass")) + 2
    if total > MAX_ENV_BYTES:
        raise SpecError(f"{field} is too large ({total} bytes, at most {MAX_ENV_BYTES})")
    return env


def check_relative_path(value: Any, field: str) -> str:
    """A path below some base directory: not absolute, no '..' component."""
    path = check_str(value, field)
    if path.startswith("/"):
        raise SpecError(f"{field} must be a relative path, got absolute path {describe(path)}")
    if ".." in path.split("/"):
        raise SpecError(f"{field} must not contain '..' components: {describe(path)}")
    return path
