"""Simulated GPU memory: SGLang's mem-fraction heuristics, the static pool, and a
registry of the simulated workers holding memory on each simulated card.

Registry layout: ``$EMBEDOPS_SIM_GPU_DIR/gpu<index>/<pid>.json`` (default directory
``<system temp>/embedops-sim-gpu``), one file per holder process, written atomically:
``{"pid", "create_time", "gpu_index", "used_mib", "total_mib", "role", "port"}``.
Files of dead processes (or of a reused pid) are ignored and removed when seen.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import psutil

KV_BYTES_PER_TOKEN = 36 * 8 * 128 * 2 * 2
"""Qwen3-4B: 36 layers × 8 KV heads × head_dim 128 × (K and V) × bf16 = 144 KiB."""
CONTEXT_MIB = 662
"""CUDA context + activation workspace on top of the static pool (observed: the
scheduler held 25,130 MiB at --mem-fraction-static 0.3 on an 81,559 MiB H100)."""
GRAPH_MIB = {"0.5.2": 2560, "0.5.23": 1536}
"""Memory of captured CUDA graphs when graphs are on (0.5.2: --disable-cuda-graph
turns them off; 0.5.23: --cuda-graph-backend-prefill disabled)."""
ORPHAN_MIB = 1024
"""Memory an ``orphan_child`` keeps holding after its worker is gone."""
ENV_DIR = "EMBEDOPS_SIM_GPU_DIR"


def default_chunked_prefill(version: str, gpu_mib: int) -> int:
    """SGLang's `--chunked-prefill-size` default for a card of `gpu_mib` MiB."""
    gb = gpu_mib / 1024
    if version == "0.5.2":
        return 2048 if gb < 35 else 8192 if gb < 160 else 16384
    if gb < 20:
        return 2048
    if gb < 60:
        return 4096
    return 8192 if gb < 160 else 16384


def default_mem_fraction(version: str, gpu_mib: int, *, tp: int = 1, pp: int = 1,
                         chunked: int = 8192, graphs: bool = True) -> float:
    """SGLang's derived `--mem-fraction-static` (sglang-surface.md §1.3)."""
    par = tp * pp
    if version == "0.5.2":
        if gpu_mib < 35 * 1024:
            reserved = (2.8 + par / 10) * 1024
        elif gpu_mib < 90 * 1024:
            reserved = (9.5 + par / 2) * 1024
        elif gpu_mib < 160 * 1024:
            reserved = (12 + par / 2) * 1024
        else:
            reserved = 32 * 1024
    else:
        graph_reserve = 256 * 2 + (20 * 8 if graphs else 0)
        reserved = 512 + max(chunked, 2048) * 1.5 + par / 8 * 1024 + graph_reserve
        if gpu_mib > 60 * 1024:
            reserved = max(reserved, 10 * 1024)
    return round((gpu_mib - reserved) / gpu_mib, 3)


class NotEnoughMemory(RuntimeError):
    """The static fraction leaves no room for the KV cache."""


class CudaOutOfMemory(RuntimeError):
    """The simulated card has no room for an allocation."""


@dataclass(frozen=True)
class MemoryPlan:
    """Where one worker's GPU memory goes."""

    total_mib: int
    weights_mib: int
    kv_mib: int
    graph_mib: int
    mem_fraction_static: float
    max_total_num_tokens: int
    context_mib: int = CONTEXT_MIB

    @property
    def static_mib(self) -> int:
        """Weights + KV pool: what --mem-fraction-static sizes."""
        return self.weights_mib + self.kv_mib

    @property
    def used_mib(self) -> int:
        """What nvidia-smi would list for the scheduler process."""
        return self.static_mib + self.graph_mib + self.context_mib


def plan_memory(*, version: str, total_mib: int, weights_mib: int, mem_fraction: float,
                cuda_graph: bool, max_total_tokens: int | None = None) -> MemoryPlan:
    """Size the static pool as `mem_fraction` × the card. Raises `NotEnoughMemory`."""
    static_target = round(mem_fraction * total_mib)
    kv_budget = static_target - weights_mib
    tokens = kv_budget * 1024 * 1024 // KV_BYTES_PER_TOKEN if kv_budget > 0 else 0
    if tokens <= 0:
        raise NotEnoughMemory("Not enough memory. Please try to increase --mem-fraction-static.")
    kv_mib = kv_budget
    if max_total_tokens is not None and 0 < max_total_tokens < tokens:
        tokens = max_total_tokens
        kv_mib = math.ceil(tokens * KV_BYTES_PER_TOKEN / (1024 * 1024))
    graph = GRAPH_MIB.get(version, 0) if cuda_graph else 0
    return MemoryPlan(total_mib=total_mib, weights_mib=weights_mib, kv_mib=kv_mib,
                      graph_mib=graph, mem_fraction_static=mem_fraction,
                      max_total_num_tokens=int(tokens))


def _fmt_size(mib: float) -> str:
    return f"{mib / 1024:.2f} GiB" if mib >= 1024 else f"{mib:.2f} MiB"


def oom_message(*, gpu_index: int, total_mib: int, free_mib: float, alloc_mib: float,
                process_mib: float) -> str:
    """PyTorch's CUDA OOM message for the simulated card."""
    return (
        f"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate {_fmt_size(alloc_mib)}. "
        f"GPU {gpu_index} has a total capacity of {_fmt_size(total_mib)} of which "
        f"{_fmt_size(max(free_mib, 0.0))} is free. Including non-PyTorch memory, this process "
        f"has {_fmt_size(process_mib)} memory in use. Of the allocated memory "
        f"{_fmt_size(max(process_mib - CONTEXT_MIB, 0))} is allocated by PyTorch, and "
        "20.00 MiB is reserved by PyTorch but unallocated. If reserved but unallocated memory "
        "is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid "
        "fragmentation.  See documentation for Memory Management  "
        "(https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)"
    )


@dataclass(frozen=True)
class Holder:
    """A live process holding simulated memory on a card."""

    pid: int
    used_mib: int
    total_mib: int
    role: str
    port: int | None
    create_time: float


def registry_root() -> Path:
    """Directory of the per-card registries."""
    env = os.environ.get(ENV_DIR)
    return Path(env) if env else Path(tempfile.gettempdir()) / "embedops-sim-gpu"


def _create_time(pid: int) -> float | None:
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return None
        return p.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


class GpuRegistry:
    """The simulated workers holding memory on one simulated card."""

    def __init__(self, gpu_index: int, root: Path | None = None) -> None:
        self.gpu_index = gpu_index
        self.dir = (root or registry_root()) / f"gpu{gpu_index}"

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive lock for check-then-register sequences."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def holders(self) -> list[Holder]:
        """Live holders on this card; stale files are removed."""
        out: list[Holder] = []
        if not self.dir.is_dir():
            return out
        for path in self.dir.glob("*.json"):
            try:
                d = orjson.loads(path.read_bytes())
                pid = int(d["pid"])
                recorded = float(d["create_time"])
            except (OSError, ValueError, KeyError, TypeError, orjson.JSONDecodeError):
                continue
            actual = _create_time(pid)
            if actual is None or abs(actual - recorded) > 0.5:
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            out.append(Holder(pid=pid, used_mib=int(d.get("used_mib", 0)),
                              total_mib=int(d.get("total_mib", 0)), role=str(d.get("role", "")),
                              port=d.get("port"), create_time=recorded))
        return out

    def used_by_others(self, pid: int) -> int:
        """MiB held on this card by live processes other than `pid`."""
        return sum(h.used_mib for h in self.holders() if h.pid != pid)

    def write(self, pid: int, used_mib: int, total_mib: int, role: str,
              port: int | None = None) -> None:
        """Record (or update) `pid`'s usage."""
        ct = _create_time(pid)
        if ct is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        data = orjson.dumps({"pid": pid, "create_time": ct, "gpu_index": self.gpu_index,
                             "used_mib": int(used_mib), "total_mib": int(total_mib),
                             "role": role, "port": port})
        tmp = self.dir / f".{pid}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, self.dir / f"{pid}.json")

    def remove(self, pid: int) -> None:
        """Forget `pid` (memory released)."""
        with contextlib.suppress(OSError):
            (self.dir / f"{pid}.json").unlink()
