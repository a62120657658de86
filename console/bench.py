"""`embedops bench`: what does this fleet sustain, and what does the balancer add?

Open-loop load (`backends.sim.loadgen.LoadGen`) on ``POST /v1/embeddings`` of the fleet's
balancer (found in the supervisor's snapshot of the current state directory) or of
``--url``: each rate of ``--rate 50,100,200`` for ``--duration`` seconds, or, with
``--find-max``, rising rates until the P99 passes ``--p99-bound-ms`` or errors appear.

With ``--direct`` each rate is also sent straight to the workers (the same rate spread
evenly over them, so each worker carries what the balancer would give it), in
alternating time slices with the balancer run (B D, D B, B D, ...), and the balancer's
added latency is reported as through-balancer minus direct, per percentile.

Inputs: ``--input short`` (one short query), ``512`` (about 512 tokens) or ``long``
(about 95 % of the smallest of the server's ``max_req_input_len`` / ``context_length``
/ ``max_model_len``), ``--batch N`` inputs per request. Tokens per request are read from
the server's ``usage.prompt_tokens`` of a calibration request, so tokens/s is the
server's own count.

Progress goes to stderr once a second; the report is a table or, with ``--json``, one
JSON object (`REPORT_SCHEMA`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import resource
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from backends import eventloop
from backends.sim.loadgen import (
    DEFAULT_QUERY,
    LoadGen,
    LoadReport,
    LoadSpec,
    summarize_ms,
)

REPORT_SCHEMA = 1
INPUT_KINDS = ("short", "512", "long")
LONG_FRACTION = 0.95
"""``--input long`` aims at this fraction of the server's input-length limit."""
SLICE_S = 1.0
"""Length of one balancer or direct slice with ``--direct``."""
FIND_MAX_FACTOR = 1.5
PERCENTILES = ("p50", "p95", "p99")
_WORDS = ("alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta")


class BenchError(Exception):
    """A setup problem (no fleet, bad URL, unreachable server): one clear line."""


# ------------------------------------------------------------------ options


def parse_rates(text: str) -> list[float]:
    """``"50,100,200"`` → [50.0, 100.0, 200.0]; each must be a positive finite number."""
    rates: list[float] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise argparse.ArgumentTypeError(f"{text!r}: empty rate in the list")
        try:
            value = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{part!r} is not a number (requests per second, e.g. 50,100,200)") from None
        if not value > 0 or math.isinf(value):
            raise argparse.ArgumentTypeError(f"{part!r}: a rate must be a positive number")
        rates.append(value)
    return rates


def _positive(kind: type, what: str) -> Callable[[str], Any]:
    def conv(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {what}") from None
        if not value > 0 or (isinstance(value, float) and math.isinf(value)):
            raise argparse.ArgumentTypeError(f"{text!r}: must be > 0")
        return value
    return conv


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``embedops bench`` (fleet options are added by the caller)."""
    p.add_argument("--url", default=None,
                   help="benchmark this base URL (a balancer or one worker) instead of the fleet")
    p.add_argument("--worker-url", action="append", default=[], metavar="URL",
                   help="with --url --direct: a worker behind it (repeatable)")
    p.add_argument("--rate", type=parse_rates, default=None, metavar="R[,R...]",
                   help="requests/s, comma-separated (default 50,100,200; with --find-max: "
                        "the starting rate, default 50)")
    p.add_argument("--duration", type=_positive(float, "number of seconds"), default=10.0,
                   metavar="S", help="seconds per rate (default 10)")
    p.add_argument("--find-max", action="store_true",
                   help="raise the rate x1.5 until the P99 exceeds --p99-bound-ms or errors "
                        "appear; report the highest rate that passed")
    p.add_argument("--p99-bound-ms", type=_positive(float, "number"), default=100.0,
                   help="P99 bound for --find-max (default 100 ms)")
    p.add_argument("--max-rate", type=_positive(float, "number"), default=20000.0,
                   help="--find-max stops here (default 20000)")
    p.add_argument("--input", choices=INPUT_KINDS, default="short",
                   help="input size: a short query, ~512 tokens, or near the context limit")
    p.add_argument("--batch", type=_positive(int, "whole number"), default=1,
                   help="inputs per request (default 1)")
    p.add_argument("--direct", action="store_true",
                   help="also send each rate straight to the workers (interleaved) and report "
                        "the balancer's added latency")
    p.add_argument("--same-input", action="store_true",
                   help="send the very same text every time (default: each request's text "
                        "starts with its number, so no prefix cache can serve it)")
    p.add_argument("--model", default=None,
                   help="the request's model field (default: from /v1/models)")
    p.add_argument("--deadline-s", type=_positive(float, "number"), default=10.0,
                   help="client deadline per request (default 10 s)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines on stderr")


# ------------------------------------------------------------------ target


@dataclass
class Target:
    """Where the load goes."""

    url: str
    source: str  # "fleet" or "url"
    fleet: str | None = None
    balancer: str | None = None
    workers: list[dict[str, str]] = field(default_factory=list)
    """``{"name", "url"}`` of the workers for ``--direct``."""
    model: str = "default"
    api_key: str | None = None
    input_limit: int | None = None
    input_limit_source: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain dict for the report."""
        out = dict(self.__dict__)
        out.pop("api_key")
        return out


def check_url(url: str, option: str = "--url") -> str:
    """A normalised base URL, or `BenchError` naming the option and the reason."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise BenchError(f"{option} {url!r}: only http:// URLs are supported")
    if not parts.hostname:
        raise BenchError(f"{option} {url!r}: no host")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise BenchError(f"{option} {url!r}: {exc}") from None
    if parts.path not in ("", "/"):
        raise BenchError(f"{option} {url!r}: give the base URL (no path); "
                         "the benchmark posts to /v1/embeddings")
    return f"http://{parts.netloc}"


def fleet_target(snapshot: dict[str, Any]) -> Target:
    """The balancer and routed workers of a supervisor snapshot."""
    b = snapshot.get("balancer") or {}
    workers = [{"name": w["name"], "url": w["url"]} for w in snapshot.get("workers", [])
               if w.get("routed") and w.get("url")]
    if not b.get("url"):
        raise BenchError(f"fleet {snapshot.get('fleet')!r} has no balancer; benchmark a "
                         "worker with --url http://HOST:PORT")
    return Target(url=b["url"].rstrip("/"), source="fleet", fleet=snapshot.get("fleet"),
                  balancer=b.get("kind"), workers=workers)


def _get_json(client: httpx.Client, url: str) -> Any:
    r = client.get(url)
    if r.status_code != 200:
        return None
    try:
        return r.json()
    except ValueError:
        return None


def _reach(client: httpx.Client, base: str, option: str) -> None:
    try:
        client.get(base + "/v1/models")
    except httpx.HTTPError as exc:
        reason = str(exc) or type(exc).__name__
        raise BenchError(f"{option} {base}: cannot reach the server ({reason})") from None


def discover_model(client: httpx.Client, urls: Sequence[str]) -> str | None:
    """The first model id of ``/v1/models`` on any of `urls`."""
    for url in urls:
        try:
            doc = _get_json(client, url + "/v1/models")
        except httpx.HTTPError:
            continue
        data = doc.get("data") if isinstance(doc, dict) else None
        if data and isinstance(data[0], dict) and data[0].get("id"):
            return str(data[0]["id"])
    return None


def discover_input_limit(client: httpx.Client, urls: Sequence[str]) -> tuple[int | None, str | None]:
    """The smallest input-length limit a server states, and where it came from:
    ``max_req_input_len`` and ``context_length`` of ``/server_info`` (``/get_server_info``),
    ``max_model_len`` of ``/v1/models``."""
    for url in urls:
        found: dict[str, int] = {}
        for path in ("/server_info", "/get_server_info"):
            try:
                doc = _get_json(client, url + path)
            except httpx.HTTPError:
                doc = None
            if isinstance(doc, dict):
                for key in ("max_req_input_len", "context_length"):
                    if isinstance(doc.get(key), int) and doc[key] > 0:
                        found[f"{path} {key}"] = doc[key]
                break
        try:
            models = _get_json(client, url + "/v1/models")
        except httpx.HTTPError:
            models = None
        if isinstance(models, dict) and models.get("data"):
            card = models["data"][0]
            if isinstance(card, dict) and isinstance(card.get("max_model_len"), int):
                found["/v1/models max_model_len"] = card["max_model_len"]
        if found:
            where, limit = min(found.items(), key=lambda kv: kv[1])
            return limit, f"{url}{where}"
    return None, None


# ------------------------------------------------------------------ input plan


@dataclass(frozen=True)
class InputPlan:
    """What each request carries."""

    kind: str
    text: str
    batch: int
    tokens_per_request: int | None
    words: int
    vary: bool = True
    """Each request's inputs start with its number (`LoadSpec.vary_prefix`)."""

    def to_json(self) -> dict[str, Any]:
        """Plain dict for the report (not the text itself)."""
        per_input = (None if self.tokens_per_request is None
                     else round(self.tokens_per_request / self.batch, 1))
        return {"kind": self.kind, "batch": self.batch, "words_per_input": self.words,
                "tokens_per_input": per_input, "tokens_per_request": self.tokens_per_request,
                "chars_per_input": len(self.text), "distinct_inputs": self.vary}


def words_text(n: int) -> str:
    """`n` short words (the load generator's long-input vocabulary)."""
    return " ".join(_WORDS[i % len(_WORDS)] for i in range(n))


def calibrate(client: httpx.Client, url: str, model: str, text: str, batch: int,
              api_key: str | None, *, vary: bool = True) -> tuple[int, int | None, str]:
    """One request as the benchmark will send it: (HTTP status, usage.prompt_tokens,
    error message)."""
    items = [f"0.{k} {text}" if vary and batch > 1 else f"0 {text}" if vary else text
             for k in range(batch)]
    body: dict[str, Any] = {"model": model, "input": items[0] if batch == 1 else items}
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = client.post(url + "/v1/embeddings", json=body, headers=headers)
    except httpx.HTTPError as exc:
        return 0, None, f"{type(exc).__name__}: {exc}"
    if r.status_code != 200:
        msg = r.text[:300]
        try:
            doc = r.json()
            msg = str(doc.get("message") or doc.get("error", {}).get("message") or msg)
        except (ValueError, AttributeError):
            pass
        return r.status_code, None, msg
    try:
        tokens = r.json().get("usage", {}).get("prompt_tokens")
    except (ValueError, AttributeError):
        tokens = None
    return 200, tokens if isinstance(tokens, int) else None, ""


def plan_input(client: httpx.Client, target: Target, kind: str, batch: int, *,
               vary: bool = True) -> InputPlan:
    """Build the input of `kind` and check, with one request, that the server takes it."""
    url = target.url

    def attempt(text: str, words: int) -> InputPlan:
        status, tokens, msg = calibrate(client, url, target.model, text, batch, target.api_key,
                                        vary=vary)
        if status != 200:
            where = f"POST {url}/v1/embeddings"
            raise BenchError(f"{where} with --input {kind} --batch {batch}: "
                             + (f"HTTP {status}: {msg}" if status else msg))
        return InputPlan(kind, text, batch, tokens, words, vary)

    if kind == "short":
        return attempt(DEFAULT_QUERY, len(DEFAULT_QUERY.split()))
    if kind == "512":
        return attempt(words_text(512), 512)
    # long: scale from a 512-word probe to ~95 % of the limit, shrink if refused
    if target.input_limit is None:
        raise BenchError(f"--input long: {url} states no context limit (no max_req_input_len, "
                         "context_length or max_model_len); use --input 512")
    probe = attempt(words_text(512), 512)
    per_word = (probe.tokens_per_request or 513 * batch) / batch / 512
    goal = int(target.input_limit * LONG_FRACTION)
    words = max(1, int(goal / per_word))
    last = ""
    for _ in range(6):
        text = words_text(words)
        status, tokens, msg = calibrate(client, url, target.model, text, batch, target.api_key,
                                        vary=vary)
        if status == 200:
            return InputPlan(kind, text, batch, tokens, words, vary)
        last = f"HTTP {status}: {msg}" if status else msg
        if status != 400:
            break
        words = int(words * 0.9)
    raise BenchError(f"--input long: the server refused a {words}-word input near its limit "
                     f"({target.input_limit} tokens): {last}")


# ------------------------------------------------------------------ aggregation


@dataclass
class PathStats:
    """Merged figures of one path (balancer or direct) over its slices and generators."""

    sent: int = 0
    ok: int = 0
    retries: int = 0
    errors: dict[str, Any] = field(default_factory=dict)
    latencies_s: list[float] = field(default_factory=list)
    max_ms: float = 0.0
    active_s: float = 0.0
    """Wall time from the first send to the last answer, summed over slices."""
    send_s: float = 0.0
    """Time spent sending (the schedule's span), summed over slices."""
    error_samples: list[str] = field(default_factory=list)

    def add(self, gen: LoadGen, report: LoadReport) -> None:
        """Fold one generator's run in (its wall time is added by `add_time`)."""
        self.sent += report.sent
        self.ok += report.ok
        self.retries += report.retries
        self.latencies_s.extend(gen.ok_latencies_s())
        if report.latency_ms.get("max") is not None:
            self.max_ms = max(self.max_ms, report.latency_ms["max"])
        merge_errors(self.errors, report.errors)
        for s in report.error_samples:
            if len(self.error_samples) < 5:
                self.error_samples.append(s)

    @property
    def error_total(self) -> int:
        """Failed requests, all kinds."""
        return sum(sum(v.values()) if isinstance(v, dict) else v for v in self.errors.values())

    def to_json(self, tokens_per_request: int | None) -> dict[str, Any]:
        """The per-rate figures of the report."""
        lat = summarize_ms(self.latencies_s)
        if lat["n"]:
            lat["max"] = max(lat["max"], self.max_ms)
        span = max(self.active_s, self.send_s)
        ok_rps = self.ok / span if span > 0 else 0.0
        return {
            "sent": self.sent, "ok": self.ok, "error_total": self.error_total,
            "errors": self.errors, "error_samples": self.error_samples,
            "latency_ms": lat,
            "achieved_rps": round(self.sent / self.send_s, 2) if self.send_s > 0 else 0.0,
            "ok_rps": round(ok_rps, 2),
            "tokens_per_s": (None if tokens_per_request is None
                             else round(ok_rps * tokens_per_request, 1)),
            "seconds": round(self.active_s, 3),
        }


def merge_errors(into: dict[str, Any], errors: dict[str, Any]) -> None:
    """Add a `LoadReport.errors` (kind → count, or kind → {status: count}) into `into`."""
    for kind, value in errors.items():
        if isinstance(value, dict):
            acc = Counter(into.get(kind) or {})
            acc.update(value)
            into[kind] = dict(sorted(acc.items()))
        else:
            into[kind] = (into.get(kind) or 0) + value


def added_latency(through: dict[str, Any], direct: dict[str, Any]) -> dict[str, float | None]:
    """Through-balancer minus direct, per percentile (ms)."""
    out: dict[str, float | None] = {}
    for q in PERCENTILES:
        a, b = through.get(q), direct.get(q)
        out[q] = None if a is None or b is None else round(a - b, 3)
    return out


# ------------------------------------------------------------------ running


Progress = Callable[[str], None]


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Runner:
    """Runs the rates in one event loop; `progress` gets one line per second."""

    def __init__(self, target: Target, plan: InputPlan, *, duration_s: float, direct: bool,
                 deadline_s: float, progress: Progress | None) -> None:
        self.target = target
        self.plan = plan
        self.duration_s = duration_s
        self.direct = direct
        self.deadline_s = deadline_s
        self.progress = progress
        self._live: list[LoadGen] = []
        self._label = ""
        self._t0 = 0.0

    def _spec(self, url: str, rate: float, seconds: float) -> LoadSpec:
        return LoadSpec(url=url, rate=rate, duration_s=seconds, model=self.target.model,
                        api_key=self.target.api_key, deadline_s=self.deadline_s,
                        text=self.plan.text, batch=self.plan.batch, rid_prefix="bench",
                        vary_prefix=self.plan.vary,
                        max_connections=256)

    async def _ticker(self, rate: float, total_s: float) -> None:
        while True:
            await asyncio.sleep(1.0)
            gens = list(self._live)
            if not gens or self.progress is None:
                continue
            snaps = [g.snapshot() for g in gens]
            sent = sum(s.sent for s in snaps)
            ok = sum(s.ok for s in snaps)
            err = sum(s.errors for s in snaps)
            p95 = max((s.recent_p95_ms for s in snaps if s.recent_p95_ms is not None),
                      default=None)
            elapsed = time.monotonic() - self._t0
            self.progress(f"[bench] rate {rate:g}/s {self._label:<8} {elapsed:5.1f}/{total_s:.0f}s "
                          f"sent {sent} ok {ok} err {err} in-flight "
                          f"{sum(s.in_flight for s in snaps)} p95 "
                          f"{'-' if p95 is None else f'{p95:.1f}'} ms")

    async def _slice(self, label: str, specs: list[LoadSpec], into: PathStats,
                     per_worker: list[PathStats] | None) -> None:
        gens = [LoadGen(s) for s in specs]
        self._live = gens
        self._label = label
        t0 = time.monotonic()
        reports = await asyncio.gather(*(g.run() for g in gens))
        into.active_s += time.monotonic() - t0
        into.send_s += max((_send_s(r) for r in reports), default=0.0)
        for i, (g, r) in enumerate(zip(gens, reports)):
            into.add(g, r)
            if per_worker is not None:
                per_worker[i].add(g, r)
                per_worker[i].active_s += r.duration_s
                per_worker[i].send_s += _send_s(r)
        self._live = []

    async def run_rate(self, rate: float) -> dict[str, Any]:
        """One rate: the balancer (or URL) run, and the interleaved direct run."""
        through = PathStats()
        direct = PathStats() if self.direct else None
        workers = self.target.workers
        per_worker = [PathStats() for _ in workers] if self.direct else None
        slices = max(1, round(self.duration_s / SLICE_S)) if self.direct else 1
        slice_s = self.duration_s / slices
        total = self.duration_s * (2 if self.direct else 1)
        self._t0 = time.monotonic()
        cpu0 = _cpu_s()
        ticker = asyncio.ensure_future(self._ticker(rate, total))
        try:
            for i in range(slices):
                steps: list[tuple[str, Any]] = [("balancer", None)]
                if direct is not None:
                    steps = [("balancer", None), ("direct", None)]
                    if i % 2:
                        steps.reverse()
                for label, _ in steps:
                    if label == "balancer":
                        await self._slice("through" if self.target.source == "fleet" else "url",
                                          [self._spec(self.target.url, rate, slice_s)],
                                          through, None)
                    else:
                        assert direct is not None
                        share = rate / len(workers)
                        await self._slice("direct", [self._spec(w["url"], share, slice_s)
                                                     for w in workers], direct, per_worker)
        finally:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
        wall = time.monotonic() - self._t0
        tpr = self.plan.tokens_per_request
        row = {"rate": rate, **through.to_json(tpr),
               "client_cpu_pct": round(100 * (_cpu_s() - cpu0) / wall, 1) if wall > 0 else None,
               "direct": None, "added_latency_ms": None}
        if direct is not None and per_worker is not None:
            d = direct.to_json(tpr)
            d["workers"] = [{"name": w["name"], "url": w["url"], **s.to_json(tpr)}
                            for w, s in zip(workers, per_worker)]
            row["direct"] = d
            row["added_latency_ms"] = added_latency(row["latency_ms"], d["latency_ms"])
        if self.progress is not None:
            lat = row["latency_ms"]
            self.progress(f"[bench] rate {rate:g}/s done: sent {row['sent']} ok {row['ok']} "
                          f"err {row['error_total']} p50 {lat['p50']} p99 {lat['p99']} ms")
        return row


def _send_s(report: LoadReport) -> float:
    """The span a generator spent sending (its achieved rate's denominator)."""
    return report.sent / report.achieved_rps if report.achieved_rps > 0 else 0.0


def find_max_verdict(row: dict[str, Any], bound_ms: float) -> str | None:
    """Why a --find-max step failed, or None when it passed."""
    if row["error_total"]:
        return f"{row['error_total']} errors at {row['rate']:g}/s"
    p99 = row["latency_ms"]["p99"]
    if p99 is None:
        return f"no successful request at {row['rate']:g}/s"
    if p99 > bound_ms:
        return f"P99 {p99:g} ms > {bound_ms:g} ms at {row['rate']:g}/s"
    if row["achieved_rps"] < 0.9 * row["rate"]:
        return (f"the load generator sent only {row['achieved_rps']:g}/s of {row['rate']:g}/s "
                "(client-bound: the limit measured is this machine's, not the fleet's)")
    return None


def next_rate(rate: float) -> float:
    """The next --find-max step."""
    return float(math.ceil(rate * FIND_MAX_FACTOR))


async def run_all(runner: Runner, rates: list[float], *, find_max: bool, bound_ms: float,
                  max_rate: float) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Every rate (or the --find-max ladder): the per-rate rows and the find-max verdict."""
    rows: list[dict[str, Any]] = []
    if not find_max:
        for rate in rates:
            rows.append(await runner.run_rate(rate))
        return rows, None
    rate = rates[0]
    best: float | None = None
    reason = f"reached --max-rate {max_rate:g}/s"
    while rate <= max_rate:
        row = await runner.run_rate(rate)
        rows.append(row)
        why = find_max_verdict(row, bound_ms)
        if why is not None:
            reason = why
            break
        best = rate
        rate = next_rate(rate)
    return rows, {"p99_bound_ms": bound_ms, "max_rate_passed": best, "stopped_because": reason}


# ------------------------------------------------------------------ report


def machine() -> dict[str, Any]:
    """Where the figures came from."""
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "loadavg_1m": round(os.getloadavg()[0], 2)}


def _err_text(errors: dict[str, Any]) -> str:
    parts = []
    for kind, v in errors.items():
        if isinstance(v, dict):
            parts += [f"{kind} {code}x{n}" for code, n in v.items()]
        elif v:
            parts.append(f"{kind} {v}")
    return ", ".join(parts)


def format_table(report: dict[str, Any]) -> str:
    """The human-readable report."""
    t, inp = report["target"], report["input"]
    where = (f"fleet {t['fleet']} via {t['balancer']} {t['url']}" if t["source"] == "fleet"
             else t["url"])
    tok = inp["tokens_per_input"]
    lines = [f"embedops bench: {where}, model {t['model']}",
             f"input {inp['kind']} ({'?' if tok is None else f'{tok:g}'} tokens/input), "
             f"batch {inp['batch']}; {report['duration_s']:g} s per rate"
             + (", interleaved with direct runs" if report["direct"] else "")]
    head = (f"{'RATE':>7}{'SENT':>8}{'OK':>8}{'ERR':>6}{'P50 ms':>9}{'P95 ms':>9}{'P99 ms':>9}"
            f"{'REQ/S':>9}{'TOK/S':>10}")
    if report["direct"]:
        head += f"{'D-P50':>8}{'D-P99':>8}{'+P50':>8}{'+P99':>8}"
    lines.append(head)

    def f(v: Any, spec: str = ".1f") -> str:
        return "-" if v is None else format(v, spec)

    for r in report["runs"]:
        lat = r["latency_ms"]
        line = (f"{r['rate']:>7g}{r['sent']:>8}{r['ok']:>8}{r['error_total']:>6}"
                f"{f(lat['p50'], '.2f'):>9}{f(lat['p95'], '.2f'):>9}{f(lat['p99'], '.2f'):>9}"
                f"{r['ok_rps']:>9.1f}{f(r['tokens_per_s'], '.0f'):>10}")
        if report["direct"] and r["direct"]:
            d, a = r["direct"]["latency_ms"], r["added_latency_ms"]
            line += (f"{f(d['p50'], '.2f'):>8}{f(d['p99'], '.2f'):>8}"
                     f"{f(a['p50'], '+.2f'):>8}{f(a['p99'], '+.2f'):>8}")
        lines.append(line)
    for r in report["runs"]:
        if r["error_total"]:
            lines.append(f"errors at {r['rate']:g}/s: {_err_text(r['errors'])}")
        if r["direct"] and r["direct"]["error_total"]:
            lines.append(f"direct errors at {r['rate']:g}/s: {_err_text(r['direct']['errors'])}")
    fm = report.get("find_max")
    if fm:
        best = fm["max_rate_passed"]
        lines.append(f"find-max: {'no rate passed' if best is None else f'{best:g} req/s'} "
                     f"within P99 <= {fm['p99_bound_ms']:g} ms; stopped: {fm['stopped_because']}")
    cpu = max((r["client_cpu_pct"] or 0 for r in report["runs"]), default=0)
    if cpu >= 80:
        lines.append(f"note: the load generator used up to {cpu:.0f}% of a core; at that point "
                     "the client, not the fleet, may be the limit")
    return "\n".join(lines)


# ------------------------------------------------------------------ entry


def resolve_target(args: argparse.Namespace, snapshot_of: Callable[[], dict[str, Any]]
                   ) -> Target:
    """The target from ``--url`` (+ ``--worker-url``) or the fleet's snapshot."""
    api_key = os.environ.get("EMBEDOPS_API_KEY") or None
    if args.url:
        url = check_url(args.url)
        workers = [{"name": urlsplit(u).netloc, "url": check_url(u, "--worker-url")}
                   for u in args.worker_url]
        if args.direct and not workers:
            raise BenchError("--direct with --url needs the workers behind it: "
                             "--worker-url URL (repeatable)")
        target = Target(url=url, source="url", workers=workers, api_key=api_key)
    else:
        if args.worker_url:
            raise BenchError("--worker-url goes with --url (a fleet's workers come from its "
                             "supervisor)")
        target = fleet_target(snapshot_of())
        target.api_key = api_key
        if args.direct and not target.workers:
            raise BenchError(f"--direct: no worker of fleet {target.fleet!r} is routed")
    return target


def run(args: argparse.Namespace, snapshot_of: Callable[[], dict[str, Any]]) -> int:
    """``embedops bench``; `snapshot_of` fetches the fleet's snapshot (not called with
    ``--url``). Returns 0 once the benchmark ran (errors are part of the report)."""
    rates = args.rate or [50.0]
    if not args.rate and not args.find_max:
        rates = [50.0, 100.0, 200.0]
    if args.find_max and len(rates) > 1:
        raise BenchError("--find-max takes one starting --rate")
    target = resolve_target(args, snapshot_of)
    progress = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    timeout = httpx.Timeout(max(args.deadline_s, 30.0), connect=5.0)
    with httpx.Client(timeout=timeout) as client:
        _reach(client, target.url, "--url" if target.source == "url" else "balancer")
        info_urls = [w["url"] for w in target.workers] or [target.url]
        if target.source == "url":
            info_urls = [target.url, *info_urls]
        target.model = args.model or discover_model(client, [target.url, *info_urls]) or "default"
        target.input_limit, target.input_limit_source = discover_input_limit(client, info_urls)
        plan = plan_input(client, target, args.input, args.batch, vary=not args.same_input)
    if progress is not None:
        progress(f"[bench] {target.url} model {target.model}: input {plan.kind} "
                 f"({plan.tokens_per_request} tokens/request), rates "
                 f"{', '.join(f'{r:g}' for r in rates)}{' and up' if args.find_max else ''}")
    runner = Runner(target, plan, duration_s=args.duration, direct=args.direct,
                    deadline_s=args.deadline_s, progress=progress)
    rows, fm = eventloop.run(run_all(runner, rates, find_max=args.find_max,
                                 bound_ms=args.p99_bound_ms, max_rate=args.max_rate))
    report = {"schema": REPORT_SCHEMA, "target": target.to_json(), "input": plan.to_json(),
              "duration_s": args.duration, "direct": bool(args.direct),
              "mode": "find_max" if args.find_max else "rates", "runs": rows, "find_max": fm,
              "machine": machine()}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_table(report))
    return 0


__all__ = ["REPORT_SCHEMA", "BenchError", "InputPlan", "PathStats", "Runner", "Target",
           "add_arguments", "added_latency", "check_url", "find_max_verdict", "fleet_target",
           "format_table", "merge_errors", "next_rate", "parse_rates", "resolve_target", "run"]
