"""GPU observations: per-device memory/utilisation/temperature/power and per-process
memory, from NVML or from simulated workers.

Every failure becomes N/A (``None``) with a reason, never an exception (nvitop's
rule, reference/tui-and-style.md §4.3). NVML calls run on one dedicated daemon
thread with a timeout, because a wedged driver can block them for good: a call that
times out marks the source degraded, and no further call is queued behind it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

import orjson

from backends import http1

log = logging.getLogger(__name__)

MIB = 1024 * 1024
_T = TypeVar("_T")


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class GpuDevice:
    """One GPU. ``None`` means N/A; `na` says why, per field name."""

    index: int
    name: str | None
    uuid: str | None
    total_mib: int | None
    used_mib: int | None
    """Memory in use, driver-reserved memory excluded (NVML memory v2), as nvidia-smi."""
    util_pct: float | None
    temperature_c: float | None
    power_w: float | None
    na: Mapping[str, str] = field(default_factory=dict)
    """Field name → reason it is N/A. ``"processes"`` set: the per-process list of this
    device could not be read, so per-worker attribution is unknown."""

    @property
    def used_fraction(self) -> float | None:
        """used / total in [0, 1], or None."""
        if self.used_mib is None or not self.total_mib:
            return None
        return self.used_mib / self.total_mib


@dataclass(frozen=True)
class GpuProcess:
    """A process holding memory on a GPU (NVML reports host PIDs)."""

    gpu_index: int
    pid: int
    used_mib: int | None
    """None when the driver does not say (N/A, e.g. without permission or under MIG)."""


@dataclass(frozen=True)
class GpuSample:
    """One sweep of a source."""

    devices: list[GpuDevice]
    processes: list[GpuProcess]
    error: str | None
    """Why the whole sample is empty or partial (e.g. "NVML unavailable: ..."), else None."""
    source: str
    """"nvml" or "sim"."""
    duration_s: float = 0.0
    """Wall time the sweep took, thread hop included."""
    taken_at: float = 0.0
    """time.time() at the end of the sweep."""


@runtime_checkable
class GpuSource(Protocol):
    """Where GPU samples come from."""

    name: str

    async def sample(self) -> GpuSample:
        """Take one sample; never raises."""
        ...

    @property
    def last_duration_s(self) -> float | None:
        """Duration of the last `sample` call, None before the first."""
        ...

    async def close(self) -> None:
        """Release what the source holds."""
        ...


def attribute(sample: GpuSample, trees: Mapping[str, set[int]]) -> dict[str, int | None]:
    """GPU MiB per worker: the sum over the processes of its tree.

    Real SGLang holds its memory in the ``sglang::scheduler`` child, not the launcher
    (reference/sglang-observed.md), hence a tree, not a pid. A worker gets:

    * None when the sample has no per-process data (source failed, or some device's
      process list was unreadable) or when one of its processes' memory is N/A;
    * 0 when none of its processes holds GPU memory;
    * otherwise the sum over every device of the memory of its processes.
    """
    unknown = (sample.error is not None and not sample.devices) or any(
        "processes" in d.na for d in sample.devices)
    by_pid: dict[int, list[GpuProcess]] = {}
    for proc in sample.processes:
        by_pid.setdefault(proc.pid, []).append(proc)
    out: dict[str, int | None] = {}
    for worker, pids in trees.items():
        held = [p for pid in pids for p in by_pid.get(pid, ())]
        sizes = [p.used_mib for p in held]
        out[worker] = None if unknown or None in sizes else sum(s for s in sizes if s is not None)
    return out


# --------------------------------------------------------------------------- off-loop calls


class CallHung(RuntimeError):
    """An earlier call is still running on the worker thread."""

    def __init__(self, since_s: float) -> None:
        super().__init__(f"previous call still running after {since_s:.1f}s")
        self.since_s = since_s


class OffLoopCaller:
    """Runs blocking calls one at a time on a dedicated daemon thread, with a timeout.

    Calls queue in order. A call that outlives its timeout keeps the thread; until
    it returns, `call` raises `CallHung` at once instead of queueing more work behind
    it. The thread is a daemon so a wedged driver call cannot block interpreter exit.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stuck: concurrent.futures.Future[Any] | None = None
        self._stuck_since = 0.0
        self._lock = threading.Lock()

    @property
    def hung(self) -> bool:
        """A call that timed out is still running."""
        return self._stuck is not None and not self._stuck.done()

    def _run(self) -> None:
        while True:
            fn, fut = self._jobs.get()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting side
                fut.set_exception(exc)

    def submit(self, fn: Callable[[], _T]) -> concurrent.futures.Future[_T]:
        """Queue `fn` (raises `CallHung` while a timed-out call has not returned)."""
        with self._lock:
            if self.hung:
                raise CallHung(time.monotonic() - self._stuck_since)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            fut: concurrent.futures.Future[_T] = concurrent.futures.Future()
            self._jobs.put((fn, fut))
            return fut

    async def call(self, fn: Callable[[], _T], timeout_s: float) -> _T:
        """Run `fn` on the thread; `TimeoutError` after `timeout_s` (the call goes on,
        and `hung` stays True until it returns)."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[_T] = loop.create_future()

        def settle(done: concurrent.futures.Future[_T]) -> None:
            if waiter.done():  # timed out earlier: nobody waits for this any more
                return
            exc = done.exception()
            if exc is not None:
                waiter.set_exception(exc)
            else:
                waiter.set_result(done.result())

        def on_done(done: concurrent.futures.Future[_T]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(settle, done)

        fut = self.submit(fn)
        submitted = time.monotonic()
        fut.add_done_callback(on_done)
        try:
            return await asyncio.wait_for(waiter, timeout_s)
        except TimeoutError:
            with self._lock:
                if not fut.done() and not self.hung:
                    self._stuck, self._stuck_since = fut, submitted
            raise


# --------------------------------------------------------------------------- NVML


class NvmlUnavailable(RuntimeError):
    """NVML cannot be used on this machine (no driver, no library, init failed)."""


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _means_unsupported(exc: BaseException) -> bool:
    """The call does not exist in this driver/binding (as opposed to a device error)."""
    if isinstance(exc, (TypeError, AttributeError)):
        return True
    kind = type(exc).__name__
    return any(word in kind for word in ("FunctionNotFound", "NotSupported", "VersionMismatch"))


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc)


class NvmlGpuSource:
    """GPU source backed by NVML (``pynvml`` from nvidia-ml-py).

    Initialises NVML lazily on the first sample, on its own thread. When NVML is
    unavailable it logs one warning and returns samples with no devices and
    ``error="NVML unavailable: <reason>"``; it tries again at most every
    `retry_init_s` (a driver may be loaded later), silently.

    `nvml` replaces the ``pynvml`` module (tests inject a stand-in whose calls block).
    """

    name = "nvml"

    def __init__(self, *, timeout_s: float = 2.0, retry_init_s: float = 60.0, nvml: Any | None = None) -> None:
        self.timeout_s = timeout_s
        self.retry_init_s = retry_init_s
        self._nvml = nvml
        self._caller = OffLoopCaller("embedops-nvml")
        self._initialized = False
        self._unavailable: str | None = None
        self._next_init_at = 0.0
        self._warned_unavailable = False
        self._mem_v2: bool | None = None  # None: not tried yet
        self._last_duration_s: float | None = None
        self.degraded = False
        """The last call timed out or is still hung."""

    @property
    def last_duration_s(self) -> float | None:
        """Duration of the last `sample` call (seconds), None before the first."""
        return self._last_duration_s

    # -- runs on the NVML thread -------------------------------------------------------

    def _lib(self) -> Any:
        if self._nvml is None:
            try:
                import pynvml  # type: ignore[import-untyped]
            except Exception as exc:  # noqa: BLE001 - missing or broken binding
                raise NvmlUnavailable(f"cannot import pynvml: {exc}") from exc
            self._nvml = pynvml
        return self._nvml

    def _ensure_init(self) -> Any:
        if self._initialized:
            return self._nvml
        now = time.monotonic()
        if self._unavailable is not None and now < self._next_init_at:
            raise NvmlUnavailable(self._unavailable)
        try:
            nvml = self._lib()
            nvml.nvmlInit()
        except NvmlUnavailable as exc:
            self._unavailable, self._next_init_at = str(exc), now + self.retry_init_s
            raise
        except Exception as exc:  # noqa: BLE001 - NVMLError_LibraryNotFound, DriverNotLoaded, ...
            self._unavailable, self._next_init_at = _reason(exc), now + self.retry_init_s
            raise NvmlUnavailable(self._unavailable) from exc
        self._initialized, self._unavailable = True, None
        return nvml

    def _memory(self, nvml: Any, handle: Any) -> tuple[int, int]:
        """(total_mib, used_mib), v2 (reserved memory not counted) with v1 fallback."""
        if self._mem_v2 is not False and hasattr(nvml, "nvmlMemory_v2"):
            try:
                mem = nvml.nvmlDeviceGetMemoryInfo(handle, version=nvml.nvmlMemory_v2)
                self._mem_v2 = True
                return int(mem.total) // MIB, int(mem.used) // MIB
            except Exception as exc:  # noqa: BLE001 - inspected below
                if self._mem_v2 is not None or not _means_unsupported(exc):
                    raise
                self._mem_v2 = False  # old driver or binding: v1 from now on
        mem = nvml.nvmlDeviceGetMemoryInfo(handle)
        return int(mem.total) // MIB, int(mem.used) // MIB

    def _sweep(self) -> tuple[list[GpuDevice], list[GpuProcess]]:
        nvml = self._ensure_init()
        devices: list[GpuDevice] = []
        processes: list[GpuProcess] = []
        for index in range(int(nvml.nvmlDeviceGetCount())):
            device, held = self._device(nvml, index)
            devices.append(device)
            processes.extend(held)
        return devices, processes

    def _device(self, nvml: Any, index: int) -> tuple[GpuDevice, list[GpuProcess]]:
        """One device's fields; each one that fails is N/A with its reason."""
        na: dict[str, str] = {}

        def q(key: str, fn: Callable[[], _T]) -> _T | None:
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - each field fails alone
                na[key] = _reason(exc)
                return None

        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
        except Exception as exc:  # noqa: BLE001
            fields = ("name", "uuid", "total_mib", "used_mib", "util_pct", "temperature_c", "power_w",
                      "processes")
            return GpuDevice(index, None, None, None, None, None, None, None,
                             dict.fromkeys(fields, _reason(exc))), []
        name = q("name", lambda: _text(nvml.nvmlDeviceGetName(handle)))
        uuid = q("uuid", lambda: _text(nvml.nvmlDeviceGetUUID(handle)))
        mem = q("memory", lambda: self._memory(nvml, handle))
        if mem is None:
            na["total_mib"] = na["used_mib"] = na.pop("memory")
        util = q("util_pct", lambda: float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu))
        temp = q("temperature_c", lambda: float(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)))
        power = q("power_w", lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0)
        running = q("processes", lambda: list(nvml.nvmlDeviceGetComputeRunningProcesses(handle)))
        held = []
        for p in running or ():
            used = getattr(p, "usedGpuMemory", None)
            # pynvml maps NVML_VALUE_NOT_AVAILABLE to None; older ones leave 2**64-1
            mib = None if used is None or int(used) >= 2**63 else int(used) // MIB
            held.append(GpuProcess(gpu_index=index, pid=int(p.pid), used_mib=mib))
        device = GpuDevice(index=index, name=name, uuid=uuid,
                           total_mib=mem[0] if mem else None, used_mib=mem[1] if mem else None,
                           util_pct=util, temperature_c=temp, power_w=power, na=na)
        return device, held

    # -- event loop side -----------------------------------------------------------------

    async def sample(self) -> GpuSample:
        """One NVML sweep off the event loop, bounded by `timeout_s`; never raises."""
        t0 = time.perf_counter()
        devices: list[GpuDevice] = []
        processes: list[GpuProcess] = []
        error: str | None = None
        try:
            devices, processes = await self._caller.call(self._sweep, self.timeout_s)
            if self.degraded:
                log.info("NVML answers again")
            self.degraded = False
        except CallHung as exc:
            self.degraded = True
            error = f"NVML degraded: a call hung ({exc}); not calling again until it returns"
        except TimeoutError:
            if not self.degraded:
                log.warning("NVML call took longer than %.1fs; GPU figures N/A until it returns", self.timeout_s)
            self.degraded = True
            error = f"NVML degraded: call timed out after {self.timeout_s:.1f}s"
        except NvmlUnavailable as exc:
            if not self._warned_unavailable:
                log.warning("NVML unavailable: %s; GPU figures will show N/A", exc)
                self._warned_unavailable = True
            error = f"NVML unavailable: {exc}"
        except Exception as exc:  # noqa: BLE001 - never crash the caller
            error = f"NVML error: {_reason(exc)}"
        duration = time.perf_counter() - t0
        self._last_duration_s = duration
        return GpuSample(devices=devices, processes=processes, error=error, source=self.name,
                         duration_s=duration, taken_at=time.time())

    async def close(self) -> None:
        """nvmlShutdown, unless NVML is hung or was never initialised."""
        if not self._initialized or self._caller.hung:
            return
        nvml: Any = self._nvml
        try:
            await self._caller.call(lambda: nvml.nvmlShutdown(), self.timeout_s)
        except Exception as exc:  # noqa: BLE001
            log.debug("nvmlShutdown failed: %s", exc)
        self._initialized = False


# --------------------------------------------------------------------------- simulated


def _num(data: Mapping[str, Any], key: str, na: dict[str, str], where: str) -> float | None:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        na[key] = f"{where}: no {key}"
        return None
    return float(value)


class SimGpuSource:
    """GPU source for simulated workers: ``GET <worker>/_sim/gpu`` on each worker URL.

    Workers on the same simulated card (same ``gpu_index``) are summed: used memory
    and power add up, utilisation adds up (capped at 100 %), temperature is the
    hottest report, total is the card size they report. A worker that does not
    answer contributes nothing. Processes are reported under the scheduler pid the
    worker gives, as NVML would list the real ``sglang::scheduler``.
    """

    name = "sim"

    def __init__(self, urls: Iterable[str] = (), *, timeout_s: float = 1.0) -> None:
        self.timeout_s = timeout_s
        self._urls: tuple[str, ...] = ()
        # one kept-alive connection per worker, opened on first read
        self._clients: dict[str, http1.Client] = {}
        self.set_urls(urls)
        self._last_duration_s: float | None = None

    def set_urls(self, urls: Iterable[str]) -> None:
        """Replace the worker base URLs to read (the fleet changes)."""
        self._urls = tuple(dict.fromkeys(u.rstrip("/") for u in urls))
        for url in set(self._clients) - set(self._urls):
            self._clients.pop(url).close()

    @property
    def urls(self) -> tuple[str, ...]:
        """The worker base URLs read by `sample`."""
        return self._urls

    @property
    def last_duration_s(self) -> float | None:
        """Duration of the last `sample` call (seconds), None before the first."""
        return self._last_duration_s

    async def _read(self, url: str) -> Mapping[str, Any] | None:
        try:
            client = self._clients.get(url)
            if client is None:
                client = self._clients[url] = http1.Client(url)
            resp, _ = await client.request("GET", "/_sim/gpu", timeout_s=self.timeout_s,
                                           accept="application/json")
            if resp.status_code != 200:
                return None
            data = orjson.loads(resp.content)
        except (*http1.ERRORS, OSError, ValueError):  # ValueError: not http://, not JSON
            return None
        return data if isinstance(data, dict) and isinstance(data.get("gpu_index"), int) else None

    async def sample(self) -> GpuSample:
        """Read every worker concurrently and aggregate per simulated card; never raises."""
        t0 = time.perf_counter()
        urls = self._urls
        try:
            replies = await asyncio.gather(*(self._read(u) for u in urls))
        except Exception as exc:  # noqa: BLE001 - never crash the caller
            replies = []
            log.debug("sim GPU sample failed: %s", exc)
        cards: dict[int, list[Mapping[str, Any]]] = {}
        processes: list[GpuProcess] = []
        for url, data in zip(urls, replies, strict=True):
            if data is None:
                continue
            index = int(data["gpu_index"])
            cards.setdefault(index, []).append({**data, "_url": url})
            pid, used = data.get("pid"), data.get("used_mib")
            if isinstance(pid, int) and not isinstance(pid, bool):
                processes.append(GpuProcess(index, pid, int(used) if isinstance(used, (int, float)) else None))
        devices = [self._card(index, reports) for index, reports in sorted(cards.items())]
        answered = sum(len(r) for r in cards.values())
        error = None
        if urls and not answered:
            error = f"no simulated worker answered /_sim/gpu ({len(urls)} tried)"
        duration = time.perf_counter() - t0
        self._last_duration_s = duration
        return GpuSample(devices=devices, processes=processes, error=error, source=self.name,
                         duration_s=duration, taken_at=time.time())

    @staticmethod
    def _card(index: int, reports: list[Mapping[str, Any]]) -> GpuDevice:
        na: dict[str, str] = {}
        totals: list[float] = []
        used: list[float] = []
        util: list[float] = []
        temp: list[float] = []
        power: list[float] = []
        for r in reports:
            where = str(r["_url"])
            for key, bucket in (("total_mib", totals), ("used_mib", used), ("util_pct", util),
                                ("temperature_c", temp), ("power_w", power)):
                value = _num(r, key, na, where)
                if value is not None:
                    bucket.append(value)
        partial_used = len(used) != len(reports)  # a partial sum would understate
        device = GpuDevice(
            index=index, name="Simulated GPU", uuid=f"SIM-GPU-{index}",
            total_mib=int(max(totals)) if totals else None,
            used_mib=int(sum(used)) if used and not partial_used else None,
            util_pct=min(100.0, sum(util)) if util else None,
            temperature_c=max(temp) if temp else None,
            power_w=sum(power) if power else None)
        reasons = {k: v for k, v in na.items() if getattr(device, k) is None}
        return dataclasses.replace(device, na=reasons)

    async def close(self) -> None:
        """Close the connections to the workers."""
        for client in self._clients.values():
            client.close()
        self._clients.clear()


# --------------------------------------------------------------------------- factory


def nvml_available(timeout_s: float = 2.0) -> str | None:
    """None when NVML initialises on this machine, else the reason it does not.

    Bounded: the check runs on a daemon thread joined for at most `timeout_s`.
    """
    result: list[str | None] = []

    def probe() -> None:
        try:
            import pynvml
            pynvml.nvmlInit()
            pynvml.nvmlShutdown()
            result.append(None)
        except Exception as exc:  # noqa: BLE001
            result.append(_reason(exc))

    thread = threading.Thread(target=probe, name="embedops-nvml-probe", daemon=True)
    thread.start()
    thread.join(timeout_s)
    return result[0] if result else f"NVML init did not return within {timeout_s:.1f}s"


def make_gpu_source(kind: Literal["nvml", "sim", "auto"], *, sim_urls: Iterable[str] = (),
                    timeout_s: float = 2.0) -> NvmlGpuSource | SimGpuSource:
    """The GPU source for `kind`: "nvml", "sim", or "auto" (NVML when it initialises
    on this machine, else the simulated source)."""
    if kind == "nvml":
        return NvmlGpuSource(timeout_s=timeout_s)
    if kind == "sim":
        return SimGpuSource(sim_urls)
    if kind == "auto":
        reason = nvml_available(timeout_s)
        if reason is None:
            return NvmlGpuSource(timeout_s=timeout_s)
        log.info("NVML not usable (%s): using the simulated GPU source", reason)
        return SimGpuSource(sim_urls)
    raise ValueError(f"unknown GPU source kind {kind!r} (nvml, sim or auto)")


__all__ = [
    "MIB", "CallHung", "GpuDevice", "GpuProcess", "GpuSample", "GpuSource", "NvmlGpuSource",
    "NvmlUnavailable", "OffLoopCaller", "SimGpuSource", "attribute", "make_gpu_source", "nvml_available",
]
