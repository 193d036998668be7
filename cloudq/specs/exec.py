"""The exec task spec: an argv list run in the task's directory, never through a shell.

Because no shell is involved, shell metacharacters in argv are plain text and are allowed;
what is bounded is size, and the working directory must stay inside the task directory.
"""

from __future__ import annotations

from typing import Any

from cloudq.errors import SpecError
from cloudq.specs.fields import check_argv, check_env, check_keys, check_relative_path

FIELDS = ("argv", "env", "cwd")


def validate(spec: dict[str, Any]) -> dict[str, Any]:
    check_keys(spec, "exec", FIELDS)
    if "argv" not in spec:
        raise SpecError("exec spec needs 'argv', a non-empty list of strings")
    argv = check_argv(spec["argv"], "exec.argv")
    if not argv[0]:
        raise SpecError("exec.argv[0] (the program) must not be empty")
    return {
        "argv": argv,
        "env": check_env(spec.get("env"), "exec.env"),
        "cwd": _check_cwd(spec.get("cwd")),
    }


def required_capabilities(spec: dict[str, Any]) -> frozenset[str]:
    return frozenset()


def _check_cwd(value: Any) -> str | None:
    if value is None:
        return None
    path = check_relative_path(value, "exec.cwd").strip("/")
    # "." and "" both mean the task directory itself.
    parts = [part for part in path.split("/") if part not in ("", ".")]
    return "/".join(parts) or None
