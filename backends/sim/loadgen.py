"""Open-loop load generator for ``POST /v1/embeddings`` (the engine of ``embedops bench``).

Open loop: request *i* is due at ``t0 + i / rate`` and is sent then, whether or not earlier
requests have answered; its latency is measured from that *scheduled* time, so a stalled
server shows up in the tail instead of slowing the generator down (no coordinated
omission; reliability.md §3.1).

To drive ≥ 1,000 req/s from one Python process next to the server on a 2-core box it uses
a lean HTTP/1.1 keep-alive client (asyncio protocol + httptools' C parser, uvloop when
installed) over a bounded pool of loopback connections, and checks bodies cheaply
(status, number of vectors, first-vector length, no NaN/null/Infinity) unless
``verify="full"`` asks for a real JSON decode of every response.

CLI: ``python -m backends.sim.loadgen --url URL --rate R [--duration S] [--count N]
[--model M] [--deadline-s D] [--retries N] [--json]``; with neither bound it runs until
SIGINT/SIGTERM and then prints its report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import signal
import sys
import threading
from array import array
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Self
from urllib.parse import urlsplit

import orjson

from backends import eventloop
from backends.http1 import (
    BadResponse,
    Connection,
    Disconnected,
    Http1Timeout,
    Pool,
    peer_closed,
    until,
)
from backends.http1 import now as http1_now

__all__ = [
    "LiveStats",
    "LoadGen",
    "LoadReport",
    "LoadSpec",
    "main",
    "percentile",
    "run_load",
    "summarize_ms",
]

Verify = Literal["cheap", "full"]

#: error kinds, in report order. `disconnect`: the connection dropped after the request
#: was written (e.g. the worker was killed mid-request); `connect`: never reached it.
ERROR_KINDS = ("timeout", "connect", "disconnect", "http_4xx", "http_5xx", "bad_body", "other")
_RETRYABLE = frozenset({"timeout", "connect", "disconnect", "http_5xx", "bad_body"})
_RETRYABLE_4XX = frozenset({408, 429})

DEFAULT_QUERY = "What is the capital city of France?"
_STALE_IDLE_S = 1.0
_MIN_SLEEP_S = 0.001

# Measurements use this clock (the one of backends.http1's deadlines): uvloop's
# loop.time() only moves in whole milliseconds.
_now = http1_now


# --------------------------------------------------------------------------- statistics

def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of ascending `sorted_values`, `q` in [0, 1].

    The smallest x with at least q·n samples ≤ x (index ⌈q·n⌉−1), as in
    reliability.md §3.1. Raises ValueError on an empty sequence.
    """
    n = len(sorted_values)
    if n == 0:
        raise ValueError("percentile of no samples")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q} outside [0, 1]")
    idx = max(0, math.ceil(q * n) - 1)
    return sorted_values[min(idx, n - 1)]


def summarize_ms(values_s: Sequence[float], *, exact_max_s: float | None = None) -> dict[str, Any]:
    """p50/p95/p99/max/mean in milliseconds (rounded to µs) of latencies given in seconds.

    All fields are None when there are no samples. `exact_max_s` overrides the max when
    the samples are a subset (reservoir) of everything seen.
    """
    if not values_s:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "max": None, "mean": None}
    ordered = sorted(values_s)
    top = ordered[-1] if exact_max_s is None else max(exact_max_s, ordered[-1])

    def ms(x: float) -> float:
        return round(x * 1000.0, 3)

    return {
        "n": len(ordered),
        "p50": ms(percentile(ordered, 0.50)),
        "p95": ms(percentile(ordered, 0.95)),
        "p99": ms(percentile(ordered, 0.99)),
        "max": ms(top),
        "mean": ms(math.fsum(ordered) / len(ordered)),
    }


class _Reservoir:
    """Latency samples: all of them up to `cap`, then a uniform random sample of `cap`."""

    def __init__(self, cap: int, rng: random.Random) -> None:
        self.values = array("d")
        self.cap = max(1, cap)
        self.seen = 0
        self.max = 0.0
        self._rng = rng

    def add(self, x: float) -> None:
        self.seen += 1
        self.max = max(self.max, x)
        if len(self.values) < self.cap:
            self.values.append(x)
        else:
            j = self._rng.randrange(self.seen)
            if j < self.cap:
                self.values[j] = x


@dataclass(frozen=True)
class LiveStats:
    """Progress of a running generator (`LoadGen.snapshot()`)."""

    elapsed_s: float
    sent: int
    ok: int
    errors: int
    in_flight: int
    window_s: float
    #: completions per second (ok + errors) and ok per second over the recent window
    recent_rps: float
    recent_ok_rps: float
    recent_error_rate: float
    #: latency of ok responses over the recent window, ms (None without samples)
    recent_p50_ms: float | None
    recent_p95_ms: float | None
    recent_p99_ms: float | None

    def to_json(self) -> dict[str, Any]:
        """Plain dict for JSON output."""
        return dict(self.__dict__)


@dataclass
class LoadReport:
    """Final figures of a run; `to_json()` is the CLI's ``--json`` output."""

    url: str
    model: str
    rate_target: float
    duration_s: float
    sent: int
    ok: int
    errors: dict[str, Any]
    error_total: int
    retries: int
    ok_after_retry: int
    latency_ms: dict[str, Any]
    latency_all_ms: dict[str, Any]
    send_lag_ms: dict[str, Any]
    achieved_rps: float
    ok_rps: float
    max_in_flight: int
    connections_opened: int
    stopped_early: bool
    error_samples: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Plain dict for JSON output."""
        return dict(self.__dict__)


# --------------------------------------------------------------------------- load shape

@dataclass(frozen=True)
class LoadSpec:
    """What to send, how fast, and for how long.

    Bounds: `count` requests and/or `duration_s` seconds of sending, whichever ends
    first; with neither, it runs until `LoadGen.stop()` or the stop event.
    """

    url: str
    """Base URL (``http://127.0.0.1:8000``) or the full ``.../v1/embeddings`` URL."""
    rate: float
    """Requests per second (each request carries `batch` inputs)."""
    duration_s: float | None = None
    count: int | None = None
    model: str = "default"
    """Always sent as ``model`` (sglang-router answers 422 without it)."""
    api_key: str | None = None
    deadline_s: float = 10.0
    """Client deadline per request, from its scheduled send time (retries included)."""
    try_timeout_s: float | None = None
    """Per-attempt timeout; None = the remaining deadline (so a timeout is not retried)."""
    retries: int = 0
    """Extra attempts after a retryable failure (connect, disconnect, 5xx, 408/429,
    bad body, per-try timeout); off by default."""
    text: str | None = None
    """Input text; default: a short query, or `input_tokens` words when that is set."""
    input_tokens: int | None = None
    """Make each input about this many tokens long (one short word per token)."""
    batch: int = 1
    """Inputs per request: 1 sends a string, more send a list of strings."""
    vary_text: bool = False
    """Append the request number to each text (defeats whole-text caches; costs a little CPU)."""
    vary_prefix: bool = False
    """Put the request number in front of each text: every input then differs from its
    first token, which also defeats a prefix (radix) cache that a number at the end does
    not."""
    dimension: int | None = None
    """Expected vector length; checked when set."""
    verify: Verify = "cheap"
    rid_in_body: bool = True
    """Also send the request id as the body's ``rid`` (single inputs only; SGLang wants a
    list there for batches). The ``X-Request-ID`` header is always sent."""
    rid_prefix: str | None = None
    max_connections: int = 256
    keep_samples: int = 1_000_000
    """Latency samples kept for the final percentiles (a uniform sample beyond this)."""
    window_s: float = 10.0
    """Window of the live statistics."""
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.rate > 0 or math.isinf(self.rate):
            raise ValueError(f"rate must be a positive number, got {self.rate}")
        if self.count is not None and self.count < 0:
            raise ValueError(f"count must be >= 0, got {self.count}")
        if self.duration_s is not None and self.duration_s < 0:
            raise ValueError(f"duration_s must be >= 0, got {self.duration_s}")
        if not self.deadline_s > 0:
            raise ValueError(f"deadline_s must be > 0, got {self.deadline_s}")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")
        if self.verify not in ("cheap", "full"):
            raise ValueError(f"verify must be 'cheap' or 'full', got {self.verify!r}")
        if self.max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        _target(self.url)  # validates


def _target(url: str) -> tuple[str, int, str]:
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(f"only http:// URLs are supported, got {url!r}")
    if not parts.hostname:
        raise ValueError(f"no host in {url!r}")
    path = parts.path if parts.path not in ("", "/") else "/v1/embeddings"
    if parts.query:
        path += "?" + parts.query
    return parts.hostname, parts.port or 80, path


def make_text(spec: LoadSpec) -> str:
    """The input text of every request (before `vary_text`)."""
    if spec.text is not None:
        return spec.text
    if spec.input_tokens:
        words = ("alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta")
        return " ".join(words[i % len(words)] for i in range(spec.input_tokens))
    return DEFAULT_QUERY


# --------------------------------------------------------------------------- lean HTTP
# backends/http1.py (shared with the supervisor's probe and scrape client); the old
# private names stay for this module's code and its tests.
_Timeout = Http1Timeout
_Disconnected = Disconnected
_BadResponse = BadResponse
_Conn = Connection
_Pool = Pool
_peer_closed = peer_closed
_until = until


# --------------------------------------------------------------------------- body checks

def check_body(body: bytes, *, n_inputs: int, dimension: int | None, verify: Verify) -> str | None:
    """None when the 200 body holds `n_inputs` finite vectors (of `dimension`), else why not."""
    if verify == "full":
        return _check_full(body, n_inputs, dimension)
    if not body.startswith(b"{"):
        return "body is not a JSON object"
    found = 0
    pos = body.find(b'"embedding":')
    while pos >= 0:
        found += 1
        start = body.find(b"[", pos)
        end = body.find(b"]", start)
        if start < 0 or end < 0:
            return "truncated embedding"
        vec = body[start + 1:end]
        if b"n" in vec or b"N" in vec:  # null, NaN, Infinity
            return "non-finite values"
        if dimension is not None and found == 1:
            dim = vec.count(b",") + 1 if vec.strip() else 0
            if dim != dimension:
                return f"dimension {dim} != {dimension}"
        pos = body.find(b'"embedding":', end)
    if found != n_inputs:
        return f"{found} vectors for {n_inputs} inputs"
    return None


def _check_full(body: bytes, n_inputs: int, dimension: int | None) -> str | None:
    try:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            doc = json.loads(body)  # accepts NaN/Infinity literals
        data = doc["data"]
        if len(data) != n_inputs:
            return f"{len(data)} vectors for {n_inputs} inputs"
        for item in data:
            vec = item["embedding"]
            if dimension is not None and len(vec) != dimension:
                return f"dimension {len(vec)} != {dimension}"
            for v in vec:
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    return "non-finite values"
    except (ValueError, KeyError, TypeError, IndexError) as e:
        return f"invalid body: {type(e).__name__}"
    return None


# --------------------------------------------------------------------------- generator

class LoadGen:
    """One open-loop run against `spec.url`.

    `await run()` returns the `LoadReport`; `snapshot()` gives live figures at any time;
    `stop()` (or setting the stop event passed to `run`) ends sending, after which
    requests still in flight finish or reach their deadline.
    """

    def __init__(self, spec: LoadSpec, *,
                 on_progress: Callable[[LiveStats], None] | None = None,
                 progress_interval_s: float = 1.0) -> None:
        self.spec = spec
        self._on_progress = on_progress
        self._progress_interval_s = progress_interval_s
        self._host, self._port, self._path = _target(spec.url)
        self._rng = random.Random(spec.seed)
        self._rid_prefix = spec.rid_prefix or f"lg{os.getpid():x}{self._rng.getrandbits(24):06x}"
        self._text = make_text(spec)
        self._headers_base = self._build_headers()
        self._body_parts = self._build_body_template()
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._t0 = 0.0
        self._reset_counters()

    def _reset_counters(self) -> None:
        self.sent = 0
        self.ok = 0
        self.retries = 0
        self.ok_after_retry = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._errors: Counter[str] = Counter()
        self._codes: dict[str, Counter[str]] = {"http_4xx": Counter(), "http_5xx": Counter()}
        self._error_samples: list[str] = []
        self._ok_lat = _Reservoir(self.spec.keep_samples, self._rng)
        self._err_lat = _Reservoir(self.spec.keep_samples, self._rng)
        self._lag = _Reservoir(self.spec.keep_samples, self._rng)
        self._recent: deque[tuple[float, float, bool]] = deque()
        self._last_send = 0.0
        self._t_end: float | None = None

    # -- request bytes

    def _build_headers(self) -> bytes:
        host = self._host if self._port == 80 else f"{self._host}:{self._port}"
        lines = [f"POST {self._path} HTTP/1.1", f"Host: {host}",
                 "Content-Type: application/json", "Accept: application/json",
                 "User-Agent: embedops-loadgen"]
        if self.spec.api_key:
            lines.append(f"Authorization: Bearer {self.spec.api_key}")
        return ("\r\n".join(lines) + "\r\n").encode("latin-1")

    def _inputs(self, n: int) -> str | list[str]:
        spec = self.spec
        text = f"{self._text} #{n}" if spec.vary_text else self._text
        if spec.batch == 1:
            return f"{n} {text}" if spec.vary_prefix else text
        items = [text if not spec.vary_text else f"{text}.{k}" for k in range(spec.batch)]
        if spec.vary_prefix:
            items = [f"{n}.{k} {item}" for k, item in enumerate(items)]
        return items

    def _build_body_template(self) -> tuple[bytes, bytes] | None:
        if self.spec.vary_text or self.spec.vary_prefix:
            return None
        placeholder = "\x00rid\x00"
        doc: dict[str, Any] = {"model": self.spec.model, "input": self._inputs(0)}
        if self.spec.rid_in_body and self.spec.batch == 1:
            doc["rid"] = placeholder
        raw = orjson.dumps(doc)
        marker = orjson.dumps(placeholder)[1:-1]
        if marker in raw:
            before, after = raw.split(marker, 1)
            return before, after
        return raw, b""

    def _request_bytes(self, n: int, rid: str, attempt: int) -> bytes:
        body_rid = rid if attempt == 0 else f"{rid}.{attempt}"
        if self._body_parts is not None:
            before, after = self._body_parts
            body = before + body_rid.encode() + after if after else before
        else:
            doc: dict[str, Any] = {"model": self.spec.model, "input": self._inputs(n)}
            if self.spec.rid_in_body and self.spec.batch == 1:
                doc["rid"] = body_rid
            body = orjson.dumps(doc)
        head = (f"X-Request-ID: {rid}\r\nContent-Length: {len(body)}\r\n\r\n").encode("latin-1")
        return self._headers_base + head + body

    # -- control

    def stop(self) -> None:
        """Stop sending (a flag, safe from any thread; seen within 0.1 s); in-flight
        requests are still awaited. A stopped generator does not send again."""
        self._stopping = True

    def ok_latencies_s(self) -> list[float]:
        """Latencies (seconds) of the ok responses of the last run (all of them, or a
        uniform sample beyond `LoadSpec.keep_samples`): for merging several runs."""
        return list(self._ok_lat.values)

    def snapshot(self) -> LiveStats:
        """Live figures: totals and the last `window_s` seconds."""
        now = _now()
        elapsed = (self._t_end or now) - self._t0 if self._t0 else 0.0
        window = self.spec.window_s
        cutoff = now - window
        recent = [(lat, ok) for (t, lat, ok) in list(self._recent) if t >= cutoff]
        covered = min(window, elapsed) if elapsed > 0 else window
        lats = sorted(lat for lat, ok in recent if ok)
        n_ok = len(lats)
        n_all = len(recent)

        def pct(q: float) -> float | None:
            return round(percentile(lats, q) * 1000.0, 3) if lats else None

        return LiveStats(
            elapsed_s=round(elapsed, 3), sent=self.sent, ok=self.ok,
            errors=sum(self._errors.values()), in_flight=self.in_flight,
            window_s=round(covered, 3),
            recent_rps=round(n_all / covered, 3) if covered > 0 else 0.0,
            recent_ok_rps=round(n_ok / covered, 3) if covered > 0 else 0.0,
            recent_error_rate=round((n_all - n_ok) / n_all, 4) if n_all else 0.0,
            recent_p50_ms=pct(0.50), recent_p95_ms=pct(0.95), recent_p99_ms=pct(0.99),
        )

    # -- run

    async def run(self, stop_event: asyncio.Event | None = None) -> LoadReport:
        """Send on schedule until a bound or a stop, wait for in-flight requests, report."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._reset_counters()
        pool = _Pool(loop, self._host, self._port, self.spec.max_connections,
                     connect_timeout_s=self.spec.deadline_s)
        tasks: set[asyncio.Task[None]] = set()
        progress = loop.create_task(self._progress_loop()) if self._on_progress else None
        interval = 1.0 / self.spec.rate
        count = self.spec.count
        t0 = self._t0 = _now()
        t_stop = t0 + self.spec.duration_s if self.spec.duration_s is not None else math.inf
        stopped_early = False
        n = 0
        try:
            while True:
                if self._stopping or (stop_event is not None and stop_event.is_set()):
                    stopped_early = True
                    break
                if count is not None and n >= count:
                    break
                due = t0 + n * interval
                if due >= t_stop:
                    break
                now = _now()
                if due > now:
                    # Sleep at least 1 ms: timers are millisecond-grained (uvloop rounds a
                    # shorter delay down to 0 and the loop would spin). At most 0.1 s, so
                    # stop() is seen promptly at low rates. The lateness this adds to a
                    # send counts in its latency and in send_lag_ms.
                    await asyncio.sleep(min(max(due - now, _MIN_SLEEP_S), 0.1))
                    continue
                # everything already due goes out now, in order
                while due <= now and (count is None or n < count) and due < t_stop:
                    task = loop.create_task(self._one(pool, n, due))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    n += 1
                    due = t0 + n * interval
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            for task in list(tasks):
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            if progress is not None:
                progress.cancel()
                await asyncio.gather(progress, return_exceptions=True)
            pool.close()
        self._t_end = _now()
        return self._report(pool, stopped_early)

    async def _progress_loop(self) -> None:
        assert self._on_progress is not None
        while True:
            await asyncio.sleep(self._progress_interval_s)
            self._on_progress(self.snapshot())

    async def _one(self, pool: _Pool, n: int, due: float) -> None:
        loop = self._loop
        assert loop is not None
        spec = self.spec
        rid = f"{self._rid_prefix}-{n}"
        deadline = due + spec.deadline_s
        self.sent += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        kind = "other"
        detail = ""
        attempt = 0
        try:
            while True:
                try_deadline = deadline
                if spec.try_timeout_s is not None:
                    try_deadline = min(deadline, _now() + spec.try_timeout_s)
                kind, detail = await self._attempt(pool, self._request_bytes(n, rid, attempt),
                                                   try_deadline, due if attempt == 0 else None)
                if kind == "ok" or attempt >= spec.retries or _now() >= deadline - _MIN_SLEEP_S:
                    break
                if kind == "timeout" and try_deadline >= deadline:
                    break  # the whole deadline was spent (timers may fire a hair early)
                if kind not in _RETRYABLE and not (kind == "http_4xx" and int(detail) in _RETRYABLE_4XX):
                    break
                attempt += 1
                self.retries += 1
        except Exception as e:  # a bug here must not kill the run silently
            kind, detail = "other", f"{type(e).__name__}: {e}"
        finally:
            self.in_flight -= 1
        done = _now()
        latency = done - due
        self._recent.append((done, latency, kind == "ok"))
        cutoff = done - self.spec.window_s
        while self._recent and self._recent[0][0] < cutoff:
            self._recent.popleft()
        if kind == "ok":
            self.ok += 1
            if attempt:
                self.ok_after_retry += 1
            self._ok_lat.add(latency)
        else:
            self._errors[kind] += 1
            if kind in self._codes:
                self._codes[kind][detail] += 1
            self._err_lat.add(latency)
            if len(self._error_samples) < 5:
                self._error_samples.append(f"{kind}: {detail}" if detail else kind)

    async def _attempt(self, pool: _Pool, data: bytes, deadline: float,
                       due: float | None) -> tuple[str, str]:
        """One try; `due` is the scheduled time on the first try (for the send lag)."""
        loop = self._loop
        assert loop is not None
        for _stale_retry in range(2):
            try:
                conn = await pool.acquire(deadline)
            except _Timeout:
                return "timeout", "no connection before the deadline"
            except OSError as e:
                return "connect", e.strerror or type(e).__name__
            now = _now()
            if due is not None:
                self._lag.add(max(0.0, now - due))
                self._last_send = now
                due = None
            # a keep-alive connection idle for a while may have been closed by the server
            # just as we wrote to it; that (and only that) is resent once, transparently
            stale_candidate = conn.used > 0 and now - conn.last_done >= _STALE_IDLE_S
            fut = conn.request(data)
            handle = loop.call_later(max(0.0, deadline - now), conn.expire)
            try:
                status, body = await fut
            except _Timeout:
                pool.discard(conn)
                return "timeout", "no response within the deadline"
            except _Disconnected as e:
                pool.discard(conn)
                if stale_candidate and not e.got_bytes:
                    continue  # the server closed an idle keep-alive connection: resend once
                return "disconnect", "connection closed before the response"
            except _BadResponse as e:
                pool.discard(conn)
                return "bad_body", str(e)
            finally:
                handle.cancel()
            pool.release(conn)
            if status == 200:
                why = check_body(body, n_inputs=self.spec.batch, dimension=self.spec.dimension,
                                 verify=self.spec.verify)
                return ("ok", "") if why is None else ("bad_body", why)
            if 400 <= status < 500:
                return "http_4xx", str(status)
            if status >= 500:
                return "http_5xx", str(status)
            return "other", f"HTTP {status}"
        return "disconnect", "connection closed before the response"

    def _report(self, pool: _Pool, stopped_early: bool) -> LoadReport:
        assert self._t_end is not None
        duration = self._t_end - self._t0
        send_window = (self._last_send - self._t0) + 1.0 / self.spec.rate if self.sent else 0.0
        errors: dict[str, Any] = {}
        for kind in ERROR_KINDS:
            if kind in self._codes:
                errors[kind] = dict(sorted(self._codes[kind].items()))
            elif kind != "other" or self._errors.get("other"):
                errors[kind] = self._errors.get(kind, 0)
        all_lat = list(self._ok_lat.values) + list(self._err_lat.values)
        return LoadReport(
            url=f"http://{self._host}:{self._port}{self._path}",
            model=self.spec.model,
            rate_target=self.spec.rate,
            duration_s=round(duration, 3),
            sent=self.sent,
            ok=self.ok,
            errors=errors,
            error_total=sum(self._errors.values()),
            retries=self.retries,
            ok_after_retry=self.ok_after_retry,
            latency_ms=summarize_ms(self._ok_lat.values, exact_max_s=self._ok_lat.max),
            latency_all_ms=summarize_ms(all_lat, exact_max_s=max(self._ok_lat.max, self._err_lat.max)),
            send_lag_ms=summarize_ms(self._lag.values, exact_max_s=self._lag.max),
            achieved_rps=round(self.sent / send_window, 2) if send_window > 0 else 0.0,
            ok_rps=round(self.ok / duration, 2) if duration > 0 else 0.0,
            max_in_flight=self.max_in_flight,
            connections_opened=pool.opened,
            stopped_early=stopped_early,
            error_samples=list(self._error_samples),
        )


def run_load(spec: LoadSpec, *, on_progress: Callable[[LiveStats], None] | None = None,
             use_uvloop: bool = True, stop_on_signals: bool = False) -> LoadReport:
    """Run one load in a fresh event loop (uvloop when available) and return its report.

    With `stop_on_signals`, SIGINT/SIGTERM stop sending (the report still comes back).
    """
    gen = LoadGen(spec, on_progress=on_progress)

    async def go() -> LoadReport:
        if stop_on_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, gen.stop)
        return await gen.run()

    return eventloop.run(go(), use_uvloop=use_uvloop)


class BackgroundLoad:
    """A `LoadGen` run on its own thread and event loop, for synchronous callers (drills,
    tests) that block or drive other work while the load runs. A context manager."""

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.gen = LoadGen(spec)
        self.report: LoadReport | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)

    def _run(self) -> None:
        try:
            self.report = asyncio.run(self.gen.run())
        except BaseException as exc:  # noqa: BLE001 - re-raised by stop()
            self._error = exc

    def start(self) -> Self:
        """Begin sending."""
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 60.0) -> LoadReport:
        """Stop sending, wait for in-flight requests, return the report; re-raises what
        ended the generator, RuntimeError if it did not finish within `timeout_s`."""
        self.gen.stop()
        self._thread.join(timeout_s)
        if self._error is not None:
            raise self._error
        if self.report is None:
            raise RuntimeError("the load generator did not finish")
        return self.report

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive():
            self.stop()


# --------------------------------------------------------------------------- CLI

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m backends.sim.loadgen",
                                description="Open-loop load on POST /v1/embeddings.")
    p.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--rate", type=float, required=True, help="requests per second")
    p.add_argument("--duration", type=float, default=None, help="seconds of sending")
    p.add_argument("--count", type=int, default=None, help="number of requests")
    p.add_argument("--model", default="default", help="the request's model field")
    p.add_argument("--api-key", default=os.environ.get("EMBEDOPS_API_KEY"),
                   help="bearer key (default: $EMBEDOPS_API_KEY)")
    p.add_argument("--deadline-s", type=float, default=10.0, help="client deadline per request")
    p.add_argument("--try-timeout-s", type=float, default=None, help="per-attempt timeout")
    p.add_argument("--retries", type=int, default=0, help="extra attempts on retryable errors")
    p.add_argument("--batch", type=int, default=1, help="inputs per request")
    p.add_argument("--input-tokens", type=int, default=None, help="about N tokens per input")
    p.add_argument("--text", default=None, help="input text")
    p.add_argument("--vary-text", action="store_true", help="append the request number")
    p.add_argument("--dimension", type=int, default=None, help="expected vector length")
    p.add_argument("--verify", choices=("cheap", "full"), default="cheap")
    p.add_argument("--connections", type=int, default=256, help="max connections")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--progress", choices=("text", "json", "none"), default="text",
                   help="live figures on stderr every second (json: one object per line)")
    p.add_argument("--quiet", action="store_true", help="same as --progress none")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; exit status 0 when every request succeeded, 1 otherwise."""
    args = _parser().parse_args(argv)
    try:
        spec = LoadSpec(url=args.url, rate=args.rate, duration_s=args.duration, count=args.count,
                        model=args.model, api_key=args.api_key, deadline_s=args.deadline_s,
                        try_timeout_s=args.try_timeout_s, retries=args.retries, batch=args.batch,
                        input_tokens=args.input_tokens, text=args.text, vary_text=args.vary_text,
                        dimension=args.dimension, verify=args.verify,
                        max_connections=args.connections)
    except ValueError as e:
        _parser().error(str(e))

    mode = "none" if args.quiet else args.progress

    def progress(s: LiveStats) -> None:
        if mode == "json":
            print(json.dumps(s.to_json()), file=sys.stderr, flush=True)
        else:
            print(f"[{s.elapsed_s:7.1f}s] sent {s.sent} ok {s.ok} err {s.errors} "
                  f"in-flight {s.in_flight} | {s.recent_ok_rps:.0f} ok/s "
                  f"p95 {s.recent_p95_ms} ms", file=sys.stderr, flush=True)

    # without --duration/--count it runs until SIGINT/SIGTERM, then reports
    report = run_load(spec, on_progress=None if mode == "none" else progress,
                      stop_on_signals=True)
    out = report.to_json()
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        lat = out["latency_ms"]
        print(f"sent {out['sent']}  ok {out['ok']}  errors {out['error_total']} {out['errors']}\n"
              f"rate {out['achieved_rps']}/s (target {out['rate_target']})  "
              f"latency ms p50 {lat['p50']} p95 {lat['p95']} p99 {lat['p99']} max {lat['max']}")
    return 0 if report.error_total == 0 and report.sent > 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
