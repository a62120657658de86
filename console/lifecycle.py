"""Per-worker state machine: observations in, (new state, actions) out.

One `WorkerLifecycle` per worker. The supervisor feeds it what it saw (a probe result,
an exit, in-flight count, the clock via `tick`) and operator commands (drain, stop,
restart, kill, start, adopt); each call returns a `Decision`: the state after the call,
the `Action`s to carry out in order, and the `Transition`s taken (for the timeline).
Nothing here does I/O or reads a clock; every call takes ``now``.

States and rules (numbers are `LifecyclePolicy` defaults)::

    stopped ─start─▶ starting ─probe ok─▶ ready ◀─slow/fast─▶ degraded
                        │                   │ 1st failed probe   │
                        │ budget exceeded   ▼                    ▼
                        │                 ejected ─2 probes ok─▶ ready (re-registered)
                        │                   │ 3 failed probes, completions not moving
                        ▼                   ▼
                    restarting (KILL) ◀─────┘
                        │ exit
                        ▼
    any running state ─exit─▶ crashed ─▶ backoff ─delay─▶ starting
    starting ─exit 2 / config hint─▶ failed (alert, no restart)

    planned: ready ─drain─▶ draining ─in-flight 0 or 30 s─▶ drained ─stop─▶ stopping ─exit─▶ stopped
             restart = drain → stop → start → ready → register

Contract with the supervisor:

* Carry out the actions in order. ``START`` means spawn now (the state is already
  ``starting``); report the outcome with `observe_start_failed` if the spawn or preflight
  failed. ``START_AT`` only says when the next start is due; `tick` emits the ``START``.
* Call `observe_exit` once the worker's whole process generation is gone (group reaped;
  on a GPU box, its memory released): that is the moment a new one may start.
* Probes and exits race with state changes: a late observation is ignored, never an
  error. Operator commands that make no sense in the current state raise
  `IllegalTransition` with the reason.
* ``REGISTER``/``EJECT`` are emitted only when the lifecycle believes the worker's
  balancer membership changes (`registered`), except `adopt`, which always ejects
  (the membership of an adopted worker is unknown).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from console.model import WorkerState
from console.policy import (
    ROUTED_STATES,
    CrashLoopDetector,
    DrainVerdict,
    ExitClass,
    LifecyclePolicy,
    RestartBackoff,
    classify_exit,
    drain_verdict,
    is_outlier,
    is_slow,
    outlier_hold_s,
    should_eject,
    should_readmit,
    should_restart,
    startup_budget_s,
)

__all__ = [
    "ALLOWED",
    "Action",
    "ActionKind",
    "Decision",
    "IllegalTransition",
    "LifecycleAlert",
    "LifecycleError",
    "LifecycleStatus",
    "Transition",
    "WorkerLifecycle",
]

S = WorkerState

ALLOWED: dict[WorkerState, frozenset[WorkerState]] = {
    S.STOPPED: frozenset({S.STARTING}),
    S.STARTING: frozenset({S.READY, S.DEGRADED, S.DRAINED, S.RESTARTING, S.CRASHED,
                           S.FAILED, S.STOPPING}),
    S.READY: frozenset({S.DEGRADED, S.EJECTED, S.RESTARTING, S.DRAINING, S.CRASHED,
                        S.STOPPING}),
    S.DEGRADED: frozenset({S.READY, S.EJECTED, S.RESTARTING, S.DRAINING, S.CRASHED,
                           S.STOPPING}),
    S.EJECTED: frozenset({S.READY, S.DEGRADED, S.RESTARTING, S.DRAINING, S.CRASHED,
                          S.STOPPING}),
    S.RESTARTING: frozenset({S.BACKOFF, S.STOPPING}),
    S.DRAINING: frozenset({S.DRAINED, S.READY, S.DEGRADED, S.EJECTED, S.CRASHED,
                           S.STOPPING, S.STOPPED}),
    S.DRAINED: frozenset({S.READY, S.DEGRADED, S.EJECTED, S.STOPPING, S.CRASHED}),
    S.STOPPING: frozenset({S.STOPPED, S.STARTING}),
    S.STOPPED: frozenset({S.STARTING}),
    S.CRASHED: frozenset({S.BACKOFF}),
    S.BACKOFF: frozenset({S.STARTING, S.STOPPED}),
    S.FAILED: frozenset({S.STARTING, S.STOPPED}),
    S.UNMANAGED: frozenset({S.DRAINING, S.STOPPED}),
}
"""Every legal state change; anything else raises `IllegalTransition`."""

_ALIVE = frozenset({S.STARTING, S.READY, S.DEGRADED, S.EJECTED, S.RESTARTING, S.DRAINING,
                    S.DRAINED, S.STOPPING})
_DOWN_IF_SERVING = frozenset({S.EJECTED, S.RESTARTING, S.CRASHED, S.BACKOFF, S.FAILED})


class LifecycleError(Exception):
    """Base class for lifecycle errors."""


class IllegalTransition(LifecycleError):
    """A command or transition that the current state does not allow."""

    def __init__(self, worker: str, state: WorkerState, what: str, detail: str = "") -> None:
        self.worker = worker
        self.state = state
        self.what = what
        message = f"{worker}: cannot {what} while {state.value}"
        super().__init__(f"{message}: {detail}" if detail else message)


class ActionKind(str, Enum):
    """What the supervisor must do."""

    START = "start"  #: spawn the worker process now
    START_AT = "start_at"  #: informational: next start due at `Action.at`
    REGISTER = "register"  #: add the worker to the balancer
    EJECT = "eject"  #: remove the worker from the balancer
    STOP = "stop"  #: graceful: SIGTERM the group, SIGKILL after the grace period
    KILL = "kill"  #: SIGKILL the group now (hung worker, operator kill)
    ROLLBACK = "rollback"  #: retune failed: use the previous arguments for the next start
    COMMIT = "commit"  #: retune succeeded: the new arguments are now the worker's own
    ALERT = "alert"  #: notable event for the operator (`Action.alert`, `Action.message`)


class LifecycleAlert(str, Enum):
    """Kinds of `ActionKind.ALERT` the lifecycle raises."""

    CONFIG_ERROR = "config_error"  #: entered FAILED: bad flags, missing model, OOM at start
    CRASH_LOOP = "crash_loop"  #: threshold failures within the window (once per episode)
    STARTUP_TIMEOUT = "startup_timeout"  #: not ready within the startup budget
    HUNG = "hung"  #: failed probes without progress: being killed and restarted
    RETUNE_ROLLED_BACK = "retune_rolled_back"  #: new arguments failed; back to the old ones
    DRAIN_TIMEOUT = "drain_timeout"  #: in-flight did not reach 0 within the drain timeout


@dataclass(frozen=True)
class Action:
    """One thing for the supervisor to do."""

    kind: ActionKind
    at: float | None = None
    """For ``START_AT``: when the start is due."""
    alert: LifecycleAlert | None = None
    """For ``ALERT``: which."""
    message: str = ""
    """Human explanation (always set for ``ALERT``)."""


@dataclass(frozen=True)
class Transition:
    """One state change, with why it happened."""

    at: float
    source: WorkerState
    target: WorkerState
    reason: str


@dataclass(frozen=True)
class Decision:
    """Result of one call: final state, actions in order, transitions taken."""

    state: WorkerState
    actions: tuple[Action, ...] = ()
    transitions: tuple[Transition, ...] = ()

    @property
    def changed(self) -> bool:
        """Whether any transition happened."""
        return bool(self.transitions)

    def kinds(self) -> list[ActionKind]:
        """The action kinds, in order."""
        return [a.kind for a in self.actions]

    def alerts(self) -> list[LifecycleAlert]:
        """The alert kinds raised, in order."""
        return [a.alert for a in self.actions if a.alert is not None]


@dataclass(frozen=True)
class LifecycleStatus:
    """A read-only view of a lifecycle for snapshots and alert facts."""

    worker: str
    state: WorkerState
    since: float
    """When the current state was entered."""
    reason: str
    """Why (the last transition's reason)."""
    registered: bool
    serving: bool
    """Operator intent: routed when healthy (False after drain/stop)."""
    down: bool
    """Meant to serve but cannot (ejected, restarting, backoff, failed, restarting start)."""
    next_start_at: float | None
    startup_budget_s: float
    startup_phase: str | None
    consecutive_failures: int
    stalled_failures: int
    backoff_failures: int
    next_backoff_s: float
    failures_in_window: int
    crash_looping: bool
    restarts: int
    """Starts after the first one (planned or not)."""
    last_exit_code: int | None
    failed_reason: str | None
    ready_since: float | None
    """Start of the current routed period (for rollout soak); None when not routed."""
    inflight: int | None
    trial: bool
    """Running (or starting) with retuned arguments not yet confirmed."""


class WorkerLifecycle:
    """State machine of one worker (see the module docstring for the rules)."""

    def __init__(self, worker: str, policy: LifecyclePolicy | None = None, *,
                 initial: WorkerState = WorkerState.STOPPED, now: float = 0.0) -> None:
        """`initial` is ``STOPPED`` (to be started), ``STARTING`` (adopted process known to
        be ours: it is probed and registered once it passes) or ``UNMANAGED``."""
        if initial not in (S.STOPPED, S.STARTING, S.UNMANAGED):
            raise ValueError(f"initial state must be stopped, starting or unmanaged, not {initial}")
        self.worker = worker
        self.policy = policy or LifecyclePolicy()
        self._state: WorkerState = initial
        self._since = now
        self._reason = "created"
        self.registered = False
        self._serve = initial is S.STARTING
        self._after_drain: str | None = None  # None | "stop" | "restart"
        self._restart_after_stop = False
        self._trial = False
        self._recovering = False  # current start follows a failure
        self._failures = 0
        self._stalled = 0
        self._successes = 0
        self._held_until: float | None = None  # an outlier stays ejected until then
        # responses before this are not judged by the outlier rule: a new process, or
        # the end of an outlier hold (not a probe's brief ejection: a worker flapping on
        # its probes must still be judged on all its recent answers)
        self._judged_since: float | None = None
        self._outliers = 0  # outlier ejections in a row
        self._last_outlier_at: float | None = None
        self.last_probe_ok: bool | None = None
        self.last_probe_at: float | None = None
        self.last_latency_s: float | None = None
        self.health_status: int | None = None
        self._started_at: float | None = now if initial is S.STARTING else None
        self._starts = 1 if initial is S.STARTING else 0
        self.startup_durations: list[float] = []
        self.backoff = RestartBackoff(self.policy.backoff)
        self.crash_loop = CrashLoopDetector(self.policy.crash_loop)
        self._loop_alerted = False
        self._next_start_at: float | None = None
        self._pending_delay = 0.0
        self._drain_started_at: float | None = None
        self._inflight: int | None = None
        self.last_exit_code: int | None = None
        self.failed_reason: str | None = None
        self._ready_since: float | None = None

    # ------------------------------------------------------------------ read-only view

    @property
    def state(self) -> WorkerState:
        """Current state."""
        return self._state

    @property
    def next_start_at(self) -> float | None:
        """When the next start is due (only in ``BACKOFF``)."""
        return self._next_start_at if self._state is S.BACKOFF else None

    @property
    def ready_since(self) -> float | None:
        """Start of the current routed period; None when not routed."""
        return self._ready_since if self._state in ROUTED_STATES else None

    @property
    def down(self) -> bool:
        """Meant to serve but not able to (the "worker down" alert's condition)."""
        if not self._serve:
            return False
        if self._state in _DOWN_IF_SERVING:
            return True
        return self._state is S.STARTING and self._recovering

    @property
    def probing(self) -> bool:
        """Whether probes of this worker are meaningful now (a process should be up)."""
        return self._state in (_ALIVE - {S.RESTARTING, S.STOPPING}) or self._state is S.UNMANAGED

    def startup_budget(self) -> float:
        """Current startup budget (adapts to this worker's recorded startups)."""
        return startup_budget_s(self.startup_durations, self.policy)

    def next_deadline(self) -> float | None:
        """The earliest time at which `tick` may act (backoff due, startup budget, drain
        timeout); None if nothing is timed."""
        if self._state is S.BACKOFF:
            return self._next_start_at
        if self._state is S.STARTING and self._started_at is not None:
            return self._started_at + self.startup_budget()
        if self._state is S.DRAINING and self._drain_started_at is not None:
            return self._drain_started_at + self.policy.drain_timeout_s
        return None

    def status(self, now: float) -> LifecycleStatus:
        """Snapshot of everything a client shows or an alert rule reads."""
        phase: str | None = None
        if self._state is S.STARTING:
            phase = {None: "port closed", 503: "warming up (503)", 200: "health 200, awaiting probe"}.get(
                self.health_status, f"health {self.health_status}")
        return LifecycleStatus(
            worker=self.worker, state=self._state, since=self._since, reason=self._reason,
            registered=self.registered, serving=self._serve, down=self.down,
            next_start_at=self.next_start_at, startup_budget_s=self.startup_budget(),
            startup_phase=phase, consecutive_failures=self._failures,
            stalled_failures=self._stalled, backoff_failures=self.backoff.failures,
            next_backoff_s=self.backoff.preview(),
            failures_in_window=self.crash_loop.count(now),
            crash_looping=self.crash_loop.looping(now), restarts=max(0, self._starts - 1),
            last_exit_code=self.last_exit_code, failed_reason=self.failed_reason,
            ready_since=self.ready_since,
            inflight=self._inflight if self._state is S.DRAINING else None, trial=self._trial,
        )

    # ------------------------------------------------------------------ plumbing

    def _decision(self, actions: list[Action], transitions: list[Transition]) -> Decision:
        return Decision(self._state, tuple(actions), tuple(transitions))

    def _go(self, now: float, target: WorkerState, reason: str,
            transitions: list[Transition]) -> None:
        if target not in ALLOWED[self._state]:
            raise IllegalTransition(self.worker, self._state, f"go to {target.value}", reason)
        transitions.append(Transition(now, self._state, target, reason))
        self._state = target
        self._since = now
        self._reason = reason
        if target in ROUTED_STATES and self._ready_since is None:
            self._ready_since = now
        elif target not in ROUTED_STATES:
            self._ready_since = None

    def _reject(self, what: str, detail: str = "") -> IllegalTransition:
        return IllegalTransition(self.worker, self._state, what, detail)

    def _reset_probe_counts(self) -> None:
        self._failures = 0
        self._stalled = 0
        self._successes = 0

    def _register(self, actions: list[Action]) -> None:
        if not self.registered:
            self.registered = True
            actions.append(Action(ActionKind.REGISTER))

    def _eject(self, actions: list[Action]) -> None:
        if self.registered:
            self.registered = False
            actions.append(Action(ActionKind.EJECT))

    def _start(self, now: float, reason: str, actions: list[Action],
               transitions: list[Transition]) -> None:
        self._held_until = None  # a new process is judged afresh
        self._go(now, S.STARTING, reason, transitions)
        self._started_at = now
        self._starts += 1
        self._next_start_at = None
        self.health_status = None
        self._reset_probe_counts()
        actions.append(Action(ActionKind.START))

    def _record_failure(self, now: float, actions: list[Action]) -> float:
        """Count an unplanned failure; return the backoff delay. Raises the crash-loop
        alert on the failure that starts a loop episode."""
        self.backoff.mark_unhealthy()
        delay = self.backoff.record_failure(now)
        self._recovering = True
        if self.crash_loop.record(now):
            if not self._loop_alerted:
                self._loop_alerted = True
                count = self.crash_loop.count(now)
                window_min = self.policy.crash_loop.window_s / 60
                actions.append(Action(
                    ActionKind.ALERT, alert=LifecycleAlert.CRASH_LOOP,
                    message=f"{self.worker}: {count} failures within {window_min:g} min; "
                            f"restarting with backoff (next delay {delay:g} s)"))
        else:
            self._loop_alerted = False
        return delay

    def _trial_failed(self, why: str, actions: list[Action]) -> None:
        self._trial = False
        actions.append(Action(ActionKind.ROLLBACK, message=why))
        actions.append(Action(ActionKind.ALERT, alert=LifecycleAlert.RETUNE_ROLLED_BACK,
                              message=f"{self.worker}: retune rolled back: {why}"))

    def _schedule(self, now: float, delay: float, reason: str, actions: list[Action],
                  transitions: list[Transition]) -> None:
        """Enter BACKOFF with the start due after `delay`; start at once when it is 0."""
        self._go(now, S.BACKOFF, reason, transitions)
        self._next_start_at = now + delay
        if delay <= 0:
            self._start(now, "restart (no backoff delay)", actions, transitions)
        else:
            actions.append(Action(ActionKind.START_AT, at=self._next_start_at,
                                  message=f"restart in {delay:g} s"))

    def _became_ready(self, now: float, slow: bool, reason: str, actions: list[Action],
                      transitions: list[Transition]) -> None:
        if self._state is S.STARTING and self._started_at is not None:
            self.startup_durations.append(now - self._started_at)
            del self.startup_durations[:-20]
        if self._trial:
            self._trial = False
            actions.append(Action(ActionKind.COMMIT, message="retuned arguments became ready"))
        self._recovering = False
        self._reset_probe_counts()
        self._judged_since = now
        if self._serve:
            self._go(now, S.DEGRADED if slow else S.READY, reason, transitions)
            self.backoff.mark_healthy(now)
            self._register(actions)
        else:
            self._go(now, S.DRAINED, reason + " (drained: not routed)", transitions)
            self.backoff.mark_healthy(now)

    def _crash(self, now: float, why: str, actions: list[Action],
               transitions: list[Transition], *, during_start: bool = False) -> None:
        self._eject(actions)
        self._after_drain = None
        self._go(now, S.CRASHED, why, transitions)
        if self._trial and during_start:
            self._trial_failed(why, actions)
            delay = 0.0
        else:
            delay = self._record_failure(now, actions)
        self._schedule(now, delay, f"backoff {delay:g} s", actions, transitions)

    # ------------------------------------------------------------------ observations

    def tick(self, now: float) -> Decision:
        """Time-driven rules: backoff due → start; startup budget exceeded → failed start;
        drain timeout; backoff reset after a long ready period."""
        actions: list[Action] = []
        transitions: list[Transition] = []
        if self._state in ROUTED_STATES or self._state in (S.DRAINING, S.DRAINED):
            self.backoff.maybe_reset(now)
        if not self.crash_loop.looping(now):
            self._loop_alerted = False
        if self._state is S.BACKOFF and self._next_start_at is not None and now >= self._next_start_at:
            self._start(now, "backoff elapsed", actions, transitions)
        elif self._state is S.STARTING and self._started_at is not None:
            budget = self.startup_budget()
            if now - self._started_at > budget:
                why = f"not ready within the startup budget ({budget:g} s)"
                actions.append(Action(ActionKind.KILL))
                actions.append(Action(ActionKind.ALERT, alert=LifecycleAlert.STARTUP_TIMEOUT,
                                      message=f"{self.worker}: {why}"))
                if self._trial:
                    self._trial_failed(why, actions)
                    self._pending_delay = 0.0
                else:
                    self._pending_delay = self._record_failure(now, actions)
                self._go(now, S.RESTARTING, why, transitions)
        elif self._state is S.DRAINING and self._drain_started_at is not None:
            verdict = drain_verdict(self._inflight, self._drain_started_at, now,
                                    self.policy.drain_timeout_s)
            if verdict is not DrainVerdict.WAIT:
                self._drain_done(now, verdict, actions, transitions)
        return self._decision(actions, transitions)

    def observe_probe(self, now: float, ok: bool, *, latency_s: float | None = None,
                      progressing: bool = False) -> Decision:
        """One probe result.

        `ok`: HTTP 200, right dimension, finite values, within the timeout. `latency_s`:
        its duration (a passing probe slower than `slow_probe_s` degrades the worker).
        `progressing`: the worker's completions counter moved since the previous probe
        (a failing worker that still completes requests between two failed probes is
        slow, not hung; on the first failure of a run it is ignored).
        """
        actions: list[Action] = []
        transitions: list[Transition] = []
        self.last_probe_ok = ok
        self.last_probe_at = now
        self.last_latency_s = latency_s
        slow = ok and is_slow(latency_s, self.policy)
        if ok:
            self._failures = 0
            self._stalled = 0
            self._successes += 1
        else:
            self._successes = 0
            self._failures += 1
            # The first failure of a run does not look at progress: what completed since the
            # last passing probe ran before the worker hung (counting it delayed the restart
            # of a hung worker by one probe timeout). From the second on, progress between
            # failures means slow, not hung.
            first = self._failures == 1
            self._stalled = self._stalled + 1 if first or not progressing else 0
        state = self._state
        if state is S.STARTING:
            if ok and self._successes >= self.policy.ready_after_successes:
                self._became_ready(now, slow, "probe passed", actions, transitions)
            elif not ok:
                # Never liveness-kill a starting worker; the startup budget governs.
                self._failures = self._stalled = 0
        elif state in ROUTED_STATES:
            if ok:
                if slow and state is S.READY:
                    self._go(now, S.DEGRADED, f"probe slow ({latency_s:.3g} s)", transitions)
                elif not slow and state is S.DEGRADED:
                    self._go(now, S.READY, "probe fast again", transitions)
            elif should_restart(self._stalled, self.policy):
                self._hung(now, actions, transitions)
            elif should_eject(self._failures, self.policy):
                self._eject(actions)
                self.backoff.mark_unhealthy()
                self._go(now, S.EJECTED, f"probe failed ({self._failures} in a row)", transitions)
            elif state is S.READY:
                self._go(now, S.DEGRADED, f"probe failed ({self._failures} in a row)", transitions)
        elif state is S.EJECTED:
            held = self._held_until is not None and now < self._held_until
            if ok and not held and should_readmit(self._successes, self.policy):
                self._go(now, S.DEGRADED if slow else S.READY,
                         f"probe passed {self._successes} times: re-admitted", transitions)
                self.backoff.mark_healthy(now)
                self._recovering = False
                if self._held_until is not None:
                    self._judged_since = now
                self._held_until = None
                self._register(actions)
            elif not ok and should_restart(self._stalled, self.policy):
                self._hung(now, actions, transitions)
        return self._decision(actions, transitions)

    def observe_error_share(self, now: float, share: float | None, responses: float) -> Decision:
        """The 5xx `share` of the worker's own `responses` over the outlier window since
        it was last routed (``None``: no data, e.g. SGLang 0.5.2 has no HTTP counters).

        A routed worker at or above `OutlierPolicy.error_share` with enough responses is
        ejected and held out (n × `ejection_s` for the n-th time in a row, capped) before
        passing probes may re-admit it: it still answers, so the probe alone would put it
        back within seconds and the balancer would keep retrying its failures."""
        actions: list[Action] = []
        transitions: list[Transition] = []
        policy = self.policy.outlier
        if self._state in ROUTED_STATES and is_outlier(share, responses, policy):
            assert share is not None
            if (self._last_outlier_at is not None
                    and now - self._last_outlier_at > 2 * policy.max_ejection_s):
                self._outliers = 0
            self._outliers += 1
            self._last_outlier_at = now
            hold = outlier_hold_s(self._outliers, policy)
            self._held_until = now + hold
            self._successes = 0
            self._eject(actions)
            self._go(now, S.EJECTED, f"outlier: {share:.0%} of {responses:g} responses failed "
                     f"(HTTP 5xx; limit {policy.error_share:.0%}); held out {hold:g} s",
                     transitions)
        return self._decision(actions, transitions)

    @property
    def judged_since(self) -> float | None:
        """While routed: the start of the responses the outlier rule judges (the latest
        of becoming ready and the end of an outlier hold); None when not routed."""
        return self._judged_since if self.ready_since is not None else None

    @property
    def held_until(self) -> float | None:
        """While ejected as an outlier: the time before which it is not re-admitted."""
        return self._held_until if self._state is S.EJECTED else None

    def _hung(self, now: float, actions: list[Action], transitions: list[Transition]) -> None:
        why = (f"{self._stalled} failed probes in a row with completions not progressing")
        self._eject(actions)
        actions.append(Action(ActionKind.KILL))
        actions.append(Action(ActionKind.ALERT, alert=LifecycleAlert.HUNG,
                              message=f"{self.worker}: hung: {why}; killing and restarting"))
        self._pending_delay = self._record_failure(now, actions)
        self._go(now, S.RESTARTING, why, transitions)

    def observe_health(self, now: float, status: int | None) -> Decision:
        """`/health` status while starting (``None``: connection refused). Informational
        only (shown as the startup phase); readiness comes from the real probe."""
        self.health_status = status
        return self._decision([], [])

    def observe_inflight(self, now: float, inflight: int | None) -> Decision:
        """Requests still running on the worker (balancer count + ``num_running_reqs``).
        While draining, 0 completes the drain."""
        self._inflight = inflight
        actions: list[Action] = []
        transitions: list[Transition] = []
        if self._state is S.DRAINING and self._drain_started_at is not None:
            verdict = drain_verdict(inflight, self._drain_started_at, now,
                                    self.policy.drain_timeout_s)
            if verdict is not DrainVerdict.WAIT:
                self._drain_done(now, verdict, actions, transitions)
        return self._decision(actions, transitions)

    def _drain_done(self, now: float, verdict: DrainVerdict, actions: list[Action],
                    transitions: list[Transition]) -> None:
        if verdict is DrainVerdict.TIMED_OUT:
            left = "unknown" if self._inflight is None else str(self._inflight)
            reason = f"drain timed out after {self.policy.drain_timeout_s:g} s ({left} in flight)"
            actions.append(Action(ActionKind.ALERT, alert=LifecycleAlert.DRAIN_TIMEOUT,
                                  message=f"{self.worker}: {reason}"))
        else:
            reason = "in-flight reached 0"
        self._drain_started_at = None
        self._go(now, S.DRAINED, reason, transitions)
        plan, self._after_drain = self._after_drain, None
        if plan is not None:
            self._restart_after_stop = plan == "restart"
            self._go(now, S.STOPPING, f"planned {plan}", transitions)
            actions.append(Action(ActionKind.STOP))

    def observe_exit(self, now: float, code: int | None, *,
                     config_error: str | None = None) -> Decision:
        """The worker's process generation is gone (exit `code`; negative = signal).

        `config_error`: the supervisor's diagnosis when the log or preflight shows a
        configuration cause (``"CUDA out of memory at start"``); during startup that,
        or an exit code in `config_exit_codes`, means ``FAILED`` (no restart loop).
        """
        actions: list[Action] = []
        transitions: list[Transition] = []
        self.last_exit_code = code
        self._inflight = None
        state = self._state
        what = f"exited with code {code}"
        if state is S.UNMANAGED:
            self._go(now, S.STOPPED, f"unmanaged process {what}", transitions)
        elif state is S.STOPPING:
            if self._restart_after_stop:
                self._restart_after_stop = False
                self._start(now, f"planned restart ({what})", actions, transitions)
            else:
                self._go(now, S.STOPPED, f"stopped ({what})", transitions)
        elif state is S.RESTARTING:
            self._schedule(now, self._pending_delay, f"backoff {self._pending_delay:g} s",
                           actions, transitions)
        elif state is S.STARTING:
            self._start_failed(now, what, code, config_error, actions, transitions)
        elif state is S.DRAINING and self._after_drain == "stop":
            self._after_drain = None
            self._go(now, S.STOPPED, f"{what} while draining for stop", transitions)
        elif state in (S.READY, S.DEGRADED, S.EJECTED, S.DRAINING, S.DRAINED):
            self._crash(now, f"crashed: {what}", actions, transitions)
        # BACKOFF, STOPPED, FAILED: a late or repeated exit report; nothing is running.
        return self._decision(actions, transitions)

    def _start_failed(self, now: float, what: str, code: int | None, config_error: str | None,
                      actions: list[Action], transitions: list[Transition]) -> None:
        kind = classify_exit(code, during_start=True, hint=config_error, policy=self.policy)
        if kind is ExitClass.CONFIG_ERROR and not self._trial:
            reason = config_error or f"{what} during startup (bad flags?)"
            self.failed_reason = reason
            self._go(now, S.FAILED, reason, transitions)
            actions.append(Action(ActionKind.ALERT, alert=LifecycleAlert.CONFIG_ERROR,
                                  message=f"{self.worker}: {reason}; not restarting"))
        else:
            detail = f": {config_error}" if config_error and config_error != what else ""
            self._crash(now, f"start failed: {what}{detail}", actions, transitions,
                        during_start=True)

    def observe_start_failed(self, now: float, reason: str, *, config_error: bool) -> Decision:
        """The spawn or preflight for the ``START`` just emitted failed before a process
        ran (`config_error`: model path missing, port owned by a foreign process...)."""
        if self._state is not S.STARTING:
            raise self._reject("report a failed start", "no start is in progress")
        actions: list[Action] = []
        transitions: list[Transition] = []
        self.last_exit_code = None
        self._start_failed(now, reason, None, reason if config_error else None,
                           actions, transitions)
        return self._decision(actions, transitions)

    # ------------------------------------------------------------------ operator commands

    def start(self, now: float) -> Decision:
        """Start a stopped (or failed, after a fix) worker; forgets past failures."""
        if self._state not in (S.STOPPED, S.FAILED):
            raise self._reject("start", "only a stopped or failed worker can be started")
        actions: list[Action] = []
        transitions: list[Transition] = []
        self._serve = True
        self._recovering = False
        self.failed_reason = None
        self.backoff.reset()
        self._start(now, "operator start", actions, transitions)
        return self._decision(actions, transitions)

    def begin_drain(self, now: float) -> Decision:
        """Take the worker out of the balancer and wait for in-flight = 0 (bounded);
        it ends ``DRAINED``: alive, not routed."""
        if self._state not in (S.READY, S.DEGRADED, S.EJECTED):
            raise self._reject("drain", "only a ready, degraded or ejected worker can be drained")
        return self._enter_drain(now, None, "operator drain")

    def _enter_drain(self, now: float, plan: str | None, reason: str) -> Decision:
        actions: list[Action] = []
        transitions: list[Transition] = []
        self._serve = plan == "restart"
        self._after_drain = plan
        self._eject(actions)
        self._drain_started_at = now
        self._inflight = None
        self._go(now, S.DRAINING, reason, transitions)
        return self._decision(actions, transitions)

    def undrain(self, now: float) -> Decision:
        """Put a draining or drained worker back: registered at once if its last probe
        passed, otherwise ejected until probes re-admit it."""
        if self._state not in (S.DRAINING, S.DRAINED):
            raise self._reject("undrain", "only a draining or drained worker can be undrained")
        actions: list[Action] = []
        transitions: list[Transition] = []
        self._serve = True
        self._after_drain = None
        self._drain_started_at = None
        if self.last_probe_ok is False:
            self._reset_probe_counts()
            self._go(now, S.EJECTED, "undrained; last probe failed: waiting for probes",
                     transitions)
        else:
            self._go(now, S.READY, "operator undrain", transitions)
            self.backoff.mark_healthy(now)
            self._register(actions)
        return self._decision(actions, transitions)

    def begin_stop(self, now: float) -> Decision:
        """Planned stop: drain first if routed, then ``STOP``; ends ``STOPPED``."""
        actions: list[Action] = []
        transitions: list[Transition] = []
        state = self._state
        if state in (S.READY, S.DEGRADED, S.EJECTED):
            return self._enter_drain(now, "stop", "operator stop: draining first")
        self._serve = False
        self._restart_after_stop = False
        if state is S.DRAINING:
            self._after_drain = "stop"
        elif state in (S.DRAINED, S.STARTING):
            self._go(now, S.STOPPING, "operator stop", transitions)
            actions.append(Action(ActionKind.STOP))
        elif state is S.RESTARTING:
            self._go(now, S.STOPPING, "operator stop (kill already in progress)", transitions)
        elif state in (S.BACKOFF, S.FAILED):
            self._next_start_at = None
            self._go(now, S.STOPPED, "operator stop", transitions)
        else:
            raise self._reject("stop", "nothing to stop" if state in (S.STOPPED, S.STOPPING)
                               else "not a managed running worker")
        return self._decision(actions, transitions)

    def kill(self, now: float) -> Decision:
        """Operator kill: SIGKILL the group now, no drain; ends ``STOPPED``."""
        if self._state not in _ALIVE:
            raise self._reject("kill", "no managed process is running")
        actions: list[Action] = []
        transitions: list[Transition] = []
        self._serve = False
        self._after_drain = None
        self._restart_after_stop = False
        self._eject(actions)
        actions.append(Action(ActionKind.KILL))
        if self._state is not S.STOPPING:
            self._go(now, S.STOPPING, "operator kill", transitions)
        return self._decision(actions, transitions)

    def begin_restart(self, now: float, *, trial: bool = False) -> Decision:
        """Planned restart: drain → stop → start → ready → register.

        `trial`: the next start uses new (retuned) arguments; if it exits, fails, or is not
        ready within the startup budget, ``ROLLBACK`` is emitted and the worker restarts
        with the old ones; when it becomes ready, ``COMMIT``.
        """
        state = self._state
        if state in (S.RESTARTING, S.STOPPING, S.UNMANAGED, S.CRASHED):
            detail = "use adopt" if state is S.UNMANAGED else "a restart is already in progress"
            raise self._reject("restart", detail)
        self._trial = trial
        actions: list[Action] = []
        transitions: list[Transition] = []
        if state in (S.READY, S.DEGRADED, S.EJECTED):
            return self._enter_drain(now, "restart", "operator restart: draining first")
        self._serve = True
        if state is S.DRAINING:
            self._after_drain = "restart"
        elif state in (S.DRAINED, S.STARTING):
            self._restart_after_stop = True
            self._go(now, S.STOPPING, "operator restart", transitions)
            actions.append(Action(ActionKind.STOP))
        elif state is S.BACKOFF:
            self._start(now, "operator restart (backoff skipped)", actions, transitions)
        else:  # STOPPED, FAILED
            self.failed_reason = None
            self._recovering = False
            self.backoff.reset()
            self._start(now, "operator restart", actions, transitions)
        return self._decision(actions, transitions)

    def adopt(self, now: float) -> Decision:
        """Bring an unmanaged SGLang server under supervision: eject, drain, stop, and
        relaunch it with the same arguments (the supervisor keeps its argv)."""
        if self._state is not S.UNMANAGED:
            raise self._reject("adopt", "only an unmanaged worker can be adopted")
        self.registered = True  # unknown membership: make sure EJECT is emitted
        return self._enter_drain(now, "restart", "adopt: draining before relaunch")
