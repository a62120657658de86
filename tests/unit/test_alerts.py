"""Alert engine under a fake clock: Prometheus pending/firing/resolved semantics, missing
ticks, hysteresis, per-worker labels, built-in rules, silences, auto-remediation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from console.alerts import (
    AlertEngine,
    AlertRule,
    AlertSettings,
    AlertTransition,
    Remediation,
    WorkerFacts,
    alert_key,
    default_rules,
)
from console.lifecycle import WorkerLifecycle
from console.model import AlertState as A
from console.model import WorkerState as S

TICK = 15.0
SEED = "gpu_mem_high_and_slow"


def hot(worker: str = "w1", gpu: int | None = 0, **kw: Any) -> WorkerFacts:
    """Facts that make the seed rule true (GPU memory 95 %, P95 1.5 s)."""
    base = WorkerFacts(worker=worker, gpu=gpu, state=S.READY, down=False, gpu_mem_pct=95.0,
                       p95_s=1.5, failures_in_window=0, cosine=1.0, stale_metrics=False)
    return replace(base, **kw)


def calm(worker: str = "w1", **kw: Any) -> WorkerFacts:
    return hot(worker, gpu_mem_pct=50.0, p95_s=0.05, **kw)


def only(transitions: list[AlertTransition], rule: str) -> list[tuple[A, A, float]]:
    return [(t.source, t.target, t.at) for t in transitions if t.alert.rule == rule]


def run(engine: AlertEngine, start: float, end: float,
        facts: Callable[[float], list[WorkerFacts]], rule: str = SEED
        ) -> list[tuple[A, A, float]]:
    """Evaluate every TICK from `start` to `end` inclusive; `facts(t)` gives the facts."""
    out: list[tuple[A, A, float]] = []
    t = start
    while t <= end + 1e-9:
        out += only(engine.evaluate(t, facts(t)), rule)
        t += TICK
    return out


# ------------------------------------------------------------------ pending → firing


def test_seed_rule_fires_after_five_minutes_true_at_every_tick() -> None:
    engine = AlertEngine()
    seen = run(engine, 0.0, 285.0, lambda t: [hot()])
    assert seen == [(A.INACTIVE, A.PENDING, 0.0)]
    assert engine.get(alert_key(SEED, "w1"), 285.0).state is A.PENDING  # type: ignore[union-attr]
    seen = run(engine, 300.0, 600.0, lambda t: [hot()])
    assert seen == [(A.PENDING, A.FIRING, 300.0)]  # once: no repeats while firing
    alert = engine.firing(600.0)[0]
    assert alert.active_at == 0.0 and alert.fired_at == 300.0 and alert.gpu == 0
    assert "95.0 % > 92 %" in alert.summary and "P95 1.500 s > 1.2 s" in alert.summary


def test_one_missing_tick_resets_pending() -> None:
    engine = AlertEngine()
    run(engine, 0.0, 150.0, lambda t: [hot()])
    # At 165 the GPU reading is missing: no data → the pending alert is deleted.
    seen = only(engine.evaluate(165.0, [hot(gpu_mem_pct=None)]), SEED)
    assert seen == [(A.PENDING, A.INACTIVE, 165.0)]
    # True again from 180: a new pending period starts there and fires at 480, not 300.
    seen = run(engine, 180.0, 465.0, lambda t: [hot()])
    assert seen == [(A.INACTIVE, A.PENDING, 180.0)]
    assert only(engine.evaluate(480.0, [hot()]), SEED) == [(A.PENDING, A.FIRING, 480.0)]


def test_one_false_tick_resets_pending() -> None:
    engine = AlertEngine()
    run(engine, 0.0, 285.0, lambda t: [hot()])
    assert only(engine.evaluate(300.0, [hot(p95_s=1.1)]), SEED) == [(A.PENDING, A.INACTIVE, 300.0)]
    assert only(engine.evaluate(315.0, [hot()]), SEED) == [(A.INACTIVE, A.PENDING, 315.0)]


def test_worker_absent_from_facts_counts_as_no_data() -> None:
    engine = AlertEngine()
    engine.evaluate(0.0, [hot()])
    assert only(engine.evaluate(15.0, []), SEED) == [(A.PENDING, A.INACTIVE, 15.0)]
    assert engine.alerts(15.0) == []


def test_skipped_evaluations_are_not_missing_ticks() -> None:
    # Prometheus semantics: only evaluations count. True at 0 and true again at 301
    # (no evaluation in between) → fires at 301.
    engine = AlertEngine()
    engine.evaluate(0.0, [hot()])
    assert only(engine.evaluate(301.0, [hot()]), SEED) == [(A.PENDING, A.FIRING, 301.0)]


def test_compound_rule_needs_both_halves() -> None:
    engine = AlertEngine()
    assert run(engine, 0.0, 600.0, lambda t: [hot(p95_s=0.5)]) == []  # memory only
    assert run(engine, 615.0, 1200.0, lambda t: [hot(gpu_mem_pct=80.0)]) == []  # latency only
    assert run(engine, 1215.0, 1215.0, lambda t: [hot(gpu_mem_pct=92.0)]) == []  # not > 92


def test_per_worker_instances_joined_to_their_gpu() -> None:
    """Two workers share GPU 0 (95 % used); only the slow one alerts."""
    engine = AlertEngine()
    facts = [hot("a", gpu=0), hot("b", gpu=0, p95_s=0.2), calm("c", gpu=1)]
    for t in range(0, 301, 15):
        engine.evaluate(float(t), facts)
    firing = engine.firing(300.0)
    assert [(a.worker, a.rule) for a in firing] == [("a", SEED)]
    assert firing[0].key == "gpu_mem_high_and_slow[a]"


# ------------------------------------------------------------------ resolve and hysteresis


def _firing_engine(keep: float) -> AlertEngine:
    rule = AlertRule(name="r", condition=lambda f: f.p95_s is not None and f.p95_s > 1.0,
                     summary=lambda f: "slow", for_s=30.0, keep_firing_for_s=keep)
    engine = AlertEngine([rule])
    for t in (0.0, 15.0, 30.0):
        engine.evaluate(t, [hot()])
    assert engine.firing(30.0)
    return engine


def test_resolves_at_first_false_tick_without_hysteresis() -> None:
    engine = _firing_engine(keep=0.0)
    seen = only(engine.evaluate(45.0, [calm()]), "r")
    assert seen == [(A.FIRING, A.RESOLVED, 45.0)]
    assert engine.alerts(45.0) == []


def test_keep_firing_for_delays_resolution() -> None:
    engine = _firing_engine(keep=60.0)
    # False from 45: keeps firing while 45 + 60 > now.
    for t in (45.0, 60.0, 75.0, 90.0):
        assert only(engine.evaluate(t, [calm()]), "r") == []
        assert engine.firing(t)
    assert only(engine.evaluate(105.0, [calm()]), "r") == [(A.FIRING, A.RESOLVED, 105.0)]
    resolved = engine.evaluate(120.0, [hot()])  # a new episode starts from scratch
    assert only(resolved, "r") == [(A.INACTIVE, A.PENDING, 120.0)]


def test_true_tick_during_hysteresis_restarts_the_count() -> None:
    engine = _firing_engine(keep=60.0)
    engine.evaluate(45.0, [calm()])
    engine.evaluate(60.0, [calm()])
    assert engine.evaluate(75.0, [hot()]) == []  # still firing, count cancelled
    for t in (90.0, 105.0, 120.0, 135.0):
        assert only(engine.evaluate(t, [calm()]), "r") == []
    assert only(engine.evaluate(150.0, [calm()]), "r") == [(A.FIRING, A.RESOLVED, 150.0)]


def test_resolved_transition_carries_times() -> None:
    engine = _firing_engine(keep=0.0)
    (tr,) = engine.evaluate(45.0, [calm()])
    assert tr.alert.state is A.RESOLVED and tr.alert.resolved_at == 45.0
    assert tr.alert.active_at == 0.0 and tr.alert.fired_at == 30.0


# ------------------------------------------------------------------ built-in rules


def rule_states(engine: AlertEngine, now: float) -> dict[str, A]:
    return {a.rule: a.state for a in engine.alerts(now)}


def test_worker_down_after_a_minute() -> None:
    engine = AlertEngine()
    seen = run(engine, 0.0, 60.0, lambda t: [calm(down=True, state=S.BACKOFF)], "worker_down")
    assert seen == [(A.INACTIVE, A.PENDING, 0.0), (A.PENDING, A.FIRING, 60.0)]
    assert "down (backoff)" in engine.firing(60.0)[0].summary
    assert run(engine, 75.0, 75.0, lambda t: [calm(down=False)], "worker_down") == [
        (A.FIRING, A.RESOLVED, 75.0)]


def test_worker_failed_fires_at_once_with_reason() -> None:
    engine = AlertEngine()
    tr = engine.evaluate(0.0, [calm(state=S.FAILED, failed_reason="model path missing: /m")])
    firing = [t for t in tr if t.alert.rule == "worker_failed"]
    assert firing and firing[0].target is A.FIRING
    assert "model path missing: /m" in firing[0].alert.summary


def test_crash_loop_rule_from_lifecycle_failures() -> None:
    """5 failures within 10 min → fires at the 5th; 5 spread over 11 min → never."""

    def failures(times: list[float]) -> list[tuple[float, int]]:
        """Crash a ready worker at each time; it restarts (with backoff) and is ready again."""
        lc = WorkerLifecycle("w1", now=0.0)
        lc.start(0.0)
        lc.observe_probe(0.5, True)
        counts = []
        for t in times:
            lc.observe_exit(t, 137)
            started = t
            if lc.state is S.BACKOFF:
                started = lc.next_start_at  # type: ignore[assignment]
                assert lc.tick(started).state is S.STARTING
            assert lc.observe_probe(started + 0.5, True).state is S.READY
            counts.append((t, lc.status(t).failures_in_window))
        return counts

    engine = AlertEngine()
    fired_at = []
    for t, n in failures([60.0, 120.0, 180.0, 240.0, 300.0]):
        for tr in engine.evaluate(t, [calm(failures_in_window=n)]):
            if tr.alert.rule == "crash_loop" and tr.target is A.FIRING:
                fired_at.append(t)
    assert fired_at == [300.0]

    engine = AlertEngine()
    fired = []
    for t, n in failures([60.0, 225.0, 390.0, 555.0, 720.0]):  # 11 min first to last
        fired += [tr for tr in engine.evaluate(t, [calm(failures_in_window=n)])
                  if tr.alert.rule == "crash_loop"]
    assert fired == []


def test_no_data_alert_after_two_ticks() -> None:
    engine = AlertEngine()
    seen = run(engine, 0.0, 15.0, lambda t: [calm(missing=("gpu",))], "no_data")
    assert seen == [(A.INACTIVE, A.PENDING, 0.0), (A.PENDING, A.FIRING, 15.0)]
    assert engine.firing(15.0)[0].summary == "w1: no data from gpu"
    # Meanwhile the GPU-dependent seed rule had no data: it never went pending.
    assert SEED not in rule_states(engine, 15.0)


def test_memory_leak_rule() -> None:
    engine = AlertEngine()
    facts = calm(leak_ttf_s=5 * 3600.0, leak_slope_mib_per_h=1800.0)
    seen = run(engine, 0.0, 60.0, lambda t: [facts], "memory_leak")
    assert seen == [(A.INACTIVE, A.PENDING, 0.0), (A.PENDING, A.FIRING, 60.0)]
    assert engine.firing(60.0)[0].summary == "w1: GPU memory growing (+1800 MiB/h): GPU 0 full in ~5.0 h"
    assert run(AlertEngine(), 0.0, 600.0, lambda t: [calm(leak_ttf_s=7 * 3600.0)],
               "memory_leak") == []
    assert run(AlertEngine(), 0.0, 600.0, lambda t: [calm(leak_ttf_s=None)], "memory_leak") == []


def test_unstable_embeddings_is_a_config_alert_never_a_restart() -> None:
    engine = AlertEngine(settings=AlertSettings(auto_remediate=frozenset({"unstable_embeddings"})))
    (tr,) = [t for t in engine.evaluate(0.0, [calm(cosine=0.856)])
             if t.alert.rule == "unstable_embeddings"]
    assert tr.target is A.FIRING
    assert "--disable-radix-cache" in tr.alert.summary and "0.856" in tr.alert.summary
    assert tr.remediation is None  # the rule has no remediation: never restarts
    engine2 = AlertEngine()
    (tr2,) = [t for t in engine2.evaluate(0.0, [calm(cosine=0.9, radix_cache_disabled=True)])
              if t.alert.rule == "unstable_embeddings"]
    assert "already disabled" in tr2.alert.summary
    assert [t for t in AlertEngine().evaluate(0.0, [calm(cosine=0.995)])] == []


def test_stale_metrics_rule() -> None:
    engine = AlertEngine()
    (tr,) = engine.evaluate(0.0, [calm(stale_metrics=True)])
    assert tr.alert.rule == "stale_metrics" and tr.target is A.FIRING


def test_calm_worker_raises_nothing() -> None:
    engine = AlertEngine()
    assert run(engine, 0.0, 3600.0, lambda t: [calm()], "any") == []
    assert engine.alerts(3600.0) == []


# ------------------------------------------------------------------ silences


def test_silence_suppresses_notification_but_keeps_state() -> None:
    engine = AlertEngine(settings=AlertSettings(auto_remediate=frozenset({SEED})))
    engine.silence(alert_key(SEED, "w1"), until=400.0)
    transitions = []
    for t in range(0, 451, 15):
        transitions += [tr for tr in engine.evaluate(float(t), [hot()]) if tr.alert.rule == SEED]
    pending, firing = transitions
    assert pending.silenced and firing.silenced
    assert firing.target is A.FIRING and firing.at == 300.0
    assert firing.remediation is None  # silenced: no automatic action
    # State is kept: once the silence ends, the alert is visibly firing (no new transition).
    alert = engine.get(alert_key(SEED, "w1"), 450.0)
    assert alert is not None and alert.state is A.FIRING and not alert.silenced(450.0)
    assert engine.silences(450.0) == {}


def test_silence_whole_rule_and_unsilence() -> None:
    engine = AlertEngine()
    engine.silence(SEED, until=1000.0)
    for t in range(0, 301, 15):
        engine.evaluate(float(t), [hot("a"), hot("b")])
    assert all(a.silenced(300.0) for a in engine.firing(300.0))
    engine.unsilence(SEED)
    assert not any(a.silenced(300.0) for a in engine.firing(300.0))
    engine.unsilence("nothing")  # no error


def test_silence_of_another_worker_does_not_apply() -> None:
    engine = AlertEngine()
    engine.silence(alert_key(SEED, "b"), until=1000.0)
    (tr,) = [t for t in engine.evaluate(0.0, [hot("a")]) if t.alert.rule == SEED]
    assert not tr.silenced


# ------------------------------------------------------------------ auto-remediation


def test_auto_remediation_off_by_default() -> None:
    engine = AlertEngine()
    for t in range(0, 301, 15):
        for tr in engine.evaluate(float(t), [hot()]):
            assert tr.remediation is None
    assert all(r.auto_remediate is False for r in default_rules())


def test_auto_remediation_once_per_episode() -> None:
    engine = AlertEngine(settings=AlertSettings(auto_remediate=frozenset({SEED, "worker_down"})))
    remediations = []
    for t in range(0, 1201, 15):
        for tr in engine.evaluate(float(t), [hot()]):
            if tr.remediation is not None:
                remediations.append((tr.at, tr.alert.rule, tr.remediation))
    assert remediations == [(300.0, SEED, Remediation.DRAIN_RESTART)]
    # worker_down has no remediation, so asking for it changes nothing.
    rules = {r.name: r for r in default_rules(AlertSettings(auto_remediate=frozenset({"worker_down"})))}
    assert rules["worker_down"].auto_remediate is False


# ------------------------------------------------------------------ engine


def test_duplicate_rule_names_rejected() -> None:
    rule = default_rules()[0]
    with pytest.raises(ValueError, match="duplicate"):
        AlertEngine([rule, rule])


def test_facts_as_mapping_and_ordering_of_alerts() -> None:
    engine = AlertEngine()
    engine.evaluate(0.0, {"a": hot("a", stale_metrics=True), "b": hot("b")})
    states = [(a.key, a.state) for a in engine.alerts(0.0)]
    # Firing first, then pending; each sorted by key.
    assert states == [("stale_metrics[a]", A.FIRING),
                      ("gpu_mem_high_and_slow[a]", A.PENDING),
                      ("gpu_mem_high_and_slow[b]", A.PENDING)]
