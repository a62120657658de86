"""The alert rules a fleet runs: the built-in ones plus the config file's ``[[alerts]]``.

The config's rules are threshold rules over named metrics (`config.ALERT_METRICS`);
here they become `alerts.AlertRule`s reading `WorkerFacts`. They replace the built-in
threshold rules of the same meaning (the seed rule, the leak rule) so that one
condition is never reported twice; the structural rules (down, failed, crash loop,
no data, unstable embeddings, stale metrics) always run.
"""

from __future__ import annotations

import operator
from collections.abc import Callable

from console.alerts import (
    AlertRule,
    AlertSettings,
    Remediation,
    WorkerFacts,
    default_rules,
)
from console.config import AlertCondition, FleetConfig
from console.model import Severity

REPLACED_BUILTINS = frozenset({"gpu_mem_high_and_slow", "memory_leak"})
"""Built-in rules the config's own threshold rules take over."""

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}

def _num(value: float | None) -> float | None:
    return None if value is None else float(value)


_FACT: dict[str, Callable[[WorkerFacts], float | None]] = {
    "gpu_memory_pct": lambda f: f.gpu_mem_pct,
    "gpu_util_pct": lambda f: f.gpu_util_pct,
    "gpu_temperature_c": lambda f: f.gpu_temperature_c,
    "p50_latency_s": lambda f: f.p50_s,
    "p95_latency_s": lambda f: f.p95_s,
    "p99_latency_s": lambda f: f.p99_s,
    "error_rate": lambda f: f.error_rate,
    "queue_depth": lambda f: _num(f.queue_depth),
    "running_requests": lambda f: _num(f.running_requests),
    "memory_time_to_full_h": lambda f: None if f.memory_ttf_s is None else f.memory_ttf_s / 3600.0,
    "restarts": lambda f: _num(f.failures_in_window),
    "probe_failures": lambda f: _num(f.probe_failures),
}
"""Metric name → how to read it from the facts (None: no data, never "false").
Covers every name of `console.config.ALERT_METRICS`."""

_REMEDIATION: dict[str, Remediation | None] = {
    "none": None, "restart": Remediation.DRAIN_RESTART, "drain": Remediation.DRAIN}
"""Config ``remediation`` → what the supervisor does: ``drain`` only drains (the worker
stays alive, out of the balancer, for a human); ``restart`` drains and restarts."""


def _condition(when: tuple[AlertCondition, ...]) -> Callable[[WorkerFacts], bool | None]:
    def cond(f: WorkerFacts) -> bool | None:
        for c in when:
            read = _FACT.get(c.metric)
            value = read(f) if read else None
            if value is None:
                return None
            if not _OPS[c.op](value, c.value):
                return False
        return True
    return cond


def _summary(name: str, text: str, when: tuple[AlertCondition, ...]) -> Callable[[WorkerFacts], str]:
    def one(c: AlertCondition, f: WorkerFacts) -> str:
        out = f"{c.metric} {(_FACT[c.metric](f) or 0):.3g} {c.op} {c.value:g}"
        if c.metric == "memory_time_to_full_h" and f.leaking_memory:
            out += f" ({f.leaking_memory})"
        return out

    def summary(f: WorkerFacts) -> str:
        values = ", ".join(one(c, f) for c in when if c.metric in _FACT)
        return f"{f.worker}: {values}" + (f": {text}" if text else "")
    return summary


def rules_from_config(cfg: FleetConfig) -> list[AlertRule]:
    """Built-in structural rules + the config's threshold rules."""
    restart_on = {r.name for r in cfg.alerts if r.auto_remediate and r.remediation != "none"}
    rules = [r for r in default_rules(AlertSettings(
        crash_loop_failures=cfg.restart.crash_loop_failures, cosine_min=cfg.probe.min_cosine))
        if r.name not in REPLACED_BUILTINS]
    taken = {r.name for r in rules}
    for r in cfg.alerts:
        if r.name in taken:
            continue
        rules.append(AlertRule(
            name=r.name, condition=_condition(r.when), summary=_summary(r.name, r.summary, r.when),
            for_s=r.for_s, keep_firing_for_s=min(60.0, r.for_s),
            severity=Severity(r.severity),
            remediation=_REMEDIATION[r.remediation],
            auto_remediate=r.name in restart_on))
    return rules


__all__ = ["rules_from_config"]
