"""backends.gpu logic that needs no GPU: attribution, the off-loop caller's timeout
and no-pile-up rule, and the NVML source's field mapping and failure handling
driven by a stand-in `pynvml` (real NVML cannot be made to fail or hang on demand)."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from backends import gpu
from backends.gpu import GpuDevice, GpuProcess, GpuSample

MIB = gpu.MIB


def _sample(processes: list[GpuProcess], *, error: str | None = None,
            na: dict[str, str] | None = None) -> GpuSample:
    dev = GpuDevice(0, "H100", "GPU-0", 81559, 30000, 50.0, 40.0, 300.0, na or {})
    return GpuSample(devices=[dev], processes=processes, error=error, source="test")


# --------------------------------------------------------------------------- attribute


def test_attribute_sums_the_tree_across_devices() -> None:
    sample = _sample([GpuProcess(0, 101, 25130), GpuProcess(1, 101, 100), GpuProcess(0, 202, 7000),
                      GpuProcess(0, 999, 5)])
    trees = {"a": {100, 101, 102}, "b": {200, 202}, "idle": {300}}
    assert gpu.attribute(sample, trees) == {"a": 25230, "b": 7000, "idle": 0}


def test_attribute_na_process_memory_makes_worker_unknown() -> None:
    sample = _sample([GpuProcess(0, 101, None), GpuProcess(0, 102, 10), GpuProcess(0, 202, 5)])
    assert gpu.attribute(sample, {"a": {101, 102}, "b": {202}}) == {"a": None, "b": 5}


def test_attribute_unknown_when_source_failed_or_list_unreadable() -> None:
    failed = GpuSample(devices=[], processes=[], error="NVML unavailable: x", source="nvml")
    assert gpu.attribute(failed, {"a": {1}}) == {"a": None}
    unreadable = _sample([GpuProcess(0, 1, 10)], na={"processes": "Insufficient Permissions"})
    assert gpu.attribute(unreadable, {"a": {1}, "b": {2}}) == {"a": None, "b": None}
    empty_ok = GpuSample(devices=[], processes=[], error=None, source="sim")
    assert gpu.attribute(empty_ok, {"a": {1}}) == {"a": 0}


def test_used_fraction() -> None:
    assert _sample([]).devices[0].used_fraction == pytest.approx(30000 / 81559)
    assert GpuDevice(0, None, None, None, 5, None, None, None).used_fraction is None


# --------------------------------------------------------------------------- off-loop caller


async def test_caller_times_out_and_does_not_pile_up() -> None:
    caller = gpu.OffLoopCaller("test-caller")
    release = threading.Event()
    calls: list[float] = []

    def blocking() -> str:
        calls.append(time.monotonic())
        release.wait(10)
        return "late"

    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        await caller.call(blocking, 0.2)
    assert 0.15 <= time.monotonic() - t0 < 5
    assert caller.hung
    threads_before = threading.active_count()
    for _ in range(3):
        with pytest.raises(gpu.CallHung):
            await caller.call(lambda: "queued", 0.2)
    assert threading.active_count() == threads_before  # no thread per call
    assert len(calls) == 1

    release.set()
    deadline = time.monotonic() + 5
    while caller.hung and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert await caller.call(lambda: 42, 1.0) == 42  # recovered on the same thread


async def test_caller_serves_concurrent_calls_in_turn() -> None:
    caller = gpu.OffLoopCaller("test-caller")

    def slow(value: int) -> int:
        time.sleep(0.05)
        return value

    results = await asyncio.gather(*(caller.call(lambda v=v: slow(v), 5.0) for v in range(3)))
    assert results == [0, 1, 2]
    assert not caller.hung


async def test_caller_propagates_exceptions() -> None:
    caller = gpu.OffLoopCaller("test-caller")

    def boom() -> None:
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        await caller.call(boom, 1.0)
    assert not caller.hung


# --------------------------------------------------------------------------- NVML stand-in


class NVMLError(Exception):
    pass


class NVMLError_FunctionNotFound(NVMLError):  # pynvml's class naming
    pass


class FakeNvml:
    """The subset of `pynvml` the source calls, with switchable failures."""

    NVML_TEMPERATURE_GPU = 0
    nvmlMemory_v2 = 0x02000028

    def __init__(self, *, devices: int = 1, v2: bool = True, fail: set[str] | None = None,
                 block_s: float = 0.0, init_error: Exception | None = None) -> None:
        self.devices, self.v2, self.fail = devices, v2, fail or set()
        self.block_s, self.init_error = block_s, init_error
        self.init_calls = 0
        self.count_calls = 0

    def _maybe_fail(self, name: str) -> None:
        if name in self.fail:
            raise NVMLError(f"{name}: Not Supported")

    def nvmlInit(self) -> None:
        self.init_calls += 1
        if self.init_error is not None:
            raise self.init_error

    def nvmlShutdown(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        self.count_calls += 1
        if self.block_s:
            time.sleep(self.block_s)
        return self.devices

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        self._maybe_fail(f"handle{i}")
        return i

    def nvmlDeviceGetName(self, h: int) -> bytes:
        self._maybe_fail("name")
        return b"NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetUUID(self, h: int) -> str:
        return f"GPU-{h}"

    def nvmlDeviceGetMemoryInfo(self, h: int, version: int | None = None) -> Any:
        self._maybe_fail("memory")
        if version is not None:
            if not self.v2:
                raise NVMLError_FunctionNotFound("Function Not Found")
            return SimpleNamespace(total=81559 * MIB, used=25130 * MIB, reserved=480 * MIB)
        return SimpleNamespace(total=81559 * MIB, used=(25130 + 480) * MIB)

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        self._maybe_fail("util")
        return SimpleNamespace(gpu=87, memory=40)

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
        self._maybe_fail("temp")
        return 61

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        self._maybe_fail("power")
        return 312_500  # mW

    def nvmlDeviceGetComputeRunningProcesses(self, h: int) -> list[Any]:
        self._maybe_fail("procs")
        return [SimpleNamespace(pid=4242, usedGpuMemory=25130 * MIB),
                SimpleNamespace(pid=4343, usedGpuMemory=None)]


async def test_nvml_sweep_maps_fields_with_memory_v2() -> None:
    src = gpu.NvmlGpuSource(nvml=FakeNvml(devices=2))
    sample = await src.sample()
    assert sample.error is None and sample.source == "nvml"
    assert len(sample.devices) == 2
    d = sample.devices[0]
    assert (d.index, d.name, d.uuid) == (0, "NVIDIA H100 80GB HBM3", "GPU-0")
    assert (d.total_mib, d.used_mib) == (81559, 25130)  # reserved not counted
    assert (d.util_pct, d.temperature_c, d.power_w) == (87.0, 61.0, 312.5)
    assert d.na == {}
    assert GpuProcess(0, 4242, 25130) in sample.processes
    assert GpuProcess(1, 4343, None) in sample.processes  # N/A stays N/A
    assert src.last_duration_s is not None and src.last_duration_s == sample.duration_s


async def test_nvml_memory_falls_back_to_v1() -> None:
    src = gpu.NvmlGpuSource(nvml=FakeNvml(v2=False))
    d = (await src.sample()).devices[0]
    assert d.used_mib == 25130 + 480 and "used_mib" not in d.na


async def test_nvml_field_failures_become_na_with_reason() -> None:
    src = gpu.NvmlGpuSource(nvml=FakeNvml(devices=2, fail={"temp", "power", "procs", "memory", "handle1"}))
    sample = await src.sample()
    assert sample.error is None
    d0, d1 = sample.devices
    assert d0.util_pct == 87.0 and d0.name is not None
    assert d0.temperature_c is None and "Not Supported" in d0.na["temperature_c"]
    assert d0.power_w is None and d0.total_mib is None and d0.used_mib is None
    assert {"power_w", "total_mib", "used_mib", "processes"} <= d0.na.keys()
    assert d1.name is None and "handle1" in d1.na["name"]
    assert sample.processes == []
    assert gpu.attribute(sample, {"w": {4242}}) == {"w": None}


async def test_nvml_init_failure_warns_once_and_retries_later(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeNvml(init_error=NVMLError("Driver Not Loaded"))
    src = gpu.NvmlGpuSource(nvml=fake, retry_init_s=0.2)
    with caplog.at_level("WARNING", logger="backends.gpu"):
        samples = [await src.sample() for _ in range(3)]
    assert all(s.error == "NVML unavailable: Driver Not Loaded" and s.devices == [] for s in samples)
    assert fake.init_calls == 1  # not retried on every tick
    assert len([r for r in caplog.records if "NVML unavailable" in r.getMessage()]) == 1
    fake.init_error = None
    await asyncio.sleep(0.25)
    assert (await src.sample()).error is None  # driver came back
    assert fake.init_calls == 2


async def test_nvml_hang_degrades_without_piling_up(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeNvml(block_s=1.0)
    src = gpu.NvmlGpuSource(nvml=fake, timeout_s=0.2)
    t0 = time.monotonic()
    first = await src.sample()
    assert first.error is not None and "timed out" in first.error
    assert first.devices == [] and src.degraded
    assert first.duration_s < 0.9  # did not wait for the hung call
    second = await src.sample()
    assert second.error is not None and "degraded" in second.error
    assert fake.count_calls == 1  # nothing queued behind the hung call
    fake.block_s = 0.0
    deadline = t0 + 10
    while time.monotonic() < deadline:
        third = await src.sample()
        if third.error is None:
            break
        await asyncio.sleep(0.05)
    assert third.error is None and len(third.devices) == 1
    assert not src.degraded
    await src.close()


async def test_unknown_kind_rejected() -> None:
    with pytest.raises(ValueError, match="unknown GPU source"):
        gpu.make_gpu_source("cuda")  # type: ignore[arg-type]
    assert isinstance(gpu.make_gpu_source("sim", sim_urls=["http://127.0.0.1:1/"]), gpu.SimGpuSource)
    assert isinstance(gpu.make_gpu_source("nvml"), gpu.NvmlGpuSource)
    assert isinstance(gpu.make_gpu_source("sim"), gpu.GpuSource)
