"""backends.gpu against the real world: the installed pynvml (N/A without a driver,
real figures with one), and the simulated source over real HTTP on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from backends import gpu, procs
from tests.conftest import ProcessGroups, free_port, wait_http

NVML_REASON = gpu.nvml_available()


# --------------------------------------------------------------------------- NVML, real


@pytest.mark.skipif(NVML_REASON is None, reason="NVML works here; the N/A path needs a box without it")
async def test_real_nvml_missing_is_na_with_reason_and_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    src = gpu.NvmlGpuSource()
    with caplog.at_level("WARNING", logger="backends.gpu"):
        samples = [await src.sample() for _ in range(3)]
    for s in samples:
        assert s.devices == [] and s.processes == []
        assert s.error is not None and s.error.startswith("NVML unavailable: ")
        assert s.source == "nvml"
    warnings = [r for r in caplog.records if "NVML unavailable" in r.getMessage()]
    assert len(warnings) == 1
    assert gpu.attribute(samples[-1], {"w": {os.getpid()}}) == {"w": None}
    assert src.last_duration_s is not None and src.last_duration_s < 2.0
    await src.close()


def test_auto_picks_nvml_only_where_it_works() -> None:
    src = gpu.make_gpu_source("auto")
    assert isinstance(src, gpu.NvmlGpuSource if NVML_REASON is None else gpu.SimGpuSource)


@pytest.mark.gpu
@pytest.mark.skipif(NVML_REASON is not None, reason=f"no usable NVML: {NVML_REASON}")
async def test_real_nvml_sample() -> None:
    src = gpu.NvmlGpuSource()
    first = await src.sample()  # includes nvmlInit
    sample = await src.sample()
    assert first.error is None and sample.error is None
    assert sample.devices
    for d in sample.devices:
        assert d.total_mib is not None and d.total_mib > 0
        assert d.used_mib is not None and 0 <= d.used_mib <= d.total_mib
        assert d.name
        assert d.util_pct is None or 0 <= d.util_pct <= 100
    for p in sample.processes:
        assert p.used_mib is None or p.used_mib >= 0
    assert sample.duration_s < 0.5  # NVML calls are µs each (tui-and-style.md §3.4)
    print(json.dumps({"nvml_sample_s": sample.duration_s, "devices": len(sample.devices)}))
    await src.close()


# --------------------------------------------------------------------------- sim source over HTTP


class _Worker(BaseHTTPRequestHandler):
    body: ClassVar[dict[str, object]] = {}

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        data = json.dumps(self.body).encode() if self.path == "/_sim/gpu" else b"{}"
        self.send_response(200 if self.path == "/_sim/gpu" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_workers() -> Iterator[list[str]]:
    """Three loopback HTTP servers answering /_sim/gpu like sim workers do."""
    bodies = [
        {"gpu_index": 0, "total_mib": 81559, "used_mib": 30000, "pid": 1001, "util_pct": 30.0,
         "temperature_c": 50.0, "power_w": 150.0},
        {"gpu_index": 0, "total_mib": 81559, "used_mib": 20000, "pid": 1002, "util_pct": 80.0,
         "temperature_c": 55.0, "power_w": 200.0},
        {"gpu_index": 1, "total_mib": 40960, "used_mib": 9000, "pid": 2001, "util_pct": 10.0,
         "temperature_c": 40.0},
    ]
    servers = []
    for body in bodies:
        handler = type("H", (_Worker,), {"body": body})
        srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
    try:
        yield [f"http://127.0.0.1:{s.server_address[1]}/" for s in servers]
    finally:
        for srv in servers:
            srv.shutdown()
            srv.server_close()


async def test_sim_source_aggregates_per_card(fake_workers: list[str]) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    src = gpu.SimGpuSource([*fake_workers, dead], timeout_s=1.0)
    sample = await src.sample()
    assert sample.error is None and sample.source == "sim"
    card0, card1 = sample.devices
    assert (card0.index, card0.total_mib, card0.used_mib) == (0, 81559, 50000)
    assert card0.util_pct == 100.0  # 30 + 80, capped
    assert card0.temperature_c == 55.0 and card0.power_w == 350.0
    assert (card1.index, card1.total_mib, card1.used_mib) == (1, 40960, 9000)
    assert card1.power_w is None and "power_w" in card1.na
    assert sorted((p.gpu_index, p.pid, p.used_mib) for p in sample.processes) == [
        (0, 1001, 30000), (0, 1002, 20000), (1, 2001, 9000)]
    assert gpu.attribute(sample, {"a": {1000, 1001}, "b": {2001}, "c": {3}}) == {"a": 30000, "b": 9000, "c": 0}

    src.set_urls(fake_workers[2:])  # the fleet shrank
    assert [d.index for d in (await src.sample()).devices] == [1]
    src.set_urls([dead])
    nobody = await src.sample()
    assert nobody.devices == [] and nobody.error is not None and "1 tried" in nobody.error
    assert src.last_duration_s is not None and src.last_duration_s < 2.0
    await src.close()


@pytest.fixture
def groups(procs: ProcessGroups) -> ProcessGroups:
    """conftest's `procs` fixture under a name that does not shadow the module."""
    return procs


@pytest.mark.skipif(importlib.util.find_spec("backends.sim.worker") is None,
                    reason="backends.sim.worker not written yet (sim engineer)")
async def test_sim_source_reads_real_sim_worker(groups: ProcessGroups, tmp_path: Path) -> None:
    port = free_port()
    proc = groups.spawn(
        [sys.executable, "-m", "backends.sim.worker", "--model-path", "sim-qwen3", "--is-embedding",
         "--host", "127.0.0.1", "--port", str(port), "--sim-load-s", "0.1", "--sim-warmup-s", "0.1",
         "--sim-gpu-mib", "40960", "--sim-weights-mib", "7680"],
        env={"CUDA_VISIBLE_DEVICES": "1", "EMBEDOPS_SIM_GPU_DIR": str(tmp_path / "gpus")},
        log=tmp_path / "sim.log")
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/_sim/gpu", timeout=60)
    src = gpu.SimGpuSource([url])
    sample = await src.sample()
    await src.close()
    assert sample.error is None, (tmp_path / "sim.log").read_text()[-2000:]
    (card,) = sample.devices
    assert card.index == 1 and card.total_mib == 40960
    assert card.used_mib is not None and card.used_mib >= 7680
    (held,) = sample.processes
    # the memory is held by the scheduler child, as with real SGLang
    assert held.pid != proc.pid and held.pid in procs.process_tree(proc.pid)
    assert gpu.attribute(sample, {"w": procs.process_tree(proc.pid)}) == {"w": held.used_mib}
