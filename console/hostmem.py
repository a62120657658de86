"""Host memory of the workers: RSS of each worker's process group, and what the host
has left.

The supervisor already scans the process table once per GPU sample for the whole
fleet (`backends.procs.group_pids_many`); `sample` takes those pid sets and reads each
process's resident set size (``/proc/PID/statm``, psutil elsewhere), plus
``psutil.virtual_memory().available``, in one call meant to run off the event loop
(`sample_async`; 64 workers of 3 processes: ~6 ms on a busy 2-core host). It is the
input of the host-RSS leak trend (`console.runtime.WorkerRuntime.fold_host`).

RSS of a group is the plain sum of its members' RSS: pages shared between members
(libraries, CUDA mappings) count once per member. The figure is for a *trend* (does
it keep growing?), where a constant over-count does not matter.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import psutil

MIB = 1024 * 1024


@dataclass(frozen=True)
class HostMemSample:
    """One reading: per-worker group RSS (MiB) and the host's available memory (MiB)."""

    rss_mib: dict[str, float] = field(default_factory=dict)
    """Worker name → summed RSS of its live processes; absent when none could be read."""
    available_mib: float | None = None
    """``psutil.virtual_memory().available``; None when it could not be read."""


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes(pid: int) -> int | None:
    """Resident set size of `pid` in bytes: ``/proc/PID/statm`` (a third of the cost of
    `psutil.Process`, which reads the start time first), else psutil; None when gone."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except FileNotFoundError:
        if os.path.isdir("/proc/self"):
            return None  # Linux: the process is gone
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except (psutil.Error, OSError):
        return None


def group_rss_mib(pids: Iterable[int]) -> float | None:
    """Summed RSS (MiB) of the processes in `pids` that can be read; None when none can."""
    values = [v for v in map(rss_bytes, pids) if v is not None]
    return sum(values) / MIB if values else None


def sample(groups: Mapping[str, Iterable[int]]) -> HostMemSample:
    """RSS of every worker's process group plus the host's available memory."""
    rss: dict[str, float] = {}
    for name, pids in groups.items():
        value = group_rss_mib(pids)
        if value is not None:
            rss[name] = value
    try:
        available: float | None = psutil.virtual_memory().available / MIB
    except (psutil.Error, OSError):
        available = None
    return HostMemSample(rss_mib=rss, available_mib=available)


async def sample_async(groups: Mapping[str, Iterable[int]]) -> HostMemSample:
    """`sample` off the event loop."""
    frozen = {name: tuple(pids) for name, pids in groups.items()}
    return await asyncio.to_thread(sample, frozen)


__all__ = ["HostMemSample", "group_rss_mib", "rss_bytes", "sample", "sample_async"]
