"""Plain data shared by every layer: worker specs, states, snapshots, alerts, events.

Nothing here does I/O or imports a UI; `backends/` may import this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Engine(str, Enum):
    """What program a worker runs."""

    SGLANG = "sglang"  #: `python -m sglang.launch_server` (real SGLang, needs a GPU)
    SIM = "sim"  #: `python -m backends.sim.worker` (the simulated worker)


@dataclass(frozen=True)
class WorkerSpec:
    """Everything needed to launch one embedding worker.

    Built by `console.config` from `fleet.toml`; turned into an argv by
    `backends.sglang.build_launch`. `None` means "leave SGLang's own default".
    """

    name: str
    """Unique worker name within the fleet (e.g. ``gpu0-a``)."""
    port: int
    """HTTP port of the worker on `host`."""
    model_path: str
    """`--model-path`: a local directory (real SGLang) or any label (sim)."""
    engine: Engine = Engine.SGLANG
    """Which program to launch."""
    host: str = "127.0.0.1"
    """Address the worker binds to."""
    gpu: int | None = None
    """GPU index exported as `CUDA_VISIBLE_DEVICES`; `None` leaves it unset."""
    served_model_name: str | None = None
    """`--served-model-name`; clients send this as `model`."""
    mem_fraction_static: float | None = None
    """`--mem-fraction-static`, in (0, 1)."""
    cuda_graph: bool | None = None
    """False adds the version's way of disabling CUDA graphs; None/True leaves them on."""
    max_running_requests: int | None = None
    """`--max-running-requests`."""
    chunked_prefill_size: int | None = None
    """`--chunked-prefill-size` (-1 disables chunking)."""
    context_length: int | None = None
    """`--context-length`."""
    api_key: str | None = None
    """Resolved bearer key (`--api-key`); never shown unmasked."""
    dimension: int = 2560
    """Expected embedding vector length (Qwen3-Embedding-4B: 2560)."""
    extra_args: tuple[str, ...] = ()
    """Further SGLang flags, validated against the installed version's catalogue."""
    env: tuple[tuple[str, str], ...] = ()
    """Extra environment variables for the worker process."""

    @property
    def url(self) -> str:
        """Base URL of the worker's HTTP server."""
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True)
class LaunchCommand:
    """A ready-to-exec worker command: argv plus the environment additions."""

    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)


class WorkerState(str, Enum):
    """Where a worker is in its lifecycle (see `console.lifecycle` for the rules).

    Routed (registered in the balancer): `READY`, `DEGRADED`. Alive but not routed:
    `STARTING`, `EJECTED`, `DRAINING`, `DRAINED`, `RESTARTING`, `STOPPING`. No process:
    `CRASHED` (momentary), `BACKOFF`, `STOPPED`, `FAILED`.
    """

    STARTING = "starting"  #: process launched; port closed or /health 503; not yet probed OK
    READY = "ready"  #: probe passes; registered in the balancer
    DEGRADED = "degraded"  #: probe slow (or failing below the ejection rule); still routed
    EJECTED = "ejected"  #: removed from the balancer after a failed probe
    RESTARTING = "restarting"  #: hung or failed start: old generation being killed
    DRAINING = "draining"  #: removed from the balancer, waiting for in-flight = 0 (bounded)
    DRAINED = "drained"  #: alive, not routed (operator's choice)
    STOPPING = "stopping"  #: planned stop in progress (SIGTERM, SIGKILL after grace)
    STOPPED = "stopped"  #: not running, not restarted
    CRASHED = "crashed"  #: unexpected exit seen (passes on to `BACKOFF` at once)
    BACKOFF = "backoff"  #: waiting for the next start time
    FAILED = "failed"  #: preflight/config error (bad flags, model missing, OOM at start): no restart loop
    UNMANAGED = "unmanaged"  #: an SGLang server this supervisor did not start: watched, never touched


class AlertState(str, Enum):
    """Prometheus-style alert states; `RESOLVED` is only ever the target of a transition."""

    INACTIVE = "inactive"
    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"


class Severity(str, Enum):
    """How loudly an alert should be shown."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


@dataclass(frozen=True)
class Alert:
    """One alert instance: a rule applied to one worker, as seen at some moment."""

    key: str
    """Stable identity, ``rule[worker]``; what `silence` takes."""
    rule: str
    """Rule name (e.g. ``gpu_mem_high_and_slow``)."""
    worker: str
    """Worker the alert is about."""
    state: AlertState
    severity: Severity
    summary: str
    """One human line, with the values that made it true and the likely fix."""
    active_at: float | None = None
    """When the condition was first seen true in this episode (Prometheus `ActiveAt`)."""
    fired_at: float | None = None
    """When it went from pending to firing."""
    resolved_at: float | None = None
    silenced_until: float | None = None
    """Notifications suppressed until then; state is still tracked."""
    gpu: int | None = None
    """The worker's GPU, for rules joined on it."""

    def silenced(self, now: float) -> bool:
        """Whether a silence covers this alert at `now`."""
        return self.silenced_until is not None and now < self.silenced_until


@dataclass(frozen=True)
class Event:
    """One line of the action timeline / audit trail."""

    time: float
    """Wall-clock or monotonic seconds, as the producer's clock gives them."""
    kind: str
    """Short machine name: ``transition``, ``alert``, ``action``, ``probe``..."""
    worker: str | None
    message: str
    fields: dict[str, object] = field(default_factory=dict)
