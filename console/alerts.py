"""Alert rules with Prometheus semantics: inactive → pending → firing → resolved. Pure.

The supervisor assembles one `WorkerFacts` per worker each tick (latest values: GPU
memory %, utilisation and temperature, P50/P95/P99, error share, queue, probe failures
in a row, lifecycle state, failures in the crash-loop window, GPU and host-RSS leak
time-to-full, probe-vector cosine, stale metrics, missing sources) and calls
`AlertEngine.evaluate`; it gets back the `AlertTransition`s of that tick.

Semantics (reliability.md §3.3, prometheus ``rules/alerting.go``):

* At an evaluation where a rule's condition is true for a worker and no instance is
  active, the instance becomes **pending** with ``active_at = now``; with ``for_s = 0``
  it fires in the same evaluation.
* A pending instance becomes **firing** at the first evaluation where the condition is
  still true and ``now − active_at ≥ for_s``.
* At an evaluation where the condition is not true (false, *or no data*: the condition
  returns ``None``, or the worker is absent from the facts), a pending instance is
  deleted (the timer restarts: one missing tick resets pending) and a firing one
  **resolves**, unless ``keep_firing_for_s`` > 0: then it keeps firing until the
  condition has been not true for that long (counted from the first such evaluation;
  a true evaluation in between cancels the count).
* Evaluations that did not happen are not "missing ticks": like Prometheus, only what
  an evaluation sees counts. Missing data raises its own alert (``no_data``) from
  `WorkerFacts.missing`, rather than passing silently as "false".

Silences suppress notification (`Alert.silenced`, no auto-remediation) and keep the
state. Auto-remediation is per rule, off by default: on the transition to firing, the
transition carries the `Remediation` the supervisor should carry out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum

from console.model import Alert, AlertState, Severity, WorkerState

__all__ = [
    "AlertEngine",
    "AlertRule",
    "AlertSettings",
    "AlertTransition",
    "Remediation",
    "WorkerFacts",
    "alert_key",
    "default_rules",
]


class Remediation(str, Enum):
    """An action the supervisor may take automatically when an alert fires."""

    DRAIN_RESTART = "drain_restart"  #: planned restart: drain → stop → start → undrain
    DRAIN = "drain"  #: out of the balancer, process left alive for a human to look at

    @property
    def action(self) -> str:
        """The operator action (`console.actions.ACTIONS` name) that carries it out."""
        return "drain" if self is Remediation.DRAIN else "restart"


@dataclass(frozen=True)
class WorkerFacts:
    """Latest values about one worker, as the supervisor assembled them for one tick.

    ``None`` means "no data" for that value. The supervisor joins GPU values onto the
    worker (its GPU's used/total), so rules stay per worker.
    """

    worker: str
    gpu: int | None = None
    state: WorkerState | None = None
    down: bool | None = None
    """`LifecycleStatus.down`: meant to serve but not routed (ejected, backoff, failed...)."""
    failed_reason: str | None = None
    gpu_mem_pct: float | None = None
    """Used / total memory of the worker's GPU, 0–100."""
    p95_s: float | None = None
    """P95 request latency over the window (seconds)."""
    failures_in_window: int | None = None
    """Unplanned failures within the crash-loop window (`LifecycleStatus.failures_in_window`)."""
    leak_ttf_s: float | None = None
    """Projected seconds until the card is full at the current leak slope; None: no leak."""
    leak_slope_mib_per_h: float | None = None
    host_leak_ttf_s: float | None = None
    """Projected seconds until the host's available memory is used up by the growth of
    the worker's process-group RSS; None: no leak (or no data)."""
    host_leak_slope_mib_per_h: float | None = None
    cosine: float | None = None
    """Probe vector vs the one recorded when the worker first became ready."""
    radix_cache_disabled: bool | None = None
    """Whether the worker runs with ``--disable-radix-cache``."""
    stale_metrics: bool | None = None
    """`StaleDetector.stale()`: counters frozen while requests are queued."""
    missing: tuple[str, ...] = ()
    """Data sources that gave nothing fresh this tick (``"metrics"``, ``"gpu"``, ``"probe"``)."""
    gpu_util_pct: float | None = None
    """Utilisation of the worker's GPU, 0–100 (fresh GPU sample only)."""
    gpu_temperature_c: float | None = None
    p50_s: float | None = None
    p99_s: float | None = None
    error_rate: float | None = None
    """Share of the worker's request responses that were 5xx over the error window
    (0..1); None without responses in the window or fresh metrics."""
    queue_depth: int | None = None
    """``sglang:num_queue_reqs`` from a fresh scrape."""
    running_requests: int | None = None
    """``sglang:num_running_reqs`` from a fresh scrape."""
    probe_failures: int | None = None
    """Failed probes in a row in this generation; None before its first probe."""

    @property
    def memory_ttf_s(self) -> float | None:
        """The sooner of the GPU and host-RSS times to full (None: neither leaks)."""
        ttfs = [t for t in (self.leak_ttf_s, self.host_leak_ttf_s) if t is not None]
        return min(ttfs) if ttfs else None

    @property
    def leaking_memory(self) -> str | None:
        """Which memory gives `memory_ttf_s`: ``"GPU memory"`` or ``"host RSS"`` (the
        GPU on a tie); None when neither leaks."""
        found = [(t, n) for n, t in (("GPU memory", self.leak_ttf_s),
                                     ("host RSS", self.host_leak_ttf_s)) if t is not None]
        return min(found, key=lambda x: x[0])[1] if found else None


Condition = Callable[[WorkerFacts], "bool | None"]
Summary = Callable[[WorkerFacts], str]


@dataclass(frozen=True)
class AlertRule:
    """One rule, applied to every worker."""

    name: str
    condition: Condition
    """True: alerting; False: not; None: no data (treated as not true)."""
    summary: Summary
    """One line for the operator, from the facts that made the condition true."""
    for_s: float = 0.0
    keep_firing_for_s: float = 0.0
    severity: Severity = Severity.WARNING
    remediation: Remediation | None = None
    """What auto-remediation would do for this rule (None: never)."""
    auto_remediate: bool = False
    """Whether to do it automatically (off by default)."""


@dataclass(frozen=True)
class AlertSettings:
    """Thresholds of the built-in rules."""

    gpu_mem_pct: float = 92.0
    p95_s: float = 1.2
    mem_slow_for_s: float = 300.0
    mem_slow_keep_firing_s: float = 60.0
    down_for_s: float = 60.0
    crash_loop_failures: int = 5
    no_data_for_s: float = 15.0
    leak_ttf_s: float = 6 * 3600.0
    leak_for_s: float = 60.0
    leak_keep_firing_s: float = 300.0
    cosine_min: float = 0.99
    stale_for_s: float = 0.0
    auto_remediate: frozenset[str] = field(default_factory=frozenset)
    """Names of rules whose remediation runs automatically."""


def _gpu(f: WorkerFacts) -> str:
    return "GPU" if f.gpu is None else f"GPU {f.gpu}"


def _fmt_duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


def default_rules(settings: AlertSettings | None = None) -> list[AlertRule]:
    """The built-in rules: ``gpu_mem_high_and_slow`` (the seed rule), ``worker_down``,
    ``worker_failed``, ``crash_loop``, ``no_data``, ``memory_leak``,
    ``unstable_embeddings``, ``stale_metrics``."""
    s = settings or AlertSettings()

    def mem_and_slow(f: WorkerFacts) -> bool | None:
        if f.gpu_mem_pct is None or f.p95_s is None:
            return None
        return f.gpu_mem_pct > s.gpu_mem_pct and f.p95_s > s.p95_s

    def unstable(f: WorkerFacts) -> bool | None:
        return None if f.cosine is None else f.cosine < s.cosine_min

    def unstable_summary(f: WorkerFacts) -> str:
        head = (f"{f.worker}: probe vector for the same text changed (cosine {f.cosine:.3f} "
                f"vs the first ready vector, threshold {s.cosine_min})")
        if f.radix_cache_disabled:
            return head + "; radix cache already disabled: check dtype / attention backend"
        return (head + "; likely SGLang's radix cache on an encoder model: restart it with "
                "--disable-radix-cache (configuration, not a restart loop)")

    def leak_summary(f: WorkerFacts) -> str:
        parts = []
        for what, full, ttf, slope in (
                ("GPU memory", f"{_gpu(f)} full", f.leak_ttf_s, f.leak_slope_mib_per_h),
                ("host RSS", "host memory used up", f.host_leak_ttf_s,
                 f.host_leak_slope_mib_per_h)):
            if ttf is None:
                continue
            rate = "" if slope is None else f" (+{slope:.0f} MiB/h)"
            parts.append(f"{what} growing{rate}: {full} in ~{_fmt_duration(ttf)}")
        return f"{f.worker}: " + ("; ".join(parts) or "memory growing")

    rules = [
        AlertRule(
            name="gpu_mem_high_and_slow",
            condition=mem_and_slow,
            summary=lambda f: (f"{f.worker}: {_gpu(f)} memory {f.gpu_mem_pct:.1f} % > "
                               f"{s.gpu_mem_pct:g} % and P95 {f.p95_s:.3f} s > {s.p95_s:g} s"),
            for_s=s.mem_slow_for_s, keep_firing_for_s=s.mem_slow_keep_firing_s,
            severity=Severity.CRITICAL, remediation=Remediation.DRAIN_RESTART,
        ),
        AlertRule(
            name="worker_down",
            condition=lambda f: f.down,
            summary=lambda f: f"{f.worker}: down ({f.state.value if f.state else 'unknown'})",
            for_s=s.down_for_s, severity=Severity.CRITICAL,
        ),
        AlertRule(
            name="worker_failed",
            condition=lambda f: None if f.state is None else f.state is WorkerState.FAILED,
            summary=lambda f: f"{f.worker}: failed to start: {f.failed_reason or 'unknown'}; "
                              "not restarting until fixed",
            severity=Severity.CRITICAL,
        ),
        AlertRule(
            name="crash_loop",
            condition=lambda f: (None if f.failures_in_window is None
                                 else f.failures_in_window >= s.crash_loop_failures),
            summary=lambda f: (f"{f.worker}: crash loop: {f.failures_in_window} failures in the "
                               "window; restarting with backoff"),
            severity=Severity.CRITICAL,
        ),
        AlertRule(
            name="no_data",
            condition=lambda f: bool(f.missing),
            summary=lambda f: f"{f.worker}: no data from {', '.join(f.missing)}",
            for_s=s.no_data_for_s, severity=Severity.WARNING,
        ),
        AlertRule(
            name="memory_leak",
            condition=lambda f: None if f.memory_ttf_s is None else f.memory_ttf_s < s.leak_ttf_s,
            summary=leak_summary,
            for_s=s.leak_for_s, keep_firing_for_s=s.leak_keep_firing_s,
            severity=Severity.WARNING, remediation=Remediation.DRAIN_RESTART,
        ),
        AlertRule(
            name="unstable_embeddings",
            condition=unstable, summary=unstable_summary, severity=Severity.WARNING,
        ),
        AlertRule(
            name="stale_metrics",
            condition=lambda f: f.stale_metrics,
            summary=lambda f: f"{f.worker}: metrics frozen while requests are queued",
            for_s=s.stale_for_s, severity=Severity.WARNING,
        ),
    ]
    return [replace(r, auto_remediate=True) if r.name in s.auto_remediate and r.remediation
            else r for r in rules]


def alert_key(rule: str, worker: str) -> str:
    """Identity of an alert instance: ``rule[worker]``."""
    return f"{rule}[{worker}]"


@dataclass(frozen=True)
class AlertTransition:
    """A change of one alert instance at one evaluation."""

    at: float
    source: AlertState
    target: AlertState
    alert: Alert
    """The instance after the change."""
    remediation: Remediation | None = None
    """Set on a transition to firing when the rule auto-remediates and it is not silenced."""

    @property
    def silenced(self) -> bool:
        """Whether notification of this transition is suppressed."""
        return self.alert.silenced(self.at)


@dataclass
class _Instance:
    rule: AlertRule
    worker: str
    gpu: int | None
    state: AlertState
    active_at: float
    summary: str
    fired_at: float | None = None
    keep_since: float | None = None


class AlertEngine:
    """Evaluates rules against per-worker facts and keeps the alert instances."""

    def __init__(self, rules: Iterable[AlertRule] | None = None,
                 settings: AlertSettings | None = None) -> None:
        self.rules = list(rules) if rules is not None else default_rules(settings)
        names = [r.name for r in self.rules]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate rule names: {names}")
        self._active: dict[str, _Instance] = {}
        self._silences: dict[str, float] = {}

    # ------------------------------------------------------------------ silences

    def silence(self, key: str, until: float) -> None:
        """Silence an alert key (``rule[worker]``) or a whole rule (its name) until `until`."""
        self._silences[key] = until

    def unsilence(self, key: str) -> None:
        """Remove a silence (no error if there is none)."""
        self._silences.pop(key, None)

    def silences(self, now: float) -> dict[str, float]:
        """Silences still in force at `now`: key → until."""
        return {k: u for k, u in self._silences.items() if now < u}

    def _silenced_until(self, rule: str, worker: str, now: float) -> float | None:
        untils = [u for k, u in self._silences.items()
                  if k in (rule, alert_key(rule, worker)) and now < u]
        return max(untils) if untils else None

    # ------------------------------------------------------------------ evaluation

    def _alert(self, inst: _Instance, now: float, state: AlertState | None = None,
               resolved_at: float | None = None) -> Alert:
        return Alert(
            key=alert_key(inst.rule.name, inst.worker), rule=inst.rule.name, worker=inst.worker,
            state=state or inst.state, severity=inst.rule.severity, summary=inst.summary,
            active_at=inst.active_at, fired_at=inst.fired_at, resolved_at=resolved_at,
            silenced_until=self._silenced_until(inst.rule.name, inst.worker, now), gpu=inst.gpu,
        )

    def _fire(self, inst: _Instance, now: float, source: AlertState) -> AlertTransition:
        inst.state = AlertState.FIRING
        inst.fired_at = now
        alert = self._alert(inst, now)
        remediate = (inst.rule.remediation
                     if inst.rule.auto_remediate and not alert.silenced(now) else None)
        return AlertTransition(now, source, AlertState.FIRING, alert, remediate)

    def evaluate(self, now: float,
                 facts: Iterable[WorkerFacts] | Mapping[str, WorkerFacts]) -> list[AlertTransition]:
        """Evaluate every rule for every worker at `now`; return this tick's transitions.

        A worker with active alerts that is absent from `facts` counts as "no data" for
        all of them (pending ones reset, firing ones resolve after `keep_firing_for_s`).
        """
        items = list(facts.values()) if isinstance(facts, Mapping) else list(facts)
        self._silences = self.silences(now)
        out: list[AlertTransition] = []
        seen: set[str] = set()
        for f in items:
            for rule in self.rules:
                key = alert_key(rule.name, f.worker)
                seen.add(key)
                if rule.condition(f) is True:
                    self._when_true(key, rule, f, now, out)
                else:
                    self._when_not_true(key, now, out)
        for key in [k for k in self._active if k not in seen]:
            self._when_not_true(key, now, out)
        return out

    def _when_true(self, key: str, rule: AlertRule, f: WorkerFacts, now: float,
                   out: list[AlertTransition]) -> None:
        inst = self._active.get(key)
        if inst is None:
            inst = _Instance(rule, f.worker, f.gpu, AlertState.PENDING, now, rule.summary(f))
            self._active[key] = inst
            if rule.for_s <= 0:
                out.append(self._fire(inst, now, AlertState.INACTIVE))
            else:
                out.append(AlertTransition(now, AlertState.INACTIVE, AlertState.PENDING,
                                           self._alert(inst, now)))
            return
        inst.keep_since = None
        inst.summary = rule.summary(f)
        inst.gpu = f.gpu
        if inst.state is AlertState.PENDING and now - inst.active_at >= rule.for_s:
            out.append(self._fire(inst, now, AlertState.PENDING))

    def _when_not_true(self, key: str, now: float, out: list[AlertTransition]) -> None:
        inst = self._active.get(key)
        if inst is None:
            return
        if inst.state is AlertState.PENDING:
            del self._active[key]
            out.append(AlertTransition(now, AlertState.PENDING, AlertState.INACTIVE,
                                       self._alert(inst, now, AlertState.INACTIVE)))
            return
        keep = inst.rule.keep_firing_for_s
        if keep > 0:
            if inst.keep_since is None:
                inst.keep_since = now
            if now - inst.keep_since < keep:
                return
        del self._active[key]
        out.append(AlertTransition(now, AlertState.FIRING, AlertState.RESOLVED,
                                   self._alert(inst, now, AlertState.RESOLVED, resolved_at=now)))

    # ------------------------------------------------------------------ views

    def alerts(self, now: float) -> list[Alert]:
        """Active (pending and firing) alerts, firing first, then by key."""
        found = [self._alert(inst, now) for inst in self._active.values()]
        return sorted(found, key=lambda a: (a.state is not AlertState.FIRING, a.key))

    def firing(self, now: float) -> list[Alert]:
        """Firing alerts (silenced ones included; check `Alert.silenced`)."""
        return [a for a in self.alerts(now) if a.state is AlertState.FIRING]

    def get(self, key: str, now: float) -> Alert | None:
        """The active alert with this key, if any."""
        inst = self._active.get(key)
        return None if inst is None else self._alert(inst, now)
