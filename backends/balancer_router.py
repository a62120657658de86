"""sglang-router 0.3.2 adapter: detached router process + its ``/workers`` REST API.

Router API facts this relies on (reference/balancer.md §5, re-checked against 0.3.2):

* ``POST /workers {"url": …}`` → 202 with ``worker_id`` (a UUID) and a background
  AddWorker job. The worker shows up in ``GET /workers`` only once the job registered
  it; until then ``GET /workers/{id}`` shows ``job_status.status == "processing"``.
  A second POST for a URL the router already knows returns the same id and queues a
  job that fails with "already exists" (harmless, but logged), so `add` looks first.
* ``DELETE /workers/{id}`` → 202, removal runs in the background; 404 when unknown.
  Ids must be UUIDs (a URL, encoded or not, is a 400). A DELETE while the add job is
  still retrying does **not** cancel it: the worker is registered when it comes up.
* ``GET /liveness`` → 200 "OK" whenever the router runs (``/readiness`` is 503 without
  healthy workers, and the router logs that 503 as an error, so it is not used).
* Circuit breaker state is only on the Prometheus port: ``smg_worker_cb_state``
  (0 closed, 1 open, 2 half-open; -1 for a worker that was removed).

The supervisor calls `healthy` and `list` about every second, so every request goes
over the lean keep-alive client of `backends.http1` (httpx costs ~10x the CPU), and
the Prometheus page is read at most once per `prometheus` ``max_age_s``, parsed for
the few families used here (`list`'s circuit states, the supervisor's latency).
"""

from __future__ import annotations

import asyncio
import builtins
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from backends import balancer_process as bp
from backends import http1
from backends.balancer import (
    BalancerError,
    DrainResult,
    RoutedWorker,
    drain_with,
    normalize_url,
)
from backends.procs import ProcessIdentity
from backends.promtext import MetricsParseError, MetricsSnapshot, parse_metrics
from console.model import LaunchCommand

__all__ = ["CB_STATE", "REQUEST_DURATION", "RouterSettings", "SglangRouter"]

_CB_STATES = {0: "closed", 1: "open", 2: "half_open"}

#: circuit breaker state per worker (Prometheus port)
CB_STATE = "smg_worker_cb_state"
#: the router's client request-duration histogram (Prometheus port)
REQUEST_DURATION = "smg_router_request_duration_seconds"
#: how stale `list`'s circuit states may be (the supervisor lists every ~1 s and also
#: reads the page itself each scrape cycle, which refreshes the cache)
_CIRCUITS_MAX_AGE_S = 2.0
_LIVENESS_TIMEOUT_S = 2.0
_PROMETHEUS_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class _Page:
    """The Prometheus page as last read: when, its text, and its parse so far."""

    read_at: float  # http1.now() when the read began
    text: str
    families: frozenset[str]
    snapshot: MetricsSnapshot


# `python -m sglang_router.launch_router` without its import of the Python debug
# balancer (mini_lb pulls in fastapi and aiohttp: ~0.6 s of a ~0.65 s start-up on a
# 2-core box, all of it a refused-connection window when the router is replaced). Same
# parser, validation, proctitle and Rust router as launch_router.main in 0.3.2.
LAUNCH_CODE = (
    "import argparse, sys, setproctitle\n"
    "from sglang_router.router_args import RouterArgs\n"
    "from sglang_router.router import Router\n"
    "p = argparse.ArgumentParser(prog='sglang-router')\n"
    "RouterArgs.add_cli_args(p, use_router_prefix=False)\n"
    "a = RouterArgs.from_cli_args(p.parse_args(sys.argv[1:]), use_router_prefix=False)\n"
    "setproctitle.setproctitle('sglang::router')\n"
    "a._validate_router_args()\n"
    "Router.from_args(a).start()\n"
)


@dataclass(frozen=True)
class RouterSettings:
    """How to run sglang-router; defaults are the tuned values of reference/balancer.md §2."""

    port: int = 8000
    prometheus_port: int = 29000
    host: str = "127.0.0.1"
    policy: str = "round_robin"
    log_level: str = "warn"
    request_timeout_s: int = 60
    """Longest legitimate embedding request; a hung worker holds requests this long."""
    health_check_interval_s: int = 2
    health_check_timeout_s: int = 3
    """Keep ≥ 2 s for real SGLang: its /health runs a request and sleeps 1 s."""
    health_failure_threshold: int = 2
    health_success_threshold: int = 1
    cb_failure_threshold: int = 3
    cb_timeout_s: int = 10
    retry_max_retries: int = 5
    """Total attempts per request (not retries after the first)."""
    shutdown_grace_s: int = 10
    """Router's own wait for in-flight requests after SIGTERM."""
    worker_startup_timeout_s: int = 10
    """How long the router's own registration job retries a `start(workers=…)` URL
    that does not answer (0.3.2 opens its port at once and registers these in the
    background; it does not wait for them)."""
    worker_startup_check_interval_s: int = 1
    start_timeout_s: float = 30.0
    api_timeout_s: float = 5.0
    python: str = sys.executable
    duration_buckets_s: tuple[float, ...] = ()
    """`--prometheus-duration-buckets` (seconds) of the router's request-duration
    histograms; empty keeps the router's defaults (which have no 1.2 s edge)."""

    @property
    def url(self) -> str:
        """Client-facing base URL."""
        return f"http://{self.host}:{self.port}"

    def launch(self, worker_urls: Sequence[str] = ()) -> LaunchCommand:
        """The router's argv and environment; `worker_urls` are registered at start-up."""
        argv: tuple[str, ...] = (
            self.python, "-c", LAUNCH_CODE,
            "--host", self.host, "--port", str(self.port),
            "--prometheus-host", self.host, "--prometheus-port", str(self.prometheus_port),
            "--policy", self.policy, "--log-level", self.log_level,
            "--request-timeout-secs", str(self.request_timeout_s),
            "--health-check-interval-secs", str(self.health_check_interval_s),
            "--health-check-timeout-secs", str(self.health_check_timeout_s),
            "--health-failure-threshold", str(self.health_failure_threshold),
            "--health-success-threshold", str(self.health_success_threshold),
            "--cb-failure-threshold", str(self.cb_failure_threshold),
            "--cb-timeout-duration-secs", str(self.cb_timeout_s),
            "--retry-max-retries", str(self.retry_max_retries),
            "--shutdown-grace-period-secs", str(self.shutdown_grace_s),
            "--worker-startup-timeout-secs", str(self.worker_startup_timeout_s),
            "--worker-startup-check-interval", str(self.worker_startup_check_interval_s),
        )
        if worker_urls:
            argv += ("--worker-urls", *(normalize_url(u) for u in worker_urls))
        if self.duration_buckets_s:
            argv += ("--prometheus-duration-buckets", *(f"{b:g}" for b in self.duration_buckets_s))
        # The router fetches each worker's tokenizer from the HF hub at registration;
        # keep it offline and point any attempt at a closed loopback port.
        env = {"HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
        return LaunchCommand(argv=argv, env=env)


class SglangRouter:
    """`Balancer` on sglang-router 0.3.2."""

    kind = "sglang-router"

    def __init__(self, settings: RouterSettings, state_dir: Path) -> None:
        self.settings = settings
        self.state_dir = Path(state_dir)
        self.log_path = self.state_dir / "router.log"
        self._identity: ProcessIdentity | None = None
        # two connections: a liveness check does not queue behind a slow /workers call
        self._api = http1.Client(settings.url, connections=2)
        self._prom = http1.Client(f"http://{settings.host}:{settings.prometheus_port}",
                                  connections=2)
        self._page: _Page | None = None
        self._pending: dict[str, str] = {}  # url -> worker id of add jobs we queued

    # -- process ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Client-facing base URL."""
        return self.settings.url

    @property
    def prometheus_url(self) -> str:
        """The router's own Prometheus endpoint (``smg_*`` metrics)."""
        return f"http://{self.settings.host}:{self.settings.prometheus_port}/metrics"

    @property
    def identity(self) -> ProcessIdentity | None:
        """Identity of the router process (record it to adopt the router later)."""
        return self._identity

    @classmethod
    async def adopt(cls, settings: RouterSettings, state_dir: Path,
                    identity: ProcessIdentity) -> SglangRouter:
        """Attach to a running router: identity must verify, listen on the port, answer."""
        bp.check_adoptable(identity, settings.host, settings.port, "sglang-router")
        router = cls(settings, state_dir)
        router._identity = identity
        if not await router._live():
            await router.close()
            raise BalancerError(f"sglang-router pid {identity.pid} does not answer "
                                f"{settings.url}/liveness")
        return router

    async def start(self, workers: Sequence[str] = ()) -> None:
        """Spawn the router detached (own session) and wait until it answers.

        `workers` (URLs of workers that need no API key) go on ``--worker-urls``: the
        router registers them by itself right after it opens its port (~1 s each, in
        parallel: its registration probes the worker's ``/health``), with no
        ``POST /workers`` round trips. `start` does not wait for them; `list` shows
        them once registered. ``--worker-urls`` cannot carry a per-worker key (the
        router's ``--api-key`` would also lock clients out), so keyed workers must be
        added with `add`.
        """
        if self._identity is not None and bp.alive(self._identity):
            raise BalancerError("sglang-router already started by this object")
        s = self.settings
        for port in (s.port, s.prometheus_port):
            if bp.port_in_use(s.host, port):
                raise BalancerError(f"port {s.host}:{port} is already in use")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._identity = await bp.spawn_until_ready(
            s.launch(workers), self.log_path, self._live, timeout_s=s.start_timeout_s,
            what="sglang-router", cwd=self.state_dir, listen=(s.host, s.port))

    async def stop(self) -> None:
        """Stop the router's process group (SIGTERM, then SIGKILL after the grace)."""
        try:
            if self._identity is not None:
                await bp.stop_process(self._identity,
                                      grace_s=self.settings.shutdown_grace_s + 5.0,
                                      what="sglang-router")
        finally:
            self._pending.clear()
            await self.close()

    async def close(self) -> None:
        """Close the HTTP connections; the router keeps running."""
        self._api.close()
        self._prom.close()
        self._page = None

    async def healthy(self) -> bool:
        """The router process is the recorded one and ``/liveness`` answers 200."""
        if self._identity is None or not bp.alive(self._identity):
            return False
        return await self._live()

    # -- membership ------------------------------------------------------------------

    async def list(self) -> builtins.list[RoutedWorker]:
        """Registered workers (router order), then add jobs still pending.

        Circuit states may be up to 2 s old (the Prometheus page is cached); `state`
        reads them fresh."""
        return await self._list(_CIRCUITS_MAX_AGE_S)

    async def _list(self, circuits_max_age_s: float) -> builtins.list[RoutedWorker]:
        raw = await self._workers_raw()
        circuits = await self._circuits(circuits_max_age_s)
        out = [self._routed(w, circuits) for w in raw]
        known = {w.url for w in out}
        for url, wid in builtins.list(self._pending.items()):
            if url in known:
                del self._pending[url]
                continue
            job = await self._get(wid)
            if job is not None and _job(job) == ("AddWorker", "processing"):
                out.append(RoutedWorker(url=url, healthy=False, worker_id=wid, pending=True))
            else:
                del self._pending[url]
        return out

    async def state(self, url: str) -> RoutedWorker | None:
        """One worker's state, or ``None`` when the router does not know it."""
        url = normalize_url(url)
        for w in await self._list(0.0):
            if w.url == url:
                return w
        return None

    async def add(self, url: str, *, api_key: str | None = None,
                  wait_s: float = 10.0) -> RoutedWorker:
        """Register a worker and wait (up to `wait_s`) until the router lists it.

        Idempotent: a URL the router already lists is returned as is. If the worker is
        not up yet the router keeps retrying in the background; after `wait_s` the
        returned state has ``pending=True``. `api_key` is what the router sends to
        this worker (``Authorization: Bearer``). Raises `BalancerError` when the router
        refuses the worker or its add job fails.
        """
        url = normalize_url(url)
        for w in await self._workers_raw():
            if w.get("url") == url:
                return self._routed(w, await self._circuits(0.0))
        wid = self._pending.get(url)
        if wid is not None:
            job = await self._get(wid)
            if job is None or _job(job) != ("AddWorker", "processing"):
                wid = None
        if wid is None:
            body: dict[str, Any] = {"url": url}
            if api_key:
                body["api_key"] = api_key
            r = await self._request("POST", "/workers", body=orjson.dumps(body))
            if r.status_code != 202:
                raise BalancerError(f"POST /workers {url}: HTTP {r.status_code} "
                                    f"{_text(r)}")
            wid = str(_json(r, "POST /workers")["worker_id"])
            self._pending[url] = wid
        deadline = time.monotonic() + wait_s
        while True:
            for w in await self._workers_raw():
                if w.get("url") == url:
                    self._pending.pop(url, None)
                    return self._routed(w, await self._circuits(0.0))
            job = await self._get(wid)
            kind_status = _job(job) if job is not None else None
            if kind_status is not None and kind_status[1] == "failed":
                self._pending.pop(url, None)
                msg = (job or {}).get("job_status", {}).get("message")
                raise BalancerError(f"sglang-router did not add {url}: {msg}")
            if time.monotonic() >= deadline:
                return RoutedWorker(url=url, healthy=False, worker_id=wid, pending=True)
            await asyncio.sleep(0.05)

    async def remove(self, url: str, *, wait_s: float = 5.0) -> bool:
        """Delete a worker and wait until the router no longer lists it (the ack).

        Returns False when the router did not know the worker. A worker whose add job
        is still pending cannot be cancelled by the router: this waits up to `wait_s`
        for the job to settle and then deletes the worker; if the job is still retrying
        it raises `BalancerError` (the worker would join as soon as it answers).
        """
        url = normalize_url(url)
        deadline = time.monotonic() + wait_s
        wid = await self._id_of(url)
        if wid is None and url in self._pending:
            pending_id = self._pending[url]
            while wid is None:
                job = await self._get(pending_id)
                if job is None or _job(job) != ("AddWorker", "processing"):
                    self._pending.pop(url, None)
                    wid = await self._id_of(url)
                    break
                if time.monotonic() >= deadline:
                    raise BalancerError(
                        f"{url}: its add job is still retrying and sglang-router cannot "
                        "cancel it; stop the worker or retry remove later")
                await asyncio.sleep(0.1)
        if wid is None:
            return False
        r = await self._request("DELETE", f"/workers/{wid}")
        if r.status_code == 404:
            return False
        if r.status_code != 202:
            raise BalancerError(f"DELETE /workers/{wid} ({url}): HTTP {r.status_code} "
                                f"{_text(r)}")
        while True:
            if await self._id_of(url) is None:
                return True
            if time.monotonic() >= deadline:
                raise BalancerError(f"{url} still listed {wait_s:g}s after DELETE")
            await asyncio.sleep(0.02)

    async def drain(self, url: str, running_requests: Callable[[], Awaitable[int | None]],
                    *, timeout_s: float, poll_s: float = 0.2) -> DrainResult:
        """`remove`, then wait until `running_requests()` reads 0 (twice), bounded."""
        url = normalize_url(url)
        return await drain_with(url, lambda: self.remove(url), running_requests,
                                timeout_s=timeout_s, poll_s=poll_s)

    # -- HTTP ------------------------------------------------------------------------

    async def _request(self, method: str, path: str, *,
                       body: bytes | None = None) -> http1.Reply:
        timeout = self.settings.api_timeout_s
        try:
            r, _ = await self._api.request(method, path, timeout_s=timeout, body=body,
                                           accept="application/json")
        except http1.ERRORS as e:
            raise BalancerError(f"sglang-router {method} {path}: "
                                f"{http1.describe(e, timeout)}") from e
        return r

    async def _live(self) -> bool:
        try:
            r, _ = await self._api.request("GET", "/liveness", timeout_s=_LIVENESS_TIMEOUT_S)
        except http1.ERRORS:
            return False
        return r.status_code == 200

    async def _workers_raw(self) -> builtins.list[dict[str, Any]]:
        r = await self._request("GET", "/workers")
        if r.status_code != 200:
            raise BalancerError(f"GET /workers: HTTP {r.status_code} {_text(r)}")
        return builtins.list(_json(r, "GET /workers").get("workers", []))

    async def _id_of(self, url: str) -> str | None:
        for w in await self._workers_raw():
            if w.get("url") == url:
                return str(w["id"])
        return None

    async def _get(self, wid: str) -> dict[str, Any] | None:
        r = await self._request("GET", f"/workers/{wid}")
        if r.status_code == 404:
            return None
        if r.status_code != 200:
            raise BalancerError(f"GET /workers/{wid}: HTTP {r.status_code} {_text(r)}")
        return dict(_json(r, f"GET /workers/{wid}"))

    async def prometheus(self, *, max_age_s: float,
                         families: Sequence[str] = ()) -> MetricsSnapshot | None:
        """The router's Prometheus page, read at most once per `max_age_s` (0: now),
        parsed for `families` (names as `parse_metrics` takes them) and for the ones
        this adapter uses itself, `CB_STATE` and `REQUEST_DURATION`, so one read serves
        every caller. None when the page cannot be read or parsed (not cached)."""
        want = frozenset(families) | {CB_STATE, REQUEST_DURATION}
        page = self._page
        if page is not None and http1.now() - page.read_at < max_age_s:
            if want <= page.families:
                return page.snapshot
            text, read_at = page.text, page.read_at
        else:
            read_at = http1.now()
            try:
                r, _ = await self._prom.request("GET", "/metrics",
                                                timeout_s=_PROMETHEUS_TIMEOUT_S,
                                                accept="text/plain")
            except http1.ERRORS:
                return None
            if r.status_code != 200:
                return None
            text = r.content.decode("utf-8", "replace")
        try:
            # the format follows the body (the router sends Prometheus text)
            snapshot = parse_metrics(text, families=want)
        except MetricsParseError:
            return None
        self._page = _Page(read_at, text, want, snapshot)
        return snapshot

    async def _circuits(self, max_age_s: float) -> dict[str, str]:
        """Worker URL → circuit state from the Prometheus port ({} when unreadable)."""
        snap = await self.prometheus(max_age_s=max_age_s)
        if snap is None:
            return {}
        out: dict[str, str] = {}
        for s in snap.samples(CB_STATE):
            state = _CB_STATES.get(int(s.value))
            if state is not None and "worker" in s.labels:
                out[s.labels["worker"]] = state
        return out

    @staticmethod
    def _routed(w: dict[str, Any], circuits: dict[str, str]) -> RoutedWorker:
        url = str(w.get("url"))
        load = w.get("load")
        return RoutedWorker(url=url, healthy=bool(w.get("is_healthy")),
                            worker_id=str(w.get("id")),
                            load=int(load) if isinstance(load, int) else None,
                            circuit=circuits.get(url))


def _text(r: http1.Reply) -> str:
    return r.content.decode("utf-8", "replace")[:300]


def _json(r: http1.Reply, what: str) -> Any:
    try:
        return orjson.loads(r.content)
    except orjson.JSONDecodeError as e:
        raise BalancerError(f"sglang-router {what}: invalid JSON: {e}") from None


def _job(worker: dict[str, Any]) -> tuple[str, str] | None:
    js = worker.get("job_status")
    if not isinstance(js, dict):
        return None
    return str(js.get("job_type")), str(js.get("status"))
