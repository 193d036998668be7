"""The container task spec: an image, a command, environment, and whether it may use the network.

Everything that would widen what a container can reach (privileges, host mounts, devices,
capabilities) is refused by name, so a user who asks gets told why rather than "unknown field".
Resource limits and GPUs come from the task's resources, never from the spec. The only host
directories a container ever sees are the storage roots it names (input_roots read-only,
output_roots read-write), mounted by the worker at /roots/NAME.
"""

from __future__ import annotations

import re
from typing import Any

from cloudq.errors import SpecError
from cloudq.specs import roots
from cloudq.specs.fields import (
    check_argv,
    check_bool,
    check_env,
    check_keys,
    check_str,
    describe,
)

FIELDS = ("image", "command", "env", "network", "workdir", "input_roots", "output_roots",
          "keep_task_dir")

_NO_HOST_ACCESS = ("containers never get host files, devices or privileges; name storage roots "
                   "(input_roots, output_roots) to have them mounted")
FORBIDDEN = {
    "privileged": "containers always run unprivileged",
    "volumes": _NO_HOST_ACCESS,
    "binds": _NO_HOST_ACCESS,
    "mounts": _NO_HOST_ACCESS,
    "devices": _NO_HOST_ACCESS,
    "device_requests": "GPUs are given from the task's resources (gpus), not from the spec",
    "cap_add": "all capabilities are dropped",
    "cap_drop": "all capabilities are dropped already",
    "security_opt": "no-new-privileges is always set",
    "network_mode": "use network: true to get a network; host networking is never given",
    "pid_mode": "containers never share the host's process namespace",
    "ipc_mode": "containers never share the host's IPC namespace",
    "userns_mode": "the user namespace setting is the worker's",
    "runtime": "the container runtime is the worker's",
    "user": "the image decides its user",
    "mem_limit": "limits come from the task's resources (mem_gb)",
    "nano_cpus": "limits come from the task's resources (cpu_cores)",
    "pids_limit": "the process limit is the worker's",
    "sysctls": "kernel settings are the worker's",
}

# Docker references: [registry/]name[:tag][@digest]. A first character that is not a letter or
# digit (such as '-') is refused, so an image can never be read as an option.
_IMAGE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@-]*\Z")
MAX_IMAGE_LEN = 255


def validate(spec: dict[str, Any]) -> dict[str, Any]:
    check_keys(spec, "container", FIELDS, FORBIDDEN)
    if "image" not in spec:
        raise SpecError("container spec needs an 'image', e.g. busybox:latest")
    return {
        "image": _check_image(spec["image"]),
        "command": _check_command(spec.get("command")),
        "env": check_env(spec.get("env"), "container.env"),
        "network": check_bool(spec.get("network", False), "container.network"),
        "workdir": _check_workdir(spec.get("workdir")),
        "input_roots": roots.check_root_list(spec.get("input_roots"), "container.input_roots"),
        "output_roots": roots.check_root_list(spec.get("output_roots"), "container.output_roots"),
        "keep_task_dir": check_bool(spec.get("keep_task_dir", False), "container.keep_task_dir"),
    }


def required_capabilities(spec: dict[str, Any]) -> frozenset[str]:
    # .get: a spec stored before these fields existed has none of them.
    needs = roots.capabilities(spec.get("input_roots") or (), spec.get("output_roots") or ())
    return frozenset({"docker", *needs})


def _check_image(value: Any) -> str:
    image = check_str(value, "container.image", max_len=MAX_IMAGE_LEN)
    if image.startswith("-"):
        raise SpecError(f"container.image must not start with '-': {describe(image)}")
    if not _IMAGE_RE.match(image):
        raise SpecError(
            "container.image must be a Docker reference like name[:tag] "
            f"(letters, digits, '.', '_', '-', '/', ':', '@'): {describe(image)}"
        )
    return image


def _check_command(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        raise SpecError(
            "container.command must be a list of strings such as ['sh', '-c', 'echo hi'], "
            "not one string"
        )
    return check_argv(value, "container.command")


def _check_workdir(value: Any) -> str | None:
    if value is None:
        return None
    path = check_str(value, "container.workdir")
    if not path.startswith("/"):
        raise SpecError(f"container.workdir must be an absolute path: {describe(path)}")
    if ".." in path.split("/"):
        raise SpecError(f"container.workdir must not contain '..' components: {describe(path)}")
    return path
