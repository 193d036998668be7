"""`python -m tests.e2e.fake_gpu_worker worker ...`: the real `cloudq worker`, with a fake NVML
that reports one GPU (this machine has none), so the GPU figures a worker sends in every
heartbeat (utilization, memory, temperature, power, and the energy integrated from it) reach
the master and its metrics as they would from a real GPU. Nothing but the NVML calls is fake:
the worker registers, samples, runs tasks and reports as always."""

from __future__ import annotations

import sys

from cloudq import cli
from cloudq.worker import probes
from tests.fake_nvml import GIB, FakeNvml

GPU = {"name": "NVIDIA L4 (fake)", "uuid": "GPU-fake-0", "mem": 24 * GIB, "used": 6 * GIB,
       "util": 40, "temp": 60, "power_mw": 75_000, "energy_mj": 0}

if __name__ == "__main__":
    probes._default_session = probes.NvmlSession(FakeNvml([GPU]))
    sys.exit(cli.main(sys.argv[1:]))
