"""What the supervisor knows about one worker between ticks.

A `WorkerRuntime` bundles the worker's spec, its lifecycle, its process identity and
the statistics folded from probes, scrapes, GPU samples and host-memory samples. It
does no I/O itself: the supervisor feeds it observations (`fold_probe`, `fold_metrics`,
`fold_gpu`, `fold_host`) and reads facts and snapshot rows from it.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field

from backends.procs import ProcessIdentity
from backends.promtext import MetricsSnapshot
from backends.sglang_client import ProbeResult, cosine
from console.alerts import WorkerFacts
from console.lifecycle import WorkerLifecycle
from console.model import WorkerSpec, WorkerState
from console.stats import (
    CounterRate,
    CumulativeHistogram,
    HistogramWindow,
    LeakTrend,
    SampleWindow,
    StaleDetector,
    time_to_full_s,
)

E2E = "sglang:e2e_request_latency_seconds"
REQUESTS = "sglang:num_requests_total"
RUNNING = "sglang:num_running_reqs"
QUEUED = "sglang:num_queue_reqs"
RESPONSES = "sglang:http_responses_total"
SCRAPED_FAMILIES = frozenset({E2E, REQUESTS, RUNNING, QUEUED, RESPONSES})
"""Every metric family `WorkerRuntime.fold_metrics` reads (and so the stale detector,
drain progress and the error share): the supervisor's scrapes parse only these
(`backends.promtext.parse_metrics` ``families``)."""
CONTROL_ENDPOINTS = ("/health", "/metrics", "/model_info", "/get_model_info", "/server_info",
                     "/get_server_info", "/v1/models", "/ping", "/ready", "/v1/loads",
                     "/get_load", "/_sim/")
"""Endpoint prefixes that are not client requests: their responses (a 503 from
``/health`` while starting) count in neither the errors nor the error share."""

SERIES_STEP_S = 5.0
"""Spacing of the plot series points."""
SERIES_KEEP_S = 3 * 3600.0
"""How much plot history is kept per worker."""
PROBE_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.2, 2.5,
                   5.0, 10.0)
"""Edges of the exported probe latency histogram: millisecond resolution (an embedding
probe takes ~5-10 ms) and one at the 1.2 s alert threshold."""


@dataclass
class ActionProgress:
    """An operator action running on a worker, as shown on its row."""

    action_id: str
    name: str
    started_at: float
    """Wall-clock seconds."""
    progress: str = ""


@dataclass
class WorkerRuntime:
    """One worker: spec, lifecycle, process, and folded observations."""

    spec: WorkerSpec
    """The arguments the current (or next) generation runs with."""
    lifecycle: WorkerLifecycle
    config_spec: WorkerSpec | None = None
    """What the config file says (None for adopted/added workers): drift is spec vs this."""
    managed: bool = True
    identity: ProcessIdentity | None = None
    raw_argv: tuple[str, ...] | None = None
    """Verbatim argv to relaunch with (adopted servers keep their own command line)."""
    previous_spec: WorkerSpec | None = None
    """Arguments to roll back to while a retune is on trial."""
    rollback_reason: str | None = None
    """Why the last retune trial was rolled back (what the retune reports)."""
    warnings: list[str] = field(default_factory=list)
    started_wall: float | None = None
    action: ActionProgress | None = None
    stop_in_progress: bool = False
    in_balancer: bool = False
    """The balancer lists this worker as routable (its add was acknowledged and, for
    sglang-router, the worker appears in ``/workers``): what `routed` in the snapshot means."""
    # folded observations
    probe_window: SampleWindow = field(default_factory=lambda: SampleWindow(300.0, 10.0))
    latency: HistogramWindow = field(default_factory=HistogramWindow)
    rate: CounterRate = field(default_factory=lambda: CounterRate(10.0))
    """Requests per second over the last 10 s (the table's req/s: quick to follow a change)."""
    errors_rate: CounterRate = field(default_factory=lambda: CounterRate(300.0))
    """5xx responses to requests (`CONTROL_ENDPOINTS` excluded)."""
    responses_rate: CounterRate = field(default_factory=lambda: CounterRate(300.0))
    """All responses to requests: the error share's denominator (same window)."""
    leak: LeakTrend = field(default_factory=LeakTrend)
    host_leak: LeakTrend = field(default_factory=LeakTrend)
    """Trend of the process group's summed RSS (MiB)."""
    trend_scale: float = 1.0
    """`MetricsConfig.trend_time_scale`: the leak trend's clock runs this much faster than
    real time (simulated fleets); slope and time-to-full are in trend time."""
    stale: StaleDetector = field(default_factory=StaleDetector)
    probe_hist: CumulativeHistogram = field(
        default_factory=lambda: CumulativeHistogram(PROBE_BUCKETS_S))
    """Latencies of passing probes since the supervisor started (exported)."""
    probe_failures: int = 0
    """Failed probes since the supervisor started (exported)."""
    probe_streak: int | None = None
    """Failed probes in a row in this generation (None before its first probe)."""
    running: int | None = None
    queued: int | None = None
    completions: float | None = None
    completions_at_last_probe: float | None = None
    errors_total: float | None = None
    last_probe: ProbeResult | None = None
    reference_vector: tuple[float, ...] | None = None
    cosine: float | None = None
    gpu_mem_mib: int | None = None
    gpu_card_total_mib: int | None = None
    gpu_card_used_mib: int | None = None
    gpu_util_pct: float | None = None
    gpu_temperature_c: float | None = None
    host_rss_mib: float | None = None
    host_available_mib: float | None = None
    metrics_at: float | None = None
    gpu_at: float | None = None
    host_at: float | None = None
    series: deque[tuple[float, float | None, float | None, float | None, float | None]] = field(
        default_factory=lambda: deque(maxlen=int(SERIES_KEEP_S / SERIES_STEP_S)))
    """(wall time, p50 ms, p95 ms, req/s, GPU MiB) every `SERIES_STEP_S`."""

    @property
    def name(self) -> str:
        """Worker name."""
        return self.spec.name

    @property
    def state(self) -> WorkerState:
        """Lifecycle state."""
        return self.lifecycle.state

    # ------------------------------------------------------------------ folding

    def new_generation(self, now: float) -> None:
        """A new process generation starts: per-process observations start over."""
        self.reference_vector = None
        self.cosine = None
        self.completions = None
        self.completions_at_last_probe = None
        self.probe_streak = None
        self.leak.mark_restart(now)
        self.host_leak.mark_restart(now)
        self.started_wall = time.time()

    def fold_probe(self, now: float, result: ProbeResult) -> bool:
        """Record a probe; returns whether completions progressed since the previous one."""
        self.last_probe = result
        if result.ok:
            self.probe_window.add(now, result.latency_s)
            self.probe_hist.observe(result.latency_s)
            if result.vector is not None:
                if self.reference_vector is None:
                    self.reference_vector = result.vector
                else:
                    self.cosine = cosine(self.reference_vector, result.vector)
        else:
            self.probe_failures += 1
        self.probe_streak = 0 if result.ok else (self.probe_streak or 0) + 1
        progressed = (self.completions is not None and self.completions_at_last_probe is not None
                      and self.completions > self.completions_at_last_probe)
        self.completions_at_last_probe = self.completions
        return progressed

    def fold_metrics(self, now: float, metrics: MetricsSnapshot) -> None:
        """Fold one `/metrics` scrape."""
        self.metrics_at = now
        running = metrics.value(RUNNING)
        queued = metrics.value(QUEUED)
        self.running = None if running is None else int(running)
        self.queued = None if queued is None else int(queued)
        hist = metrics.histogram(E2E)
        instance = self.identity.pid if self.identity else None
        if hist is not None:
            self.latency.observe(now, hist.buckets, instance=instance)
            self.completions = hist.count
        requests = metrics.value(REQUESTS)
        if requests is not None:
            self.rate.observe(now, requests, instance=instance)
            if self.completions is None:
                self.completions = requests
        responses = [s for s in metrics.samples(RESPONSES)
                     if not str(s.labels.get("endpoint", "")).startswith(CONTROL_ENDPOINTS)]
        errors = sum(s.value for s in responses
                     if str(s.labels.get("status_code", s.labels.get("code", ""))).startswith("5"))
        self.errors_rate.observe(now, errors, instance=instance)
        self.errors_total = errors
        if responses:  # SGLang 0.5.2 has no HTTP counters: no error share (no data)
            self.responses_rate.observe(now, sum(s.value for s in responses), instance=instance)
        if self.completions is not None:
            self.stale.observe(now, self.completions, (self.running or 0) + (self.queued or 0))

    def fold_gpu(self, now: float, used_mib: int | None, card_used: int | None,
                 card_total: int | None, *, util_pct: float | None = None,
                 temperature_c: float | None = None) -> None:
        """Fold this worker's GPU memory and its card's totals, utilisation and
        temperature."""
        self.gpu_at = now
        self.gpu_mem_mib = used_mib
        self.gpu_card_used_mib = card_used
        self.gpu_card_total_mib = card_total
        self.gpu_util_pct = util_pct
        self.gpu_temperature_c = temperature_c
        if used_mib is not None:
            self.leak.observe(now * self.trend_scale, float(used_mib))

    def fold_host(self, now: float, rss_mib: float | None, available_mib: float | None) -> None:
        """Fold the summed RSS of this worker's process group and the host's available
        memory (`console.hostmem.sample`)."""
        self.host_at = now
        self.host_rss_mib = rss_mib
        self.host_available_mib = available_mib
        if rss_mib is not None:
            self.host_leak.observe(now * self.trend_scale, float(rss_mib))

    # ------------------------------------------------------------------ reading

    def percentiles_ms(self, now: float) -> tuple[float | None, float | None, str]:
        """(P50, P95) in ms and their source: worker histogram deltas, else probe samples."""
        (p50, p95, _), source = self.quantiles_s(now)
        return _ms(p50), _ms(p95), source

    def quantiles_s(self, now: float) -> tuple[tuple[float | None, float | None, float | None],
                                               str]:
        """(P50, P95, P99) in seconds and their source: worker histogram deltas, else
        probe samples, else ``"none"`` (all None)."""
        qs = (0.5, 0.95, 0.99)
        if self.latency.count(now) >= 1:
            vals = [self.latency.quantile(q, now) for q in qs]
            if vals[1] is not None:
                return (_finite(vals[0]), _finite(vals[1]), _finite(vals[2])), "histogram"
        pcts = self.probe_window.percentiles(qs, now)
        if pcts[0.95] is not None:
            return (pcts[0.5], pcts[0.95], pcts[0.99]), "probe"
        return (None, None, None), "none"

    def error_share(self, now: float, *, since: float | None = None,
                    window_s: float | None = None) -> float | None:
        """5xx share of request responses over the error window (0..1), or over its last
        `window_s` seconds and after `since`; None without responses in it."""
        share, _ = self.error_share_of(now, since=since, window_s=window_s)
        return share

    def error_share_of(self, now: float, *, since: float | None = None,
                       window_s: float | None = None) -> tuple[float | None, float]:
        """(`error_share`, the number of responses it is a share of)."""
        total = self.responses_rate.increase(now, since=since, window_s=window_s)
        errors = self.errors_rate.increase(now, since=since, window_s=window_s)
        if total is None or errors is None or total <= 0:
            return None, total or 0.0
        return min(1.0, max(0.0, errors / total)), total

    def leak_figures(self, now: float) -> tuple[float | None, float | None]:
        """(slope MiB/h, seconds until the card is full) when memory is growing."""
        slope_s = self.leak.leak_slope(now * self.trend_scale)
        if slope_s is None:
            return None, None
        if self.gpu_card_used_mib is None or self.gpu_card_total_mib is None:
            return slope_s * 3600.0, None
        return slope_s * 3600.0, time_to_full_s(self.gpu_card_used_mib, self.gpu_card_total_mib,
                                                slope_s)

    def host_leak_figures(self, now: float) -> tuple[float | None, float | None]:
        """(slope MiB/h, seconds until the host's available memory is used up) when the
        process group's RSS is growing."""
        slope_s = self.host_leak.leak_slope(now * self.trend_scale)
        if slope_s is None:
            return None, None
        if self.host_rss_mib is None or self.host_available_mib is None:
            return slope_s * 3600.0, None
        return slope_s * 3600.0, time_to_full_s(
            self.host_rss_mib, self.host_rss_mib + self.host_available_mib, slope_s)

    def facts(self, now: float, *, stale_after_s: float) -> WorkerFacts:
        """The alert engine's view of this worker now."""
        status = self.lifecycle.status(now)
        (p50, p95, p99), _ = self.quantiles_s(now)
        probing = self.lifecycle.probing
        metrics_fresh = (probing and self.metrics_at is not None
                         and now - self.metrics_at <= stale_after_s)
        gpu_fresh = self.gpu_at is not None and now - self.gpu_at <= stale_after_s
        missing: list[str] = []
        # a starting worker has no /metrics until its port opens: that is the startup
        # budget's business, not a no-data alert flapping pending on every start
        if probing and not metrics_fresh and status.state is not WorkerState.STARTING:
            missing.append("metrics")
        gpu_pct = None
        if self.gpu_card_used_mib is not None and self.gpu_card_total_mib:
            gpu_pct = 100.0 * self.gpu_card_used_mib / self.gpu_card_total_mib
        slope, ttf = self.leak_figures(now)
        host_slope, host_ttf = self.host_leak_figures(now)
        return WorkerFacts(
            worker=self.name, gpu=self.spec.gpu, state=status.state, down=status.down,
            failed_reason=status.failed_reason, gpu_mem_pct=gpu_pct,
            p95_s=p95, failures_in_window=status.failures_in_window, leak_ttf_s=ttf,
            leak_slope_mib_per_h=slope, host_leak_ttf_s=host_ttf,
            host_leak_slope_mib_per_h=host_slope, cosine=self.cosine,
            radix_cache_disabled="--disable-radix-cache" in self.spec.extra_args,
            stale_metrics=self.stale.stale() if probing else None,
            missing=tuple(missing),
            gpu_util_pct=self.gpu_util_pct if gpu_fresh else None,
            gpu_temperature_c=self.gpu_temperature_c if gpu_fresh else None,
            p50_s=p50, p99_s=p99,
            error_rate=self.error_share(now) if metrics_fresh else None,
            queue_depth=self.queued if metrics_fresh else None,
            running_requests=self.running if metrics_fresh else None,
            probe_failures=self.probe_streak if probing else None,
        )

    def record_series(self, now: float, wall: float) -> None:
        """Append a plot point when `SERIES_STEP_S` has passed since the last one."""
        if self.series and wall - self.series[-1][0] < SERIES_STEP_S:
            return
        p50, p95, _ = self.percentiles_ms(now)
        rps = self.rate.rate(now)
        self.series.append((wall, p50, p95, rps, self.gpu_mem_mib))


def _finite(seconds: float | None) -> float | None:
    return seconds if seconds is not None and math.isfinite(seconds) else None


def _ms(seconds: float | None) -> float | None:
    if seconds is None or not math.isfinite(seconds):
        return None
    return round(seconds * 1000.0, 2)
