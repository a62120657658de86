"""Every alert metric a fleet file accepts is fed from what the supervisor folds into a
`WorkerRuntime` (fake clock, real `/metrics` text through the real parser), and a metric
without data is "no data" (None), never a false OK. Also: ``remediation = "drain"`` vs
``"restart"``, and the host-RSS leak trend of a worker's process group."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psutil
import pytest

from backends.procs import ProcessIdentity
from backends.promtext import MetricsSnapshot, parse_metrics
from backends.sglang_client import ProbeResult
from console import hostmem
from console.alert_rules import _FACT, rules_from_config
from console.alerts import (
    AlertEngine,
    AlertRule,
    Remediation,
    WorkerFacts,
    default_rules,
)
from console.config import ALERT_METRICS, load_config
from console.lifecycle import WorkerLifecycle
from console.model import AlertState as A
from console.model import WorkerSpec
from console.model import WorkerState as S
from console.runtime import WorkerRuntime

STALE = 10.0
GIB = 1024.0

BASE = """\
name = "t"
engine = "sim"

[model]
path = "m"

[defaults]
mem_fraction_static = 0.4

[[workers]]
name = "w1"
gpu = 0
port = 31001
"""


def rule(tmp_path: Path, metric: str, op: str, value: float, *, for_s: str = "30s",
         remediation: str = "none", auto: bool = False) -> AlertRule:
    """The one config rule ``r`` on `metric` (via the real config loader)."""
    extra = f"""
[[alerts]]
name = "r"
when = [{{ metric = "{metric}", op = "{op}", value = {value} }}]
for = "{for_s}"
remediation = "{remediation}"
auto_remediate = {str(auto).lower()}
"""
    path = tmp_path / "fleet.toml"
    path.write_text(BASE + extra)
    cfg = load_config(path, environ={"HOME": str(tmp_path)})
    return next(r for r in rules_from_config(cfg) if r.name == "r")


def runtime(state: S = S.STARTING) -> WorkerRuntime:
    """A worker whose process is up (STARTING is probed), pid 4242 generation."""
    w = WorkerRuntime(spec=WorkerSpec(name="w1", port=31001, model_path="m", gpu=0),
                      lifecycle=WorkerLifecycle("w1", initial=state))
    w.identity = ProcessIdentity(pid=4242, create_time=1.0, cmdline_hash="x")
    return w


def ready_runtime() -> WorkerRuntime:
    """A worker whose probes passed: READY."""
    w = runtime()
    for _ in range(5):
        w.lifecycle.observe_probe(0.0, True, latency_s=0.01)
    assert w.state is S.READY
    return w


def scrape(*, ok: float = 0, err: float = 0, health_503: float = 0, queued: float | None = None,
           running: float | None = None, buckets: Mapping[str, float] | None = None,
           http: bool = True) -> MetricsSnapshot:
    """A `/metrics` body in SGLang's shape, parsed by the real parser."""
    lines: list[str] = []
    if http:
        name = "sglang:http_responses_total"
        lines += [
            f"# TYPE {name} counter",
            f'{name}{{endpoint="/v1/embeddings",method="POST",status_code="200"}} {ok}',
            f'{name}{{endpoint="/v1/embeddings",method="POST",status_code="500"}} {err}',
            f'{name}{{endpoint="/health",method="GET",status_code="503"}} {health_503}',
            f'{name}{{endpoint="/metrics",method="GET",status_code="200"}} 1000',
        ]
    if queued is not None:
        lines += ["# TYPE sglang:num_queue_reqs gauge", f'sglang:num_queue_reqs{{tp_rank="0"}} {queued}']
    if running is not None:
        lines += ["# TYPE sglang:num_running_reqs gauge",
                  f'sglang:num_running_reqs{{tp_rank="0"}} {running}']
    if buckets is not None:
        lines.append("# TYPE sglang:e2e_request_latency_seconds histogram")
        for le, count in buckets.items():
            lines.append(f'sglang:e2e_request_latency_seconds_bucket{{le="{le}"}} {count}')
        lines += [f"sglang:e2e_request_latency_seconds_sum {0.0}",
                  f"sglang:e2e_request_latency_seconds_count {buckets['+Inf']}"]
    return parse_metrics("\n".join(lines) + "\n")


def probe(ok: bool, latency_s: float = 0.01) -> ProbeResult:
    return ProbeResult(ok=ok, status=200 if ok else 500, latency_s=latency_s, dim=4, finite=True,
                       vector=(1.0, 0.0, 0.0, 0.0) if ok else None,
                       error=None if ok else "HTTP 500")


def states(engine: AlertEngine, t: float, f: WorkerFacts, name: str = "r") -> list[tuple[A, A]]:
    return [(tr.source, tr.target) for tr in engine.evaluate(t, [f]) if tr.alert.rule == name]


# ------------------------------------------------------------------ coverage


def test_every_config_metric_is_fed_and_none_means_no_data(tmp_path: Path) -> None:
    assert set(_FACT) == set(ALERT_METRICS)
    empty = WorkerFacts(worker="w1")
    for metric in ALERT_METRICS:
        r = rule(tmp_path, metric, ">", 1.2)  # (latency thresholds need a bucket edge)
        assert _FACT[metric](empty) is None, metric
        assert r.condition(empty) is None, metric  # no data, not "false"
    # a worker whose process is down has no fresh data for any of them
    w = runtime(S.STOPPED)
    w.fold_metrics(0.0, scrape(ok=1, queued=3, running=1))
    w.fold_probe(0.0, probe(False))
    f = w.facts(1.0, stale_after_s=STALE)
    assert (f.queue_depth, f.running_requests, f.error_rate, f.probe_failures) == (None,) * 4


# ------------------------------------------------------------------ error rate


def test_error_rate_is_the_5xx_share_of_request_responses(tmp_path: Path) -> None:
    w = runtime()
    assert w.facts(0.0, stale_after_s=STALE).error_rate is None  # nothing scraped yet
    w.fold_metrics(0.0, scrape(ok=100, err=0, health_503=50))
    assert w.facts(0.0, stale_after_s=STALE).error_rate is None  # one scrape: no window yet
    # 90 OK + 10 errors on /v1/embeddings; /health's 503s (starting) and /metrics do not count
    w.fold_metrics(5.0, scrape(ok=190, err=10, health_503=80))
    assert w.facts(5.0, stale_after_s=STALE).error_rate == pytest.approx(0.1)
    assert w.errors_rate.increase(5.0) == 10
    # no requests in the window (only health checks): no data, not 0 %
    idle = runtime()
    idle.fold_metrics(0.0, scrape(ok=7, err=0, health_503=1))
    idle.fold_metrics(5.0, scrape(ok=7, err=0, health_503=9))
    assert idle.facts(5.0, stale_after_s=STALE).error_rate is None
    # SGLang 0.5.2 has no HTTP counters: no data
    old = runtime()
    old.fold_metrics(0.0, scrape(http=False, queued=0))
    old.fold_metrics(5.0, scrape(http=False, queued=0))
    assert old.facts(5.0, stale_after_s=STALE).error_rate is None

    # the rule: pending, firing after `for`; stale metrics are no data and reset pending
    r = rule(tmp_path, "error_rate", ">", 0.05, for_s="30s")
    engine = AlertEngine([r])
    f = WorkerFacts(worker="w1", error_rate=0.1)
    assert states(engine, 0.0, f) == [(A.INACTIVE, A.PENDING)]
    stale = ready_runtime()
    stale.fold_metrics(0.0, scrape(ok=0))
    stale.fold_metrics(1.0, scrape(ok=10, err=10))
    assert stale.facts(1.0, stale_after_s=STALE).error_rate == pytest.approx(0.5)
    gone = stale.facts(1.0 + STALE + 1, stale_after_s=STALE)
    assert gone.error_rate is None and "metrics" in gone.missing
    assert states(engine, 15.0, gone) == [(A.PENDING, A.INACTIVE)]
    assert states(engine, 20.0, f) == [(A.INACTIVE, A.PENDING)]
    assert states(engine, 45.0, f) == []
    assert states(engine, 50.0, f) == [(A.PENDING, A.FIRING)]
    assert "error_rate 0.1 > 0.05" in engine.firing(50.0)[0].summary


def test_error_rate_counter_reset_in_the_window() -> None:
    w = runtime()
    w.fold_metrics(0.0, scrape(ok=1000, err=0))
    w.fold_metrics(5.0, scrape(ok=1090, err=10))  # +90 ok, +10 err
    # the worker restarted: counters start from zero (a decrease is a reset)
    w.fold_metrics(10.0, scrape(ok=30, err=5))  # +30 ok, +5 err since the reset
    assert w.facts(10.0, stale_after_s=STALE).error_rate == pytest.approx(15 / 135)
    # a new process generation (another pid) is a reset even when every count grew
    w.identity = ProcessIdentity(pid=5151, create_time=2.0, cmdline_hash="y")
    w.fold_metrics(15.0, scrape(ok=100, err=20))  # new process: 100 ok + 20 err so far
    assert w.facts(15.0, stale_after_s=STALE).error_rate == pytest.approx(35 / 255)


# ------------------------------------------------------------------ GPU, queue, latency, probes


def test_gpu_util_and_temperature_from_the_gpu_sample(tmp_path: Path) -> None:
    w = runtime()
    assert w.facts(0.0, stale_after_s=STALE).gpu_util_pct is None
    w.fold_gpu(0.0, 30000, 40000, 81559, util_pct=97.0, temperature_c=71.0)
    f = w.facts(1.0, stale_after_s=STALE)
    assert (f.gpu_util_pct, f.gpu_temperature_c) == (97.0, 71.0)
    assert f.gpu_mem_pct == pytest.approx(100 * 40000 / 81559)
    # a GPU sample that no longer comes (NVML hung) is no data, not the last value
    assert w.facts(0.0 + STALE + 0.5, stale_after_s=STALE).gpu_util_pct is None
    # NVML "N/A" for utilisation
    w.fold_gpu(20.0, 30000, 40000, 81559, util_pct=None, temperature_c=None)
    assert w.facts(20.0, stale_after_s=STALE).gpu_util_pct is None
    r = rule(tmp_path, "gpu_util_pct", ">=", 95, for_s="0s")
    assert r.condition(WorkerFacts(worker="w1", gpu_util_pct=97.0)) is True
    assert r.condition(WorkerFacts(worker="w1", gpu_util_pct=50.0)) is False
    t = rule(tmp_path, "gpu_temperature_c", ">", 85, for_s="0s")
    assert t.condition(f) is False


def test_queue_depth_and_running_requests_from_metrics(tmp_path: Path) -> None:
    w = runtime()
    w.fold_metrics(0.0, scrape(queued=12, running=4))
    f = w.facts(2.0, stale_after_s=STALE)
    assert (f.queue_depth, f.running_requests) == (12, 4)
    assert w.facts(2.0 + STALE, stale_after_s=STALE).queue_depth is None  # stale scrape
    w.fold_metrics(20.0, scrape())  # a scrape without the gauge
    assert w.facts(20.0, stale_after_s=STALE).queue_depth is None
    engine = AlertEngine([rule(tmp_path, "queue_depth", ">", 10, for_s="10s")])
    assert states(engine, 0.0, f) == [(A.INACTIVE, A.PENDING)]
    assert states(engine, 10.0, f) == [(A.PENDING, A.FIRING)]
    calm = WorkerFacts(worker="w1", queue_depth=0)
    assert states(engine, 11.0, calm) == []  # keep firing for min(60 s, for)
    assert states(engine, 21.0, calm) == [(A.FIRING, A.RESOLVED)]


def test_p50_and_p99_from_histogram_deltas_then_probe_samples(tmp_path: Path) -> None:
    w = runtime()
    zero = {"0.01": 0, "0.1": 0, "1.0": 0, "+Inf": 0}
    w.fold_metrics(0.0, scrape(buckets=zero))
    # 100 requests: 80 ≤ 10 ms, 16 in (10, 100] ms, 4 in (0.1, 1] s
    w.fold_metrics(5.0, scrape(buckets={"0.01": 80, "0.1": 96, "1.0": 100, "+Inf": 100}))
    (p50, p95, p99), source = w.quantiles_s(5.0)
    assert source == "histogram" and p50 is not None and p95 is not None
    assert p50 == pytest.approx(0.01 * 50 / 80)
    assert p95 == pytest.approx(0.01 + 0.09 * (95 - 80) / 16)
    assert p99 == pytest.approx(0.1 + 0.9 * (99 - 96) / 4)
    f = w.facts(5.0, stale_after_s=STALE)
    assert (f.p50_s, f.p95_s, f.p99_s) == (p50, p95, p99)
    assert w.percentiles_ms(5.0) == (round(p50 * 1000, 2), round(p95 * 1000, 2), "histogram")
    r = rule(tmp_path, "p99_latency_s", ">", 0.5, for_s="0s")
    assert r.condition(f) is True
    assert rule(tmp_path, "p50_latency_s", ">", 0.5, for_s="0s").condition(f) is False
    # no histogram: the probe's own samples (nearest rank)
    p = runtime()
    assert p.quantiles_s(0.0) == ((None, None, None), "none")
    for i in range(100):
        p.fold_probe(float(i) * 0.1, probe(True, latency_s=(i + 1) / 1000))
    (p50, p95, p99), source = p.quantiles_s(10.0)
    assert source == "probe" and (p50, p95, p99) == (0.05, 0.095, 0.099)


def test_probe_failures_in_a_row(tmp_path: Path) -> None:
    w = runtime()
    assert w.facts(0.0, stale_after_s=STALE).probe_failures is None  # no probe yet
    w.fold_probe(0.0, probe(True))
    assert w.facts(0.0, stale_after_s=STALE).probe_failures == 0
    for i in range(3):
        w.fold_probe(1.0 + i, probe(False))
    assert w.facts(4.0, stale_after_s=STALE).probe_failures == 3
    engine = AlertEngine([rule(tmp_path, "probe_failures", ">=", 3, for_s="0s")])
    assert states(engine, 4.0, w.facts(4.0, stale_after_s=STALE)) == [(A.INACTIVE, A.FIRING)]
    w.fold_probe(5.0, probe(True))
    assert w.facts(5.0, stale_after_s=STALE).probe_failures == 0
    w.fold_probe(6.0, probe(False))
    w.new_generation(7.0)  # a new process: its own count
    assert w.facts(7.0, stale_after_s=STALE).probe_failures is None
    assert w.probe_failures == 4  # the exported total keeps counting


# ------------------------------------------------------------------ remediation


def test_drain_only_drains_restart_drains_and_restarts(tmp_path: Path) -> None:
    drain = rule(tmp_path, "queue_depth", ">", 10, for_s="0s", remediation="drain", auto=True)
    restart = rule(tmp_path, "queue_depth", ">", 10, for_s="0s", remediation="restart",
                   auto=True)
    none = rule(tmp_path, "queue_depth", ">", 10, for_s="0s")
    assert drain.remediation is Remediation.DRAIN and drain.remediation.action == "drain"
    assert restart.remediation is Remediation.DRAIN_RESTART
    assert restart.remediation.action == "restart"
    assert none.remediation is None and not none.auto_remediate
    f = WorkerFacts(worker="w1", queue_depth=50)
    (tr,) = AlertEngine([drain]).evaluate(0.0, [f])
    assert tr.target is A.FIRING and tr.remediation is Remediation.DRAIN
    (tr,) = AlertEngine([restart]).evaluate(0.0, [f])
    assert tr.remediation is Remediation.DRAIN_RESTART
    # suggested only (auto_remediate = false): nothing is carried out
    off = rule(tmp_path, "queue_depth", ">", 10, for_s="0s", remediation="drain")
    (tr,) = AlertEngine([off]).evaluate(0.0, [f])
    assert off.remediation is Remediation.DRAIN and tr.remediation is None


# ------------------------------------------------------------------ host RSS leak


def feed_host(w: WorkerRuntime, rss: Any, *, available_mib: float, start: float = 0.0,
              minutes: int = 60) -> float:
    """One host sample a minute for `minutes`; returns the last time."""
    t = start
    for i in range(minutes + 1):
        t = start + 60.0 * i
        w.fold_host(t, rss(i), available_mib)
    return t


def test_host_rss_trend_steady_leaking_noisy_restarted() -> None:
    # steady: flat RSS (python + model on the host), no leak
    w = runtime()
    t = feed_host(w, lambda i: 2 * GIB, available_mib=10 * GIB)
    assert w.host_leak_figures(t) == (None, None)
    assert w.facts(t, stale_after_s=STALE).host_leak_ttf_s is None
    # leaking 20 MiB/min = 1200 MiB/h with 10 GiB available: full in 10240/1200 h
    w = runtime()
    t = feed_host(w, lambda i: 2 * GIB + 20 * i, available_mib=10 * GIB)
    slope, ttf = w.host_leak_figures(t)
    assert slope == pytest.approx(1200.0)
    assert ttf == pytest.approx(10 * GIB / 1200.0 * 3600.0)
    f = w.facts(t, stale_after_s=STALE)
    assert f.host_leak_ttf_s == ttf and f.leak_ttf_s is None
    assert f.memory_ttf_s == ttf and f.leaking_memory == "host RSS"
    # noisy but flat: ±300 MiB jitter (deterministic) is not a trend
    w = runtime()
    t = feed_host(w, lambda i: 2 * GIB + 300 * math.sin(i * 1.7), available_mib=10 * GIB)
    assert w.host_leak_figures(t) == (None, None)
    # restarted: the new generation starts a new segment (not enough samples yet)
    w = runtime()
    t = feed_host(w, lambda i: 2 * GIB + 20 * i, available_mib=10 * GIB)
    w.new_generation(t + 1)
    t = feed_host(w, lambda i: 2 * GIB + 20 * i, available_mib=10 * GIB, start=t + 60, minutes=10)
    assert w.host_leak_figures(t) == (None, None)
    # growing RSS without an available-memory reading: a slope but no time to full
    w = runtime()
    t = feed_host(w, lambda i: 2 * GIB + 20 * i, available_mib=10 * GIB)
    w.fold_host(t + 60, 2 * GIB + 20 * 61, None)
    slope, ttf = w.host_leak_figures(t + 60)
    assert slope == pytest.approx(1200.0) and ttf is None


def test_host_rss_trend_runs_on_the_compressed_trend_clock() -> None:
    w = runtime()
    w.trend_scale = 120.0  # one real second is two trend minutes
    for i in range(31):  # 30 real s = 1 trend hour; 10 MiB per real s
        w.fold_host(float(i), 2 * GIB + 10.0 * i, 10 * GIB)
    slope, ttf = w.host_leak_figures(30.0)
    assert slope == pytest.approx(10.0 / 120.0 * 3600.0)
    assert ttf == pytest.approx((10 * GIB) / (10.0 / 120.0))


def test_memory_leak_alert_says_which_memory_leaks(tmp_path: Path) -> None:
    leak = next(r for r in default_rules() if r.name == "memory_leak")
    gpu = WorkerFacts(worker="w1", gpu=1, leak_ttf_s=5 * 3600.0, leak_slope_mib_per_h=900.0)
    host = WorkerFacts(worker="w1", gpu=1, host_leak_ttf_s=3 * 3600.0,
                       host_leak_slope_mib_per_h=1200.0)
    both = WorkerFacts(worker="w1", gpu=1, leak_ttf_s=20 * 3600.0, leak_slope_mib_per_h=50.0,
                       host_leak_ttf_s=3 * 3600.0, host_leak_slope_mib_per_h=1200.0)
    assert leak.condition(gpu) is True and leak.condition(host) is True
    assert leak.condition(both) is True  # the sooner one (host, 3 h) is under 6 h
    assert leak.condition(WorkerFacts(worker="w1")) is None
    assert leak.summary(gpu) == "w1: GPU memory growing (+900 MiB/h): GPU 1 full in ~5.0 h"
    assert leak.summary(host) == ("w1: host RSS growing (+1200 MiB/h): host memory used up "
                                  "in ~3.0 h")
    assert leak.summary(both) == ("w1: GPU memory growing (+50 MiB/h): GPU 1 full in ~20.0 h; "
                                  "host RSS growing (+1200 MiB/h): host memory used up in ~3.0 h")
    # the config's threshold rule on memory_time_to_full_h takes the sooner one too
    r = rule(tmp_path, "memory_time_to_full_h", "<", 6, for_s="0s")
    assert r.condition(both) is True
    assert r.summary(both) == "w1: memory_time_to_full_h 3 < 6 (host RSS)"
    assert r.summary(gpu) == "w1: memory_time_to_full_h 5 < 6 (GPU memory)"
    assert r.condition(WorkerFacts(worker="w1", leak_ttf_s=7 * 3600.0)) is False


def test_hostmem_sample_reads_real_processes() -> None:
    me = os.getpid()
    sample = hostmem.sample({"me": [me], "gone": [2 ** 22 + 12345], "none": []})
    assert sample.rss_mib["me"] > 1.0  # this interpreter holds more than a MiB
    assert "gone" not in sample.rss_mib and "none" not in sample.rss_mib  # no data
    assert sample.available_mib is not None and sample.available_mib > 0
    expect = psutil.Process(me).memory_info().rss / hostmem.MIB
    assert sample.rss_mib["me"] == pytest.approx(expect, rel=0.2)
    # the /proc fast path reads what psutil reads
    parent = psutil.Process(me).parent()
    assert parent is not None
    assert hostmem.rss_bytes(parent.pid) == pytest.approx(parent.memory_info().rss, rel=0.05)
    assert hostmem.rss_bytes(2 ** 22 + 12345) is None
    both = hostmem.group_rss_mib([me, parent.pid, 2 ** 22 + 12345])
    assert both == pytest.approx(expect + parent.memory_info().rss / hostmem.MIB, rel=0.2)


def test_no_metrics_while_starting_is_not_missing_data() -> None:
    # /metrics answers only once the port opens: a start must not flap no_data pending
    starting = runtime(S.STARTING)
    assert starting.facts(100.0, stale_after_s=STALE).missing == ()
    ready = ready_runtime()
    assert ready.facts(100.0, stale_after_s=STALE).missing == ("metrics",)
    ready.fold_metrics(100.0, scrape(ok=1))
    assert ready.facts(100.0 + STALE / 2, stale_after_s=STALE).missing == ()
