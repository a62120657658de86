"""Worker state machine under a fake clock: every transition, the illegal ones, and the
probe / restart / backoff / drain / retune rules."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from console.lifecycle import (
    ALLOWED,
    Action,
    Decision,
    IllegalTransition,
    WorkerLifecycle,
)
from console.lifecycle import ActionKind as K
from console.lifecycle import LifecycleAlert as LA
from console.model import WorkerState as S
from console.policy import LifecyclePolicy, OutlierPolicy


class Clock:
    """Fake monotonic clock."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> float:
        self.t += dt
        return self.t


def check(d: Decision, before: S) -> Decision:
    """Every decision's transitions are chained, legal, and end in `d.state`."""
    state = before
    for tr in d.transitions:
        assert tr.source is state, d
        assert tr.target in ALLOWED[tr.source], tr
        state = tr.target
    assert d.state is state
    return d


class W:
    """A lifecycle plus clock, checking every decision."""

    def __init__(self, policy: LifecyclePolicy | None = None, *,
                 initial: S = S.STOPPED) -> None:
        self.clock = Clock()
        self.lc = WorkerLifecycle("w1", policy, initial=initial, now=self.clock.t)

    def do(self, method: str, *args: object, dt: float = 0.0, **kw: object) -> Decision:
        if dt:
            self.clock.advance(dt)
        before = self.lc.state
        fn: Callable[..., Decision] = getattr(self.lc, method)
        return check(fn(self.clock.t, *args, **kw), before)

    def probe(self, ok: bool, dt: float = 1.0, **kw: object) -> Decision:
        return self.do("observe_probe", ok, dt=dt, **kw)

    def exit(self, code: int | None, dt: float = 0.5, **kw: object) -> Decision:
        return self.do("observe_exit", code, dt=dt, **kw)

    def tick(self, dt: float = 0.0) -> Decision:
        return self.do("tick", dt=dt)

    @property
    def state(self) -> S:
        return self.lc.state


def ready(policy: LifecyclePolicy | None = None) -> W:
    w = W(policy)
    assert w.do("start").kinds() == [K.START]
    d = w.probe(True, latency_s=0.01)
    assert d.state is S.READY and d.kinds() == [K.REGISTER]
    return w


# ------------------------------------------------------------------ start and probes


def test_start_then_ready_registers() -> None:
    w = W()
    assert w.state is S.STOPPED
    d = w.do("start")
    assert d.state is S.STARTING and d.kinds() == [K.START]
    assert [(t.source, t.target) for t in d.transitions] == [(S.STOPPED, S.STARTING)]
    d = w.probe(True, dt=70.0, latency_s=0.02)
    assert d.state is S.READY and d.kinds() == [K.REGISTER]
    assert w.lc.registered
    assert w.lc.startup_durations == [70.0]
    st = w.lc.status(w.clock.t)
    assert st.restarts == 0 and st.ready_since == w.clock.t and not st.down


def test_starting_ignores_failed_probes_and_reports_phase() -> None:
    w = W()
    w.do("start")
    assert w.lc.status(w.clock.t).startup_phase == "port closed"
    for _ in range(10):
        d = w.probe(False)
        assert d.state is S.STARTING and d.actions == ()
    w.do("observe_health", 503)
    assert w.lc.status(w.clock.t).startup_phase == "warming up (503)"
    w.do("observe_health", 200)
    assert w.lc.status(w.clock.t).startup_phase == "health 200, awaiting probe"
    assert w.probe(True).state is S.READY


def test_eject_on_first_failed_probe() -> None:
    w = ready()
    d = w.probe(False)
    assert d.state is S.EJECTED and d.kinds() == [K.EJECT]
    assert not w.lc.registered
    assert w.lc.status(w.clock.t).down


def test_restart_after_three_failed_probes_without_progress() -> None:
    w = ready()
    assert w.probe(False).kinds() == [K.EJECT]
    d = w.probe(False)
    assert d.state is S.EJECTED and d.actions == ()
    d = w.probe(False)
    assert d.state is S.RESTARTING
    assert d.kinds() == [K.KILL, K.ALERT] and d.alerts() == [LA.HUNG]
    # The kill completes: first failure → no backoff delay, a new generation starts at once.
    d = w.exit(-9)
    assert [t.target for t in d.transitions] == [S.BACKOFF, S.STARTING]
    assert d.kinds() == [K.START]
    assert w.lc.status(w.clock.t).down  # starting after a failure is still "down"
    assert w.probe(True).kinds() == [K.REGISTER]
    assert w.lc.status(w.clock.t).restarts == 1


def test_not_restarted_while_completions_progress() -> None:
    w = ready()
    for _ in range(20):
        d = w.probe(False, progressing=True)
        assert K.KILL not in d.kinds()
        assert d.state is S.EJECTED
    # Progress stops: two more failures are not enough...
    w.probe(False)
    w.probe(False)
    # ...progress once more resets the count...
    assert w.probe(False, progressing=True).state is S.EJECTED
    w.probe(False)
    w.probe(False)
    assert w.state is S.EJECTED
    # ...and the third stalled failure in a row restarts.
    assert w.probe(False).state is S.RESTARTING


def test_completions_before_the_first_failure_do_not_delay_a_hung_restart() -> None:
    # F2: requests finished just before the hang show as progress at the first failed
    # probe; the worker is still restarted at the third failure in a row.
    w = ready()
    assert w.probe(False, progressing=True).state is S.EJECTED
    assert w.probe(False).state is S.EJECTED
    assert w.probe(False).state is S.RESTARTING


def test_ejected_worker_readmitted_after_two_passes() -> None:
    w = ready()
    w.probe(False)
    d = w.probe(True)
    assert d.state is S.EJECTED and d.actions == ()
    d = w.probe(True)
    assert d.state is S.READY and d.kinds() == [K.REGISTER]
    assert not w.lc.status(w.clock.t).down


def test_pass_between_failures_resets_restart_count() -> None:
    w = ready()
    w.probe(False)
    w.probe(False)
    w.probe(True)  # one pass: not re-admitted, but the failures are no longer in a row
    w.probe(False)
    w.probe(False)
    assert w.state is S.EJECTED
    assert w.probe(False).state is S.RESTARTING


def test_slow_probe_degrades_but_keeps_routing() -> None:
    w = ready()
    d = w.probe(True, latency_s=1.5)
    assert d.state is S.DEGRADED and d.actions == ()
    assert w.lc.registered
    assert w.probe(True, latency_s=1.6).transitions == ()
    d = w.probe(True, latency_s=0.05)
    assert d.state is S.READY and d.actions == ()
    w.probe(True, latency_s=2.0)
    d = w.probe(False)
    assert d.state is S.EJECTED and d.kinds() == [K.EJECT]


def test_readmitted_slow_worker_is_degraded() -> None:
    w = ready()
    w.probe(False)
    w.probe(True, latency_s=1.5)
    d = w.probe(True, latency_s=1.5)
    assert d.state is S.DEGRADED and d.kinds() == [K.REGISTER]


def test_failing_probe_below_ejection_rule_degrades() -> None:
    w = ready(LifecyclePolicy(eject_after_failures=2))
    d = w.probe(False)
    assert d.state is S.DEGRADED and d.actions == ()  # still routed
    d = w.probe(False)
    assert d.state is S.EJECTED and d.kinds() == [K.EJECT]


def test_restart_threshold_below_ejection_threshold_ejects_and_kills() -> None:
    w = ready(LifecyclePolicy(eject_after_failures=5, restart_after_failures=2))
    assert w.probe(False).state is S.DEGRADED
    d = w.probe(False)
    assert d.state is S.RESTARTING and d.kinds()[:2] == [K.EJECT, K.KILL]


# ------------------------------------------------------------------ crashes and backoff


def test_crash_restarts_immediately_then_with_backoff() -> None:
    w = ready()
    d = w.exit(137)
    assert [t.target for t in d.transitions] == [S.CRASHED, S.BACKOFF, S.STARTING]
    assert d.kinds() == [K.EJECT, K.START]
    assert w.lc.last_exit_code == 137
    # Second failure, still starting: 1 s backoff.
    d = w.exit(1)
    assert d.state is S.BACKOFF and d.kinds() == [K.START_AT]
    due = d.actions[0].at
    assert due == pytest.approx(w.clock.t + 1.0)
    assert w.lc.next_start_at == due and w.lc.next_deadline() == due
    assert w.tick(dt=0.99).actions == ()
    d = w.tick(dt=0.01)
    assert d.state is S.STARTING and d.kinds() == [K.START]


def test_backoff_schedule_exact_through_lifecycle() -> None:
    w = ready()
    delays = []
    d = w.exit(1)
    delays.append(0.0 if d.state is S.STARTING else None)
    for _ in range(8):
        exited_at = w.clock.advance(0.5)
        d = check(w.lc.observe_exit(exited_at, 1), S.STARTING)
        assert d.state is S.BACKOFF
        delay = w.lc.next_start_at - exited_at  # type: ignore[operator]
        delays.append(delay)
        assert w.tick(dt=delay).kinds() == [K.START]
    assert delays == [0, 1, 2, 4, 8, 16, 32, 60, 60]


def test_backoff_resets_after_ten_minutes_ready() -> None:
    w = ready()
    for _ in range(4):  # four failures: next delay would be 8 s
        d = w.exit(1)
        if d.state is S.BACKOFF:
            w.tick(dt=w.lc.next_start_at - w.clock.t)  # type: ignore[operator]
    assert w.lc.backoff.failures == 4
    w.probe(True)  # ready again
    w.tick(dt=599.0)
    assert w.lc.backoff.failures == 4
    w.tick(dt=1.0)
    assert w.lc.backoff.failures == 0
    d = w.exit(137)
    assert d.state is S.STARTING  # immediate again


def test_backoff_not_reset_before_ten_minutes_ready() -> None:
    w = ready()
    for _ in range(3):
        d = w.exit(1)
        if d.state is S.BACKOFF:
            w.tick(dt=w.lc.next_start_at - w.clock.t)  # type: ignore[operator]
    w.probe(True)
    w.clock.advance(599.0)  # no tick: the reset would be lazy anyway
    d = w.exit(137)
    assert d.state is S.BACKOFF and w.lc.next_start_at == pytest.approx(w.clock.t + 4.0)


def test_crash_loop_alert_at_fifth_failure_within_ten_minutes() -> None:
    w = ready()
    alerts_per_failure = []
    for _ in range(6):
        w.clock.advance(30.0)
        d = w.exit(1)
        alerts_per_failure.append(d.alerts())
        if d.state is S.BACKOFF:
            w.tick(dt=w.lc.next_start_at - w.clock.t)  # type: ignore[operator]
    assert alerts_per_failure == [[], [], [], [], [LA.CRASH_LOOP], []]  # once per episode
    st = w.lc.status(w.clock.t)
    assert st.crash_looping and st.failures_in_window == 6
    # It keeps restarting (never gives up): the worker is starting again.
    assert w.state is S.STARTING


def test_no_crash_loop_alert_for_five_failures_over_eleven_minutes() -> None:
    w = ready()
    alerts = []
    for _ in range(5):
        w.clock.advance(165.0 - 1.0)
        d = w.exit(137)  # crashes while ready (ready < 10 min each time)
        alerts += d.alerts()
        if d.state is S.BACKOFF:
            w.tick(dt=w.lc.next_start_at - w.clock.t)  # type: ignore[operator]
        w.probe(True, dt=0.5)
    assert alerts == []
    assert w.lc.status(w.clock.t).failures_in_window == 4


def test_crash_loop_episode_ends_and_can_alert_again() -> None:
    policy = LifecyclePolicy()
    w = ready(policy)
    for _ in range(5):
        d = w.exit(1, dt=1.0)
        if d.state is S.BACKOFF:
            w.tick(dt=w.lc.next_start_at - w.clock.t)  # type: ignore[operator]
    w.probe(True)
    w.tick(dt=700.0)  # failures age out; also 10 min ready → backoff reset
    assert not w.lc.status(w.clock.t).crash_looping
    alerts = []
    for _ in range(5):
        d = w.exit(1, dt=1.0)
        alerts += d.alerts()
        if d.state is S.BACKOFF:
            w.tick(dt=w.lc.next_start_at - w.clock.t)  # type: ignore[operator]
    assert alerts == [LA.CRASH_LOOP]


# ------------------------------------------------------------------ failed starts


def test_exit_code_2_at_start_is_a_config_error_without_restart() -> None:
    w = W()
    w.do("start")
    d = w.exit(2)
    assert d.state is S.FAILED
    assert d.kinds() == [K.ALERT] and d.alerts() == [LA.CONFIG_ERROR]
    assert "not restarting" in d.actions[0].message
    assert w.lc.failed_reason and w.lc.status(w.clock.t).down
    assert w.tick(dt=3600.0).actions == ()
    assert w.state is S.FAILED
    d = w.do("start")  # operator fixed the config
    assert d.state is S.STARTING and d.kinds() == [K.START]
    assert w.lc.failed_reason is None


def test_exit_code_2_while_ready_is_a_crash() -> None:
    w = ready()
    d = w.exit(2)
    assert d.state is S.STARTING and K.START in d.kinds()


def test_config_hint_at_start_fails_and_plain_exit_restarts() -> None:
    w = W()
    w.do("start")
    d = w.exit(1, config_error="CUDA out of memory at start")
    assert d.state is S.FAILED and w.lc.failed_reason == "CUDA out of memory at start"
    w2 = W()
    w2.do("start")
    d = w2.exit(1)
    assert d.state is S.STARTING and d.kinds() == [K.START]


def test_preflight_failure() -> None:
    w = W()
    w.do("start")
    d = w.do("observe_start_failed", "port 30001 owned by pid 4242 (nginx)", config_error=True)
    assert d.state is S.FAILED and d.alerts() == [LA.CONFIG_ERROR]
    assert "4242" in d.actions[0].message
    w2 = W()
    w2.do("start")
    d = w2.do("observe_start_failed", "fork failed", config_error=False)
    assert d.state is S.STARTING and d.kinds() == [K.START]  # first failure: immediate
    with pytest.raises(IllegalTransition, match="no start is in progress"):
        ready().do("observe_start_failed", "x", config_error=True)


def test_startup_budget_exceeded_counts_toward_backoff() -> None:
    w = W()
    w.do("start")
    assert w.lc.next_deadline() == pytest.approx(w.clock.t + 600.0)
    assert w.tick(dt=600.0).actions == ()  # exactly at the budget: not yet
    d = w.tick(dt=0.1)
    assert d.state is S.RESTARTING
    assert d.kinds() == [K.KILL, K.ALERT] and d.alerts() == [LA.STARTUP_TIMEOUT]
    d = w.exit(-9)
    assert d.state is S.STARTING  # first failure: immediate
    w.tick(dt=600.1)
    d = w.exit(-9)
    assert d.state is S.BACKOFF
    assert w.lc.next_start_at == pytest.approx(w.clock.t + 1.0)  # second failure: 1 s


def test_startup_budget_adapts_to_recorded_startups() -> None:
    w = ready()
    for _ in range(3):
        w.do("begin_restart")
        w.do("observe_inflight", 0)
        w.exit(143)
        w.probe(True, dt=2.0)
    assert w.lc.startup_durations[-3:] == [2.0, 2.0, 2.0]
    assert w.lc.startup_budget() == 30.0  # max(floor 30, 1.5 × 2)


# ------------------------------------------------------------------ planned path


def test_drain_and_undrain() -> None:
    w = ready()
    d = w.do("begin_drain")
    assert d.state is S.DRAINING and d.kinds() == [K.EJECT]
    assert not w.lc.status(w.clock.t).down  # planned, not down
    assert w.do("observe_inflight", 3, dt=1.0).state is S.DRAINING
    assert w.lc.status(w.clock.t).inflight == 3
    d = w.do("observe_inflight", 0, dt=1.0)
    assert d.state is S.DRAINED and d.actions == ()
    assert d.transitions[0].reason == "in-flight reached 0"
    d = w.do("undrain")
    assert d.state is S.READY and d.kinds() == [K.REGISTER]


def test_drain_timeout() -> None:
    w = ready()
    w.do("begin_drain")
    w.do("observe_inflight", 2, dt=5.0)
    assert w.tick(dt=24.9).state is S.DRAINING
    d = w.tick(dt=0.1)
    assert d.state is S.DRAINED and d.alerts() == [LA.DRAIN_TIMEOUT]
    assert "2 in flight" in d.transitions[0].reason


def test_undrain_after_failed_probe_waits_for_readmission() -> None:
    w = ready()
    w.do("begin_drain")
    w.do("observe_inflight", 0)
    w.probe(False)  # probed while drained: no action
    assert w.state is S.DRAINED
    d = w.do("undrain")
    assert d.state is S.EJECTED and d.actions == ()
    w.probe(True)
    assert w.probe(True).kinds() == [K.REGISTER]


def test_undrain_cancels_a_drain_in_progress() -> None:
    w = ready()
    w.do("begin_stop")
    d = w.do("undrain")
    assert d.state is S.READY and d.kinds() == [K.REGISTER]
    assert w.do("observe_inflight", 0).state is S.READY  # the stop plan is gone


def test_planned_stop() -> None:
    w = ready()
    d = w.do("begin_stop")
    assert d.state is S.DRAINING and d.kinds() == [K.EJECT]
    d = w.do("observe_inflight", 0, dt=2.0)
    assert [t.target for t in d.transitions] == [S.DRAINED, S.STOPPING]
    assert d.kinds() == [K.STOP]
    d = w.exit(143)  # SGLang exits 137 even after a clean drain; any code is fine here
    assert d.state is S.STOPPED and d.actions == ()
    assert w.tick(dt=3600.0).actions == ()
    assert not w.lc.status(w.clock.t).down


def test_stop_while_draining_and_from_drained() -> None:
    w = ready()
    w.do("begin_drain")
    d = w.do("begin_stop")
    assert d.state is S.DRAINING and d.actions == ()
    assert w.do("observe_inflight", 0).kinds() == [K.STOP]
    w2 = ready()
    w2.do("begin_drain")
    w2.do("observe_inflight", 0)
    d = w2.do("begin_stop")
    assert d.state is S.STOPPING and d.kinds() == [K.STOP]


def test_stop_cancels_backoff_and_clears_failed() -> None:
    w = ready()
    w.exit(1)
    w.exit(1)
    assert w.state is S.BACKOFF
    d = w.do("begin_stop")
    assert d.state is S.STOPPED and w.lc.next_start_at is None
    assert w.tick(dt=100.0).actions == ()
    f = W()
    f.do("start")
    f.exit(2)
    assert f.do("begin_stop").state is S.STOPPED


def test_planned_restart_does_not_count_as_failure() -> None:
    w = ready()
    d = w.do("begin_restart")
    assert d.state is S.DRAINING and d.kinds() == [K.EJECT]
    d = w.do("observe_inflight", 0)
    assert d.kinds() == [K.STOP] and d.state is S.STOPPING
    d = w.exit(137)
    assert d.state is S.STARTING and d.kinds() == [K.START]
    d = w.probe(True)
    assert d.state is S.READY and d.kinds() == [K.REGISTER]
    st = w.lc.status(w.clock.t)
    assert st.restarts == 1 and st.backoff_failures == 0 and st.failures_in_window == 0


def test_restart_from_other_states() -> None:
    w = W()
    w.do("start")
    d = w.do("begin_restart")  # restarting a starting worker: stop, then start
    assert d.state is S.STOPPING and d.kinds() == [K.STOP]
    assert w.exit(143).kinds() == [K.START]
    w = ready()
    w.exit(1)
    w.exit(1)
    assert w.state is S.BACKOFF
    d = w.do("begin_restart")  # skip the wait
    assert d.state is S.STARTING and d.kinds() == [K.START]
    w = ready()
    w.do("begin_drain")
    d = w.do("begin_restart")  # joins the drain in progress
    assert d.state is S.DRAINING and d.actions == ()
    d = w.do("observe_inflight", 0)
    assert d.kinds() == [K.STOP]
    w.exit(0)
    assert w.probe(True).kinds() == [K.REGISTER]  # restart ends routed


def test_kill() -> None:
    w = ready()
    d = w.do("kill")
    assert d.state is S.STOPPING and d.kinds() == [K.EJECT, K.KILL]
    d = w.do("kill")  # escalate a stop in progress
    assert d.state is S.STOPPING and d.kinds() == [K.KILL] and d.transitions == ()
    assert w.exit(-9).state is S.STOPPED


def test_crash_while_drained_restarts_but_stays_unrouted() -> None:
    w = ready()
    w.do("begin_drain")
    w.do("observe_inflight", 0)
    d = w.exit(137)
    assert d.state is S.STARTING and d.kinds() == [K.START]  # no EJECT: not registered
    d = w.probe(True)
    assert d.state is S.DRAINED and d.actions == ()


def test_crash_while_draining_for_stop_ends_stopped() -> None:
    w = ready()
    w.do("begin_stop")
    d = w.exit(137)
    assert d.state is S.STOPPED and d.actions == ()


def test_crash_while_draining_for_restart_restarts_and_routes() -> None:
    w = ready()
    w.do("begin_restart")
    d = w.exit(137)
    assert d.state is S.STARTING and d.kinds() == [K.START]
    assert w.lc.status(w.clock.t).failures_in_window == 1  # unplanned: counted
    assert w.probe(True).kinds() == [K.REGISTER]


# ------------------------------------------------------------------ retune


def test_retune_success_commits() -> None:
    w = ready()
    w.do("begin_restart", trial=True)
    w.do("observe_inflight", 0)
    w.exit(143)
    assert w.lc.status(w.clock.t).trial
    d = w.probe(True)
    assert d.kinds() == [K.COMMIT, K.REGISTER]
    assert not w.lc.status(w.clock.t).trial


def test_retune_bad_flag_rolls_back_instead_of_failing() -> None:
    w = ready()
    w.do("begin_restart", trial=True)
    w.do("observe_inflight", 0)
    w.exit(143)
    d = w.exit(2)  # new arguments rejected by argparse
    assert d.state is S.STARTING
    assert d.kinds() == [K.ROLLBACK, K.ALERT, K.START]
    assert d.alerts() == [LA.RETUNE_ROLLED_BACK]
    assert w.lc.status(w.clock.t).failures_in_window == 0  # operator's change, not a crash
    d = w.probe(True)
    assert d.kinds() == [K.REGISTER]  # old arguments: no COMMIT


def test_retune_not_ready_within_budget_rolls_back() -> None:
    w = ready()
    w.do("begin_restart", trial=True)
    w.do("observe_inflight", 0)
    w.exit(143)
    d = w.tick(dt=600.1)
    assert d.state is S.RESTARTING
    assert d.kinds() == [K.KILL, K.ALERT, K.ROLLBACK, K.ALERT]
    assert d.alerts() == [LA.STARTUP_TIMEOUT, LA.RETUNE_ROLLED_BACK]
    d = w.exit(-9)
    assert d.state is S.STARTING and d.kinds() == [K.START]  # old args, no delay
    assert w.probe(True).kinds() == [K.REGISTER]


def test_retune_crash_while_draining_keeps_the_trial() -> None:
    w = ready()
    w.do("begin_restart", trial=True)
    d = w.exit(137)  # the *old* process crashed; the new arguments are still untested
    assert K.ROLLBACK not in d.kinds()
    assert w.lc.status(w.clock.t).trial
    assert w.probe(True).kinds() == [K.COMMIT, K.REGISTER]


# ------------------------------------------------------------------ unmanaged / adopt


def test_unmanaged_is_watched_never_touched() -> None:
    w = W(initial=S.UNMANAGED)
    for ok in (True, False, False, False, False):
        d = w.probe(ok)
        assert d.actions == () and d.state is S.UNMANAGED
    assert w.lc.probing
    with pytest.raises(IllegalTransition):
        w.do("kill")
    with pytest.raises(IllegalTransition, match="use adopt"):
        w.do("begin_restart")


def test_adopt_relaunches_under_supervision() -> None:
    w = W(initial=S.UNMANAGED)
    d = w.do("adopt")
    assert d.state is S.DRAINING and d.kinds() == [K.EJECT]  # membership unknown: always eject
    d = w.do("observe_inflight", 0)
    assert d.kinds() == [K.STOP]
    d = w.exit(137)
    assert d.kinds() == [K.START]
    assert w.probe(True).kinds() == [K.REGISTER]


def test_unmanaged_exit() -> None:
    w = W(initial=S.UNMANAGED)
    assert w.exit(0).state is S.STOPPED


def test_initial_starting_for_known_adopted_process() -> None:
    w = W(initial=S.STARTING)
    d = w.probe(True)
    assert d.state is S.READY and d.kinds() == [K.REGISTER]
    assert w.lc.status(w.clock.t).restarts == 0
    with pytest.raises(ValueError):
        WorkerLifecycle("x", initial=S.READY)


# ------------------------------------------------------------------ late observations


@pytest.mark.parametrize("setup", ["stopped", "backoff", "failed"])
def test_late_observations_are_ignored(setup: str) -> None:
    w = W()
    if setup == "backoff":
        w = ready()
        w.exit(1)
        w.exit(1)
    elif setup == "failed":
        w.do("start")
        w.exit(2)
    before = w.state
    for d in (w.probe(True), w.probe(False), w.exit(137), w.do("observe_inflight", 0),
              w.do("observe_health", 200)):
        assert d.actions == () and d.transitions == ()
    assert w.state is before


def test_probes_while_restarting_or_stopping_do_nothing() -> None:
    w = ready()
    w.probe(False)
    w.probe(False)
    w.probe(False)
    assert w.state is S.RESTARTING
    assert w.probe(True).actions == ()
    assert w.state is S.RESTARTING
    w2 = ready()
    w2.do("kill")
    assert w2.probe(True).actions == () and w2.state is S.STOPPING


# ------------------------------------------------------------------ illegal commands


def _in_state(state: S) -> W:
    if state is S.STOPPED:
        return W()
    if state is S.UNMANAGED:
        return W(initial=S.UNMANAGED)
    if state is S.STARTING:
        w = W()
        w.do("start")
        return w
    if state is S.FAILED:
        w = W()
        w.do("start")
        w.exit(2)
        return w
    w = ready()
    if state is S.DEGRADED:
        w.probe(True, latency_s=5.0)
    elif state is S.EJECTED:
        w.probe(False)
    elif state is S.RESTARTING:
        for _ in range(3):
            w.probe(False)
    elif state in (S.DRAINING, S.DRAINED, S.STOPPING):
        w.do("begin_drain")
        if state is not S.DRAINING:
            w.do("observe_inflight", 0)
        if state is S.STOPPING:
            w.do("begin_stop")
    elif state is S.BACKOFF:
        w.exit(1)
        w.exit(1)
    assert w.state is state
    return w


REACHABLE: list[S] = [s for s in S if s is not S.CRASHED]  # CRASHED is momentary


def _all_but(*excluded: S) -> set[S]:
    return {s for s in REACHABLE if s not in excluded}


LEGAL: dict[str, set[S]] = {
    "start": {S.STOPPED, S.FAILED},
    "begin_drain": {S.READY, S.DEGRADED, S.EJECTED},
    "undrain": {S.DRAINING, S.DRAINED},
    "begin_stop": _all_but(S.STOPPED, S.STOPPING, S.UNMANAGED),
    "kill": {S.STARTING, S.READY, S.DEGRADED, S.EJECTED, S.RESTARTING, S.DRAINING,
             S.DRAINED, S.STOPPING},
    "begin_restart": _all_but(S.RESTARTING, S.STOPPING, S.UNMANAGED),
    "adopt": {S.UNMANAGED},
}


@pytest.mark.parametrize("command", sorted(LEGAL))
@pytest.mark.parametrize("state", REACHABLE, ids=lambda s: s.value)
def test_command_legality_matrix(command: str, state: S) -> None:
    w = _in_state(state)
    if state in LEGAL[command]:
        d = w.do(command)  # `do` checks every transition against ALLOWED
        assert d.state is not S.CRASHED
    else:
        with pytest.raises(IllegalTransition) as info:
            w.do(command)
        assert info.value.state is state
        assert f"while {state.value}" in str(info.value)
        assert w.state is state  # nothing changed


def test_illegal_internal_transition_is_rejected() -> None:
    w = ready()
    with pytest.raises(IllegalTransition, match="cannot go to stopped while ready"):
        w.lc._go(w.clock.t, S.STOPPED, "test", [])
    assert w.state is S.READY


def test_allowed_table_covers_every_state() -> None:
    assert set(ALLOWED) == set(S)
    for source, targets in ALLOWED.items():
        assert source not in targets  # staying put is not a transition


def test_error_message_is_clear() -> None:
    w = W()
    with pytest.raises(IllegalTransition) as info:
        w.do("begin_drain")
    assert str(info.value) == ("w1: cannot drain while stopped: only a ready, degraded or "
                               "ejected worker can be drained")


# ------------------------------------------------------------------ deadlines and status


def test_next_deadline() -> None:
    w = W()
    assert w.lc.next_deadline() is None
    w.do("start")
    assert w.lc.next_deadline() == pytest.approx(w.clock.t + 600.0)
    w.probe(True)
    assert w.lc.next_deadline() is None
    w.do("begin_drain")
    assert w.lc.next_deadline() == pytest.approx(w.clock.t + 30.0)


def test_action_dataclass_defaults() -> None:
    assert Action(K.START) == Action(kind=K.START, at=None, alert=None, message="")


# ------------------------------------------------------------------ outlier ejection (F4 20 %)


def outliers(**kw: object) -> LifecyclePolicy:
    return LifecyclePolicy(outlier=OutlierPolicy(**kw))  # type: ignore[arg-type]


def test_outlier_is_ejected_and_held_out_despite_passing_probes() -> None:
    w = ready(outliers(error_share=0.1, min_responses=20, ejection_s=30.0))
    # below the share, or too few responses, or no data: nothing happens
    for share, n in ((0.09, 100.0), (0.5, 19.0), (None, 0.0)):
        d = w.do("observe_error_share", share, n, dt=2.0)
        assert d.state is S.READY and d.actions == ()
    d = w.do("observe_error_share", 0.2, 40.0, dt=2.0)
    assert d.state is S.EJECTED and d.kinds() == [K.EJECT]
    assert "outlier: 20% of 40 responses" in d.transitions[0].reason
    assert "held out 30 s" in d.transitions[0].reason
    t_eject = w.clock.t
    assert w.lc.held_until == t_eject + 30.0
    # it still answers probes: they do not re-admit it during the hold...
    for _ in range(29):
        d = w.probe(True, dt=1.0, latency_s=0.01)
        assert d.state is S.EJECTED and d.actions == (), w.clock.t - t_eject
    # ...and do after it (2 passes in a row, the usual rule)
    d = w.probe(True, dt=1.0, latency_s=0.01)
    assert d.state is S.READY and d.kinds() == [K.REGISTER]
    assert w.lc.held_until is None
    # a further observation while ejected changes nothing (only routed workers are judged)
    assert w.probe(False).state is S.EJECTED
    assert w.do("observe_error_share", 1.0, 100.0).actions == ()


def test_outlier_hold_grows_with_ejections_in_a_row_and_starts_over() -> None:
    w = ready(outliers(ejection_s=10.0, max_ejection_s=25.0))
    holds = []
    for _ in range(4):
        d = w.do("observe_error_share", 0.5, 50.0, dt=1.0)
        assert d.state is S.EJECTED
        holds.append(w.lc.held_until - w.clock.t)  # type: ignore[operator]
        w.clock.advance(holds[-1])
        assert w.probe(True, dt=0.0, latency_s=0.01).state is S.EJECTED  # 1 pass of 2
        assert w.probe(True, dt=0.5, latency_s=0.01).state is S.READY
    assert holds == [10.0, 20.0, 25.0, 25.0]  # n x 10 s, capped at 25 s
    w.clock.advance(2 * 25.0 + 1.0)  # twice the cap without an outlier ejection
    w.do("observe_error_share", 0.5, 50.0)
    assert w.lc.held_until == w.clock.t + 10.0


def test_outlier_rule_can_be_off_and_a_new_process_is_judged_afresh() -> None:
    off = ready(outliers(enabled=False))
    assert off.do("observe_error_share", 1.0, 1000.0).state is S.READY
    w = ready()
    assert w.do("observe_error_share", 1.0, 100.0).state is S.EJECTED
    assert w.lc.held_until is not None
    assert w.do("kill").state is S.STOPPING
    assert w.exit(-9).state is S.STOPPED
    assert w.do("start").state is S.STARTING
    assert w.probe(True, latency_s=0.01).state is S.READY
    assert w.probe(False).state is S.EJECTED  # a probe ejection: no outlier hold
    assert w.lc.held_until is None
    w.probe(True, latency_s=0.01)
    assert w.probe(True, latency_s=0.01).state is S.READY


@pytest.mark.parametrize("kw", [{"error_share": 0.0}, {"error_share": 1.5},
                                {"min_responses": 0}, {"window_s": 0.0},
                                {"ejection_s": float("inf")}, {"max_ejection_s": -1.0}])
def test_outlier_policy_rejects_bad_numbers(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        OutlierPolicy(**kw)  # type: ignore[arg-type]


def test_outlier_window_survives_probe_flaps_and_restarts_after_a_hold() -> None:
    w = ready(outliers(ejection_s=10.0))
    t_ready = w.clock.t
    assert w.lc.judged_since == t_ready
    # a probe ejection and re-admission (a flap) does not restart the judged window
    assert w.probe(False).state is S.EJECTED
    assert w.lc.judged_since is None  # not routed: not judged
    w.probe(True, latency_s=0.01)
    assert w.probe(True, latency_s=0.01).state is S.READY
    assert w.lc.judged_since == t_ready
    # the end of an outlier hold does
    w.do("observe_error_share", 0.3, 60.0)
    w.clock.advance(10.0)
    w.probe(True, latency_s=0.01)
    assert w.probe(True, latency_s=0.01).state is S.READY
    assert w.lc.judged_since == w.clock.t
