"""Sliding windows, percentiles, histogram deltas, rates and trends. Pure: time is passed in.

* `SampleWindow`: raw samples (probe or balancer latencies) in a window of fixed slices;
  nearest-rank percentiles (reliability.md §3.1).
* `histogram_quantile` / `HistogramWindow`: Prometheus ``histogram_quantile`` over bucket
  deltas of cumulative snapshots, per worker, with counter resets (§3.2).
* `CounterRate`: req/s from a cumulative counter, with resets.
* `LeakTrend` / `time_to_full_s`: least-squares memory slope over the last hour, new
  segment at a restart, projected time until the card is full.
* `StaleDetector`: counters frozen while the queue is non-empty (a frozen scheduler keeps
  serving ``/metrics`` with stale values: sglang-observed.md).

Times are seconds (monotonic is best); memory is MiB.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "Buckets",
    "CounterRate",
    "CumulativeHistogram",
    "HistogramWindow",
    "LeakTrend",
    "SampleWindow",
    "StaleDetector",
    "Trend",
    "fraction_above",
    "histogram_quantile",
    "merge_buckets",
    "nearest_rank",
    "time_to_full_s",
]

Buckets = Sequence[tuple[float, float]]
"""Cumulative histogram buckets ``(le, count)``, ascending, the last one ``+Inf``."""


def _check_q(q: float) -> None:
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {q}")


def nearest_rank(ordered: Sequence[float], q: float) -> float | None:
    """Nearest-rank quantile of an ascending sequence: the smallest x with at least
    ``q`` of the samples ≤ x, i.e. ``ordered[ceil(q·n) − 1]`` (``q = 0`` → the minimum).
    ``None`` when empty."""
    _check_q(q)
    if not ordered:
        return None
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class _Slices:
    """Window of fixed slices: a value at time t goes to slice ``floor(t / slice_s)``;
    at `now` the current slice and the ``n − 1`` before it are kept
    (``n = ceil(window_s / slice_s)``). A sample therefore expires between
    ``window_s − slice_s`` and ``window_s`` after it was taken; one taken at a slice
    boundary expires exactly `window_s` later. Whole slices expire, never single samples."""

    def __init__(self, window_s: float, slice_s: float) -> None:
        if not (slice_s > 0 and window_s >= slice_s):
            raise ValueError("need 0 < slice_s <= window_s")
        self.window_s = window_s
        self.slice_s = slice_s
        self.n = math.ceil(window_s / slice_s - 1e-9)

    def index(self, t: float) -> int:
        return math.floor(t / self.slice_s)

    def oldest_kept(self, now: float) -> int:
        return self.index(now) - self.n + 1


class SampleWindow:
    """Raw samples in a sliding window (default 5 min of 10 s slices)."""

    def __init__(self, window_s: float = 300.0, slice_s: float = 10.0, *,
                 min_count: int = 1) -> None:
        """`min_count`: below this many samples, percentiles are ``None`` (insufficient
        data; reliability.md suggests ~50 before alerting on a P95)."""
        self._slices = _Slices(window_s, slice_s)
        self.min_count = max(1, min_count)
        self._data: deque[tuple[int, list[float]]] = deque()

    def add(self, t: float, value: float) -> None:
        """Record `value` taken at time `t` (out-of-order times are placed correctly)."""
        k = self._slices.index(t)
        if not self._data or self._data[-1][0] < k:
            self._data.append((k, [value]))
            return
        for idx in range(len(self._data) - 1, -1, -1):
            kk, values = self._data[idx]
            if kk == k:
                values.append(value)
                return
            if kk < k:
                self._data.insert(idx + 1, (k, [value]))
                return
        self._data.appendleft((k, [value]))

    def _expire(self, now: float) -> None:
        oldest = self._slices.oldest_kept(now)
        while self._data and self._data[0][0] < oldest:
            self._data.popleft()

    def values(self, now: float) -> list[float]:
        """The samples in the window at `now` (not after `now`'s slice), unsorted."""
        self._expire(now)
        current = self._slices.index(now)
        return [v for k, values in self._data if k <= current for v in values]

    def count(self, now: float) -> int:
        """Number of samples in the window."""
        return len(self.values(now))

    def percentile(self, q: float, now: float) -> float | None:
        """Nearest-rank quantile `q` in [0, 1] (0.95 = P95); None below `min_count`."""
        _check_q(q)
        values = self.values(now)
        if len(values) < self.min_count:
            return None
        return nearest_rank(sorted(values), q)

    def percentiles(self, qs: Iterable[float], now: float) -> dict[float, float | None]:
        """Several quantiles with one sort."""
        values = sorted(self.values(now))
        enough = len(values) >= self.min_count
        return {q: nearest_rank(values, q) if enough else None for q in qs}

    def mean(self, now: float) -> float | None:
        """Arithmetic mean; None when empty."""
        values = self.values(now)
        return math.fsum(values) / len(values) if values else None

    def max(self, now: float) -> float | None:
        """Largest sample; None when empty."""
        values = self.values(now)
        return max(values) if values else None


# ------------------------------------------------------------------ histograms


def _normalise(buckets: Buckets) -> list[tuple[float, float]]:
    """Sorted by ``le``; repeated edges summed (promql ``coalesceBuckets``)."""
    merged: dict[float, float] = {}
    for le, count in buckets:
        merged[float(le)] = merged.get(float(le), 0.0) + float(count)
    return sorted(merged.items())


def histogram_quantile(q: float, buckets: Buckets) -> float | None:
    """Prometheus ``histogram_quantile(q, ...)`` on cumulative `buckets`.

    Same algorithm as promql ``bucketQuantile``: rank = q × total; find the first bucket
    whose cumulative count ≥ rank; interpolate linearly between its lower edge (the
    previous bucket's ``le``, or 0 for the first bucket) and its ``le``. If the rank lands
    in the ``+Inf`` bucket, the largest finite ``le`` is returned; if the first bucket's
    ``le`` ≤ 0, that ``le``. Cumulative counts that decrease (float noise) are raised to
    be monotonic. ``None`` (Prometheus: NaN) when there is no ``+Inf`` bucket, fewer
    than two buckets, or no observations.
    """
    _check_q(q)
    ordered = _normalise(buckets)
    if len(ordered) < 2 or not math.isinf(ordered[-1][0]):
        return None
    running = 0.0
    fixed: list[tuple[float, float]] = []
    for le, count in ordered:
        running = max(running, count)
        fixed.append((le, running))
    total = fixed[-1][1]
    if total <= 0:
        return None
    rank = q * total
    b = next((i for i in range(len(fixed) - 1) if fixed[i][1] >= rank), len(fixed) - 1)
    if b == len(fixed) - 1:
        return fixed[-2][0]
    if b == 0 and fixed[0][0] <= 0:
        return fixed[0][0]
    start = 0.0
    end, count = fixed[b]
    if b > 0:
        start = fixed[b - 1][0]
        count -= fixed[b - 1][1]
        rank -= fixed[b - 1][1]
    if count <= 0:
        return start
    return start + (end - start) * (rank / count)


def fraction_above(threshold: float, buckets: Buckets) -> float | None:
    """Fraction of observations greater than `threshold`.

    Exact when `threshold` is a bucket edge (``1 − bucket{le=threshold} / total``: the
    reliability.md §3.2 way to say "P95 > 1.2 s" without interpolation); otherwise the
    bucket holding it is interpolated linearly. None without observations or ``+Inf``.
    """
    ordered = _normalise(buckets)
    if not ordered or not math.isinf(ordered[-1][0]) or ordered[-1][1] <= 0:
        return None
    total = ordered[-1][1]
    below = 0.0
    prev_le, prev_count = 0.0, 0.0
    for le, count in ordered:
        if threshold >= le:
            below = count
        elif math.isinf(le):
            below = prev_count
            break
        else:
            width = le - prev_le
            share = 0.0 if width <= 0 else max(0.0, threshold - prev_le) / width
            below = prev_count + (count - prev_count) * share
            break
        prev_le, prev_count = le, count
    return min(1.0, max(0.0, 1.0 - below / total))


def merge_buckets(*histograms: Buckets) -> list[tuple[float, float]]:
    """Sum cumulative buckets of several histograms per ``le`` over their common edges
    (aggregate across workers first, then take the quantile; never average quantiles)."""
    if not histograms:
        return []
    maps = [dict(_normalise(h)) for h in histograms]
    common = set(maps[0]).intersection(*maps[1:])
    return [(le, math.fsum(m[le] for m in maps)) for le in sorted(common)]


class HistogramWindow:
    """Bucket deltas of one worker's cumulative histogram, in a sliding window of slices.

    Feed each scrape's cumulative buckets to `observe`; the first one is only a baseline
    (as for Prometheus ``rate``). The delta of a scrape is added to the slice of its time.
    A counter reset (any bucket decreased, a different `instance`, or ``reset=True``) means
    the new cumulative values are themselves the delta since the reset; a change of the
    bucket edges empties the window (old and new buckets cannot be summed).
    """

    def __init__(self, window_s: float = 300.0, slice_s: float = 10.0) -> None:
        self._slices = _Slices(window_s, slice_s)
        self._edges: tuple[float, ...] | None = None
        self._prev: tuple[float, ...] | None = None
        self._instance: object = None
        self._data: deque[tuple[int, list[float]]] = deque()
        self._version = 0
        # the last `buckets` answer, valid while (version, slice) are unchanged: alert
        # evaluation, status snapshots and plots read the same window several times a second
        self._cached: tuple[tuple[int, int], list[tuple[float, float]] | None] | None = None
        self._quantiles: dict[float, float | None] = {}  # for the cached buckets
        self.resets = 0
        """Counter resets seen."""

    def observe(self, now: float, buckets: Buckets, *, instance: object = None,
                reset: bool = False) -> None:
        """Record one cumulative snapshot taken at `now`.

        `instance`: anything that identifies the process generation (pid + create time,
        ``sglang:startup_time_seconds``); a change is a reset even if every count grew.
        """
        ordered = _normalise(buckets)
        edges = tuple(le for le, _ in ordered)
        counts = tuple(c for _, c in ordered)
        self._version += 1
        if self._edges is not None and edges != self._edges:
            self._data.clear()
            self._prev = None
        self._edges = edges
        prev, self._prev = self._prev, counts
        changed_instance = instance is not None and self._instance is not None and instance != self._instance
        if instance is not None:
            self._instance = instance
        if prev is None and not reset:
            return
        if reset or changed_instance or prev is None or any(c < p for c, p in zip(counts, prev)):
            self.resets += 1
            delta = list(counts)
        else:
            delta = [c - p for c, p in zip(counts, prev)]
        k = self._slices.index(now)
        if self._data and self._data[-1][0] == k:
            acc = self._data[-1][1]
            for i, d in enumerate(delta):
                acc[i] += d
        elif not self._data or self._data[-1][0] < k:
            self._data.append((k, delta))
        # A snapshot older than the newest slice is a clock anomaly: its delta is dropped.

    def buckets(self, now: float) -> list[tuple[float, float]] | None:
        """Cumulative delta buckets over the window at `now`; None before any delta.
        The list returned is shared with later calls: do not modify it."""
        current = self._slices.index(now)
        key = (self._version, current)
        if self._cached is not None and self._cached[0] == key:
            return self._cached[1]
        oldest = self._slices.oldest_kept(now)
        while self._data and self._data[0][0] < oldest:
            self._data.popleft()
        result: list[tuple[float, float]] | None = None
        self._quantiles = {}
        if self._edges is not None and self._data:
            sums = [0.0] * len(self._edges)
            for k, delta in self._data:
                if k <= current:
                    for i, d in enumerate(delta):
                        sums[i] += d
            result = list(zip(self._edges, sums))
        self._cached = (key, result)
        return result

    def count(self, now: float) -> float:
        """Observations in the window (the ``+Inf`` bucket's delta)."""
        b = self.buckets(now)
        return b[-1][1] if b else 0.0

    def quantile(self, q: float, now: float) -> float | None:
        """``histogram_quantile(q)`` of the window's deltas; None without observations."""
        b = self.buckets(now)
        if not b:
            return None
        if q not in self._quantiles:
            self._quantiles[q] = histogram_quantile(q, b)
        return self._quantiles[q]

    def fraction_above(self, threshold: float, now: float) -> float | None:
        """Share of the window's observations above `threshold` (see `fraction_above`)."""
        b = self.buckets(now)
        return fraction_above(threshold, b) if b else None


class CumulativeHistogram:
    """A Prometheus-style cumulative histogram of everything observed since creation
    (what an exporter serves): a value v counts in every bucket with ``le >= v``."""

    def __init__(self, edges: Sequence[float]) -> None:
        ordered = sorted(float(e) for e in edges if not math.isinf(e))
        if not ordered or len(set(ordered)) != len(ordered):
            raise ValueError("need distinct finite bucket edges")
        self.edges = tuple(ordered)
        self._counts = [0] * len(self.edges)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Count one observation."""
        self.count += 1
        self.sum += value
        i = bisect.bisect_left(self.edges, value)
        if i < len(self._counts):
            self._counts[i] += 1

    def buckets(self) -> list[tuple[float, float]]:
        """Cumulative ``(le, count)`` pairs, ending with ``(+Inf, count)``."""
        out: list[tuple[float, float]] = []
        running = 0
        for le, c in zip(self.edges, self._counts):
            running += c
            out.append((le, float(running)))
        out.append((math.inf, float(self.count)))
        return out


# ------------------------------------------------------------------ counters


class CounterRate:
    """Per-second rate of a cumulative counter over a sliding window, with resets.

    A decrease (or ``reset=True``, or a new `instance`) is a reset: the new value is the
    increase since it. The rate is the increase between the first and last samples in
    the window divided by their time span (no extrapolation to the window edges).
    """

    def __init__(self, window_s: float = 60.0) -> None:
        if not window_s > 0:
            raise ValueError("window_s must be > 0")
        self.window_s = window_s
        self._points: deque[tuple[float, float]] = deque()  # (t, reset-adjusted total)
        self._raw: float | None = None
        self._instance: object = None
        self.last_increase_at: float | None = None
        """Time of the last sample that showed an increase."""

    def observe(self, now: float, value: float, *, reset: bool = False,
                instance: object = None) -> None:
        """Record the counter's cumulative `value` at `now`."""
        changed = instance is not None and self._instance is not None and instance != self._instance
        if instance is not None:
            self._instance = instance
        if self._raw is None:
            total = value if reset else 0.0
        else:
            last_total = self._points[-1][1] if self._points else 0.0
            inc = value if (reset or changed or value < self._raw) else value - self._raw
            total = last_total + inc
        if self._points and total > self._points[-1][1] or self._raw is None and total > 0:
            self.last_increase_at = now
        self._raw = value
        self._points.append((now, total))
        while self._points and now - self._points[0][0] > self.window_s:
            self._points.popleft()

    def _window(self, now: float) -> list[tuple[float, float]]:
        return [(t, v) for t, v in self._points if now - self.window_s <= t <= now]

    def increase(self, now: float, *, since: float | None = None,
                 window_s: float | None = None) -> float | None:
        """Increase over the window (or the last `window_s` seconds of it), counting only
        samples taken at or after `since`; None with fewer than two such samples."""
        lo = now - (self.window_s if window_s is None else min(window_s, self.window_s))
        if since is not None:
            lo = max(lo, since)
        pts = [(t, v) for t, v in self._points if lo <= t <= now]
        if len(pts) < 2:
            return None
        return pts[-1][1] - pts[0][1]

    def rate(self, now: float) -> float | None:
        """Per-second rate over the window; None with fewer than two samples or no span."""
        pts = self._window(now)
        if len(pts) < 2 or pts[-1][0] <= pts[0][0]:
            return None
        return (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0])

    def moved_since(self, t: float) -> bool:
        """Whether the counter increased in a sample taken after `t` (completions
        progressing since the previous probe)."""
        return self.last_increase_at is not None and self.last_increase_at > t


# ------------------------------------------------------------------ leak trend


@dataclass(frozen=True)
class Trend:
    """A least-squares line through the current segment's memory samples."""

    slope_mib_per_s: float
    stderr_mib_per_s: float
    """Standard error of the slope (0 for a perfect line)."""
    samples: int
    span_s: float
    segment_start: float
    """Time of the segment's first sample (a restart starts a new segment)."""
    fitted_now_mib: float
    """The line's value at the last sample's time."""

    @property
    def slope_mib_per_h(self) -> float:
        """Slope in MiB per hour."""
        return self.slope_mib_per_s * 3600.0

    @property
    def t_stat(self) -> float:
        """Slope / standard error (``inf`` for a perfect non-flat line)."""
        if self.stderr_mib_per_s == 0:
            return math.inf if self.slope_mib_per_s > 0 else (-math.inf if self.slope_mib_per_s < 0 else 0.0)
        return self.slope_mib_per_s / self.stderr_mib_per_s


_REBASE_EVERY = 1024
"""`LeakTrend` recomputes its running sums exactly after this many samples."""


class LeakTrend:
    """Memory growth of one worker (or card): slope over the last `horizon_s`.

    Samples may be irregular and have gaps. A step between two consecutive samples of at
    least `step_mib` *and* `step_frac` of the larger value (a restart: memory drops, or
    rises from ~0 to the static reservation) starts a new segment; `mark_restart` does
    so explicitly. `leak_slope` is the slope only when it is a trend and not noise:
    at least `min_samples` over at least `min_span_s`, a t-statistic ≥ `min_t`, and at
    least `min_slope_mib_per_h`.
    """

    def __init__(self, horizon_s: float = 3600.0, *, min_samples: int = 20,
                 min_span_s: float = 900.0, step_mib: float = 1024.0, step_frac: float = 0.2,
                 min_t: float = 4.0, min_slope_mib_per_h: float = 1.0) -> None:
        self.horizon_s = horizon_s
        self.min_samples = max(3, min_samples)
        self.min_span_s = min_span_s
        self.step_mib = step_mib
        self.step_frac = step_frac
        self.min_t = min_t
        self.min_slope_mib_per_h = min_slope_mib_per_h
        self._points: deque[tuple[float, float]] = deque()
        self.segment_start: float | None = None
        # Running sums of the points, shifted by a reference point (the first one at the
        # last rebase) so they stay small: `fit` is O(1) instead of O(samples), which at
        # a 2 s sample period and a 1 h horizon is 1,800 points per worker per second.
        self._ref = (0.0, 0.0)
        self._sums = [0.0] * 5  # Σx, Σy, Σxx, Σxy, Σyy
        self._ops = 0

    def mark_restart(self, now: float) -> None:
        """The worker restarted: forget the previous segment."""
        self._points.clear()
        self._rebase()
        self.segment_start = None

    def observe(self, now: float, used_mib: float) -> None:
        """Record the memory in use at `now`."""
        if self._points:
            prev = self._points[-1][1]
            step = abs(used_mib - prev)
            if step >= self.step_mib and step >= self.step_frac * max(abs(prev), abs(used_mib)):
                self._points.clear()
                self._rebase()
        if not self._points:
            self.segment_start = now
            self._ref = (now, used_mib)
        self._points.append((now, used_mib))
        self._shift(now, used_mib, 1.0, self._sums)
        while self._points and now - self._points[0][0] > self.horizon_s:
            t, v = self._points.popleft()
            self._shift(t, v, -1.0, self._sums)
        self._ops += 1
        if self._ops >= _REBASE_EVERY:
            self._rebase()

    def _shift(self, t: float, v: float, sign: float, sums: list[float]) -> None:
        x, y = t - self._ref[0], v - self._ref[1]
        sums[0] += sign * x
        sums[1] += sign * y
        sums[2] += sign * x * x
        sums[3] += sign * x * y
        sums[4] += sign * y * y

    def _rebase(self) -> None:
        """Recompute the sums exactly around the current first point (bounds the
        rounding that many additions and removals accumulate)."""
        self._ops = 0
        self._sums = [0.0] * 5
        if self._points:
            self._ref = self._points[0]
        for t, v in self._points:
            self._shift(t, v, 1.0, self._sums)

    def fit(self, now: float) -> Trend | None:
        """Least-squares line through the segment's samples within the horizon at `now`;
        None with fewer than 3 samples or no time span."""
        pts = self._points
        lo = now - self.horizon_s
        first, last = 0, len(pts)
        sums = self._sums
        if pts and (pts[0][0] < lo or pts[-1][0] > now):
            # samples outside [now - horizon, now] (usually one, aged out since the last
            # observe): taken out of a copy of the sums
            sums = list(sums)
            while first < last and pts[first][0] < lo:
                self._shift(*pts[first], -1.0, sums)
                first += 1
            while last > first and pts[last - 1][0] > now:
                self._shift(*pts[last - 1], -1.0, sums)
                last -= 1
        n = last - first
        if n < 3:
            return None
        sx, sy, sxx_raw, sxy_raw, syy_raw = sums
        sxx = sxx_raw - sx * sx / n
        if sxx <= 1e-9 * max(1.0, sxx_raw):
            return None
        sxy = sxy_raw - sx * sy / n
        syy = max(0.0, syy_raw - sy * sy / n)
        slope = sxy / sxx
        intercept = sy / n - slope * sx / n  # in the shifted coordinates
        # Residuals of an exact line are rounding noise; treat them as zero.
        rss = max(0.0, syy - slope * sxy)
        if rss <= 1e-10 * syy:
            rss = 0.0
        stderr = math.sqrt(rss / (n - 2) / sxx)
        t_first, t_last = pts[first][0], pts[last - 1][0]
        fitted = self._ref[1] + intercept + slope * (t_last - self._ref[0])
        return Trend(slope_mib_per_s=slope, stderr_mib_per_s=stderr, samples=n,
                     span_s=t_last - t_first, segment_start=t_first, fitted_now_mib=fitted)

    def leak_slope(self, now: float) -> float | None:
        """Growth in **MiB/s** when it is a real upward trend (see the class doc), else
        None. Pass it straight to `time_to_full_s`."""
        trend = self.fit(now)
        if trend is None or trend.samples < self.min_samples or trend.span_s < self.min_span_s:
            return None
        if trend.slope_mib_per_h < self.min_slope_mib_per_h or trend.t_stat < self.min_t:
            return None
        return trend.slope_mib_per_s

    def leak_slope_mib_per_h(self, now: float) -> float | None:
        """`leak_slope` in MiB per hour (for display)."""
        slope = self.leak_slope(now)
        return None if slope is None else slope * 3600.0


def time_to_full_s(used_mib: float, total_mib: float, slope_mib_per_s: float | None) -> float | None:
    """Seconds until `used_mib` reaches `total_mib` at `slope_mib_per_s`.

    None when there is no (positive) slope; 0 when already full.
    """
    if slope_mib_per_s is None or not slope_mib_per_s > 0 or not math.isfinite(slope_mib_per_s):
        return None
    return max(0.0, (total_mib - used_mib) / slope_mib_per_s)


# ------------------------------------------------------------------ stale metrics


class StaleDetector:
    """Counters not moving while the queue is non-empty for `after_s` seconds.

    Judged on observation times only: when scrapes stop, this says nothing (that is the
    "no data" alert's job).
    """

    def __init__(self, after_s: float = 30.0) -> None:
        self.after_s = after_s
        self._progress: tuple[float, ...] | None = None
        self._stuck_since: float | None = None
        self._last_at: float | None = None

    def observe(self, now: float, progress: float | Sequence[float], queue: float | None) -> None:
        """One scrape: `progress` is the counter(s) that move when work completes
        (e.g. ``e2e_request_latency_seconds_count``), `queue` the running + queued
        requests (``None``: unknown, treated as empty)."""
        values = (float(progress),) if isinstance(progress, (int, float)) else tuple(progress)
        moved = self._progress is not None and values != self._progress
        self._progress = values
        self._last_at = now
        if queue is None or queue <= 0 or moved:
            self._stuck_since = None
        elif self._stuck_since is None:
            self._stuck_since = now

    def stuck_for(self) -> float:
        """Seconds the counters have been frozen with work queued, as of the last scrape."""
        if self._stuck_since is None or self._last_at is None:
            return 0.0
        return self._last_at - self._stuck_since

    def stale(self) -> bool:
        """Whether the counters have been frozen with work queued for `after_s`."""
        return self._stuck_since is not None and self.stuck_for() >= self.after_s
