"""Running a coroutine on the fastest event loop available: uvloop where it is
installed (a dependency on Linux and macOS), asyncio's own loop elsewhere.

uvloop's loop costs a fraction of asyncio's per wake-up and per socket operation; the
supervisor's steady-state cost (probes, scrapes, pidfd watches) is mostly that."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], *, use_uvloop: bool = True) -> T:
    """`asyncio.run(coro)`, on uvloop when `use_uvloop` and uvloop can be imported."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(coro)
    return asyncio.run(coro)
