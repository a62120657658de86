"""Simulated GPU memory: SGLang's defaults, the static pool, and the per-card registry."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from backends.sim import gpumem as gm

H100 = 81559


def test_default_mem_fraction_matches_sglang() -> None:
    assert gm.default_mem_fraction("0.5.2", H100) == 0.874
    f = gm.default_mem_fraction("0.5.23", H100, chunked=8192)
    assert 0.82 <= f <= 0.84
    # small cards reserve less: (24 GiB - 2.9 GiB) / 24 GiB
    assert gm.default_mem_fraction("0.5.2", 24 * 1024) == 0.879


def test_default_chunked_prefill_by_card_size() -> None:
    assert gm.default_chunked_prefill("0.5.2", H100) == 8192
    assert gm.default_chunked_prefill("0.5.2", 24 * 1024) == 2048
    assert gm.default_chunked_prefill("0.5.23", 40 * 1024) == 4096
    assert gm.default_chunked_prefill("0.5.23", 200 * 1024) == 16384


def test_plan_static_pool_is_fraction_of_the_card() -> None:
    plan = gm.plan_memory(version="0.5.23", total_mib=H100, weights_mib=7680, mem_fraction=0.3,
                          cuda_graph=False)
    assert plan.static_mib == round(0.3 * H100)
    assert plan.graph_mib == 0
    assert plan.used_mib == plan.static_mib + gm.CONTEXT_MIB  # 25,130 MiB observed
    assert abs(plan.used_mib - 25130) < 50
    tokens = plan.kv_mib * 1024 * 1024 // gm.KV_BYTES_PER_TOKEN
    assert plan.max_total_num_tokens == tokens


def test_graphs_add_memory_per_version() -> None:
    a = gm.plan_memory(version="0.5.2", total_mib=H100, weights_mib=7680, mem_fraction=0.5,
                       cuda_graph=True)
    b = gm.plan_memory(version="0.5.23", total_mib=H100, weights_mib=7680, mem_fraction=0.5,
                       cuda_graph=True)
    assert a.graph_mib == gm.GRAPH_MIB["0.5.2"] and b.graph_mib == gm.GRAPH_MIB["0.5.23"]
    assert a.used_mib == a.static_mib + a.graph_mib + gm.CONTEXT_MIB


def test_max_total_tokens_caps_the_pool() -> None:
    plan = gm.plan_memory(version="0.5.23", total_mib=H100, weights_mib=7680, mem_fraction=0.8,
                          cuda_graph=False, max_total_tokens=1000)
    assert plan.max_total_num_tokens == 1000
    assert plan.kv_mib == 141  # ceil(1000 × 144 KiB)


def test_too_small_fraction_is_not_enough_memory() -> None:
    with pytest.raises(gm.NotEnoughMemory, match="increase --mem-fraction-static"):
        gm.plan_memory(version="0.5.23", total_mib=H100, weights_mib=7680, mem_fraction=0.05,
                       cuda_graph=False)


def test_oom_message_reads_like_pytorch() -> None:
    msg = gm.oom_message(gpu_index=1, total_mib=H100, free_mib=300, alloc_mib=2048,
                         process_mib=9000)
    assert msg.startswith("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.")
    assert "GPU 1 has a total capacity of 79.65 GiB of which 300.00 MiB is free" in msg


def test_registry_counts_live_holders_and_drops_dead_ones(tmp_path: Path) -> None:
    reg = gm.GpuRegistry(3, root=tmp_path)
    me = os.getpid()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with reg.lock():
        reg.write(me, 1000, H100, "scheduler", 30000)
    # A file left by a process that is gone (its create_time cannot match any more).
    (reg.dir / f"{dead.pid}.json").write_text(
        f'{{"pid": {dead.pid}, "create_time": 1.0, "used_mib": 5000}}')
    holders = reg.holders()
    assert [(h.pid, h.used_mib, h.role, h.port) for h in holders] == [(me, 1000, "scheduler", 30000)]
    assert not (reg.dir / f"{dead.pid}.json").exists()
    assert reg.used_by_others(me) == 0
    assert reg.used_by_others(1) == 1000
    reg.write(me, 1500, H100, "scheduler")
    assert reg.holders()[0].used_mib == 1500
    reg.remove(me)
    assert reg.holders() == []


def test_registry_root_follows_the_environment(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    monkeypatch.setenv(gm.ENV_DIR, str(tmp_path))
    assert gm.registry_root() == tmp_path
    assert gm.GpuRegistry(2).dir == tmp_path / "gpu2"
    monkeypatch.delenv(gm.ENV_DIR)
    assert gm.registry_root().name == "embedops-sim-gpu"
