"""What a worker has (static facts, sent once) and how busy it is (live samples, per heartbeat).

CPU, memory and disk come from psutil; GPUs from NVML (pynvml, from nvidia-ml-py). No library,
no driver, or any NVML failure means zero GPUs, with the reason kept in `nvml_error`: a probe
never raises. The NVML module is injectable (NvmlSession(module)) so tests can use a fake one.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

GIB = 1024**3


class NvmlSession:
    """NVML initialised once per process (nvmlInit is slow and must not be repeated per sample).

    `module` is pynvml or anything with the same functions; None loads pynvml on first use.
    """

    def __init__(self, module: Any = None) -> None:
        self._module = module
        self._lock = threading.Lock()
        self._started: bool | None = None
        self.error: str | None = None

    def start(self) -> Any | None:
        """The initialised module, or None (with the reason in `error`) if NVML is unusable."""
        with self._lock:
            if self._started is None:
                self._started = self._init()
            return self._module if self._started else None

    def _init(self) -> bool:
        try:
            if self._module is None:
                import pynvml

                self._module = pynvml
            self._module.nvmlInit()
        except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, DriverNotLoaded...
            self.error = f"{type(exc).__name__}: {exc}".strip()
            return False
        return True


_default_session = NvmlSession()


def default_session() -> NvmlSession:
    """The process-wide NVML session (pynvml, initialised on first use)."""
    return _default_session


def static_facts(path: str | Path = ".", nvml: NvmlSession | None = None) -> dict[str, Any]:
    """One-time facts: host, cores, memory, disk of the file system holding `path`, GPUs."""
    session = nvml or _default_session
    gpus = gpu_facts(session)
    return {
        "host": socket.gethostname(),
        "cpu_cores": float(_cpu_cores()),
        "mem_gb": round(psutil.virtual_memory().total / GIB, 2),
        "disk_gb": _disk(path, "total"),
        "gpus": gpus,
        "nvml": session.start() is not None,
        "nvml_error": session.error,
    }


def live_sample(path: str | Path = ".", nvml: NvmlSession | None = None) -> dict[str, Any]:
    """How busy the worker is now; cheap enough for every heartbeat."""
    session = nvml or _default_session
    return {
        "cpu_percent": psutil.cpu_percent(interval=None),  # since the previous call
        "load1": round(os.getloadavg()[0], 2),
        "mem_free_gb": round(psutil.virtual_memory().available / GIB, 2),
        "disk_free_gb": _disk(path, "free"),
        "gpus": gpu_samples(session),
    }


class GpuEnergy:
    """Energy of each GPU since the worker started, integrated from its power samples: the
    trapezoid between two consecutive samples of a GPU, on the monotonic clock. An interval
    longer than MAX_GAP_S (the worker could not sample, or the GPU gave no power reading) is
    left out rather than guessed. `add` writes the running total into each GPU's sample as
    `energy_j`, so the master gets it with every heartbeat and loses nothing when a heartbeat
    is lost. Callers serialise their calls (the worker takes samples from two loops)."""

    MAX_GAP_S = 60.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.joules: dict[int, float] = {}  # by GPU index
        self._last: dict[int, tuple[float, float]] = {}  # by index: (when, watts)

    def add(self, gpus: list[dict[str, Any]]) -> None:
        now = self.clock()
        for gpu in gpus:
            index, watts = gpu.get("index"), gpu.get("power_w")
            if not isinstance(index, int):
                continue
            if isinstance(watts, int | float) and watts >= 0:
                last = self._last.get(index)
                if last is not None and 0 < now - last[0] <= self.MAX_GAP_S:
                    self.joules[index] = self.joules.get(index, 0.0) + (last[1] + watts) / 2 * (now - last[0])
                self._last[index] = (now, float(watts))
                self.joules.setdefault(index, 0.0)
            else:
                self._last.pop(index, None)
            if index in self.joules:
                gpu["energy_j"] = round(self.joules[index], 3)


def gpu_facts(session: NvmlSession) -> list[dict[str, Any]]:
    nvml = session.start()
    if nvml is None:
        return []
    facts = []
    for index, handle in _handles(nvml, session):
        memory = nvml_call(nvml, "nvmlDeviceGetMemoryInfo", handle)
        facts.append(
            {
                "index": index,
                "name": _text(nvml_call(nvml, "nvmlDeviceGetName", handle)),
                "uuid": _text(nvml_call(nvml, "nvmlDeviceGetUUID", handle)),
                "mem_gb": _gib(getattr(memory, "total", None)),
            }
        )
    return facts


def gpu_samples(session: NvmlSession) -> list[dict[str, Any]]:
    nvml = session.start()
    if nvml is None:
        return []
    samples = []
    for index, handle in _handles(nvml, session):
        memory = nvml_call(nvml, "nvmlDeviceGetMemoryInfo", handle)
        util = nvml_call(nvml, "nvmlDeviceGetUtilizationRates", handle)
        temp_kind = getattr(nvml, "NVML_TEMPERATURE_GPU", 0)
        temperature = nvml_call(nvml, "nvmlDeviceGetTemperature", handle, temp_kind)
        power_mw = nvml_call(nvml, "nvmlDeviceGetPowerUsage", handle)
        samples.append(
            {
                "index": index,
                "util_percent": getattr(util, "gpu", None),
                "mem_used_gb": _gib(getattr(memory, "used", None)),
                "mem_total_gb": _gib(getattr(memory, "total", None)),
                "temperature_c": temperature,
                "power_w": round(power_mw / 1000, 1) if power_mw is not None else None,
            }
        )
    return samples


def gpu_handles(session: NvmlSession, indices: list[int]) -> list[Any]:
    """NVML handles for these GPU indices; a handle that cannot be had is left out."""
    nvml = session.start()
    if nvml is None:
        return []
    handles = [nvml_call(nvml, "nvmlDeviceGetHandleByIndex", i) for i in indices]
    return [h for h in handles if h is not None]


def _handles(nvml: Any, session: NvmlSession) -> list[tuple[int, Any]]:
    """(index, handle) for every GPU; a device whose handle fails is kept with a None handle,
    so the index list stays true and its fields come out as None."""
    try:
        count = int(nvml.nvmlDeviceGetCount())
    except Exception as exc:
        session.error = f"nvmlDeviceGetCount: {type(exc).__name__}: {exc}"
        return []
    return [(i, nvml_call(nvml, "nvmlDeviceGetHandleByIndex", i)) for i in range(count)]


def nvml_call(nvml: Any, name: str, handle: Any, *args: Any) -> Any:
    """One NVML call; any failure (unsupported, lost GPU, no handle) reads as None."""
    if handle is None:
        return None
    try:
        return getattr(nvml, name)(handle, *args)
    except Exception:
        return None


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):  # older bindings return bytes
        return value.decode("utf-8", "replace")
    return value if value is None else str(value)


def _gib(value: Any) -> float | None:
    return round(value / GIB, 2) if isinstance(value, int | float) else None


def _cpu_cores() -> int:
    # The cores this process may run on (cgroup cpusets, taskset), not the whole machine's.
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return psutil.cpu_count() or 1


def _disk(path: str | Path, field: str) -> float | None:
    try:
        return round(getattr(psutil.disk_usage(str(path)), field) / GIB, 2)
    except OSError:
        return None
