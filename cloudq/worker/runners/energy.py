"""GPU energy used by a task: NVML's total-energy counter, read before and after.

The counter (millijoules since the driver loaded) exists on Volta and later; where it is missing
or NVML is unusable the measurement is simply absent, never an error for the task.
"""

from __future__ import annotations

from typing import Any

from cloudq.worker import probes


class EnergyMeter:
    def __init__(self, indices: list[int], session: probes.NvmlSession | None = None) -> None:
        self.indices = list(indices)
        self.session = session or probes.default_session()
        self._start_mj: int | None = None

    def start(self) -> None:
        self._start_mj = self._read_mj() if self.indices else None

    def joules(self) -> float | None:
        """Energy since start(), summed over the task's GPUs; None if it could not be read."""
        if self._start_mj is None:
            return None
        end = self._read_mj()
        if end is None or end < self._start_mj:
            return None
        return round((end - self._start_mj) / 1000.0, 3)

    def _read_mj(self) -> int | None:
        nvml = self.session.start()
        if nvml is None:
            return None
        handles = probes.gpu_handles(self.session, self.indices)
        if len(handles) != len(self.indices):
            return None
        total = 0
        for handle in handles:
            value: Any = probes.nvml_call(nvml, "nvmlDeviceGetTotalEnergyConsumption", handle)
            if value is None:
                return None
            total += int(value)
        return total
