"""Worker probes with a fake NVML (GPUs that work, fail to start, or fail one call), and the
real probe on this machine."""

from __future__ import annotations

import pytest

from cloudq.worker import probes
from cloudq.worker.probes import NvmlSession, live_sample, static_facts
from cloudq.worker.runners.energy import EnergyMeter
from tests.fake_nvml import GIB, FakeNvml


def two_gpus() -> list[dict]:
    return [
        {"name": "NVIDIA H100", "uuid": "GPU-aaaa", "mem": 80 * GIB, "used": 2 * GIB,
         "util": 37, "temp": 51, "power_mw": 123_400, "energy_mj": 1_000_000},
        {"name": "NVIDIA L4", "uuid": "GPU-bbbb", "mem": 24 * GIB, "used": 0,
         "util": 0, "temp": 40, "power_mw": 16_000, "energy_mj": 5_000},
    ]  # fmt: skip


def test_two_gpus_are_read(tmp_path):
    fake = FakeNvml(two_gpus())
    session = NvmlSession(fake)
    facts = static_facts(tmp_path, nvml=session)
    assert facts["nvml"] is True and facts["nvml_error"] is None
    assert facts["gpus"] == [
        {"index": 0, "name": "NVIDIA H100", "uuid": "GPU-aaaa", "mem_gb": 80.0},
        {"index": 1, "name": "NVIDIA L4", "uuid": "GPU-bbbb", "mem_gb": 24.0},
    ]
    sample = live_sample(tmp_path, nvml=session)
    assert sample["gpus"] == [
        {"index": 0, "util_percent": 37, "mem_used_gb": 2.0, "mem_total_gb": 80.0,
         "temperature_c": 51, "power_w": 123.4},
        {"index": 1, "util_percent": 0, "mem_used_gb": 0.0, "mem_total_gb": 24.0,
         "temperature_c": 40, "power_w": 16.0},
    ]  # fmt: skip
    assert fake.init_calls == 1  # initialised once, however often it is sampled


def test_init_error_means_zero_gpus_with_the_reason(tmp_path):
    fake = FakeNvml(two_gpus(), init_error=True)
    session = NvmlSession(fake)
    facts = static_facts(tmp_path, nvml=session)
    assert facts["gpus"] == [] and facts["nvml"] is False
    assert facts["nvml_error"] == "FakeNVMLError: Driver Not Loaded"
    assert live_sample(tmp_path, nvml=session)["gpus"] == []
    assert fake.init_calls == 1  # not retried on every sample


@pytest.mark.parametrize(
    ("broken", "field", "in_facts"),
    [
        ("nvmlDeviceGetTemperature", "temperature_c", False),
        ("nvmlDeviceGetPowerUsage", "power_w", False),
        ("nvmlDeviceGetUtilizationRates", "util_percent", False),
        ("nvmlDeviceGetName", "name", True),
        ("nvmlDeviceGetUUID", "uuid", True),
    ],
)
def test_one_failing_call_leaves_that_field_none(tmp_path, broken, field, in_facts):
    session = NvmlSession(FakeNvml(two_gpus(), broken={broken}))
    facts = static_facts(tmp_path, nvml=session)
    sample = live_sample(tmp_path, nvml=session)
    rows = facts["gpus"] if in_facts else sample["gpus"]
    assert len(rows) == 2
    assert [row[field] for row in rows] == [None, None]
    assert facts["gpus"][0]["mem_gb"] == 80.0  # the other fields are still read
    assert sample["gpus"][0]["mem_total_gb"] == 80.0


def test_a_failing_handle_keeps_the_gpu_listed_with_empty_fields(tmp_path):
    session = NvmlSession(FakeNvml(two_gpus(), broken={"nvmlDeviceGetHandleByIndex"}))
    facts = static_facts(tmp_path, nvml=session)
    assert facts["gpus"] == [
        {"index": 0, "name": None, "uuid": None, "mem_gb": None},
        {"index": 1, "name": None, "uuid": None, "mem_gb": None},
    ]


def test_a_failing_count_means_zero_gpus(tmp_path):
    session = NvmlSession(FakeNvml(two_gpus(), broken={"nvmlDeviceGetCount"}))
    facts = static_facts(tmp_path, nvml=session)
    assert facts["gpus"] == []
    assert "Unknown Error" in facts["nvml_error"]


def test_energy_meter_sums_the_task_gpus():
    fake = FakeNvml(two_gpus())
    meter = EnergyMeter([0, 1], NvmlSession(fake))
    meter.start()
    fake.gpus[0]["energy_mj"] += 250_000
    fake.gpus[1]["energy_mj"] += 1_500
    assert meter.joules() == 251.5


def test_energy_meter_without_the_counter_measures_nothing():
    meter = EnergyMeter([0], NvmlSession(FakeNvml(two_gpus(),
                                                  broken={"nvmlDeviceGetTotalEnergyConsumption"})))  # fmt: skip
    meter.start()
    assert meter.joules() is None
    no_nvml = EnergyMeter([0], NvmlSession(FakeNvml(two_gpus(), init_error=True)))
    no_nvml.start()
    assert no_nvml.joules() is None


def test_the_real_probe_on_this_machine(tmp_path):
    session = NvmlSession()  # the real pynvml
    facts = static_facts(tmp_path, nvml=session)
    assert facts["cpu_cores"] >= 1.0
    assert facts["mem_gb"] > 0 and facts["disk_gb"] > 0
    assert facts["host"]
    if facts["nvml"]:  # a machine with a driver: the GPUs must be read
        assert facts["gpus"] and all(g["mem_gb"] for g in facts["gpus"])
    else:  # this CPU-only machine: no GPUs and the reason
        assert facts["gpus"] == [] and facts["nvml_error"]
    sample = live_sample(tmp_path, nvml=session)
    assert 0.0 <= sample["cpu_percent"] <= 100.0
    assert sample["load1"] >= 0 and sample["mem_free_gb"] > 0 and sample["disk_free_gb"] > 0
    assert len(sample["gpus"]) == len(facts["gpus"])


def test_the_default_session_is_shared():
    assert probes.default_session() is probes.default_session()
