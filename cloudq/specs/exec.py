"""The exec task spec: an argv list run in the task's directory, never through a shell.

Because no shell is involved, shell metacharacters in argv are plain text and are allowed;
what is bounded is size, and the working directory must stay inside the task directory. The
storage roots it names (input_roots, output_roots) are where it is placed, and it finds them in
its environment (CLOUDQ_ROOT_<NAME>).
"""

from __future__ import annotations

from typing import Any

from cloudq.errors import SpecError
from cloudq.specs import roots
from cloudq.specs.fields import (
    check_argv,
    check_bool,
    check_env,
    check_keys,
    check_relative_path,
)

FIELDS = ("argv", "env", "cwd", "input_roots", "output_roots", "keep_task_dir")


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
        "input_roots": roots.check_root_list(spec.get("input_roots"), "exec.input_roots"),
        "output_roots": roots.check_root_list(spec.get("output_roots"), "exec.output_roots"),
        "keep_task_dir": check_bool(spec.get("keep_task_dir", False), "exec.keep_task_dir"),
    }


def required_capabilities(spec: dict[str, Any]) -> frozenset[str]:
    # .get: a spec stored before these fields existed has none of them.
    return frozenset(roots.capabilities(spec.get("input_roots") or (),
                                        spec.get("output_roots") or ()))


def _check_cwd(value: Any) -> str | None:
    if value is None:
        return None
    path = check_relative_path(value, "exec.cwd").strip("/")
    # "." and "" both mean the task directory itself.
    parts = [part for part in path.split("/") if part not in ("", ".")]
    return "/".join(parts) or None
