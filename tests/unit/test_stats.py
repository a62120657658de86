"""Windows, percentiles, histogram deltas (hand-computed), rates, leak trend, stale metrics."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from functools import partial

import pytest

from console.stats import (
    CounterRate,
    HistogramWindow,
    LeakTrend,
    SampleWindow,
    StaleDetector,
    fraction_above,
    histogram_quantile,
    merge_buckets,
    nearest_rank,
    time_to_full_s,
)

INF = math.inf

# ------------------------------------------------------------------ raw samples


def test_nearest_rank_definition() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert nearest_rank(values, 0.95) == 95.0  # ceil(0.95·100) − 1 = index 94
    assert nearest_rank(values, 0.50) == 50.0
    assert nearest_rank(values, 0.99) == 99.0
    assert nearest_rank(values, 1.0) == 100.0
    assert nearest_rank(values, 0.0) == 1.0
    twenty = [float(v) for v in range(1, 21)]
    assert nearest_rank(twenty, 0.95) == 19.0  # ceil(19) − 1 = index 18
    assert nearest_rank([], 0.5) is None
    with pytest.raises(ValueError):
        nearest_rank(values, 95)


def test_sample_window_percentiles() -> None:
    w = SampleWindow()
    for i in range(100):
        w.add(float(i), (i + 1) / 100)  # 0.01 .. 1.00, one a second
    assert w.count(99.0) == 100
    assert w.percentile(0.95, 99.0) == 0.95
    assert w.percentiles([0.5, 0.99], 99.0) == {0.5: 0.5, 0.99: 0.99}
    assert w.max(99.0) == 1.0
    assert w.mean(99.0) == pytest.approx(0.505)


def test_sample_window_expires_whole_slices() -> None:
    w = SampleWindow(window_s=300.0, slice_s=10.0)
    w.add(0.0, 1.0)  # slice 0
    w.add(5.0, 2.0)  # slice 0
    w.add(10.0, 3.0)  # slice 1
    assert w.count(299.9) == 3  # slices 0..29 kept
    assert w.values(300.0) == [3.0]  # slice 0 expired: both its samples, together
    assert w.values(309.9) == [3.0]
    assert w.values(310.0) == []
    assert w.percentile(0.95, 310.0) is None


def test_sample_window_out_of_order_and_min_count() -> None:
    w = SampleWindow(min_count=3)
    w.add(50.0, 5.0)
    w.add(20.0, 2.0)  # earlier slice, inserted before
    assert w.percentile(0.5, 50.0) is None  # 2 < min_count
    w.add(35.0, 3.0)
    w.add(-10.0, 9.0)  # oldest slice, goes to the front
    assert sorted(w.values(50.0)) == [2.0, 3.0, 5.0, 9.0]
    assert w.percentile(0.5, 50.0) == 3.0
    # A sample in a future slice is not counted yet.
    w.add(70.0, 100.0)
    assert w.max(50.0) == 9.0 and w.max(70.0) == 100.0


# ------------------------------------------------------------------ histogram_quantile

EDGES = [0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, INF]  # SGLang's default e2e edges up to 2 s


def cum(counts: Sequence[float]) -> list[tuple[float, float]]:
    """Per-bucket counts → cumulative (le, count) buckets on EDGES."""
    out, running = [], 0.0
    for le, c in zip(EDGES, counts):
        running += c
        out.append((le, running))
    return out


def test_histogram_quantile_hand_computed() -> None:
    # Observations per bucket: ≤0.1: 50, (0.1,0.2]: 20, (0.2,0.4]: 10, (0.4,0.6]: 5,
    # (0.6,0.8]: 5, (0.8,1]: 4, (1,2]: 4, (2,+Inf): 2 → total 100.
    # Cumulative: 50, 70, 80, 85, 90, 94, 98, 100.
    b = cum([50, 20, 10, 5, 5, 4, 4, 2])
    # P95: rank 95 → first cumulative ≥ 95 is le=2 (98); lower edge 1.0 (94 below);
    # 1.0 + (2.0 − 1.0) × (95 − 94) / (98 − 94) = 1.25.
    assert histogram_quantile(0.95, b) == pytest.approx(1.25)
    # P50: rank 50 → first bucket (50 ≥ 50): 0 + 0.1 × 50/50 = 0.1.
    assert histogram_quantile(0.50, b) == pytest.approx(0.1)
    # P75: rank 75 → le=0.4 (80); 0.2 + 0.2 × (75 − 70)/(80 − 70) = 0.3.
    assert histogram_quantile(0.75, b) == pytest.approx(0.3)
    # P99: rank 99 → +Inf bucket → the largest finite edge, 2.0.
    assert histogram_quantile(0.99, b) == 2.0
    # First bucket's lower bound is 0: P25 = 0 + 0.1 × 25/50 = 0.05.
    assert histogram_quantile(0.25, b) == pytest.approx(0.05)


def test_histogram_quantile_edge_cases() -> None:
    assert histogram_quantile(0.5, [(0.1, 0), (INF, 0)]) is None  # no observations
    assert histogram_quantile(0.5, [(0.1, 5), (1.0, 10)]) is None  # no +Inf bucket
    assert histogram_quantile(0.5, [(INF, 10)]) is None  # fewer than two buckets
    assert histogram_quantile(0.5, [(-1.0, 5), (0.5, 8), (INF, 10)]) == -1.0  # first le ≤ 0
    # Unsorted input and a non-monotonic dip (float noise) are repaired:
    # sorted cumulative 4, 10(→ kept 10), 10 → P50 rank 5 → le=1: 0.5 + 0.5 × 1/6.
    assert histogram_quantile(0.5, [(INF, 10), (0.5, 4), (1.0, 10)]) == pytest.approx(0.5 + 0.5 / 6)
    with pytest.raises(ValueError):
        histogram_quantile(1.5, [(0.1, 1), (INF, 1)])


def test_fraction_above() -> None:
    b = cum([50, 20, 10, 5, 5, 4, 4, 2])
    # Exact at an edge: 1 − 94/100 = 0.06 above 1.0 s.
    assert fraction_above(1.0, b) == pytest.approx(0.06)
    # 1.2 s is not an edge: (1,2] holds 4, 1.2 is 20 % into it → 94 + 0.8 below... i.e.
    # below = 94 + 4 × 0.2 = 94.8 → above = 0.052.
    assert fraction_above(1.2, b) == pytest.approx(0.052)
    assert fraction_above(5.0, b) == pytest.approx(0.02)  # beyond the last finite edge
    assert fraction_above(0.0, b) == pytest.approx(1.0)
    assert fraction_above(1.0, [(1.0, 0), (INF, 0)]) is None


def test_merge_buckets_sums_common_edges() -> None:
    a = [(0.1, 1.0), (1.0, 3.0), (INF, 4.0)]
    b = [(0.1, 2.0), (0.5, 2.0), (1.0, 5.0), (INF, 6.0)]
    assert merge_buckets(a, b) == [(0.1, 3.0), (1.0, 8.0), (INF, 10.0)]
    assert merge_buckets() == []


# ------------------------------------------------------------------ histogram window


BASE = cum([100, 50, 20, 10, 5, 5, 5, 5])  # cumulative totals before the window: 200
A = [50, 20, 10, 5, 5, 4, 4, 2]  # observations in the first 10 s (total 100)
B = [0, 0, 10, 10, 10, 10, 40, 20]  # observations after a restart (total 100)


def add(x: list[tuple[float, float]], per_bucket: Sequence[float]) -> list[tuple[float, float]]:
    extra = cum(per_bucket)
    return [(le, c + e) for (le, c), (_, e) in zip(x, extra)]


def test_histogram_window_deltas_with_counter_reset() -> None:
    h = HistogramWindow(window_s=300.0, slice_s=10.0)
    h.observe(0.0, BASE)
    assert h.quantile(0.95, 0.0) is None  # the first snapshot is only a baseline
    h.observe(10.0, add(BASE, A))
    # Window = A only (see test_histogram_quantile_hand_computed): P95 = 1.25.
    assert h.quantile(0.95, 10.0) == pytest.approx(1.25)
    assert h.count(10.0) == 100
    # The worker restarts: its new cumulative buckets count from zero (B). le=0.1 went
    # from 150 to 0, a decrease → reset → the delta is B itself.
    h.observe(20.0, cum(B))
    assert h.resets == 1
    # Window = A + B per bucket: 50, 20, 20, 15, 15, 14, 44, 22
    # cumulative:               50, 70, 90, 105, 120, 134, 178, 200.
    assert h.buckets(20.0) == list(zip(EDGES, [50.0, 70, 90, 105, 120, 134, 178, 200]))
    # P50: rank 100 → le=0.6 (105); 0.4 + 0.2 × (100 − 90)/(105 − 90) = 0.5333...
    assert h.quantile(0.50, 20.0) == pytest.approx(0.4 + 0.2 * 10 / 15)
    # P80: rank 160 → le=2 (178); 1.0 + 1.0 × (160 − 134)/(178 − 134) = 1.5909...
    assert h.quantile(0.80, 20.0) == pytest.approx(1.0 + 26 / 44)
    # P95: rank 190 > 178 → +Inf bucket → 2.0 (largest finite edge).
    assert h.quantile(0.95, 20.0) == 2.0
    # Exact share above 1 s: 1 − 134/200.
    assert h.fraction_above(1.0, 20.0) == pytest.approx(0.33)
    # A naive delta (cur − prev) would have been negative and wiped out A; check that the
    # post-reset snapshot then grows normally: +B again.
    h.observe(30.0, add(cum(B), B))
    assert h.count(30.0) == 300


def test_histogram_window_expiry() -> None:
    h = HistogramWindow(window_s=300.0, slice_s=10.0)
    h.observe(0.0, BASE)
    h.observe(10.0, add(BASE, A))  # slice 1
    h.observe(20.0, cum(B))  # slice 2 (reset)
    assert h.count(309.9) == 200  # slices 1..30 kept at 309.9 (current slice 30)
    # At 310 slice 1 (A) has expired; B alone: cumulative 0, 0, 10, 20, 30, 40, 80, 100.
    assert h.count(310.0) == 100
    # P50: rank 50 → le=2 (80); 1.0 + 1.0 × (50 − 40)/(80 − 40) = 1.25.
    assert h.quantile(0.50, 310.0) == pytest.approx(1.25)
    assert h.quantile(0.50, 320.0) is None  # everything expired


def test_histogram_window_reads_follow_new_snapshots_within_one_slice() -> None:
    # several reads in one slice share one computation; a snapshot in that slice (or
    # the next slice) must still show at once
    h = HistogramWindow(window_s=300.0, slice_s=10.0)
    h.observe(0.0, BASE)
    h.observe(11.0, add(BASE, A))
    assert h.count(12.0) == 100 and h.count(12.5) == 100
    h.observe(13.0, add(add(BASE, A), B))
    assert h.count(13.0) == 200
    assert h.count(309.0) == 200
    assert h.count(311.0) == 0.0  # slice 1 expired


def test_histogram_window_instance_change_is_a_reset_even_if_counts_grew() -> None:
    h = HistogramWindow()
    h.observe(0.0, cum([1, 0, 0, 0, 0, 0, 0, 0]), instance=("pid", 1))
    # New process already served more than the old one had: no count decreased,
    # but the instance changed, so the whole snapshot is the delta.
    h.observe(10.0, cum([5, 0, 0, 0, 0, 0, 0, 0]), instance=("pid", 2))
    assert h.count(10.0) == 5 and h.resets == 1
    h.observe(20.0, cum([6, 0, 0, 0, 0, 0, 0, 0]), instance=("pid", 2))
    assert h.count(20.0) == 6
    h.observe(30.0, cum([7, 0, 0, 0, 0, 0, 0, 0]), reset=True)  # explicit reset
    assert h.count(30.0) == 13


def test_histogram_window_edge_change_clears_window() -> None:
    h = HistogramWindow()
    h.observe(0.0, BASE)
    h.observe(10.0, add(BASE, A))
    new_edges = [(0.05, 1.0), (1.2, 2.0), (INF, 3.0)]  # restarted with --bucket-e2e-...
    h.observe(20.0, new_edges)
    assert h.buckets(20.0) is None  # new baseline, old deltas dropped
    h.observe(30.0, [(0.05, 2.0), (1.2, 4.0), (INF, 5.0)])
    assert h.buckets(30.0) == [(0.05, 1.0), (1.2, 2.0), (INF, 2.0)]
    # Exact share above the new 1.2 s edge: 1 − 2/2 = 0.
    assert h.fraction_above(1.2, 30.0) == 0.0


def test_histogram_window_same_slice_accumulates() -> None:
    h = HistogramWindow()
    h.observe(0.0, BASE)
    h.observe(11.0, add(BASE, A))
    h.observe(12.0, add(add(BASE, A), A))  # same 10 s slice
    assert h.count(12.0) == 200
    assert h.quantile(0.95, 12.0) == pytest.approx(1.25)  # shape unchanged (2 × A)


# ------------------------------------------------------------------ counter rate


def test_counter_rate_with_reset() -> None:
    r = CounterRate(window_s=60.0)
    assert r.rate(0.0) is None
    r.observe(0.0, 1000.0)  # baseline (a counter that had counted before)
    r.observe(10.0, 1100.0)
    r.observe(20.0, 1250.0)
    assert r.rate(20.0) == pytest.approx(250 / 20)
    r.observe(30.0, 50.0)  # reset: 50 since the restart
    assert r.increase(30.0) == pytest.approx(300.0)
    assert r.rate(30.0) == pytest.approx(300 / 30)
    # At 85 the window [25, 85] holds one sample only.
    assert r.rate(85.0) is None


def test_counter_rate_instance_and_progress() -> None:
    r = CounterRate(window_s=60.0)
    r.observe(0.0, 10.0, instance=1)
    r.observe(1.0, 10.0, instance=1)
    assert not r.moved_since(0.0)
    r.observe(2.0, 12.0, instance=2)  # new process: 12 since its start
    assert r.increase(2.0) == 12.0
    assert r.moved_since(1.0) and not r.moved_since(2.0)
    assert r.last_increase_at == 2.0


# ------------------------------------------------------------------ leak trend


def feed(trend: LeakTrend, start: float, end: float, value: Callable[[float], float],
         rng: random.Random,
         step: tuple[float, float] = (10.0, 20.0)) -> float:
    """Irregular samples (10–20 s apart) from `start` to `end`; returns the last time."""
    t = start
    while t <= end:
        trend.observe(t, value(t))
        t += rng.uniform(*step)
    return t


def test_leak_steady_memory_gives_none() -> None:
    trend = LeakTrend()
    feed(trend, 0.0, 3600.0, lambda t: 20000.0, random.Random(1))
    fit = trend.fit(3600.0)
    assert fit is not None and fit.slope_mib_per_s == 0.0
    assert trend.leak_slope(3600.0) is None
    assert time_to_full_s(20000.0, 81559.0, trend.leak_slope(3600.0)) is None


def test_leak_slope_and_time_to_full() -> None:
    rng = random.Random(2)
    trend = LeakTrend()
    slope = 0.5  # MiB/s = 1800 MiB/h
    noise = random.Random(3)
    last = feed(trend, 0.0, 1800.0, lambda t: 20000.0 + slope * t + noise.gauss(0, 20), rng)
    # A 10-minute gap in the samples, then more.
    feed(trend, last + 600.0, 3600.0, lambda t: 20000.0 + slope * t + noise.gauss(0, 20), rng)
    got = trend.leak_slope(3600.0)
    assert got == pytest.approx(slope, rel=0.02)
    fit = trend.fit(3600.0)
    assert fit is not None and fit.slope_mib_per_h == pytest.approx(1800, rel=0.02)
    assert trend.leak_slope_mib_per_h(3600.0) == pytest.approx(got * 3600.0)  # type: ignore[operator]
    # Card of 81559 MiB with 60000 used: (81559 − 60000) / 0.5 = 43118 s ≈ 12 h.
    assert time_to_full_s(60000.0, 81559.0, slope) == pytest.approx(43118.0)
    assert time_to_full_s(60000.0, 81559.0, got) == pytest.approx(43118.0, rel=0.02)


def _noisy_flat(noise: random.Random, t: float) -> float:
    return 20000.0 + noise.gauss(0, 300)


def test_leak_noisy_flat_gives_none() -> None:
    for seed in range(10):
        rng = random.Random(100 + seed)
        noise = random.Random(200 + seed)
        trend = LeakTrend()
        feed(trend, 0.0, 3600.0, partial(_noisy_flat, noise), rng)
        assert trend.leak_slope(3600.0) is None, seed


def test_leak_restart_in_the_middle_uses_only_last_segment() -> None:
    rng = random.Random(4)
    trend = LeakTrend()
    # 30 min leaking fast (1 MiB/s) from 20 GB...
    last = feed(trend, 0.0, 1800.0, lambda t: 20000.0 + 1.0 * t, rng)
    # ...crash: the process is gone (0 MiB) for a few samples...
    for i in range(3):
        trend.observe(last + 5.0 * i, 0.0)
    # ...restart: static reservation back at 20 GB, then a slow leak (0.2 MiB/s).
    t0 = last + 20.0
    feed(trend, t0, t0 + 1800.0, lambda t: 20000.0 + 0.2 * (t - t0), rng)
    now = t0 + 1800.0
    assert trend.segment_start == t0
    assert trend.leak_slope(now) == pytest.approx(0.2, rel=1e-6)


def test_leak_needs_enough_span_and_samples() -> None:
    trend = LeakTrend()
    feed(trend, 0.0, 300.0, lambda t: 20000.0 + 1.0 * t, random.Random(5))  # 5 min only
    assert trend.fit(300.0) is not None
    assert trend.leak_slope(300.0) is None
    short = LeakTrend(min_samples=20, min_span_s=0.0)
    for t in range(10):
        short.observe(float(t), 100.0 + t)
    assert short.leak_slope(9.0) is None  # 10 < 20 samples


def test_leak_horizon_and_explicit_restart() -> None:
    trend = LeakTrend(horizon_s=3600.0)
    # Two hours: first hour flat, second hour leaking 0.1 MiB/s. Only the last hour counts.
    for t in range(0, 7201, 15):
        trend.observe(float(t), 20000.0 if t < 3600 else 20000.0 + 0.1 * (t - 3600))
    assert trend.leak_slope(7200.0) == pytest.approx(0.1)
    trend.mark_restart(7200.0)
    assert trend.fit(7200.0) is None


def test_leak_shrinking_memory_is_not_a_leak() -> None:
    trend = LeakTrend()
    for t in range(0, 3601, 10):
        trend.observe(float(t), 30000.0 - 0.1 * t)
    assert trend.fit(3600.0).slope_mib_per_s == pytest.approx(-0.1)  # type: ignore[union-attr]
    assert trend.leak_slope(3600.0) is None


def test_time_to_full() -> None:
    assert time_to_full_s(1000.0, 2000.0, 10.0) == 100.0
    assert time_to_full_s(3000.0, 2000.0, 10.0) == 0.0
    assert time_to_full_s(1000.0, 2000.0, 0.0) is None
    assert time_to_full_s(1000.0, 2000.0, -1.0) is None
    assert time_to_full_s(1000.0, 2000.0, None) is None


# ------------------------------------------------------------------ stale metrics


def test_stale_metrics_when_counters_frozen_with_queue() -> None:
    d = StaleDetector(after_s=30.0)
    for t in (0.0, 10.0, 20.0):
        d.observe(t, 500.0, queue=3)
        assert not d.stale()
    d.observe(30.0, 500.0, queue=3)
    assert d.stale() and d.stuck_for() == 30.0
    d.observe(40.0, 501.0, queue=3)  # progress
    assert not d.stale()


def test_stale_metrics_not_when_idle_or_unknown() -> None:
    d = StaleDetector(after_s=30.0)
    for t in range(0, 100, 10):
        d.observe(float(t), 500.0, queue=0)
    assert not d.stale()
    for t in range(100, 200, 10):
        d.observe(float(t), 500.0, queue=None)
    assert not d.stale()


def test_stale_metrics_with_several_counters() -> None:
    d = StaleDetector(after_s=30.0)
    d.observe(200.0, (1.0, 2.0), queue=1)
    d.observe(229.0, (1.0, 2.0), queue=1)
    assert not d.stale()
    d.observe(240.0, (1.0, 2.0), queue=1)
    assert d.stale()
    d.observe(250.0, (1.0, 3.0), queue=1)  # one of several counters moved
    assert not d.stale() and d.stuck_for() == 0.0


def _direct_fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """(slope, stderr) of the least-squares line, computed the textbook way."""
    n = len(points)
    tm = math.fsum(t for t, _ in points) / n
    vm = math.fsum(v for _, v in points) / n
    sxx = math.fsum((t - tm) ** 2 for t, _ in points)
    slope = math.fsum((t - tm) * (v - vm) for t, v in points) / sxx
    rss = math.fsum((v - vm - slope * (t - tm)) ** 2 for t, v in points)
    return slope, math.sqrt(rss / (n - 2) / sxx)


def test_leak_fit_running_sums_match_a_direct_fit_over_a_long_run() -> None:
    # 3 h of 2 s samples (5,400 observations: horizon expiry every sample, several
    # rebases) of a slow noisy leak on a large baseline; fits between samples too
    rng = random.Random(7)
    trend = LeakTrend(horizon_s=3600.0)
    points: list[tuple[float, float]] = []
    t = 1_000_000.0  # a monotonic clock far from 0
    for i in range(5400):
        t += rng.uniform(1.5, 2.5)
        v = 60000.0 + 0.05 * (t - 1_000_000.0) + rng.gauss(0, 50)
        trend.observe(t, v)
        points.append((t, v))
        if i % 450 == 449:
            for now in (t, t + 1.7):
                window = [(pt, pv) for pt, pv in points if now - 3600.0 <= pt <= now]
                fit = trend.fit(now)
                assert fit is not None and fit.samples == len(window)
                slope, stderr = _direct_fit(window)
                assert fit.slope_mib_per_s == pytest.approx(slope, rel=1e-9, abs=1e-12)
                assert fit.stderr_mib_per_s == pytest.approx(stderr, rel=1e-6)
                assert fit.segment_start == window[0][0]
                assert fit.span_s == pytest.approx(window[-1][0] - window[0][0])
    # a query before the newest samples leaves them out (and cannot bring back what
    # the newest sample's horizon already dropped)
    now = points[-3][0]
    kept = [p for p in points if t - 3600.0 <= p[0] <= now]
    fit = trend.fit(now)
    assert fit is not None and fit.samples == len(kept) > 1000
    assert fit.slope_mib_per_s == pytest.approx(_direct_fit(kept)[0], rel=1e-9)


def test_counter_increase_since_and_over_a_shorter_window() -> None:
    c = CounterRate(300.0)
    for t, v in ((0.0, 0.0), (10.0, 5.0), (20.0, 9.0), (30.0, 20.0), (40.0, 26.0)):
        c.observe(t, v)
    assert c.increase(40.0) == 26.0
    assert c.increase(40.0, window_s=20.0) == 26.0 - 9.0  # samples at 20, 30, 40
    assert c.increase(40.0, since=25.0) == 6.0  # samples at 30, 40
    assert c.increase(40.0, since=35.0) is None  # one sample: no increase known
    assert c.increase(40.0, since=5.0, window_s=25.0) == 26.0 - 9.0
    assert c.increase(40.0, window_s=1000.0) == 26.0  # never beyond the kept window
