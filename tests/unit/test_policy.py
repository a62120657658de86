"""Pure rules: backoff schedule, crash-loop window, probe timeout, thresholds, drain,
startup budget, exit classification, rollout order, retune rollback."""

from __future__ import annotations

import pytest

from console.model import WorkerState as S
from console.policy import (
    Aborted,
    BackoffPolicy,
    Blocked,
    CrashLoopDetector,
    CrashLoopPolicy,
    DrainVerdict,
    ExitClass,
    LifecyclePolicy,
    RestartBackoff,
    RetuneVerdict,
    classify_exit,
    drain_verdict,
    is_slow,
    next_rollout_step,
    probe_timeout_s,
    retune_verdict,
    should_eject,
    should_readmit,
    should_restart,
    startup_budget_s,
)

# ------------------------------------------------------------------ backoff


def test_backoff_schedule_exact() -> None:
    policy = BackoffPolicy()
    assert [policy.delay(n) for n in range(1, 10)] == [0, 1, 2, 4, 8, 16, 32, 60, 60]
    assert policy.delay(1000) == 60  # no overflow, stays at the cap


def test_backoff_without_immediate_first() -> None:
    policy = BackoffPolicy(first_immediate=False, base_s=10, cap_s=300)
    # Kubernetes' classic CrashLoopBackOff: 10, 20, 40, ... capped at 300.
    assert [policy.delay(n) for n in range(1, 8)] == [10, 20, 40, 80, 160, 300, 300]


def test_backoff_rejects_bad_values() -> None:
    with pytest.raises(ValueError):
        BackoffPolicy(factor=0.5)
    with pytest.raises(ValueError):
        BackoffPolicy().delay(0)


def test_restart_backoff_counts_and_resets_after_ten_minutes_ready() -> None:
    backoff = RestartBackoff()
    t = 0.0
    delays = []
    for _ in range(9):
        delays.append(backoff.record_failure(t))
        t += 1.0
    assert delays == [0, 1, 2, 4, 8, 16, 32, 60, 60]
    backoff.mark_healthy(100.0)
    backoff.mark_healthy(200.0)  # keeps the start of the unbroken ready period
    assert not backoff.maybe_reset(699.9)
    assert backoff.failures == 9
    assert backoff.maybe_reset(700.0)
    assert backoff.failures == 0
    assert backoff.record_failure(701.0) == 0


def test_restart_backoff_broken_ready_period_does_not_reset() -> None:
    backoff = RestartBackoff()
    for t in (0.0, 1.0, 2.0):
        backoff.record_failure(t)
    backoff.mark_healthy(10.0)
    backoff.mark_unhealthy()  # ejected at some point
    backoff.mark_healthy(400.0)
    # 10 min after the first ready but only 210 s after the current ready period began.
    assert backoff.record_failure(610.0) == 4  # fourth failure in a row
    assert backoff.preview() == 8


def test_restart_backoff_lazily_resets_on_next_failure() -> None:
    backoff = RestartBackoff()
    for t in (0.0, 1.0, 2.0, 3.0):
        backoff.record_failure(t)
    backoff.mark_healthy(10.0)
    # No tick happened in between: the reset is applied when the next failure comes.
    assert backoff.record_failure(610.0) == 0


# ------------------------------------------------------------------ crash loop


def test_crash_loop_at_fifth_failure_within_ten_minutes() -> None:
    detector = CrashLoopDetector()
    results = [detector.record(t) for t in (0.0, 100.0, 200.0, 300.0)]
    assert results == [False] * 4
    assert detector.record(599.0) is True
    assert detector.count(599.0) == 5


def test_crash_loop_window_is_inclusive_at_ten_minutes() -> None:
    detector = CrashLoopDetector()
    for t in (0.0, 150.0, 300.0, 450.0):
        detector.record(t)
    assert detector.record(600.0) is True  # first and fifth exactly 10 min apart


def test_no_crash_loop_when_five_failures_spread_over_eleven_minutes() -> None:
    detector = CrashLoopDetector()
    times = [0.0, 165.0, 330.0, 495.0, 660.0]  # 11 min from first to fifth
    assert [detector.record(t) for t in times] == [False] * 5
    assert detector.count(660.0) == 4
    assert not detector.looping(660.0)


def test_crash_loop_ends_when_failures_age_out() -> None:
    detector = CrashLoopDetector(CrashLoopPolicy(threshold=3, window_s=60))
    for t in (0.0, 1.0, 2.0):
        detector.record(t)
    assert detector.looping(2.0)
    assert detector.looping(60.0)
    assert not detector.looping(60.5)
    assert detector.count(1000.0) == 0


# ------------------------------------------------------------------ probe timeout and thresholds


@pytest.mark.parametrize(
    ("p99", "expected"),
    [(None, 2.0), (0.01, 2.0), (0.5, 2.0), (0.7, 2.1), (1.0, 3.0), (float("nan"), 2.0)],
)
def test_probe_timeout_is_max_of_floor_and_three_p99(p99: float | None, expected: float) -> None:
    assert probe_timeout_s(p99) == pytest.approx(expected)


def test_probe_timeout_ceiling() -> None:
    assert probe_timeout_s(100.0, ceiling_s=10.0) == 10.0
    assert probe_timeout_s(100.0) == 300.0
    assert probe_timeout_s(0.1, ceiling_s=1.0) == 2.0  # ceiling never below the floor


def test_thresholds_defaults() -> None:
    policy = LifecyclePolicy()
    assert not should_eject(0, policy) and should_eject(1, policy)
    assert not should_restart(2, policy) and should_restart(3, policy)
    assert not should_readmit(1, policy) and should_readmit(2, policy)
    assert not is_slow(None, policy) and not is_slow(1.0, policy) and is_slow(1.01, policy)


def test_lifecycle_policy_validates() -> None:
    with pytest.raises(ValueError, match="restart_after_failures"):
        LifecyclePolicy(restart_after_failures=0)
    with pytest.raises(ValueError, match="drain_timeout_s"):
        LifecyclePolicy(drain_timeout_s=float("nan"))


# ------------------------------------------------------------------ drain, startup, exits


def test_drain_verdict() -> None:
    assert drain_verdict(3, 0.0, 10.0, 30.0) is DrainVerdict.WAIT
    assert drain_verdict(0, 0.0, 10.0, 30.0) is DrainVerdict.DONE
    assert drain_verdict(3, 0.0, 30.0, 30.0) is DrainVerdict.TIMED_OUT
    assert drain_verdict(None, 0.0, 29.0, 30.0) is DrainVerdict.WAIT  # unknown: wait
    assert drain_verdict(None, 0.0, 31.0, 30.0) is DrainVerdict.TIMED_OUT


def test_startup_budget() -> None:
    policy = LifecyclePolicy()
    assert startup_budget_s([], policy) == 600.0
    assert startup_budget_s([80.0, 90.0], policy) == 600.0  # fewer than 3 recorded
    # p99 nearest-rank of 3 samples = the slowest (90); 1.5 × 90 = 135.
    assert startup_budget_s([80.0, 90.0, 85.0], policy) == pytest.approx(135.0)
    # Fast sim workers: 1.5 × 2 = 3 s, floored at 30 s.
    assert startup_budget_s([1.0, 2.0, 1.5], policy) == 30.0


def test_classify_exit() -> None:
    policy = LifecyclePolicy()
    assert classify_exit(2, during_start=True, hint=None, policy=policy) is ExitClass.CONFIG_ERROR
    assert classify_exit(2, during_start=False, hint=None, policy=policy) is ExitClass.CRASH
    assert classify_exit(137, during_start=True, hint=None, policy=policy) is ExitClass.CRASH
    assert classify_exit(1, during_start=True, hint="CUDA out of memory at start",
                         policy=policy) is ExitClass.CONFIG_ERROR
    assert classify_exit(None, during_start=True, hint=None, policy=policy) is ExitClass.CRASH


def test_retune_verdict() -> None:
    kw = {"started_at": 0.0, "budget_s": 100.0}
    assert retune_verdict(ready=True, start_failed=False, now=50.0, **kw) is RetuneVerdict.KEEP
    assert retune_verdict(ready=False, start_failed=False, now=50.0, **kw) is RetuneVerdict.WAIT
    assert retune_verdict(ready=False, start_failed=True, now=5.0, **kw) is RetuneVerdict.ROLL_BACK
    assert retune_verdict(ready=False, start_failed=False, now=100.5, **kw) is RetuneVerdict.ROLL_BACK


# ------------------------------------------------------------------ rollout


def _ready(*names: str) -> dict[str, S]:
    return {n: S.READY for n in names}


def test_rollout_one_at_a_time_in_order() -> None:
    states = _ready("w1", "w2", "w3")
    assert next_rollout_step(states, []) == "w1"
    states["w1"] = S.DRAINING
    assert next_rollout_step(states, ["w1"]) == Blocked("waiting for w1 to become ready (draining)")
    states["w1"] = S.STARTING
    assert next_rollout_step(states, ["w1"]) == Blocked("waiting for w1 to become ready (starting)")
    states["w1"] = S.DEGRADED  # routed counts as ready
    assert next_rollout_step(states, ["w1"]) == "w2"
    assert next_rollout_step(states, ["w1", "w2"]) == "w3"
    assert next_rollout_step(states, ["w1", "w2", "w3"]) is None


def test_rollout_never_below_n_minus_one_ready() -> None:
    """Drive a whole rollout phase by phase; capacity is checked after every change."""
    names = ["w1", "w2", "w3", "w4"]
    states = _ready(*names)
    started: list[str] = []
    min_ready = len(names)
    for _ in range(40):  # bounded
        step = next_rollout_step(states, started)
        if step is None:
            break
        if isinstance(step, str):
            started.append(step)
            states[step] = S.DRAINING
        else:
            for n in started:  # whatever is in progress advances one phase
                if states[n] is S.DRAINING:
                    states[n] = S.STARTING
                elif states[n] is S.STARTING:
                    states[n] = S.READY
        min_ready = min(min_ready, sum(s is S.READY for s in states.values()))
    assert started == names
    assert min_ready == len(names) - 1


def test_rollout_with_random_outside_faults_never_takes_a_second_worker_out() -> None:
    """Workers fall over and recover on their own while the rollout runs (seeded). The
    rollout only ever takes a routed worker out when all the others are routed."""
    import random

    rng = random.Random(7)
    names = [f"w{i}" for i in range(5)]
    states = _ready(*names)
    started: list[str] = []
    taken_routed = 0
    for _ in range(500):  # bounded
        for n in names:  # outside events
            if states[n] is S.READY and rng.random() < 0.05:
                states[n] = rng.choice([S.EJECTED, S.BACKOFF])
            elif states[n] in (S.EJECTED, S.BACKOFF) and rng.random() < 0.3:
                states[n] = S.READY
        step = next_rollout_step(states, started)
        if step is None:
            break
        if isinstance(step, str):
            if states[step] is S.READY:
                taken_routed += 1
                others = [states[n] for n in names if n != step]
                assert all(s is S.READY for s in others), states
            started.append(step)
            states[step] = S.STARTING
        else:
            assert isinstance(step, Blocked)
            for n in started:
                if states[n] is S.STARTING and rng.random() < 0.5:
                    states[n] = S.READY
    assert sorted(started) == names
    assert taken_routed >= 1


def test_rollout_takes_a_worker_that_is_down_first() -> None:
    states = _ready("w1", "w2", "w3")
    states["w3"] = S.EJECTED
    assert next_rollout_step(states, []) == "w3"  # costs no capacity


def test_rollout_waits_for_a_restarted_worker_that_fell_over_again() -> None:
    states = _ready("w1", "w2", "w3")
    states["w1"] = S.BACKOFF  # restarted earlier, crashed since
    assert next_rollout_step(states, ["w1"]) == Blocked("waiting for w1 to become ready (backoff)")


def test_rollout_soak() -> None:
    states = _ready("w1", "w2")
    step = next_rollout_step(states, ["w1"], ready_since={"w1": 100.0}, now=105.0, soak_s=10.0)
    assert step == Blocked("w1 soaking: ready 5 s of 10 s")
    step = next_rollout_step(states, ["w1"], ready_since={"w1": 100.0}, now=110.0, soak_s=10.0)
    assert step == "w2"
    with pytest.raises(ValueError):
        next_rollout_step(states, [], soak_s=10.0)


def test_rollout_aborts_on_failed_restart() -> None:
    states = _ready("w1", "w2", "w3")
    step = next_rollout_step(states, ["w1"], failed={"w1"})
    assert isinstance(step, Aborted) and "w1" in step.reason
    states["w2"] = S.FAILED
    step = next_rollout_step(states, ["w2"])
    assert isinstance(step, Aborted) and "w2" in step.reason


def test_rollout_ignores_removed_workers_and_single_worker() -> None:
    assert next_rollout_step({"w1": S.READY}, ["gone"]) == "w1"
    assert next_rollout_step({"w1": S.READY}, ["w1"]) is None
