"""Host memory of the workers: RSS of each worker's process group, and what the host
has left.

The supervisor already scans the process table once per GPU sample for the whole
fleet (`backends.procs.group_pids_many`); `sample` takes those pid sets and reads each
process's resident set size with psutil, plus ``psutil.virtual_memory().available``,
in one call meant to run off the event loop (`sample_async`). It is the input of the
host-RSS leak trend (`console.runtime.WorkerRuntime.fold_host`).

RSS of a group is the plain sum of its members' RSS: pages shared between members
(libraries, CUDA mappings) count once per member. The figure is for a *trend* (does
it keep growing?), where a constant over-count does not matter.
"""

from __future__ import annotations

import asyncio
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


def group_rss_mib(pids: Iterable[int]) -> float | None:
    """Summed RSS (MiB) of the processes in `pids` that can be read; None when none can."""
    total = 0
    seen = False
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
            seen = True
        except (psutil.Error, OSError):
            continue
    return total / MIB if seen else None


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
    """`sample` off the event loop (~20 µs per process)."""
    frozen = {name: tuple(pids) for name, pids in groups.items()}
    return await asyncio.to_thread(sample, frozen)


__all__ = ["HostMemSample", "group_rss_mib", "sample", "sample_async"]
