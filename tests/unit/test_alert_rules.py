"""The fleet's alert rules from its config (`console.alert_rules`), the exporter's cumulative
histogram, and the [exporter] / trend-scale settings. Pure, fake clock."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from console.alert_rules import rules_from_config
from console.alerts import AlertEngine, Remediation, WorkerFacts
from console.config import ConfigError, load_config
from console.model import AlertState as A
from console.model import WorkerState as S
from console.stats import CumulativeHistogram, histogram_quantile
from tests.conftest import MINIMAL_SIM_FLEET

BASE = MINIMAL_SIM_FLEET


def cfg_of(tmp_path: Path, extra: str = "", base: str = BASE) -> Any:
    path = tmp_path / "fleet.toml"
    path.write_text(base + extra)
    return load_config(path, environ={"HOME": str(tmp_path)})


def facts(**kw: Any) -> WorkerFacts:
    base = WorkerFacts(worker="a", gpu=0, state=S.READY, down=False, gpu_mem_pct=95.0, p95_s=1.5,
                       failures_in_window=0, cosine=1.0, stale_metrics=False)
    return replace(base, **kw)


def fired(engine: AlertEngine, t: float, f: WorkerFacts, rule: str) -> list[tuple[A, A]]:
    return [(tr.source, tr.target) for tr in engine.evaluate(t, [f]) if tr.alert.rule == rule]


def test_seed_rules_from_the_default_config(tmp_path: Path) -> None:
    rules = {r.name: r for r in rules_from_config(cfg_of(tmp_path))}
    # the config's seed rules replace the built-in threshold rules of the same meaning
    assert "memory_leak" not in rules and "gpu_memory_leak" in rules
    seed = rules["gpu_mem_high_and_slow"]
    assert (seed.for_s, seed.keep_firing_for_s) == (300.0, 60.0)
    assert seed.remediation is Remediation.DRAIN_RESTART and not seed.auto_remediate
    for structural in ("worker_down", "crash_loop", "no_data", "unstable_embeddings",
                       "stale_metrics"):
        assert structural in rules
    engine = AlertEngine(list(rules.values()))
    # both halves needed; a missing value is "no data", never true
    assert seed.condition(facts()) is True
    assert seed.condition(facts(p95_s=1.1)) is False
    assert seed.condition(facts(gpu_mem_pct=92.0)) is False  # strictly above 92 %
    assert seed.condition(facts(p95_s=None)) is None
    # pending at 0; a missing tick at 150 resets it; fires 300 s after the new start
    assert fired(engine, 0.0, facts(), seed.name) == [(A.INACTIVE, A.PENDING)]
    assert fired(engine, 150.0, facts(p95_s=None), seed.name) == [(A.PENDING, A.INACTIVE)]
    for t in range(165, 465, 15):
        assert fired(engine, float(t), facts(), seed.name) == ([(A.INACTIVE, A.PENDING)]
                                                               if t == 165 else []), t
    assert fired(engine, 465.0, facts(), seed.name) == [(A.PENDING, A.FIRING)]
    # resolve hysteresis: 60 s of calm before it resolves
    calm = facts(gpu_mem_pct=50.0)
    assert fired(engine, 480.0, calm, seed.name) == []
    assert fired(engine, 525.0, calm, seed.name) == []
    assert fired(engine, 540.0, calm, seed.name) == [(A.FIRING, A.RESOLVED)]


def test_leak_rule_threshold_in_hours_and_auto_remediation(tmp_path: Path) -> None:
    extra = """
[[alerts]]
name = "leak"
when = [{ metric = "memory_time_to_full_h", op = "<", value = 6 }]
for = "30s"
auto_remediate = true
remediation = "restart"
"""
    rules = {r.name: r for r in rules_from_config(cfg_of(tmp_path, extra))}
    leak = rules["leak"]
    assert "gpu_mem_high_and_slow" not in rules  # the file's list replaces the seeds
    assert leak.condition(facts(leak_ttf_s=5.9 * 3600)) is True
    assert leak.condition(facts(leak_ttf_s=6.1 * 3600)) is False
    assert leak.condition(facts(leak_ttf_s=None)) is None  # no trend: no data, not "false"
    engine = AlertEngine(list(rules.values()))
    f = facts(leak_ttf_s=3600.0)
    assert engine.evaluate(0.0, [f])[0].remediation is None  # pending: nothing yet
    out = [tr for tr in engine.evaluate(30.0, [f]) if tr.alert.rule == "leak"]
    assert out[0].target is A.FIRING and out[0].remediation is Remediation.DRAIN_RESTART
    assert engine.evaluate(45.0, [f]) == []  # once per episode


def test_cumulative_histogram_matches_hand_computed_buckets() -> None:
    h = CumulativeHistogram([0.01, 0.005, 0.1, 1.2])
    for v in (0.004, 0.005, 0.007, 0.05, 1.2, 3.0):
        h.observe(v)
    # le is inclusive: 0.005 counts in le=0.005, 1.2 in le=1.2
    assert h.buckets() == [(0.005, 2.0), (0.01, 3.0), (0.1, 4.0), (1.2, 5.0), (math.inf, 6.0)]
    assert h.count == 6 and h.sum == pytest.approx(4.266)
    assert histogram_quantile(0.5, h.buckets()) == pytest.approx(0.01)
    with pytest.raises(ValueError):
        CumulativeHistogram([0.1, 0.1])


def test_exporter_and_trend_scale_settings(tmp_path: Path) -> None:
    cfg = cfg_of(tmp_path)
    assert cfg.exporter.port is None and cfg.exporter.host == "127.0.0.1"  # off by default
    assert cfg.metrics.trend_time_scale == 1.0
    cfg = cfg_of(tmp_path, "\n[exporter]\nport = 29100\n\n[metrics]\ntrend_time_scale = 120\n")
    assert cfg.exporter.port == 29100 and cfg.metrics.trend_time_scale == 120
    with pytest.raises(ConfigError) as err:
        cfg_of(tmp_path, "\n[exporter]\nport = 31001\n")
    assert [(p.path, "already used" in p.reason) for p in err.value.problems] == [
        ("workers[0].port", True)]
    real = BASE.replace('engine = "sim"', 'engine = "sglang"')
    with pytest.raises(ConfigError) as err:
        cfg_of(tmp_path, "\n[metrics]\ntrend_time_scale = 60\n", base=real)
    assert "metrics.trend_time_scale" in {p.path for p in err.value.problems}
