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

import httpx

from backends import balancer_process as bp
from backends.balancer import (
    BalancerError,
    DrainResult,
    RoutedWorker,
    drain_with,
    normalize_url,
)
from backends.procs import ProcessIdentity
from backends.promtext import MetricsParseError, parse_metrics
from console.model import LaunchCommand

__all__ = ["RouterSettings", "SglangRouter"]

_CB_STATES = {0: "closed", 1: "open", 2: "half_open"}


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

    def __init__(self, settings: RouterSettings, state_dir: Path, *,
                 http: httpx.AsyncClient | None = None) -> None:
        self.settings = settings
        self.state_dir = Path(state_dir)
        self.log_path = self.state_dir / "router.log"
        self._identity: ProcessIdentity | None = None
        self._http = http
        self._own_http = http is None
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
                    identity: ProcessIdentity, *,
                    http: httpx.AsyncClient | None = None) -> SglangRouter:
        """Attach to a running router: identity must verify, listen on the port, answer."""
        bp.check_adoptable(identity, settings.host, settings.port, "sglang-router")
        router = cls(settings, state_dir, http=http)
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
        """Close the HTTP client; the router keeps running."""
        if self._http is not None and self._own_http:
            await self._http.aclose()
            self._http = None

    async def healthy(self) -> bool:
        """The router process is the recorded one and ``/liveness`` answers 200."""
        if self._identity is None or not bp.alive(self._identity):
            return False
        return await self._live()

    # -- membership ------------------------------------------------------------------

    async def list(self) -> builtins.list[RoutedWorker]:
        """Registered workers (router order), then add jobs still pending."""
        raw = await self._workers_raw()
        circuits = await self._circuits()
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
        for w in await self.list():
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
                return self._routed(w, await self._circuits())
        wid = self._pending.get(url)
        if wid is not None:
            job = await self._get(wid)
            if job is None or _job(job) != ("AddWorker", "processing"):
                wid = None
        if wid is None:
            body: dict[str, Any] = {"url": url}
            if api_key:
                body["api_key"] = api_key
            r = await self._request("POST", "/workers", json=body)
            if r.status_code != 202:
                raise BalancerError(f"POST /workers {url}: HTTP {r.status_code} "
                                    f"{r.text[:300]}")
            wid = str(r.json()["worker_id"])
            self._pending[url] = wid
        deadline = time.monotonic() + wait_s
        while True:
            for w in await self._workers_raw():
                if w.get("url") == url:
                    self._pending.pop(url, None)
                    return self._routed(w, await self._circuits())
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
                                f"{r.text[:300]}")
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

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self.settings.api_timeout_s)
            self._own_http = True
        return self._http

    async def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            return await self._client().request(method, self.url + path, **kw)
        except httpx.HTTPError as e:
            raise BalancerError(f"sglang-router {method} {path}: "
                                f"{type(e).__name__}: {e}") from e

    async def _live(self) -> bool:
        try:
            r = await self._client().get(self.url + "/liveness", timeout=2.0)
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    async def _workers_raw(self) -> builtins.list[dict[str, Any]]:
        r = await self._request("GET", "/workers")
        if r.status_code != 200:
            raise BalancerError(f"GET /workers: HTTP {r.status_code} {r.text[:300]}")
        return builtins.list(r.json().get("workers", []))

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
            raise BalancerError(f"GET /workers/{wid}: HTTP {r.status_code} {r.text[:300]}")
        return dict(r.json())

    async def _circuits(self) -> dict[str, str]:
        """Worker URL → circuit state from the Prometheus port ({} when unreadable)."""
        try:
            r = await self._client().get(self.prometheus_url, timeout=2.0)
            snap = parse_metrics(r.text, content_type=r.headers.get("content-type"))
        except (httpx.HTTPError, MetricsParseError):
            return {}
        out: dict[str, str] = {}
        for s in snap.samples("smg_worker_cb_state"):
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


def _job(worker: dict[str, Any]) -> tuple[str, str] | None:
    js = worker.get("job_status")
    if not isinstance(js, dict):
        return None
    return str(js.get("job_type")), str(js.get("status"))
