"""A fake NVML: the part of pynvml the worker's probes use, for GPUs this machine does not
have. The probe tests use it directly; fake_gpu_worker runs `cloudq worker` with it."""

from __future__ import annotations

from types import SimpleNamespace

GIB = 1024**3


class FakeNVMLError(Exception):
    pass


class FakeNvml:
    """The part of pynvml the probes use; `broken` names calls that raise NVMLError."""

    NVMLError = FakeNVMLError
    NVML_TEMPERATURE_GPU = 0

    def __init__(self, gpus: list[dict], init_error: bool = False, broken: set[str] = frozenset()):
        self.gpus = gpus
        self.init_error = init_error
        self.broken = set(broken)
        self.init_calls = 0

    def _call(self, name: str, index: int):
        if name in self.broken:
            raise FakeNVMLError(f"{name} not supported")
        return self.gpus[index]

    def nvmlInit(self) -> None:
        self.init_calls += 1
        if self.init_error:
            raise FakeNVMLError("Driver Not Loaded")

    def nvmlDeviceGetCount(self) -> int:
        if "nvmlDeviceGetCount" in self.broken:
            raise FakeNVMLError("Unknown Error")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        self._call("nvmlDeviceGetHandleByIndex", index)
        return index

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return self._call("nvmlDeviceGetName", handle)["name"].encode()  # old bindings: bytes

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return self._call("nvmlDeviceGetUUID", handle)["uuid"]

    def nvmlDeviceGetMemoryInfo(self, handle: int):
        gpu = self._call("nvmlDeviceGetMemoryInfo", handle)
        return SimpleNamespace(total=gpu["mem"], used=gpu["used"], free=gpu["mem"] - gpu["used"])

    def nvmlDeviceGetUtilizationRates(self, handle: int):
        return SimpleNamespace(gpu=self._call("nvmlDeviceGetUtilizationRates", handle)["util"],
                               memory=0)  # fmt: skip

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        assert sensor == self.NVML_TEMPERATURE_GPU
        return self._call("nvmlDeviceGetTemperature", handle)["temp"]

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        return self._call("nvmlDeviceGetPowerUsage", handle)["power_mw"]

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:
        return self._call("nvmlDeviceGetTotalEnergyConsumption", handle)["energy_mj"]
