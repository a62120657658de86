"""Fault switches of the simulated worker (``--sim-fault`` and ``POST /_sim/faults``).

Pure data and validation; the launcher and the scheduler child apply them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

BOOL_FAULTS = ("hang", "stall", "unstable", "nan", "wrong_dim", "orphan_child",
               "freeze_scheduler")
FLOAT_FAULTS = ("slow_ms", "error_rate", "leak_mib_s")
OPTIONAL_FLOAT_FAULTS = ("crash_after_s",)
START_ONLY_FAULTS = ("startup_fail",)
SCHEDULER_FAULTS = ("hang", "stall", "unstable", "crash_after_s", "slow_ms", "leak_mib_s")
"""The switches the scheduler child applies (sent to it over its pipe)."""


class FaultError(ValueError):
    """A fault name or value that does not exist or is out of range."""


@dataclass(frozen=True)
class Faults:
    """Current fault settings. Defaults mean "healthy"."""

    hang: bool = False
    """The forward batch in flight never completes: requests (and /health's request)
    hang; the scheduler watchdog kills the tree after --watchdog-timeout + 5 s."""
    stall: bool = False
    """Embedding requests never complete while /health (its 1-token request) still
    passes: the failure SGLang's own health check misses."""
    unstable: bool = False
    """A text seen before gets a different vector (cosine ≈ 0.856 to the first), unless
    --disable-radix-cache."""
    crash_after_s: float | None = None
    """The scheduler hits an exception this many seconds after the switch is set."""
    slow_ms: float = 0.0
    """Extra time per forward batch."""
    error_rate: float = 0.0
    """Fraction of embedding requests answered 500 with SGLang's error body."""
    nan: bool = False
    """Vectors are all NaN (serialised as ``NaN``)."""
    wrong_dim: bool = False
    """Vectors have half the configured dimension."""
    leak_mib_s: float = 0.0
    """GPU memory of the scheduler grows by this many MiB per second until CUDA OOM."""
    orphan_child: bool = False
    """Spawn a child in the worker's process group that ignores SIGTERM and outlives it."""
    freeze_scheduler: bool = False
    """SIGSTOP the scheduler child (SIGCONT when cleared)."""

    def to_json(self) -> dict[str, Any]:
        """The JSON object `GET /_sim/faults` returns."""
        return asdict(self)

    def scheduler_part(self) -> dict[str, Any]:
        """The switches the scheduler child needs."""
        d = self.to_json()
        return {k: d[k] for k in SCHEDULER_FAULTS}

    def updated(self, patch: Mapping[str, Any]) -> Faults:
        """A copy with `patch` applied; ``{"clear": true}`` resets everything first.

        Raises `FaultError` for unknown keys or bad values.
        """
        if not isinstance(patch, Mapping):
            raise FaultError("expected a JSON object")
        base = self
        changes: dict[str, Any] = {}
        for key, value in patch.items():
            if key == "clear":
                if not isinstance(value, bool):
                    raise FaultError("'clear' must be a boolean")
                if value:
                    base = Faults()
                continue
            changes[key] = _coerce(key, value)
        return replace(base, **changes)


def _coerce(key: str, value: Any) -> Any:
    if key in BOOL_FAULTS:
        if not isinstance(value, bool):
            raise FaultError(f"'{key}' must be a boolean")
        return value
    if key in FLOAT_FAULTS or key in OPTIONAL_FLOAT_FAULTS:
        if value is None and key in OPTIONAL_FLOAT_FAULTS:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise FaultError(f"'{key}' must be a number")
        v = float(value)
        if not math.isfinite(v) or v < 0:
            raise FaultError(f"'{key}' must be a finite number >= 0")
        if key == "error_rate" and v > 1:
            raise FaultError("'error_rate' must be between 0 and 1")
        return v
    if key in START_ONLY_FAULTS:
        raise FaultError(f"'{key}' can only be set at start (--sim-fault {key})")
    raise FaultError(f"unknown fault '{key}' (known: {', '.join(known_faults())})")


def known_faults() -> list[str]:
    """Every fault name accepted by ``--sim-fault``."""
    return [*BOOL_FAULTS, *FLOAT_FAULTS, *OPTIONAL_FLOAT_FAULTS, "startup-fail"]


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_fault_flags(specs: Iterable[str]) -> tuple[Faults, bool]:
    """``--sim-fault NAME[=VALUE]`` values → (faults, startup_fail).

    Names may use ``-`` or ``_``. A bare boolean name means true; a bare
    ``crash_after_s`` means 0 (crash at once). Raises `FaultError`.
    """
    faults = Faults()
    startup_fail = False
    for spec in specs:
        name, sep, raw = spec.partition("=")
        key = name.strip().replace("-", "_")
        raw = raw.strip()
        if key == "startup_fail":
            startup_fail = _parse_bool(key, raw) if sep else True
            continue
        value: Any
        if key in BOOL_FAULTS:
            value = _parse_bool(key, raw) if sep else True
        elif key in FLOAT_FAULTS or key in OPTIONAL_FLOAT_FAULTS:
            if not sep:
                if key in OPTIONAL_FLOAT_FAULTS:
                    value = 0.0
                else:
                    raise FaultError(f"'{key}' needs a value: {key}=NUMBER")
            elif key in OPTIONAL_FLOAT_FAULTS and raw.lower() in ("none", "null", ""):
                value = None
            else:
                try:
                    value = float(raw)
                except ValueError:
                    raise FaultError(f"'{key}' must be a number, got {raw!r}") from None
        else:
            raise FaultError(f"unknown fault '{name}' (known: {', '.join(known_faults())})")
        faults = faults.updated({key: value})
    return faults, startup_fail


def _parse_bool(key: str, raw: str) -> bool:
    low = raw.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise FaultError(f"'{key}' must be true or false, got {raw!r}")
