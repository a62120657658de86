"""Simulated GPU memory across real worker processes: the static pool, CUDA graphs,
workers sharing a card, startup OOM and "Not enough memory"."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from backends.sim.gpumem import CONTEXT_MIB, GRAPH_MIB, GpuRegistry
from tests.conftest import ProcessGroups, free_port, wait_http

CARD = 40960


def _spawn(procs: ProcessGroups, gpus: Path, *extra: str,
           gpu: str = "0") -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    log = gpus.parent / f"sim-{port}.log"
    argv = [sys.executable, "-m", "backends.sim.worker", "--model-path", "m", "--is-embedding",
            "--host", "127.0.0.1", "--port", str(port), "--sim-load-s", "0.2",
            "--sim-warmup-s", "0.1", "--sim-gpu-mib", str(CARD), *extra]
    proc = procs.spawn(argv, log=log, env={"EMBEDOPS_SIM_GPU_DIR": str(gpus),
                                           "CUDA_VISIBLE_DEVICES": gpu})
    return proc, f"http://127.0.0.1:{port}", log


def _gpu(url: str) -> dict:
    return httpx.get(f"{url}/_sim/gpu", timeout=5).json()


def test_static_pool_graphs_and_card_sharing(procs: ProcessGroups, tmp_path: Path) -> None:
    gpus = tmp_path / "gpus"
    a, url_a, _ = _spawn(procs, gpus, "--mem-fraction-static", "0.45",
                         "--cuda-graph-backend-prefill", "disabled")
    b, url_b, _ = _spawn(procs, gpus, "--mem-fraction-static", "0.3", gpu="1")
    wait_http(f"{url_a}/v1/models", timeout=30)
    wait_http(f"{url_b}/v1/models", timeout=30)
    ga, gb = _gpu(url_a), _gpu(url_b)
    assert ga["used_mib"] == round(0.45 * CARD) + CONTEXT_MIB  # graphs off
    assert gb["used_mib"] == round(0.3 * CARD) + GRAPH_MIB["0.5.23"] + CONTEXT_MIB
    assert (ga["gpu_index"], gb["gpu_index"], ga["total_mib"]) == (0, 1, CARD)
    holders = {h.pid: h.used_mib for h in GpuRegistry(0, root=gpus).holders()}
    assert holders == {ga["pid"]: ga["used_mib"]}

    # A newcomer whose pool does not fit next to A on card 0 dies like a CUDA OOM ...
    c, _, log_c = _spawn(procs, gpus, "--mem-fraction-static", "0.6",
                         "--cuda-graph-backend-prefill", "disabled")
    assert c.wait(timeout=30) != 0
    assert "torch.OutOfMemoryError: CUDA out of memory." in log_c.read_text()
    # ... and fits once A is gone (its registry entry belongs to a dead process).
    os.killpg(a.pid, signal.SIGKILL)
    a.wait(timeout=10)
    d, url_d, _ = _spawn(procs, gpus, "--mem-fraction-static", "0.6",
                         "--cuda-graph-backend-prefill", "disabled")
    wait_http(f"{url_d}/v1/models", timeout=30)
    assert _gpu(url_d)["used_mib"] == round(0.6 * CARD) + CONTEXT_MIB
    assert d.poll() is None and b.poll() is None


def test_too_small_fraction_fails_at_startup(procs: ProcessGroups, tmp_path: Path) -> None:
    proc, _, log = _spawn(procs, tmp_path / "gpus", "--mem-fraction-static", "0.1")
    assert proc.wait(timeout=30) != 0
    text = log.read_text()
    assert "RuntimeError: Not enough memory. Please try to increase --mem-fraction-static." in text
    assert "Uvicorn running" not in text


def test_0_5_2_graph_memory_follows_disable_cuda_graph(procs: ProcessGroups,
                                                       tmp_path: Path) -> None:
    gpus = tmp_path / "gpus"
    _, on, _ = _spawn(procs, gpus, "--sim-sglang-version", "0.5.2", "--mem-fraction-static", "0.3")
    _, off, _ = _spawn(procs, gpus, "--sim-sglang-version", "0.5.2", "--mem-fraction-static", "0.3",
                       "--disable-cuda-graph", gpu="1")
    wait_http(f"{on}/v1/models", timeout=30)
    wait_http(f"{off}/v1/models", timeout=30)
    assert _gpu(on)["used_mib"] - _gpu(off)["used_mib"] == GRAPH_MIB["0.5.2"]
