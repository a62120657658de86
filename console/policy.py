"""The supervisor's rules as pure functions and small pure trackers.

Restart backoff, crash-loop detection, probe timeout, ejection / restart / readmission
thresholds, drain completion, startup budget, exit classification, rolling-restart order
and retune rollback. Nothing here does I/O or reads a clock: every time is a ``now``
argument in seconds (monotonic is best), so the rules are exact under a fake clock.

Defaults follow reference/reliability.md §1.2 ("proposed defaults"):

* probe every 1 s, timeout ``max(2 s, 3 × recent p99)``; eject on the first failed probe;
  re-admit an ejected worker after 2 passing probes; restart after 3 failed probes in a
  row during which the worker's completions counter did not move (a worker that still
  completes requests is slow, not hung);
* restart backoff: first restart immediate, then 1 s doubling to a 60 s cap
  (0, 1, 2, 4, 8, 16, 32, 60, 60, ...), reset after 10 min continuously ready;
* crash loop: 5 failures within 10 min (inclusive) raises an alert. It does **not**
  change the schedule and never stops the restarts: the doubling reaches the cap by
  itself by the 8th failure and stays there (Kubernetes never gives up; a silent give-up
  is worse than a slow retry). Config errors never loop at all (`ExitClass.CONFIG_ERROR`);
* drain: done when in-flight reaches 0, or after 30 s whatever is left;
* startup budget: 1.5 × the p99 of this worker's recorded startups (at least 3 of them),
  never below 30 s; 600 s before anything was recorded (CUDA graph capture is slow);
* rolling restart: one worker at a time, never fewer than N−1 routed workers, next step
  only after the previous one is ready (and soaked, when a soak time is given).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

from console.model import WorkerState

__all__ = [
    "ROUTED_STATES",
    "Aborted",
    "BackoffPolicy",
    "Blocked",
    "CrashLoopDetector",
    "CrashLoopPolicy",
    "DrainVerdict",
    "ExitClass",
    "LifecyclePolicy",
    "OutlierPolicy",
    "RestartBackoff",
    "RetuneVerdict",
    "classify_exit",
    "drain_verdict",
    "is_outlier",
    "is_slow",
    "next_rollout_step",
    "outlier_hold_s",
    "probe_timeout_s",
    "retune_verdict",
    "should_eject",
    "should_readmit",
    "should_restart",
    "startup_budget_s",
]

ROUTED_STATES: frozenset[WorkerState] = frozenset({WorkerState.READY, WorkerState.DEGRADED})
"""States in which a worker is registered in the balancer and takes traffic."""


# --------------------------------------------------------------------------- backoff


@dataclass(frozen=True)
class BackoffPolicy:
    """Restart delay schedule (Kubernetes CrashLoopBackOff, "reduced decay" variant)."""

    base_s: float = 1.0
    """Delay of the first delayed restart."""
    factor: float = 2.0
    """Growth per further failure."""
    cap_s: float = 60.0
    """Largest delay; the schedule stays here, it never gives up."""
    first_immediate: bool = True
    """The first restart after a healthy period happens at once."""
    reset_after_s: float = 600.0
    """Continuously ready this long → the failure count starts again from zero."""

    def __post_init__(self) -> None:
        if not (self.base_s >= 0 and self.cap_s >= 0 and self.factor >= 1):
            raise ValueError("backoff needs base_s >= 0, cap_s >= 0, factor >= 1")
        if not self.reset_after_s > 0:
            raise ValueError("backoff reset_after_s must be > 0")

    def delay(self, failures: int) -> float:
        """Delay before the restart that follows the `failures`-th failure in a row (1-based).

        With the defaults: 1 → 0, 2 → 1, 3 → 2, 4 → 4, ... 8 → 60, 9 → 60.
        """
        if failures < 1:
            raise ValueError(f"failures must be >= 1, got {failures}")
        step = failures - 2 if self.first_immediate else failures - 1
        if step < 0:
            return 0.0
        # Past ~64 doublings any sane cap is reached; bounding the exponent avoids overflow.
        return min(self.cap_s, self.base_s * self.factor ** min(step, 64))


class RestartBackoff:
    """Failure count of one worker and the delay it implies.

    `record_failure` counts a failure and returns the delay before the next start;
    `mark_healthy` notes when the worker became ready; once it has been ready without a
    break for `reset_after_s`, the count goes back to zero.
    """

    def __init__(self, policy: BackoffPolicy | None = None) -> None:
        self.policy = policy or BackoffPolicy()
        self.failures = 0
        """Failures since the last reset."""
        self.healthy_since: float | None = None

    def record_failure(self, now: float) -> float:
        """Count one failure at `now`; return the delay before the next start."""
        self.maybe_reset(now)
        self.healthy_since = None
        self.failures += 1
        return self.policy.delay(self.failures)

    def mark_healthy(self, now: float) -> None:
        """The worker is ready (keeps the earliest time of an unbroken ready period)."""
        if self.healthy_since is None:
            self.healthy_since = now

    def mark_unhealthy(self) -> None:
        """The ready period is broken (ejected, crashed, restarted, stopped)."""
        self.healthy_since = None

    def maybe_reset(self, now: float) -> bool:
        """Reset the count if ready for `reset_after_s` without a break; True if it did."""
        if (
            self.failures
            and self.healthy_since is not None
            and now - self.healthy_since >= self.policy.reset_after_s
        ):
            self.failures = 0
            return True
        return False

    def reset(self) -> None:
        """Forget all failures (an operator start after fixing the cause)."""
        self.failures = 0

    def preview(self) -> float:
        """The delay the next failure would get (for display)."""
        return self.policy.delay(self.failures + 1)


# ------------------------------------------------------------------------ crash loop


@dataclass(frozen=True)
class CrashLoopPolicy:
    """How many failures within which window make a crash loop."""

    threshold: int = 5
    window_s: float = 600.0

    def __post_init__(self) -> None:
        if self.threshold < 1 or not self.window_s > 0:
            raise ValueError("crash loop needs threshold >= 1 and window_s > 0")


class CrashLoopDetector:
    """Failure times of one worker inside a sliding window.

    A failure at ``t`` counts at ``now`` while ``now - t <= window_s`` (inclusive: five
    failures exactly 10 min apart from first to last are a loop).
    """

    def __init__(self, policy: CrashLoopPolicy | None = None) -> None:
        self.policy = policy or CrashLoopPolicy()
        self._times: deque[float] = deque()

    def _prune(self, now: float) -> None:
        while self._times and now - self._times[0] > self.policy.window_s:
            self._times.popleft()

    def record(self, now: float) -> bool:
        """Count one failure; True when the worker is now in a crash loop."""
        self._times.append(now)
        return self.looping(now)

    def count(self, now: float) -> int:
        """Failures within the window ending at `now`."""
        self._prune(now)
        return len(self._times)

    def looping(self, now: float) -> bool:
        """Whether `threshold` or more failures fall within the window at `now`."""
        return self.count(now) >= self.policy.threshold


# ----------------------------------------------------------------- outlier ejection


@dataclass(frozen=True)
class OutlierPolicy:
    """Passive ejection of a worker whose own responses fail too often (reliability.md
    F4, the intermittent case a 1 s probe sees only now and then; Envoy's
    failure-percentage outlier detection, without its ≥ 5 hosts minimum)."""

    enabled: bool = True
    error_share: float = 0.1
    """HTTP 5xx share of the worker's responses that ejects it."""
    min_responses: int = 50
    """Fewer responses than this in the window are not judged."""
    window_s: float = 10.0
    """The responses judged: those of the last `window_s` seconds since it was routed."""
    ejection_s: float = 30.0
    """The n-th outlier ejection in a row keeps the worker out n × this long..."""
    max_ejection_s: float = 300.0
    """...at most this long. After twice this long without one, n starts over."""

    def __post_init__(self) -> None:
        if not 0 < self.error_share <= 1:
            raise ValueError(f"error_share must be in (0, 1], got {self.error_share!r}")
        if self.min_responses < 1:
            raise ValueError("min_responses must be >= 1")
        for name in ("window_s", "ejection_s", "max_ejection_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def is_outlier(share: float | None, responses: float, policy: OutlierPolicy) -> bool:
    """Whether a routed worker with this 5xx `share` of `responses` is ejected."""
    return (policy.enabled and share is not None and responses >= policy.min_responses
            and share >= policy.error_share)


def outlier_hold_s(ejections_in_a_row: int, policy: OutlierPolicy) -> float:
    """How long the n-th outlier ejection in a row keeps a worker out."""
    return min(policy.max_ejection_s, max(1, ejections_in_a_row) * policy.ejection_s)


# ----------------------------------------------------------------- lifecycle policy


@dataclass(frozen=True)
class LifecyclePolicy:
    """Every number the lifecycle uses; all configurable, defaults per reliability.md §1.2."""

    ready_after_successes: int = 1
    """Passing probes a starting worker needs to become ready (Envoy: one at startup)."""
    eject_after_failures: int = 1
    """Consecutive failed probes that remove a routed worker from the balancer."""
    readmit_after_successes: int = 2
    """Consecutive passing probes that put an ejected worker back."""
    restart_after_failures: int = 3
    """Consecutive failed probes without completions progressing that restart a worker."""
    slow_probe_s: float = 1.0
    """A passing probe slower than this marks the worker degraded (still routed)."""
    startup_budget_s: float = 600.0
    """Startup budget before any startup was recorded for this worker."""
    startup_budget_factor: float = 1.5
    """Budget = factor × p99 of recorded startups..."""
    startup_budget_min_samples: int = 3
    """...once at least this many were recorded..."""
    startup_budget_floor_s: float = 30.0
    """...and never less than this."""
    drain_timeout_s: float = 30.0
    """Longest wait for in-flight requests to reach 0 during a drain."""
    config_exit_codes: tuple[int, ...] = (2,)
    """Exit codes during startup that mean a configuration error (argparse: bad flags)."""
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    crash_loop: CrashLoopPolicy = field(default_factory=CrashLoopPolicy)
    outlier: OutlierPolicy = field(default_factory=OutlierPolicy)

    def __post_init__(self) -> None:
        for name in ("ready_after_successes", "eject_after_failures",
                     "readmit_after_successes", "restart_after_failures",
                     "startup_budget_min_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in ("slow_probe_s", "startup_budget_s", "startup_budget_factor",
                     "startup_budget_floor_s", "drain_timeout_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def probe_timeout_s(recent_p99_s: float | None, *, floor_s: float = 2.0, factor: float = 3.0,
                    ceiling_s: float | None = None) -> float:
    """Probe timeout: ``max(floor_s, factor × recent p99)``, optionally capped at `ceiling_s`.

    `recent_p99_s` is the p99 of recent probe latencies; ``None`` (no data yet) or a
    non-finite value gives the floor.
    """
    timeout = floor_s
    if recent_p99_s is not None and math.isfinite(recent_p99_s):
        timeout = max(floor_s, factor * recent_p99_s)
    if ceiling_s is not None:
        timeout = min(timeout, max(ceiling_s, floor_s))
    return timeout


def should_eject(consecutive_failures: int, policy: LifecyclePolicy) -> bool:
    """Whether a routed worker with this many failed probes in a row leaves the balancer."""
    return consecutive_failures >= policy.eject_after_failures


def should_restart(stalled_failures: int, policy: LifecyclePolicy) -> bool:
    """Whether a worker is hung: `stalled_failures` failed probes in a row, none of them
    seeing its completions counter move."""
    return stalled_failures >= policy.restart_after_failures


def should_readmit(consecutive_successes: int, policy: LifecyclePolicy) -> bool:
    """Whether an ejected worker has passed enough probes in a row to be routed again."""
    return consecutive_successes >= policy.readmit_after_successes


def is_slow(latency_s: float | None, policy: LifecyclePolicy) -> bool:
    """Whether a passing probe's latency makes the worker degraded."""
    return latency_s is not None and latency_s > policy.slow_probe_s


def startup_budget_s(durations: Sequence[float], policy: LifecyclePolicy) -> float:
    """Startup budget for a worker whose previous startups took `durations` seconds.

    Fewer than `startup_budget_min_samples` recorded → `policy.startup_budget_s`;
    otherwise ``max(floor, factor × p99)`` with a nearest-rank p99 (with few samples,
    the slowest recorded startup).
    """
    if len(durations) < policy.startup_budget_min_samples:
        return policy.startup_budget_s
    ordered = sorted(durations)
    p99 = ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]
    return max(policy.startup_budget_floor_s, policy.startup_budget_factor * p99)


class ExitClass(str, Enum):
    """What an exit means for restarting."""

    CRASH = "crash"  #: restart with backoff
    CONFIG_ERROR = "config_error"  #: do not restart; alert with the reason


def classify_exit(code: int | None, *, during_start: bool, hint: str | None,
                  policy: LifecyclePolicy) -> ExitClass:
    """Classify a worker exit.

    `hint` is the supervisor's diagnosis from the log or preflight (``"CUDA out of
    memory at start"``, ``"model path missing"``); any hint means a config error. An exit
    code in `policy.config_exit_codes` (2: argparse rejected a flag) is a config error
    only while starting; later the same code is an ordinary crash.
    """
    if hint:
        return ExitClass.CONFIG_ERROR
    if during_start and code is not None and code in policy.config_exit_codes:
        return ExitClass.CONFIG_ERROR
    return ExitClass.CRASH


class DrainVerdict(str, Enum):
    """Where a drain stands."""

    WAIT = "wait"
    DONE = "done"  #: in-flight reached 0
    TIMED_OUT = "timed_out"  #: bounded wait is over; go on with what is left


def drain_verdict(inflight: int | None, started_at: float, now: float,
                  timeout_s: float) -> DrainVerdict:
    """Drain rule: done at in-flight 0; after `timeout_s` done anyway.

    ``inflight=None`` means unknown (metrics unavailable): wait for the timeout.
    """
    if inflight is not None and inflight <= 0:
        return DrainVerdict.DONE
    if now - started_at >= timeout_s:
        return DrainVerdict.TIMED_OUT
    return DrainVerdict.WAIT


class RetuneVerdict(str, Enum):
    """Outcome of a start with new (retuned) arguments."""

    WAIT = "wait"
    KEEP = "keep"  #: became ready: the new arguments stay
    ROLL_BACK = "roll_back"  #: failed or not ready within the budget: back to the old ones


def retune_verdict(*, ready: bool, start_failed: bool, started_at: float, now: float,
                   budget_s: float) -> RetuneVerdict:
    """Rollback rule for a retune: ready → keep; exited/failed to start, or not ready
    within the startup budget → roll back to the old arguments."""
    if ready:
        return RetuneVerdict.KEEP
    if start_failed or now - started_at > budget_s:
        return RetuneVerdict.ROLL_BACK
    return RetuneVerdict.WAIT


# ---------------------------------------------------------------------------- rollout


@dataclass(frozen=True)
class Blocked:
    """The rollout must wait; `reason` says for what."""

    reason: str


@dataclass(frozen=True)
class Aborted:
    """The rollout must stop (a restarted worker failed); `reason` says which and why."""

    reason: str


def next_rollout_step(
    states: Mapping[str, WorkerState],
    started: Sequence[str],
    *,
    failed: Collection[str] = (),
    ready_since: Mapping[str, float] | None = None,
    now: float | None = None,
    soak_s: float = 0.0,
) -> str | None | Blocked | Aborted:
    """The next worker a rolling restart may take out, or why not.

    `states` are the workers taking part, in rollout order (leave out workers the
    operator stopped on purpose: a rollout restarts every worker it is given);
    `started` the ones whose restart was already begun; `failed` those whose restart
    failed (e.g. a retune rolled back). Returns:

    * a worker name: restart it now;
    * ``None``: every worker was restarted and is ready (and soaked);
    * `Blocked`: a restarted worker is not ready again, or not soaked yet;
    * `Aborted`: a restarted worker failed (``FAILED`` or listed in `failed`); stop.

    One at a time, never below N − 1 routed: a routed worker is only taken out when
    every other worker is routed. Restarted workers must all be routed (else
    `Blocked`), and a remaining worker that is not routed is taken before routed ones
    (restarting it costs no capacity), so when a routed one is returned, all N are routed.
    """
    if soak_s > 0 and now is None:
        raise ValueError("soak_s needs now")
    for name in started:
        if name in failed:
            return Aborted(f"{name}: restart failed; rollout stopped")
        if states.get(name) is WorkerState.FAILED:
            return Aborted(f"{name}: failed after restart; rollout stopped")
    for name in started:
        state = states.get(name)
        if state is None:
            continue  # removed from the fleet meanwhile
        if state not in ROUTED_STATES:
            return Blocked(f"waiting for {name} to become ready ({state.value})")
        if soak_s > 0:
            assert now is not None
            since = (ready_since or {}).get(name)
            if since is None or now - since < soak_s:
                held = 0.0 if since is None else now - since
                return Blocked(f"{name} soaking: ready {held:.0f} s of {soak_s:.0f} s")
    remaining = [name for name in states if name not in started]
    if not remaining:
        return None
    idle = [name for name in remaining if states[name] not in ROUTED_STATES]
    return idle[0] if idle else remaining[0]
