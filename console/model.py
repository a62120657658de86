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
