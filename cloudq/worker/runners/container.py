"""The container runner: one task, one container, through the Docker Engine API.

Limits come from the task's resources (nano_cpus, mem_limit = memswap_limit, pids_limit), GPUs
only through device_requests, no network unless the spec asks, no privileges, every capability
dropped, no-new-privileges. The root file system is read-only: a writable layer (and the
engine's /etc/hosts, /etc/resolv.conf, /etc/hostname) would be files on the worker's disk that
a task could grow without any limit. Scratch space is a tmpfs at /tmp, whose pages count
toward the memory limit. A missing image fails at once unless pulling is allowed: the engine
would otherwise try a pull that, without network, is a slow error. The only host directories
mounted are the storage roots the task names, at /roots/NAME: read-only for input_roots,
read-write for output_roots (CLOUDQ_ROOT_<NAME> says where). Logs stream into task.log
while the container runs, and the log is closed only once the copy has everything the engine
sends (LogCopy); the container is removed afterwards whatever happened.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from typing import Any

import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.types import DeviceRequest, Mount
from requests import RequestException

from cloudq.errors import RunnerError
from cloudq.specs import roots
from cloudq.worker.runners.base import (
    Fault,
    RunContext,
    RunResult,
    RunStatus,
    WorkerFaultError,
    finished,
    one_line,
    open_log,
)
from cloudq.worker.runners.paths import check_work_dir
from cloudq.worker.runners.process import POLL_S
from cloudq.worker.runners.storage import root_of

TASK_LABEL = "cloudq.task"
PIDS_LIMIT = 512  # enough for real work, too few for a fork bomb to hurt the host
SCRATCH = "/tmp"  # the one writable path that is not a storage root
API_TIMEOUT_S = 30
LOG_JOIN_S = 5.0
LOG_STALL_S = 5.0  # after the exit, the copy may take as long as it likes while bytes flow
MIB = 1024**2
STATE_UNAVAILABLE = "cloudq.unavailable"  # marks a state we made up because the engine failed

log = logging.getLogger(__name__)


def run(ctx: RunContext) -> RunResult:
    started = time.monotonic()
    check_work_dir(ctx.work_dir)  # the log goes there; a symlink could send it anywhere
    try:
        client = docker.from_env(timeout=API_TIMEOUT_S)
    except DockerException as exc:
        raise WorkerFaultError(f"no Docker engine on {ctx.worker_label}: {exc}") from None
    try:
        image = ensure_image(client, ctx)
        if image is None:
            return finished(ctx, RunStatus.CANCELLED, None, started, "cancelled while pulling")
        container = _create(client, ctx)
        try:
            return _run(ctx, container, image, started)
        finally:
            _remove(container)
    except (DockerException, RequestException) as exc:
        # The engine went away or answered nonsense mid-task: the worker's fault, not a crash.
        raise WorkerFaultError(f"Docker engine error on {ctx.worker_label}: {_explain(exc)}") from None
    finally:
        client.close()


def ensure_image(client: docker.DockerClient, ctx: RunContext) -> Any | None:
    """The image, pulled first only if allowed; None if cancelled while pulling."""
    ref = ctx.spec["image"]
    try:
        return client.images.get(ref)
    except ImageNotFound:
        if not ctx.allow_pull:
            raise RunnerError(f"image {ref} is not present on {ctx.worker_label}") from None
    except APIError as exc:
        raise engine_error(exc, f"image {ref} cannot be used") from None
    return _pull(client, ref, ctx)


def _pull(client: docker.DockerClient, ref: str, ctx: RunContext) -> Any | None:
    # Pulls can take minutes; run it aside so that a cancel is still answered at once.
    outcome: dict[str, Any] = {}

    def pull() -> None:
        try:
            outcome["image"] = client.images.pull(ref)
        except Exception as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=pull, name=f"pull-{ctx.task_id}", daemon=True)
    thread.start()
    while thread.is_alive():
        if ctx.cancel.wait(POLL_S):
            return None
    if "error" in outcome:
        raise RunnerError(f"image {ref} could not be pulled: {_explain(outcome['error'])}")
    return outcome["image"]


def container_options(ctx: RunContext) -> dict[str, Any]:
    """Arguments for containers.create: the spec's choices inside the worker's fixed limits."""
    spec, res = ctx.spec, ctx.resources
    env = dict(spec["env"])
    env.update({"CLOUDQ_TASK_ID": ctx.task_id, "CLOUDQ_ATTEMPT": str(ctx.attempt)})
    mounts = root_mounts(ctx)
    env.update({roots.env_name(name): roots.container_path(name) for name in mounts})
    options: dict[str, Any] = {
        "image": spec["image"],
        "command": spec["command"],
        "environment": env,
        "working_dir": spec["workdir"],
        "labels": {
            TASK_LABEL: ctx.task_id,
            "cloudq.attempt": str(ctx.attempt),
            "cloudq.worker": ctx.worker_name,
        },
        "network_mode": None if spec["network"] else "none",  # None: the default bridge
        "privileged": False,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "pids_limit": PIDS_LIMIT,
        "read_only": True,
        "tmpfs": {SCRATCH: f"rw,exec,nosuid,nodev,size={scratch_size(ctx)}"},
        "stdin_open": False,
        "tty": False,
    }
    cpu = float(res.get("cpu_cores") or 0)
    if cpu > 0:
        options["nano_cpus"] = int(cpu * 1e9)
    mem = memory_limit(ctx)
    options["mem_limit"] = mem
    options["memswap_limit"] = mem  # the same: no swap beyond the limit
    if mounts:
        options["mounts"] = list(mounts.values())
    if ctx.gpu_indices:
        ids = [str(i) for i in ctx.gpu_indices]
        options["device_requests"] = [DeviceRequest(device_ids=ids, capabilities=[["gpu"]])]
    return options


def root_mounts(ctx: RunContext) -> dict[str, Mount]:
    """By root name, the bind mount of each root the task names: read-only unless it is one of
    its output_roots. A root this worker lacks is its fault (it said it had it)."""
    spec = ctx.spec
    writes = set(spec.get("output_roots") or ())
    mounts = {}
    for name in sorted(set(spec.get("input_roots") or ()) | writes):
        root = root_of(ctx, name, write=name in writes)
        mounts[name] = Mount(target=roots.container_path(name), source=str(root.path),
                             type="bind", read_only=name not in writes)
    return mounts


def memory_limit(ctx: RunContext) -> int:
    """Every container has one: the task's mem_gb, else the worker's default share. Without a
    limit one container could take the machine's memory from every other task on it."""
    mem_gb = float(ctx.resources.get("mem_gb") or 0)
    if mem_gb > 0:
        return int(mem_gb * 1024**3)
    if ctx.container_mem_default:
        return ctx.container_mem_default
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def scratch_size(ctx: RunContext) -> int:
    """Bytes of /tmp: the task's storage_gb, at most its memory limit (tmpfs pages are charged
    to it, so more could never be filled); the memory limit when it asked for no storage.
    Filling a smaller /tmp is "No space left on device"; filling the memory is an OOM kill."""
    limit = memory_limit(ctx)
    storage_gb = float(ctx.resources.get("storage_gb") or 0)
    return min(int(storage_gb * 1024**3), limit) if storage_gb > 0 else limit


def _create(client: docker.DockerClient, ctx: RunContext) -> Any:
    try:
        return client.containers.create(**container_options(ctx))
    except APIError as exc:
        raise engine_error(exc, "container could not be created") from None


def _run(ctx: RunContext, container: Any, image: Any, started: float) -> RunResult:
    output = {"image": ctx.spec["image"], "image_id": image.id, "container_id": container.id}
    if ctx.cancel.is_set():
        return finished(ctx, RunStatus.CANCELLED, None, started, "cancelled", output)
    with open_log(ctx) as task_log:
        try:
            container.start()
        except APIError as exc:
            task_log.write(f"cloudq: container could not start: {_explain(exc)}\n".encode())
            return finished(ctx, RunStatus.FAILED, _exit_code(container), started,
                             f"container could not start: {_explain(exc)}", output,
                             api_fault(exc))  # fmt: skip
        copy = LogCopy(container, task_log)
        stopped = _wait(ctx, container, started)
        copy.finish()  # before the file is closed: the end of a loud task's output comes last
    state = _state(container)
    status, error = _judge(ctx, stopped, state)
    # Without a state the engine failed us, whatever the container did.
    fault = Fault.WORKER if STATE_UNAVAILABLE in state else None
    return finished(ctx, status, state.get("ExitCode"), started, error, output, fault)


def _wait(ctx: RunContext, container: Any, started: float) -> RunStatus | None:
    """Wait for the container to exit; kill it on cancel or timeout and say which."""
    exited = threading.Event()

    def wait_for_exit() -> None:
        try:
            container.wait(timeout=None)
        except Exception as exc:  # the engine went away: stop waiting, judge from state
            log.warning("waiting for container %s failed: %s", container.id[:12], exc)
        finally:
            exited.set()

    threading.Thread(target=wait_for_exit, name=f"wait-{ctx.task_id}", daemon=True).start()
    deadline = ctx.deadline(started)
    while not exited.wait(POLL_S):
        stopped = None
        if ctx.cancel.is_set():
            stopped = RunStatus.CANCELLED
        elif deadline is not None and time.monotonic() >= deadline:
            stopped = RunStatus.TIMED_OUT
        if stopped is not None:
            _kill(container)
            exited.wait(LOG_JOIN_S)
            return stopped
    return None


def _judge(
    ctx: RunContext, stopped: RunStatus | None, state: dict[str, Any]
) -> tuple[RunStatus, str | None]:
    code = state.get("ExitCode")
    if stopped == RunStatus.CANCELLED:
        return stopped, "cancelled: the container was killed"
    if stopped == RunStatus.TIMED_OUT:
        return stopped, f"timed out after {ctx.timeout_s:g} s: the container was killed"
    limit = memory_limit(ctx)
    if state.get("OOMKilled"):
        return RunStatus.FAILED, f"memory limit exceeded ({limit // MIB} MiB): the container was OOM-killed"
    if code == 0:
        return RunStatus.COMPLETED, None
    if code == 137:
        return RunStatus.FAILED, "killed by SIGKILL (exit code 137), probably out of memory"
    if code is None or state.get("Error"):
        return RunStatus.FAILED, f"container failed: {state.get('Error') or 'no exit code'}"
    return RunStatus.FAILED, f"container exited with code {code}"


class LogCopy:
    """Copies the container's output stream into task.log on a thread of its own.

    The engine keeps sending after the container has exited (a loud task leaves hundreds of
    MiB in its log driver), so finish() waits for the copy for as long as bytes keep coming,
    and ends it only when the stream stalls. Writes and the end are serialised by a lock, so
    once finish() returns nothing writes to the file any more and the caller may close it.
    """

    def __init__(self, container: Any, task_log: Any) -> None:
        self.container = container
        self.task_log = task_log
        self.copied = 0
        self._lock = threading.Lock()
        self._ended = False
        self._stream: Any = None
        self._thread = threading.Thread(target=self._copy, name=f"logs-{container.id[:12]}",
                                        daemon=True)  # fmt: skip
        self._thread.start()

    def _copy(self) -> None:
        try:
            self._stream = self.container.logs(stream=True, follow=True, stdout=True, stderr=True)
            for chunk in self._stream:
                with self._lock:
                    if self._ended:
                        return
                    self.task_log.write(chunk)
                    self.copied += len(chunk)
        except Exception as exc:  # the log is a convenience; losing it must not fail the task
            if not self._ended:
                log.warning("log stream of container %s ended: %s", self.container.id[:12], exc)

    def finish(self) -> None:
        """Returns once the copy has ended: the stream's end, or LOG_STALL_S without a byte."""
        seen = -1
        while self._thread.is_alive() and self.copied != seen:
            seen = self.copied
            self._thread.join(LOG_STALL_S)
        with self._lock:
            self._ended = True  # from here on the copier writes nothing
        if self._thread.is_alive():
            log.warning("log stream of container %s stalled; %d bytes copied",
                        self.container.id[:12], self.copied)
            with contextlib.suppress(Exception):
                self._stream.close()  # unblocks its read


def _state(container: Any) -> dict[str, Any]:
    try:
        container.reload()
    except (APIError, NotFound) as exc:
        return {"Error": f"container state unavailable: {_explain(exc)}", STATE_UNAVAILABLE: True}
    return dict(container.attrs.get("State") or {})


def _exit_code(container: Any) -> int | None:
    code = _state(container).get("ExitCode")
    return code if code else None


def _kill(container: Any) -> None:
    with contextlib.suppress(APIError):  # it may have exited on its own meanwhile
        container.kill()


def _remove(container: Any) -> None:
    """Remove the container and its anonymous volumes; retried once, then logged."""
    for attempt in (1, 2):
        try:
            container.remove(force=True, v=True)
            return
        except NotFound:
            return
        except Exception as exc:  # APIError, or the engine connection failing
            if attempt == 2:
                log.error("container %s was not removed: %s", container.id[:12], exc)


def api_fault(exc: APIError) -> Fault:
    """The engine refusing what the task asked (4xx: a bad command, a bad path) is the task's
    fault; the engine failing (5xx: no GPU driver, no disk, a runtime error) is the worker's."""
    return Fault.TASK if exc.is_client_error() else Fault.WORKER


def engine_error(exc: APIError, what: str) -> RunnerError:
    kind = RunnerError if api_fault(exc) == Fault.TASK else WorkerFaultError
    return kind(f"{what}: {_explain(exc)}")


def _explain(exc: BaseException) -> str:
    explanation = getattr(exc, "explanation", None)
    return one_line(str(explanation or exc), 300)
