"""`fleet.toml` → a typed, validated `FleetConfig`.

`load_config(path)` reads the file and checks all of it before anything runs, like
``nginx -t``: TOML syntax, types, ranges, unknown keys (with a "did you mean"), unique
worker names and ports (also against the balancer's and each worker's NCCL port),
memory fractions per GPU, API-key sources, the model path, and every SGLang flag in
``extra_args`` against the flag catalogue of the SGLang version that will run them.
It collects *every* problem and raises one `ConfigError` whose `.problems` name the
field (``workers[2].port``) and the reason. It changes nothing: it only reads the file
and looks at the filesystem (and at which SGLang version is installed).

Every setting is a dataclass field below, with its default and a docstring; the
commented examples are ``console/fleet.example.toml`` (real SGLang) and
``console/fleet.sim.toml`` (simulated workers).

Config file location: ``--config``, else ``$EMBEDOPS_CONFIG``, else ``./fleet.toml``
(`config_path`). Relative paths inside the file are relative to the file's directory;
``~`` and ``$VAR`` are expanded in path settings.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import shutil
import stat
import sys
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from backends.sglang import (
    DEFAULT_E2E_BUCKETS_S,
    DEFAULT_VERSION,
    MANAGED_FLAGS,
    FlagCatalogue,
    build_launch,
    default_nccl_port,
    effect_warnings,
    installed_version,
    is_secret_env,
    read_cached_catalogue,
    version_key,
)
from console.model import Engine, LaunchCommand, WorkerSpec
from console.statedir import resolve_state_dir, validate_name

ENV_CONFIG = "EMBEDOPS_CONFIG"
DEFAULT_CONFIG = "fleet.toml"
LEAK_HORIZON_S = 3600.0
"""`console.stats.LeakTrend`'s fit window, trend seconds (`MetricsConfig.gpu_sample_s`)."""
LEAK_WINDOW_SAMPLES = 30
"""GPU samples a compressed trend clock keeps in that window at least (`LeakTrend` needs
20: its ``min_samples``)."""


# --------------------------------------------------------------------------------------
# Problems
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or doubtful, as a warning) in the file, at a field path."""

    path: str
    """Where: ``workers[2].port``, ``balancer``, or ``file:line:col`` for syntax errors."""
    reason: str
    """Why, in words, with the offending value."""

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class ConfigError(Exception):
    """The file is rejected; `problems` lists every reason, `warnings` the doubts."""

    def __init__(self, source: str, problems: Sequence[Problem],
                 warnings: Sequence[Problem] = ()) -> None:
        self.source = source
        self.problems = list(problems)
        self.warnings = list(warnings)
        n = len(self.problems)
        lines = [f"{source}: {n} problem{'s' if n != 1 else ''}"]
        lines += [f"  {p}" for p in self.problems]
        super().__init__("\n".join(lines))


def _field(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING,
           gt: float | None = None, ge: float | None = None, lt: float | None = None,
           le: float | None = None, key: str | None = None) -> Any:
    """A dataclass field with range limits (checked by the loader) and an optional
    TOML key that differs from the attribute name (``for`` → ``for_s``)."""
    meta = {"gt": gt, "ge": ge, "lt": lt, "le": le, "key": key}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelConfig:
    """``[model]``: what every worker serves."""

    path: str
    """`--model-path`. Real SGLang: a local model directory (must exist; relative to
    this file), or a Hugging Face repo id that is in the local HF cache (workers run
    with ``HF_HUB_OFFLINE=1``). Sim: any label."""
    served_name: str | None = None
    """`--served-model-name`: the `model` clients send. Default: SGLang uses the path.
    Must not contain ``:`` (SGLang 0.5.23 reserves it for LoRA adapters)."""
    dimension: int = _field(2560, ge=1)
    """Embedding length the probe expects (Qwen3-Embedding-4B: 2560)."""
    context_length: int | None = _field(None, ge=1)
    """`--context-length`; default: the model's ``max_position_embeddings``."""


@dataclass(frozen=True)
class SglangConfig:
    """``[sglang]``: the program that runs real workers (ignored by the sim engine)."""

    python: str | None = None
    """Interpreter with SGLang installed (`python -m sglang.launch_server`).
    Default: the interpreter running embedops."""
    version: str = DEFAULT_VERSION
    """SGLang version assumed when SGLang is not installed where the config is checked
    (selects the built-in flag list). The installed version wins when there is one."""
    env: dict[str, str] = _field(factory=dict)
    """Environment added to every real worker (e.g. ``PYTHONPATH`` of an offline
    install). Secrets do not belong here: use `api_key_env`."""


@dataclass(frozen=True)
class WorkerDefaults:
    """``[defaults]``: settings every worker inherits unless it sets its own."""

    mem_fraction_static: float | None = _field(None, gt=0.0, lt=1.0)
    """`--mem-fraction-static` in (0, 1): weights + KV pool as a share of the whole GPU.
    Must be set when several workers share a GPU; the fractions on one GPU must sum to
    at most 1. Unset: SGLang derives it (≈0.83–0.87 of an 80 GB card)."""
    cuda_graph: bool | None = None
    """False turns CUDA graphs off the version's own way (0.5.2: ``--disable-cuda-graph``;
    newer: ``--cuda-graph-backend-{decode,prefill} disabled``). Unset/true: SGLang's default.
    Embedding models never capture decode graphs, so this matters little (see warnings)."""
    max_running_requests: int | None = _field(None, ge=1)
    """`--max-running-requests`; unset: SGLang derives it from the KV pool."""
    chunked_prefill_size: int | None = _field(None, ge=-1)
    """`--chunked-prefill-size` (-1 disables chunking); unset: by GPU memory."""
    api_key_env: str | None = None
    """Name of the environment variable (of the supervisor) holding the workers'
    `--api-key`. Never put the key itself in this file."""
    api_key_file: str | None = None
    """Path of a file whose content is the workers' `--api-key` (should be mode 0600)."""
    extra_args: tuple[str, ...] = ()
    """Further SGLang flags, checked against the installed version's flags. Flags that
    a typed setting writes (``--port``, ``--mem-fraction-static``...) are refused here.
    A worker's own `extra_args` come after these."""
    env: dict[str, str] = _field(factory=dict)
    """Environment added to every worker (a worker's own `env` wins)."""


@dataclass(frozen=True)
class WorkerConfig:
    """``[[workers]]``: one worker. Unset settings come from ``[defaults]``."""

    name: str
    """Unique name (letters, digits, ``._-``): used in logs, the UI and commands."""
    port: int = _field(ge=1, le=65535)
    """HTTP port on `host`."""
    gpu: int | None = _field(None, ge=0)
    """GPU index, exported as ``CUDA_VISIBLE_DEVICES``. Unset: not exported (GPU 0)."""
    host: str = "127.0.0.1"
    """Bind address. Loopback only: workers are reached through the balancer."""
    nccl_port: int | None = _field(None, ge=1, le=65535)
    """`--nccl-port` (torch.distributed). Default: port + 1000 (port - 1000 above 64535),
    so every port is known ahead and none is picked at random."""
    mem_fraction_static: float | None = _field(None, gt=0.0, lt=1.0)
    """As in ``[defaults]``."""
    cuda_graph: bool | None = None
    """As in ``[defaults]``."""
    max_running_requests: int | None = _field(None, ge=1)
    """As in ``[defaults]``."""
    chunked_prefill_size: int | None = _field(None, ge=-1)
    """As in ``[defaults]``."""
    api_key_env: str | None = None
    """As in ``[defaults]`` (setting either key source here replaces both defaults)."""
    api_key_file: str | None = None
    """As in ``[defaults]``."""
    extra_args: tuple[str, ...] = ()
    """Appended after ``[defaults].extra_args``."""
    env: dict[str, str] = _field(factory=dict)
    """Merged over ``[defaults].env``."""


@dataclass(frozen=True)
class BalancerConfig:
    """``[balancer]``: the load balancer in front of the workers (balancer.md §2, §11)."""

    kind: Literal["sglang-router", "nginx", "none"] = "sglang-router"
    """``sglang-router`` (default; health checks, retries, circuit breaker, worker API),
    ``nginx`` (upstream file + reload), or ``none`` (clients call workers directly)."""
    host: str = "127.0.0.1"
    """Client-facing bind address (the router's defaults are 0.0.0.0: not here)."""
    port: int = _field(8000, ge=1, le=65535)
    """Client-facing port."""
    prometheus_port: int = _field(29000, ge=1, le=65535)
    """sglang-router's `--prometheus-port` (bound to 127.0.0.1)."""
    policy: Literal["round_robin", "power_of_two", "random", "cache_aware"] = "round_robin"
    """`--policy`. cache_aware routes on a prefix tree of the input: useless for embeddings."""
    log_level: str = "warn"
    """`--log-level`; ``info`` writes two lines per request."""
    request_timeout_s: float = _field(60.0, gt=0)
    """`--request-timeout-secs` (default 1800 would hold requests on a hung worker for
    30 min); also nginx's ``proxy_read_timeout``. Must exceed the slowest real request."""
    health_check_interval_s: float = _field(3.0, gt=0)
    """`--health-check-interval-secs` (router default 60; 2–5 recommended)."""
    health_check_timeout_s: float = _field(3.0, gt=0)
    """`--health-check-timeout-secs`; keep ≥ 2 s for real SGLang (its /health takes 1 s)."""
    health_failure_threshold: int = _field(2, ge=1)
    """`--health-failure-threshold` (router default 3)."""
    health_success_threshold: int = _field(1, ge=1)
    """`--health-success-threshold` (router default 2)."""
    health_check_endpoint: str = "/health"
    """`--health-check-endpoint`."""
    cb_failure_threshold: int = _field(3, ge=1)
    """`--cb-failure-threshold`: consecutive failures that open a worker's circuit (default 10)."""
    cb_success_threshold: int = _field(3, ge=1)
    """`--cb-success-threshold`: successes in half-open state that close it."""
    cb_timeout_s: float = _field(10.0, gt=0)
    """`--cb-timeout-duration-secs`: how long an open circuit stays open (default 60)."""
    retry_max_retries: int = _field(5, ge=1)
    """`--retry-max-retries` (total attempts, router default 5)."""
    control_plane_api_key_env: str | None = None
    """Environment variable holding a `--control-plane-api-keys` secret for the router's
    worker API; unset leaves the API open, acceptable on loopback only."""
    nginx_binary: str = "nginx"
    """nginx executable (``kind = "nginx"``)."""
    nginx_max_fails: int = _field(1, ge=1)
    """nginx ``max_fails`` per upstream server."""
    nginx_fail_timeout_s: float = _field(10.0, gt=0)
    """nginx ``fail_timeout`` per upstream server."""


@dataclass(frozen=True)
class ProbeConfig:
    """``[probe]``: the supervisor's own liveness/readiness probe (a real embedding)."""

    interval_s: float = _field(1.0, gt=0)
    """Time between probes of one worker."""
    timeout_floor_s: float = _field(2.0, gt=0)
    """Probe timeout = max(this, `timeout_p99_factor` × recent p99 probe latency)."""
    timeout_p99_factor: float = _field(3.0, gt=0)
    """See `timeout_floor_s`."""
    text: str = "embedops probe: the quick brown fox"
    """Input of the probe's ``POST /v1/embeddings``."""
    eject_after_failures: int = _field(1, ge=1)
    """Failed probes in a row that take a worker out of the balancer."""
    readmit_after_successes: int = _field(2, ge=1)
    """Passing probes in a row that put an ejected worker back."""
    restart_after_failures: int = _field(3, ge=1)
    """Failed probes in a row, with no request completing meanwhile, that restart it."""
    slow_s: float = _field(1.0, gt=0)
    """A passing probe slower than this marks the worker degraded (still routed)."""
    min_cosine: float = _field(0.99, gt=0, le=1)
    """Stability check: below this cosine between the probe's vector now and at first
    ready, a configuration alert is raised (never a restart)."""


@dataclass(frozen=True)
class OutlierConfig:
    """``[outlier]``: passive ejection of a worker whose own responses fail too often
    (the HTTP 5xx share of its ``sglang:http_responses_total``, read from its
    ``/metrics``). For a worker failing, say, one request in five: the 1 s probe hits a
    failure only now and then and re-admits it after two passes, while the balancer
    retries every failure. Needs SGLang's HTTP counters (not in 0.5.2)."""

    enabled: bool = True
    """Eject outliers; off: only probes (and alert rules) act on errors."""
    error_share: float = _field(0.1, gt=0, le=1)
    """5xx share of the worker's responses, over `window_s` since it was last routed,
    that ejects it."""
    min_responses: int = _field(50, ge=1)
    """Fewer responses than this in that window are not judged (with 50, a worker
    failing 1 % of requests reaches 10 % in under 1 window in 5,000; one failing 20 %
    is ejected within a few seconds at ~15 requests a second)."""
    window_s: float = _field(10.0, gt=0)
    """See `error_share` (the worker's /metrics is scraped every
    `[metrics] scrape_interval_s`)."""
    ejection_s: float = _field(30.0, gt=0)
    """An outlier stays out at least this long, times the number of outlier ejections in
    a row, before passing probes may re-admit it..."""
    max_ejection_s: float = _field(300.0, gt=0)
    """...at most this long; after twice this long without an outlier ejection the count
    starts over."""


@dataclass(frozen=True)
class RestartConfig:
    """``[restart]``: backoff, crash loops, stopping and starting."""

    first_immediate: bool = True
    """The first restart after a healthy period happens at once."""
    backoff_base_s: float = _field(1.0, gt=0)
    """Delay of the first delayed restart; doubles (`backoff_factor`) per failure..."""
    backoff_factor: float = _field(2.0, ge=1)
    """...growth per further failure..."""
    backoff_cap_s: float = _field(60.0, gt=0)
    """...up to this cap, where it stays (it never gives up)."""
    reset_after_s: float = _field(600.0, gt=0)
    """Continuously ready this long resets the failure count."""
    crash_loop_failures: int = _field(5, ge=1)
    """This many failures within `crash_loop_window_s` raise a crash-loop alert."""
    crash_loop_window_s: float = _field(600.0, gt=0)
    """See `crash_loop_failures`."""
    stop_grace_s: float = _field(30.0, gt=0)
    """SIGTERM to the process group, SIGKILL after this long."""
    drain_timeout_s: float = _field(30.0, gt=0)
    """Longest wait for in-flight requests to finish when draining."""
    startup_timeout_s: float | None = _field(None, gt=0)
    """Startup budget before the first recorded start (then 1.5 × p99 of starts).
    Default: 600 s for real SGLang (CUDA graph capture can take minutes), 60 s for sim."""


ALERT_METRICS: dict[str, str] = {
    "gpu_memory_pct": "GPU memory used on the worker's GPU, % of the card",
    "gpu_util_pct": "GPU utilisation of the worker's GPU, %",
    "gpu_temperature_c": "GPU temperature, °C",
    "p50_latency_s": "median request latency of the worker, seconds",
    "p95_latency_s": "95th percentile request latency of the worker, seconds",
    "p99_latency_s": "99th percentile request latency of the worker, seconds",
    "error_rate": "share of the worker's request responses that were 5xx over 5 min (0..1)",
    "queue_depth": "requests waiting in the worker's queue (sglang:num_queue_reqs)",
    "running_requests": "requests running on the worker (sglang:num_running_reqs)",
    "memory_time_to_full_h": "hours until the GPU is full (worker's GPU memory growth) or the "
                             "host's available memory is used up (its process-group RSS "
                             "growth), whichever is sooner (leak)",
    "restarts": "restarts of the worker within the crash-loop window",
    "probe_failures": "failed probes in a row",
}
"""Metric names an alert condition may use, with their meaning and unit."""


@dataclass(frozen=True)
class AlertCondition:
    """One comparison; a rule fires when all of its conditions hold."""

    metric: str
    """A name from `ALERT_METRICS` (e.g. ``gpu_memory_pct``)."""
    op: Literal[">", ">=", "<", "<="]
    """Comparison."""
    value: float
    """Threshold, in the metric's unit."""

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.value:g}"


@dataclass(frozen=True)
class AlertRule:
    """``[[alerts]]``: a compound rule, evaluated per worker, Prometheus ``for`` semantics."""

    name: str
    """Unique rule name."""
    when: tuple[AlertCondition, ...]
    """Conditions, all of which must hold (AND)."""
    for_s: float = _field(0.0, ge=0, key="for")
    """TOML ``for``: how long the conditions must hold before firing (``"5m"`` or seconds)."""
    severity: Literal["info", "warning", "critical"] = "warning"
    """How loudly to show it."""
    summary: str = ""
    """One line for the operator (likely cause, what to do)."""
    auto_remediate: bool = False
    """Whether the supervisor applies `remediation` by itself when the rule fires."""
    remediation: Literal["none", "restart", "drain"] = "none"
    """What auto-remediation (or the suggested action) is: ``drain`` takes the worker out
    of the balancer and leaves its process alive for a human to look at; ``restart``
    drains, restarts and puts it back."""


DEFAULT_ALERTS: tuple[AlertRule, ...] = (
    AlertRule(
        name="gpu_mem_high_and_slow",
        when=(AlertCondition("gpu_memory_pct", ">", 92.0),
              AlertCondition("p95_latency_s", ">", 1.2)),
        for_s=300.0, severity="critical",
        summary="GPU memory above 92 % and P95 above 1.2 s for 5 min: lower "
                "mem_fraction_static or max_running_requests, or restart the worker",
        remediation="restart"),
    AlertRule(
        name="gpu_memory_leak",
        when=(AlertCondition("memory_time_to_full_h", "<", 6.0),),
        for_s=600.0, severity="warning",
        summary="memory (GPU or host RSS) keeps growing: full in under 6 h at this rate",
        remediation="restart"),
    AlertRule(
        name="high_error_rate",
        when=(AlertCondition("error_rate", ">", 0.05),),
        for_s=60.0, severity="warning",
        summary="more than 5 % of requests fail"),
)
"""Seed rules, used when the file has no ``[[alerts]]`` (a file's list replaces them)."""


@dataclass(frozen=True)
class MetricsConfig:
    """``[metrics]``: how workers export metrics."""

    e2e_latency_buckets_s: tuple[float, ...] = DEFAULT_E2E_BUCKETS_S
    """`--bucket-e2e-request-latency` edges in seconds, strictly increasing, and holding
    every latency threshold of the alert rules (SGLang's defaults start at 0.1 s and
    have no 1.2 s edge)."""
    trend_time_scale: float = _field(1.0, ge=1)
    """Simulated fleets only (demos, drills, tests): the memory-trend clock runs this many
    times faster than real time, so a leak that fills a simulated card in minutes is read
    as the hours-long trend it stands for (slope per trend second = real slope / scale;
    the projected time until the card is full, and the leak rule's threshold, are in trend
    time). Every other timer (probes, ``for``, backoff) keeps real time. Real fleets: 1."""
    scrape_interval_s: float = _field(2.0, gt=0)
    """Seconds between two scrapes of every worker's ``/metrics`` (and sglang-router's):
    queue, running requests, latency histogram, request and error counters. Probes stay
    every `ProbeConfig.interval_s` and remain the liveness signal; a draining worker is
    scraped every 0.2 s regardless. Above `ProbeConfig.timeout_floor_s` the hang rule
    may miss a slow worker's progress between two failed probes (a warning)."""
    gpu_interval_s: float = _field(2.0, gt=0)
    """Seconds between two GPU samples (NVML, or the sim's card files) and host-memory
    samples of every worker's process group: GPU memory, utilisation, temperature and
    the memory-leak trends. With a compressed `trend_time_scale` the supervisor samples
    more often when this is too slow for the leak trend (`gpu_sample_s`)."""

    def gpu_sample_s(self) -> float:
        """The GPU sampling period used: `gpu_interval_s`, shortened on a compressed trend
        clock so the leak trend's 1 h window (``LEAK_HORIZON_S / trend_time_scale`` real
        seconds) holds `LEAK_WINDOW_SAMPLES` samples (scale 120: every 1 s)."""
        return min(self.gpu_interval_s,
                   LEAK_HORIZON_S / self.trend_time_scale / LEAK_WINDOW_SAMPLES)


@dataclass(frozen=True)
class ExporterConfig:
    """``[exporter]``: the supervisor's own Prometheus endpoint (`console.exporter`):
    worker state, routed, restarts, probe latency, GPU memory and alert states."""

    port: int | None = _field(None, ge=1, le=65535)
    """Port of ``GET /metrics``; unset (the default) leaves the exporter off. 29100 is the
    documented choice next to sglang-router's 29000."""
    host: str = "127.0.0.1"
    """Bind address: loopback by default (``/metrics`` has no authentication; anything
    else is a warning)."""


@dataclass(frozen=True)
class SimConfig:
    """``[sim]``: the simulated worker (``engine = "sim"`` only)."""

    sglang_version: Literal["0.5.2", "0.5.23"] = "0.5.23"
    """SGLang version the sim imitates (flags, endpoints, metric labels)."""
    gpu_count: int = _field(2, ge=1)
    """Number of simulated GPUs; worker `gpu` indices must be below it."""
    gpu_mib: int = _field(81559, ge=1)
    """Size of each simulated card, MiB (H100 80GB: 81559)."""
    weights_mib: int = _field(7680, ge=0)
    """Simulated weight memory per worker, MiB."""
    load_s: float = _field(1.0, ge=0)
    """Seconds with the port closed ("loading weights")."""
    warmup_s: float = _field(0.5, ge=0)
    """Seconds of /health 503 after the port opens."""
    base_latency_ms: float = _field(8.0, ge=0)
    """Latency of a minimal request, ms."""
    per_token_us: float = _field(20.0, ge=0)
    """Added latency per input token, µs."""
    faults: tuple[str, ...] = ()
    """Faults switched on at start (``--sim-fault NAME[=VALUE]``), e.g. ``"slow_ms=50"``."""


@dataclass(frozen=True)
class FleetConfig:
    """A whole ``fleet.toml``."""

    name: str
    """Fleet name (letters, digits, ``._-``); names the state directory."""
    model: ModelConfig
    """``[model]``."""
    workers: tuple[WorkerConfig, ...]
    """``[[workers]]``, at least one."""
    engine: Engine = Engine.SGLANG
    """``sglang`` (real SGLang) or ``sim`` (the simulated worker)."""
    state_dir: str | None = None
    """State directory (logs, state, control socket). Default: ``$EMBEDOPS_STATE_DIR``,
    else ``$XDG_STATE_HOME/embedops/<name>`` (``~/.local/state/embedops/<name>``)."""
    sglang: SglangConfig = _field(factory=SglangConfig)
    """``[sglang]``."""
    defaults: WorkerDefaults = _field(factory=WorkerDefaults)
    """``[defaults]``."""
    balancer: BalancerConfig = _field(factory=BalancerConfig)
    """``[balancer]``."""
    probe: ProbeConfig = _field(factory=ProbeConfig)
    """``[probe]``."""
    restart: RestartConfig = _field(factory=RestartConfig)
    """``[restart]``."""
    outlier: OutlierConfig = _field(factory=OutlierConfig)
    """``[outlier]``."""
    alerts: tuple[AlertRule, ...] = DEFAULT_ALERTS
    """``[[alerts]]``; the seed rules when absent."""
    metrics: MetricsConfig = _field(factory=MetricsConfig)
    """``[metrics]``."""
    exporter: ExporterConfig = _field(factory=ExporterConfig)
    """``[exporter]``."""
    sim: SimConfig = _field(factory=SimConfig)
    """``[sim]``."""
    source: Path | None = field(default=None, compare=False)
    """The file this came from (not a TOML key)."""
    catalogue: FlagCatalogue | None = field(default=None, compare=False, repr=False)
    """The flag catalogue the file was checked against (not a TOML key)."""
    warnings: tuple[Problem, ...] = field(default=(), compare=False)
    """Doubts that did not reject the file (not a TOML key)."""

    # ---- derived views ------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        """The resolved state directory."""
        return resolve_state_dir(self.name, self.state_dir)

    @property
    def startup_timeout_s(self) -> float:
        """Startup budget before any start was recorded (engine default when unset)."""
        if self.restart.startup_timeout_s is not None:
            return self.restart.startup_timeout_s
        return 600.0 if self.engine == Engine.SGLANG else 60.0

    @property
    def sglang_version(self) -> str:
        """The SGLang version the workers run (or the sim imitates)."""
        if self.engine == Engine.SIM:
            return self.sim.sglang_version
        return self.catalogue.version if self.catalogue else self.sglang.version

    @property
    def python(self) -> str:
        """Interpreter that launches workers."""
        if self.engine == Engine.SGLANG and self.sglang.python:
            return self.sglang.python
        return sys.executable

    def worker(self, name: str) -> WorkerConfig:
        """The configured worker called `name` (KeyError if none)."""
        for w in self.workers:
            if w.name == name:
                return w
        raise KeyError(name)

    def worker_specs(self, environ: Mapping[str, str] | None = None) -> list[WorkerSpec]:
        """One `WorkerSpec` per worker, defaults applied and API keys resolved from
        `environ` (default: this process's environment) or the key file.

        Raises `ConfigError` when a key source is missing (variable unset, file
        unreadable or empty).
        """
        environ = os.environ if environ is None else environ
        base = self.source.parent if self.source else Path.cwd()
        problems: list[Problem] = []
        specs = []
        for i, w in enumerate(self.workers):
            key_env, key_file, where = _key_source(self.defaults, w, i)
            api_key = _read_api_key(key_env, key_file, where, base, environ, problems)
            specs.append(self._spec(w, api_key))
        if problems:
            raise ConfigError(str(self.source or "fleet"), problems)
        return specs

    def _spec(self, w: WorkerConfig, api_key: str | None) -> WorkerSpec:
        d = self.defaults
        env: dict[str, str] = {}
        if self.engine == Engine.SGLANG:
            env.update(self.sglang.env)
        env.update(d.env)
        env.update(w.env)
        return WorkerSpec(
            name=w.name, port=w.port, model_path=self.model.path, engine=self.engine,
            host=w.host, gpu=w.gpu, served_model_name=self.model.served_name,
            mem_fraction_static=_pick(w.mem_fraction_static, d.mem_fraction_static),
            cuda_graph=_pick(w.cuda_graph, d.cuda_graph),
            max_running_requests=_pick(w.max_running_requests, d.max_running_requests),
            chunked_prefill_size=_pick(w.chunked_prefill_size, d.chunked_prefill_size),
            context_length=self.model.context_length, api_key=api_key,
            dimension=self.model.dimension, extra_args=d.extra_args + w.extra_args,
            env=tuple(sorted(env.items())))

    def sim_args(self) -> list[str]:
        """The ``--sim-*`` flags for simulated workers (empty for real SGLang)."""
        if self.engine != Engine.SIM:
            return []
        s = self.sim
        args = ["--sim-sglang-version", s.sglang_version, "--sim-load-s", _fmt(s.load_s),
                "--sim-warmup-s", _fmt(s.warmup_s), "--sim-gpu-mib", str(s.gpu_mib),
                "--sim-weights-mib", str(s.weights_mib),
                "--sim-base-latency-ms", _fmt(s.base_latency_ms),
                "--sim-per-token-us", _fmt(s.per_token_us),
                "--sim-dim", str(self.model.dimension)]
        for fault in s.faults:
            args += ["--sim-fault", fault]
        return args

    def nccl_port(self, name: str, port: int) -> int:
        """The NCCL port of worker `name` listening on `port` (configured or derived)."""
        try:
            configured = self.worker(name).nccl_port
        except KeyError:
            configured = None
        return configured if configured is not None else default_nccl_port(port)

    def launch_command(self, spec: WorkerSpec,
                       catalogue: FlagCatalogue | None = None) -> LaunchCommand:
        """The command that starts `spec` under this fleet's settings (interpreter,
        NCCL port, latency buckets, sim flags)."""
        cat = catalogue or self.catalogue or self._fallback_catalogue()
        return build_launch(spec, python=self.python, catalogue=cat,
                            nccl_port=self.nccl_port(spec.name, spec.port),
                            bucket_edges=self.metrics.e2e_latency_buckets_s,
                            sim_args=self.sim_args())

    def _fallback_catalogue(self) -> FlagCatalogue:
        if self.engine == Engine.SIM:
            return FlagCatalogue.sim(self.sim.sglang_version)
        return FlagCatalogue.builtin(self.sglang.version)


def _pick(own: Any, inherited: Any) -> Any:
    return own if own is not None else inherited


def _fmt(x: float) -> str:
    return f"{x:g}"


# --------------------------------------------------------------------------------------
# Locating and loading
# --------------------------------------------------------------------------------------


def config_path(explicit: str | os.PathLike[str] | None = None,
                environ: Mapping[str, str] | None = None) -> Path:
    """The config file to use: `explicit` (``--config``), else ``$EMBEDOPS_CONFIG``,
    else ``./fleet.toml``."""
    environ = os.environ if environ is None else environ
    if explicit:
        return Path(explicit)
    if environ.get(ENV_CONFIG):
        return Path(environ[ENV_CONFIG])
    return Path(DEFAULT_CONFIG)


def load_config(path: str | os.PathLike[str], *, catalogue: FlagCatalogue | None = None,
                environ: Mapping[str, str] | None = None) -> FleetConfig:
    """Read and validate a fleet file.

    `catalogue` is the SGLang flag catalogue to check ``extra_args`` against; by
    default the sim's for the sim engine, and for real SGLang the cached catalogue of
    the installed version (see `backends.sglang.load_catalogue`) or the built-in one.
    `environ` (default: this process's) is used for ``$VAR`` expansion and to see
    whether API-key variables are set (unset is a warning here, an error in
    `FleetConfig.worker_specs`).

    Raises `ConfigError` listing every problem. Returns the config with its
    `warnings` and the `catalogue` used.
    """
    environ = os.environ if environ is None else environ
    src = Path(path)
    label = str(src)
    try:
        raw = src.read_bytes()
    except FileNotFoundError:
        raise ConfigError(label, [Problem(label, "no such file")]) from None
    except IsADirectoryError:
        raise ConfigError(label, [Problem(label, "is a directory, not a TOML file")]) from None
    except OSError as e:
        raise ConfigError(label, [Problem(label, f"cannot read: {e.strerror or e}")]) from None
    try:
        text = raw.decode("utf-8")
        data = tomllib.loads(text)
    except UnicodeDecodeError as e:
        raise ConfigError(label, [Problem(label, f"not UTF-8 text ({e.reason})")]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(label, [_syntax_problem(label, str(e))]) from None
    return _Validator(src, environ, catalogue).run(data)


def _syntax_problem(label: str, message: str) -> Problem:
    m = re.search(r"\(at line (\d+), column (\d+)\)", message)
    if m:
        return Problem(f"{label}:{m.group(1)}:{m.group(2)}",
                       f"TOML syntax error: {message}")
    return Problem(label, f"TOML syntax error: {message}")


# --------------------------------------------------------------------------------------
# Typed building: TOML tables → dataclasses, every problem collected
# --------------------------------------------------------------------------------------

_SPECIAL_KEYS = {
    "api_key": "a literal API key is not allowed in the file: use api_key_env = \"VAR\" "
               "or api_key_file = \"path\"",
    "apikey": "a literal API key is not allowed in the file: use api_key_env = \"VAR\" "
              "or api_key_file = \"path\"",
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return f"string {value!r}"
    return f"{type(value).__name__} {value!r}"


def _missing(tp: Any, key: str) -> str:
    args = typing.get_args(tp)
    if typing.get_origin(tp) is tuple and args and dataclasses.is_dataclass(args[0]):
        return f"at least one [[{key}]] entry is required"
    return "is required"


def _toml_key(f: dataclasses.Field[Any]) -> str:
    return f.metadata.get("key") or f.name


class _Builder:
    """Builds dataclasses from TOML values, collecting problems instead of stopping.

    A value that cannot be used is replaced by a placeholder and its path recorded in
    `failed`, so the rest of the file is still checked (and checks that depend on a
    failed value can skip it instead of reporting a consequence)."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.failed: set[str] = set()
        self._quiet = 0

    def problem(self, path: str, reason: str) -> None:
        self.failed.add(path)
        if not self._quiet:
            self.problems.append(Problem(path, reason))

    def build(self, cls: type, table: Any, path: str) -> Any:
        """An instance of dataclass `cls` from `table` (placeholders where it is wrong)."""
        if not isinstance(table, dict):
            self.problem(path or "(top level)", f"must be a table, got {_describe(table)}")
            table = {}
            self._quiet += 1
            try:
                return self.build(cls, table, path)
            finally:
                self._quiet -= 1
        hints = typing.get_type_hints(cls)
        fields = [f for f in dataclasses.fields(cls) if f.init and f.name not in
                  ("source", "catalogue", "warnings")]
        by_key = {_toml_key(f): f for f in fields}
        prefix = f"{path}." if path else ""
        for key in table:
            if key not in by_key:
                self._unknown_key(prefix + key, key, list(by_key))
        kwargs: dict[str, Any] = {}
        for key, f in by_key.items():
            fpath = prefix + key
            required = (f.default is dataclasses.MISSING
                        and f.default_factory is dataclasses.MISSING)
            if key not in table:
                if required:
                    self.problem(fpath, _missing(hints[f.name], key))
                    kwargs[f.name] = self._placeholder(hints[f.name], fpath)
                continue
            good, value = self.coerce(table[key], hints[f.name], fpath)
            if good:
                good = self._check_range(value, f, fpath)
            if good:
                kwargs[f.name] = value
            elif required:
                kwargs[f.name] = self._placeholder(hints[f.name], fpath)
        return cls(**kwargs)

    def _placeholder(self, tp: Any, path: str) -> Any:
        self.failed.add(path)
        origin = typing.get_origin(tp)
        if origin in (types.UnionType, typing.Union):
            return None
        if origin is Literal:
            return typing.get_args(tp)[0]
        if origin is tuple:
            return ()
        if origin is dict:
            return {}
        if isinstance(tp, type) and issubclass(tp, Enum):
            return next(iter(tp))
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            self._quiet += 1
            try:
                return self.build(tp, {}, path)
            finally:
                self._quiet -= 1
        return {str: "", int: 0, float: 0.0, bool: False}.get(tp)

    def _unknown_key(self, path: str, key: str, known: list[str]) -> None:
        if key in _SPECIAL_KEYS:
            self.problem(path, _SPECIAL_KEYS[key])
            return
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        self.problem(path, f"unknown key {key!r}{hint}")

    def _check_range(self, value: Any, f: dataclasses.Field[Any], path: str) -> bool:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return True
        m = f.metadata
        lo, hi = m.get("ge"), m.get("le")
        gt, lt = m.get("gt"), m.get("lt")
        if lo is not None and hi is not None and not lo <= value <= hi:
            self.problem(path, f"{value:g} is out of range {lo:g}..{hi:g}")
            return False
        if gt is not None and lt is not None and not gt < value < lt:
            self.problem(path, f"{value:g} is outside ({gt:g}, {lt:g})")
            return False
        if lo is not None and hi is None and value < lo:
            self.problem(path, f"{value:g} is below the minimum {lo:g}")
            return False
        if gt is not None and lt is None and value <= gt:
            self.problem(path, f"must be greater than {gt:g} (got {value:g})")
            return False
        if hi is not None and lo is None and value > hi:
            self.problem(path, f"{value:g} is above the maximum {hi:g}")
            return False
        return True

    def coerce(self, value: Any, tp: Any, path: str) -> tuple[bool, Any]:
        """(ok, converted value) for `value` against type `tp`."""
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin in (types.UnionType, typing.Union):
            inner = [a for a in args if a is not type(None)]
            return self.coerce(value, inner[0], path)
        if origin is Literal:
            if value in args and type(value) is type(args[0]):
                return True, value
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            self.problem(path, f"{_describe(value)} is not one of "
                               f"{', '.join(repr(a) for a in args)}{hint}")
            return False, None
        if isinstance(tp, type) and issubclass(tp, Enum):
            names = [m.value for m in tp]
            if value in names:
                return True, tp(value)
            close = difflib.get_close_matches(str(value), names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            self.problem(path, f"{_describe(value)} is not one of "
                               f"{', '.join(repr(n) for n in names)}{hint}")
            return False, None
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            return True, self.build(tp, value, path)
        if origin is tuple:
            if not isinstance(value, list):
                self.problem(path, f"must be an array, got {_describe(value)}")
                return False, None
            items = []
            for i, item in enumerate(value):
                good, conv = self.coerce(item, args[0], f"{path}[{i}]")
                items.append(conv if good else self._placeholder(args[0], f"{path}[{i}]"))
            return True, tuple(items)
        if origin is dict:
            if not isinstance(value, dict):
                self.problem(path, f"must be a table, got {_describe(value)}")
                return False, None
            good_items = {}
            for k, v in value.items():
                if isinstance(v, str):
                    good_items[k] = v
                else:
                    self.problem(f"{path}.{k}", f"must be a string, got {_describe(v)}")
            return True, good_items
        return self._scalar(value, tp, path)

    def _scalar(self, value: Any, tp: Any, path: str) -> tuple[bool, Any]:
        if tp is bool:
            if isinstance(value, bool):
                return True, value
        elif tp is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return True, value
            if isinstance(value, float) and not math.isfinite(value):
                self.problem(path, f"must be a finite integer, got {value}")
                return False, None
        elif tp is float:
            if isinstance(value, str) and path.endswith(("_s", ".for")):
                m = _DURATION.match(value)
                if m:
                    return True, float(m.group(1)) * _DURATION_UNITS[m.group(2)]
                self.problem(path, f"{_describe(value)} is not a duration "
                                   "(seconds, or e.g. \"500ms\", \"30s\", \"5m\", \"6h\")")
                return False, None
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if math.isfinite(value):
                    return True, float(value)
                self.problem(path, f"must be a finite number, got {value}")
                return False, None
        elif tp is str and isinstance(value, str):
            return True, value
        self.problem(path, f"must be {_TYPE_NAMES.get(tp, str(tp))}, got {_describe(value)}")
        return False, None


# --------------------------------------------------------------------------------------
# Semantic checks
# --------------------------------------------------------------------------------------

_LOOPBACK = re.compile(r"^(127(\.\d{1,3}){3}|::1|localhost)$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ENV_REF = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_ENCODER_TYPES = {"bert", "roberta", "xlm-roberta", "distilbert", "electra", "deberta",
                  "deberta-v2", "mpnet", "nomic_bert", "modernbert"}


class _Validator:
    """Cross-field checks on a built `FleetConfig`; problems go to the builder's list."""

    def __init__(self, source: Path, environ: Mapping[str, str],
                 catalogue: FlagCatalogue | None) -> None:
        self.source = source
        self.base = source.parent
        self.environ = environ
        self.catalogue = catalogue
        self.builder = _Builder()
        self.warnings: list[Problem] = []
        self.python: str | None = None  # sglang.python, found on PATH

    def problem(self, path: str, reason: str) -> None:
        self.builder.problem(path, reason)

    def warn(self, path: str, reason: str) -> None:
        w = Problem(path, reason)
        if w not in self.warnings:
            self.warnings.append(w)

    def bad(self, *paths: str) -> bool:
        """Whether any of `paths` (or a table around it) already failed to load."""
        failed = self.builder.failed
        for path in paths:
            probe = path
            while probe:
                if probe in failed:
                    return True
                cut = max(probe.rfind("."), probe.rfind("["))
                probe = probe[:cut] if cut > 0 else ""
        return False

    def run(self, data: dict[str, Any]) -> FleetConfig:
        cfg: FleetConfig = self.builder.build(FleetConfig, data, "")
        cfg = self._resolve_paths(cfg)
        cfg = self._check(cfg)
        if self.builder.problems:
            raise ConfigError(str(self.source), self.builder.problems, self.warnings)
        return dataclasses.replace(cfg, source=self.source.absolute(),
                                   warnings=tuple(self.warnings))

    # ---- paths --------------------------------------------------------------------

    def _expand(self, value: str, path: str) -> str | None:
        for m in _ENV_REF.finditer(value):
            name = m.group(1) or m.group(2)
            if name not in self.environ:
                self.problem(path, f"uses ${name}, which is not set")
                return None
        expanded = _ENV_REF.sub(lambda m: self.environ[m.group(1) or m.group(2)], value)
        if expanded.startswith("~"):
            home = self.environ.get("HOME")
            expanded = (home + expanded[1:]) if home and expanded[1:2] in ("", "/") \
                else os.path.expanduser(expanded)
        return expanded

    def _local_path(self, value: str, path: str) -> str | None:
        expanded = self._expand(value, path)
        if expanded is None:
            return None
        p = Path(expanded)
        return str(p if p.is_absolute() else (self.base / p))

    def _resolve_paths(self, cfg: FleetConfig) -> FleetConfig:
        model = cfg.model
        if cfg.engine == Engine.SGLANG and not self.bad("model.path", "engine"):
            resolved = self._model_path(model.path)
            if resolved is not None:
                model = dataclasses.replace(model, path=resolved)
        state_dir = cfg.state_dir
        if state_dir is not None and not self.bad("state_dir"):
            state_dir = self._local_path(state_dir, "state_dir") or state_dir
        defaults = cfg.defaults
        if defaults.api_key_file is not None and not self.bad("defaults.api_key_file"):
            resolved = self._local_path(defaults.api_key_file, "defaults.api_key_file")
            defaults = dataclasses.replace(defaults, api_key_file=resolved or
                                           defaults.api_key_file)
        workers = []
        for i, w in enumerate(cfg.workers):
            if w.api_key_file is not None and not self.bad(f"workers[{i}].api_key_file"):
                resolved = self._local_path(w.api_key_file, f"workers[{i}].api_key_file")
                w = dataclasses.replace(w, api_key_file=resolved or w.api_key_file)
            workers.append(w)
        return dataclasses.replace(cfg, model=model, state_dir=state_dir, defaults=defaults,
                                   workers=tuple(workers))

    def _model_path(self, value: str) -> str | None:
        expanded = self._expand(value, "model.path")
        if expanded is None:
            return None
        p = Path(expanded)
        local = p if p.is_absolute() else self.base / p
        if local.is_dir():
            return str(local)
        if local.exists():
            self.problem("model.path", f"{local} is not a directory")
            return None
        repo_id = bool(_REPO_ID.fullmatch(expanded)) and not expanded.startswith(".")
        if repo_id and self._in_hf_cache(expanded):
            return expanded
        if repo_id:
            self.problem("model.path", f"{value!r} is neither a directory ({local}) nor a model "
                         "in the local Hugging Face cache (workers run with HF_HUB_OFFLINE=1)")
        else:
            self.problem("model.path", f"{local} does not exist")
        return None

    def _in_hf_cache(self, repo: str) -> bool:
        env = self.environ
        roots = []
        if env.get("HF_HUB_CACHE"):
            roots.append(Path(env["HF_HUB_CACHE"]))
        if env.get("HF_HOME"):
            roots.append(Path(env["HF_HOME"]) / "hub")
        if env.get("HOME"):
            roots.append(Path(env["HOME"]) / ".cache" / "huggingface" / "hub")
        folder = "models--" + repo.replace("/", "--")
        return any((r / folder / "snapshots").is_dir() for r in roots)

    # ---- the checks ---------------------------------------------------------------

    def _check(self, cfg: FleetConfig) -> FleetConfig:
        if not self.bad("name"):
            try:
                validate_name(cfg.name)
            except ValueError as e:
                self.problem("name", str(e))
        if not cfg.workers and not self.bad("workers"):
            self.problem("workers", "at least one [[workers]] entry is required")
        served = cfg.model.served_name
        if served is not None and ":" in served:
            self.problem("model.served_name",
                         f"{served!r} contains ':', which SGLang reserves for LoRA adapters")
        self._check_workers(cfg)
        self._check_ports(cfg)
        self._check_memory(cfg)
        self._check_keys(cfg)
        self._check_env(cfg)
        self._check_balancer(cfg)
        self._check_restart(cfg)
        self._check_alerts(cfg)
        self._check_buckets(cfg)
        self._check_exporter(cfg)
        self._check_python(cfg)
        catalogue = self._catalogue(cfg)
        cfg = dataclasses.replace(cfg, catalogue=catalogue)
        self._check_flags(cfg, catalogue)
        self._check_model(cfg)
        return cfg

    def _check_workers(self, cfg: FleetConfig) -> None:
        seen: dict[str, int] = {}
        for i, w in enumerate(cfg.workers):
            path = f"workers[{i}]"
            if not self.bad(f"{path}.name"):
                try:
                    validate_name(w.name, "worker name")
                except ValueError as e:
                    self.problem(f"{path}.name", str(e))
                if w.name in seen:
                    self.problem(f"{path}.name", f"duplicate worker name {w.name!r} "
                                 f"(also workers[{seen[w.name]}])")
                else:
                    seen[w.name] = i
            if not self.bad(f"{path}.host") and not _LOOPBACK.match(w.host):
                self.problem(f"{path}.host", f"{w.host!r} is not a loopback address: workers "
                             "bind to 127.0.0.1 and are reached through the balancer")
            if (cfg.engine == Engine.SIM and w.gpu is not None and not self.bad("sim")
                    and w.gpu >= cfg.sim.gpu_count):
                self.problem(f"{path}.gpu", f"GPU {w.gpu} does not exist: sim.gpu_count is "
                             f"{cfg.sim.gpu_count}")

    def _check_ports(self, cfg: FleetConfig) -> None:
        owners: dict[int, str] = {}

        def claim(port: int, path: str, owner: str, what: str = "") -> None:
            if self.bad(path):
                return
            if port in owners:
                self.problem(path, f"{what or 'port'} {port} is already used by {owners[port]}")
            else:
                owners[port] = owner

        b = cfg.balancer
        if b.kind != "none":
            claim(b.port, "balancer.port", "balancer.port")
            if b.kind == "sglang-router":
                claim(b.prometheus_port, "balancer.prometheus_port", "balancer.prometheus_port")
        if cfg.exporter.port is not None:
            claim(cfg.exporter.port, "exporter.port", "exporter.port")
        for i, w in enumerate(cfg.workers):
            claim(w.port, f"workers[{i}].port", f"workers[{i}].port")
        for i, w in enumerate(cfg.workers):
            if w.nccl_port is not None:
                claim(w.nccl_port, f"workers[{i}].nccl_port", f"workers[{i}].nccl_port",
                      "NCCL port")
            elif not self.bad(f"workers[{i}].port"):
                derived = default_nccl_port(w.port)
                claim(derived, f"workers[{i}].port",
                      f"the NCCL port of workers[{i}] (port ± 1000)",
                      "the derived NCCL port (set nccl_port)")

    def _check_memory(self, cfg: FleetConfig) -> None:
        if self.bad("defaults.mem_fraction_static"):
            return
        by_gpu: dict[int, list[tuple[int, float | None]]] = {}
        for i, w in enumerate(cfg.workers):
            if self.bad(f"workers[{i}].mem_fraction_static", f"workers[{i}].gpu"):
                continue
            frac = _pick(w.mem_fraction_static, cfg.defaults.mem_fraction_static)
            by_gpu.setdefault(w.gpu if w.gpu is not None else 0, []).append((i, frac))
        for gpu, members in sorted(by_gpu.items()):
            if len(members) > 1:
                unset = [i for i, f in members if f is None]
                for i in unset:
                    self.problem(f"workers[{i}].mem_fraction_static",
                                 f"must be set: {len(members)} workers share GPU {gpu}, and "
                                 "SGLang's own default takes about 0.83-0.87 of the card each")
                if unset:
                    continue
            total = sum(f for _, f in members if f is not None)
            names = ", ".join(f"workers[{i}]" for i, _ in members)
            last = f"workers[{members[-1][0]}].mem_fraction_static"
            if total > 1.0 + 1e-9:
                self.problem(last, f"the fractions on GPU {gpu} sum to {total:.3g}, above 1 "
                             f"({names})")
            elif total > 0.9 + 1e-9 and len(members) > 1:
                self.warn(last, f"the fractions on GPU {gpu} sum to {total:.3g}: less than "
                          "10 % is left for activations and each process's CUDA context")

    def _check_keys(self, cfg: FleetConfig) -> None:
        d = cfg.defaults
        if d.api_key_env and d.api_key_file:
            self.problem("defaults.api_key_file", "set only one of api_key_env and api_key_file")
            return
        for i, w in enumerate(cfg.workers):
            if w.api_key_env and w.api_key_file:
                self.problem(f"workers[{i}].api_key_file",
                             "set only one of api_key_env and api_key_file")
                continue
            key_env, key_file, where = _key_source(d, w, i)
            if key_env is not None:
                if self.bad(f"{where}.api_key_env"):
                    continue
                if not _ENV_NAME.match(key_env):
                    self.problem(f"{where}.api_key_env", "must name an environment variable "
                                 "(e.g. \"EMBEDOPS_API_KEY\"), not hold the key itself")
                elif not self.environ.get(key_env):
                    self.warn(f"{where}.api_key_env", f"${key_env} is not set in this "
                              "environment; the supervisor needs it to start the worker")
            elif key_file is not None and not self.bad(f"{where}.api_key_file"):
                self._check_key_file(Path(key_file), f"{where}.api_key_file")
        env_name = cfg.balancer.control_plane_api_key_env
        if env_name is not None and not _ENV_NAME.match(env_name):
            self.problem("balancer.control_plane_api_key_env",
                         "must name an environment variable, not hold the key itself")

    def _check_key_file(self, path: Path, where: str) -> None:
        if where in {p.path for p in self.builder.problems + self.warnings}:
            return  # several workers share the defaults' file: say it once
        try:
            st = path.stat()
            content = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            self.problem(where, f"{path} does not exist")
            return
        except (OSError, UnicodeDecodeError) as e:
            self.problem(where, f"cannot read {path}: {e}")
            return
        if not content:
            self.problem(where, f"{path} is empty")
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            self.warn(where, f"{path} is readable by others (mode "
                      f"{stat.S_IMODE(st.st_mode):04o}); chmod 600 it")

    def _check_env(self, cfg: FleetConfig) -> None:
        tables = [("sglang.env", cfg.sglang.env), ("defaults.env", cfg.defaults.env)]
        tables += [(f"workers[{i}].env", w.env) for i, w in enumerate(cfg.workers)]
        for path, env in tables:
            for name in env:
                if not _ENV_NAME.match(name):
                    self.problem(f"{path}.{name}", "is not a valid environment variable name")
                elif name == "CUDA_VISIBLE_DEVICES":
                    self.problem(f"{path}.{name}", "is set from each worker's gpu; set gpu")
                elif is_secret_env(name):
                    self.warn(f"{path}.{name}", "looks like a secret written into the file; "
                              "set it in the supervisor's environment instead")

    def _check_balancer(self, cfg: FleetConfig) -> None:
        b = cfg.balancer
        if b.kind == "none":
            return
        if not _LOOPBACK.match(b.host):
            open_api = (b.kind == "sglang-router" and not b.control_plane_api_key_env)
            self.warn("balancer.host", f"{b.host!r} exposes the balancer beyond this host"
                      + ("; the router's worker API is open without "
                         "control_plane_api_key_env" if open_api else ""))
        if b.health_check_endpoint in ("/health", "/health_generate"):
            # SGLang's /health runs a 1-token request and then sleeps 1 s (the sim does the
            # same): at 1 s the router marks every worker unhealthy and routes nothing
            if b.health_check_timeout_s < 2:
                self.problem("balancer.health_check_timeout_s",
                             f"{b.health_check_timeout_s:g} s is shorter than SGLang's "
                             f"{b.health_check_endpoint}, which takes about 1 s: every "
                             "health check would time out; use 2 s or more (default 3)")
        if not b.health_check_endpoint.startswith("/"):
            self.problem("balancer.health_check_endpoint",
                         f"{b.health_check_endpoint!r} must start with '/'")

    def _check_restart(self, cfg: FleetConfig) -> None:
        r = cfg.restart
        if self.bad("restart.backoff_cap_s", "restart.backoff_base_s"):
            return
        if r.backoff_cap_s < r.backoff_base_s:
            self.problem("restart.backoff_cap_s", f"{r.backoff_cap_s:g} is below "
                         f"restart.backoff_base_s ({r.backoff_base_s:g})")

    def _check_alerts(self, cfg: FleetConfig) -> None:
        seen: set[str] = set()
        for i, rule in enumerate(cfg.alerts):
            path = f"alerts[{i}]"
            if rule.name in seen and not self.bad(f"{path}.name"):
                self.problem(f"{path}.name", f"duplicate alert name {rule.name!r}")
            seen.add(rule.name)
            if not rule.when and not self.bad(f"{path}.when"):
                self.problem(f"{path}.when", "needs at least one condition")
            for j, cond in enumerate(rule.when):
                if cond.metric not in ALERT_METRICS and not self.bad(f"{path}.when[{j}].metric"):
                    close = difflib.get_close_matches(cond.metric, list(ALERT_METRICS), n=1)
                    hint = f"; did you mean {close[0]!r}?" if close else ""
                    self.problem(f"{path}.when[{j}].metric",
                                 f"unknown metric {cond.metric!r}{hint}")
            if rule.auto_remediate and rule.remediation == "none":
                self.problem(f"{path}.remediation",
                             "auto_remediate = true needs a remediation (\"restart\" or \"drain\")")

    def _check_exporter(self, cfg: FleetConfig) -> None:
        if not self.bad("exporter.host") and not _LOOPBACK.match(cfg.exporter.host):
            self.warn("exporter.host", f"{cfg.exporter.host!r} exposes /metrics (no "
                      "authentication) beyond this host")
        scale = cfg.metrics.trend_time_scale
        if scale != 1 and cfg.engine != Engine.SIM and not self.bad(
                "metrics.trend_time_scale", "engine"):
            self.problem("metrics.trend_time_scale", f"{scale:g}: a compressed trend clock "
                         "is for simulated fleets only (engine = \"sim\"); real fleets use 1")
        self._check_intervals(cfg)

    def _check_intervals(self, cfg: FleetConfig) -> None:
        scrape_s, floor_s = cfg.metrics.scrape_interval_s, cfg.probe.timeout_floor_s
        if scrape_s > floor_s and not self.bad("metrics.scrape_interval_s",
                                               "probe.timeout_floor_s"):
            self.warn("metrics.scrape_interval_s", (
                f"{scrape_s:g} s is longer than probe.timeout_floor_s ({floor_s:g} s): the hang "
                "rule may not see a slow worker's completions between two failed probes and "
                "restart it as hung"))

    def _check_buckets(self, cfg: FleetConfig) -> None:
        path = "metrics.e2e_latency_buckets_s"
        if self.bad(path):
            return
        edges = cfg.metrics.e2e_latency_buckets_s
        if not edges:
            self.problem(path, "needs at least one edge")
            return
        for i, e in enumerate(edges):
            if self.bad(f"{path}[{i}]") or (i and self.bad(f"{path}[{i - 1}]")):
                continue
            if e <= 0:
                self.problem(f"{path}[{i}]", f"{e:g} must be greater than 0")
            elif i and e <= edges[i - 1]:
                self.problem(f"{path}[{i}]", f"{e:g} is not greater than the edge before it "
                             f"({edges[i - 1]:g}): edges must increase")
        for i, rule in enumerate(cfg.alerts):
            for j, cond in enumerate(rule.when):
                if cond.metric.endswith("_latency_s") and not any(
                        math.isclose(cond.value, e, rel_tol=1e-9) for e in edges):
                    self.problem(path, f"has no edge at {cond.value:g} s, the threshold of "
                                 f"alerts[{i}].when[{j}] ({rule.name}); add it so the share "
                                 "of requests above it can be read from the histogram")

    def _catalogue(self, cfg: FleetConfig) -> FlagCatalogue:
        if self.catalogue is not None:
            return self.catalogue
        if cfg.engine == Engine.SIM:
            return FlagCatalogue.sim(cfg.sim.sglang_version)
        python = self.python or sys.executable
        if self.bad("sglang.python", "engine"):
            return FlagCatalogue.builtin(cfg.sglang.version)
        version = installed_version(python, dict(cfg.sglang.env) or None)
        if version is None:
            cat = FlagCatalogue.builtin(cfg.sglang.version)
            self.warn("sglang", f"SGLang is not installed for {python}; flags checked "
                      f"against the {cat.note}")
            return cat
        try:
            state = resolve_state_dir(cfg.name, cfg.state_dir, env=self.environ)
        except ValueError:
            state = None
        cached = read_cached_catalogue(state, version) if state is not None else None
        if cached is not None:
            return cached
        cat = FlagCatalogue.builtin(version)
        self.warn("sglang", f"flags checked against the {cat.note}; run `embedops check "
                  "--sglang-help` once to read SGLang's own --help")
        return cat

    def _check_python(self, cfg: FleetConfig) -> None:
        python = cfg.sglang.python
        if cfg.engine != Engine.SGLANG or python is None or self.bad("sglang.python"):
            return
        expanded = self._expand(python, "sglang.python")
        if expanded is None:
            return
        if os.sep in expanded:
            found = expanded if os.access(expanded, os.X_OK) and Path(expanded).is_file() else None
        else:
            found = shutil.which(expanded, path=self.environ.get("PATH"))
        if found is None:
            self.problem("sglang.python", f"{python!r} is not an executable interpreter")
        self.python = found

    def _check_flags(self, cfg: FleetConfig, catalogue: FlagCatalogue) -> None:
        lists = [("defaults.extra_args", cfg.defaults.extra_args)]
        lists += [(f"workers[{i}].extra_args", w.extra_args) for i, w in enumerate(cfg.workers)]
        for path, args in lists:
            if self.bad(path):
                continue
            for fp in catalogue.check_args(args):
                (self.problem if fp.severity == "error" else self.warn)(
                    f"{path}[{fp.index}]", fp.message)
            for idx, token in enumerate(args):
                if not token.startswith("--"):
                    continue
                info = catalogue.resolve(token)
                names = set(info.names) if info else {token.split("=", 1)[0]}
                managed = sorted(names & set(MANAGED_FLAGS))
                if not managed:
                    continue
                flag = token.split("=", 1)[0]
                if managed[0] == "--api-key":
                    reason = ("--api-key must not be written in the file; use api_key_env "
                              "or api_key_file")
                else:
                    reason = (f"{flag} duplicates the typed setting "
                              f"{MANAGED_FLAGS[managed[0]]}; set that instead")
                self.problem(f"{path}[{idx}]", reason)
        self._effect_warnings(cfg, catalogue)

    def _effect_warnings(self, cfg: FleetConfig, catalogue: FlagCatalogue) -> None:
        found: dict[str, list[int]] = {}
        for i, w in enumerate(cfg.workers):
            for text in effect_warnings(cfg._spec(w, None), cfg.sglang_version, catalogue):
                found.setdefault(text, []).append(i)
        for text, idx in found.items():
            if len(idx) == len(cfg.workers) and len(idx) > 1:
                where = "workers (all)"
            else:
                where = ", ".join(f"workers[{i}]" for i in idx)
            self.warn(where, text)

    def _check_model(self, cfg: FleetConfig) -> None:
        if cfg.engine != Engine.SGLANG or not Path(cfg.model.path).is_dir():
            return  # sim, missing (already a problem), or a repo id in the HF cache
        config_json = Path(cfg.model.path) / "config.json"
        try:
            info = json.loads(config_json.read_text(encoding="utf-8"))
        except FileNotFoundError:
            self.warn("model.path", f"{cfg.model.path} has no config.json")
            return
        except (OSError, ValueError):
            self.warn("model.path", f"{config_json} is not readable JSON")
            return
        if not isinstance(info, dict):
            return
        archs = [str(a) for a in info.get("architectures") or []]
        model_type = str(info.get("model_type", "")).lower()
        extra = cfg.defaults.extra_args + tuple(a for w in cfg.workers for a in w.extra_args)
        version = cfg.sglang_version
        if model_type in _ENCODER_TYPES and "--disable-radix-cache" not in extra:
            self.warn("defaults.extra_args",
                      f"the model is an encoder ({model_type}, bidirectional attention): with "
                      "SGLang's radix cache on, a repeated text gets a different vector (cosine "
                      "0.856 seen on 0.5.17); add \"--disable-radix-cache\"")
        if ("Qwen3ForCausalLM" in archs and "Embedding" not in cfg.model.path
                and version_key(version) < version_key("0.5.23")):
            self.warn("model.path", f"SGLang {version} names Qwen3 embedding weights right "
                      "only when the path contains 'Embedding' (sglang#6917); rename the "
                      "directory")
        hidden = info.get("hidden_size")
        if isinstance(hidden, int) and not isinstance(hidden, bool) and hidden != cfg.model.dimension:
            self.warn("model.dimension", f"{cfg.model.dimension} differs from the model's "
                      f"hidden_size {hidden}; the probe expects {cfg.model.dimension}-long "
                      "vectors")


def _key_source(d: WorkerDefaults, w: WorkerConfig, i: int) -> tuple[str | None, str | None, str]:
    """(env var, key file, config path of the source) for worker `w` (index `i`)."""
    if w.api_key_env is not None or w.api_key_file is not None:
        return w.api_key_env, w.api_key_file, f"workers[{i}]"
    return d.api_key_env, d.api_key_file, "defaults"


def _read_api_key(key_env: str | None, key_file: str | None, where: str, base: Path,
                  environ: Mapping[str, str], problems: list[Problem]) -> str | None:
    if key_env is not None:
        value = environ.get(key_env)
        if not value:
            problems.append(Problem(f"{where}.api_key_env", f"${key_env} is not set"))
            return None
        return value
    if key_file is not None:
        path = Path(key_file)  # made absolute by load_config
        path = path if path.is_absolute() else base / path
        try:
            value = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            problems.append(Problem(f"{where}.api_key_file", f"cannot read {path}: {e}"))
            return None
        if not value:
            problems.append(Problem(f"{where}.api_key_file", f"{path} is empty"))
            return None
        return value
    return None
