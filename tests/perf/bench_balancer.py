"""Benchmark: latency the balancer adds (sglang-router, nginx) over calling a worker directly.

Run: ``.venv/bin/python tests/perf/bench_balancer.py [--requests 2000] [--runs 3]``

Method (reference/balancer.md §8): three simulated workers with zero model latency
(so the worker itself is as fast and steady as it gets), sglang-router
(`backends.balancer_router`, the project's settings, round robin) and, when the binary is
installed, nginx (`backends.balancer_nginx`) in front of the same three. One client,
sequential requests, keep-alive on every path (``http.client``, no pooling logic in the
way); per iteration one request to each target, in an order rotated every iteration so
no target always goes first; 100 warm-up requests per target. "Direct" rotates over
the three workers too, so every path reaches the same workers equally often.
Reports per run and target P50/P90/P99/mean and the added P50/P99 (balancer minus
direct), and medians over runs. Target: sglang-router added P50 ≤ 1 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from backends.balancer_nginx import Nginx, NginxSettings
from backends.balancer_router import RouterSettings, SglangRouter
from backends.sim.loadgen import percentile
from tests.conftest import free_port

MODEL = "sim-embed"
BODY = json.dumps({"model": MODEL, "input": "the quick brown fox"}).encode()
TARGET_ROUTER_ADDED_P50_MS = 1.0


def start_workers(n: int, logdir: Path) -> tuple[list[subprocess.Popen[bytes]], list[str]]:
    """`n` sim workers in their own sessions; zero model latency."""
    procs, urls = [], []
    env = {**os.environ, "PYTHONPATH": str(REPO), "EMBEDOPS_SIM_GPU_DIR": str(logdir / "gpu")}
    for i in range(n):
        port = free_port()
        argv = [sys.executable, "-m", "backends.sim.worker", "--model-path", "sim/bench",
                "--served-model-name", MODEL, "--is-embedding", "--host", "127.0.0.1",
                "--port", str(port), "--mem-fraction-static", "0.2", "--enable-metrics",
                "--sim-load-s", "0.2", "--sim-warmup-s", "0.1", "--sim-dim", "256",
                "--sim-base-latency-ms", "0", "--sim-per-token-us", "0"]
        with open(logdir / f"w{i}.log", "ab") as log:
            procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, env=env, cwd=str(REPO),
                                          start_new_session=True))
        urls.append(f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 60
    for url in urls:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=3).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} not ready in 60 s (logs in {logdir})")
            time.sleep(0.1)
    return procs, urls


class Target:
    """One keep-alive connection per host:port of a path."""

    def __init__(self, name: str, urls: list[str]) -> None:
        self.name = name
        self.conns = [http.client.HTTPConnection(u.split("//")[1].split(":")[0],
                                                 int(u.rsplit(":", 1)[1]), timeout=10)
                      for u in urls]
        self.i = 0
        self.samples: list[float] = []
        self.errors = 0

    def one(self, record: bool = True) -> None:
        conn = self.conns[self.i % len(self.conns)]
        self.i += 1
        t0 = time.perf_counter()
        conn.request("POST", "/v1/embeddings", BODY, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        body = resp.read()
        dt = time.perf_counter() - t0
        if resp.status != 200 or b'"embedding"' not in body:
            self.errors += 1
        elif record:
            self.samples.append(dt)

    def close(self) -> None:
        for c in self.conns:
            c.close()


def stats_ms(xs: list[float]) -> dict[str, float]:
    s = sorted(xs)
    return {"n": len(s), "p50": round(percentile(s, 0.5) * 1000, 3),
            "p90": round(percentile(s, 0.9) * 1000, 3),
            "p99": round(percentile(s, 0.99) * 1000, 3),
            "mean": round(statistics.fmean(s) * 1000, 3)}


def one_run(paths: dict[str, list[str]], requests: int, warmup: int) -> dict[str, Any]:
    targets = [Target(name, urls) for name, urls in paths.items()]
    try:
        for t in targets:
            for _ in range(warmup):
                t.one(record=False)
        for i in range(requests):
            k = i % len(targets)
            for t in targets[k:] + targets[:k]:
                t.one()
        out = {t.name: {**stats_ms(t.samples), "errors": t.errors} for t in targets}
    finally:
        for t in targets:
            t.close()
    direct = out["direct"]
    for name, s in out.items():
        if name != "direct":
            s["added_p50_ms"] = round(s["p50"] - direct["p50"], 3)
            s["added_p99_ms"] = round(s["p99"] - direct["p99"], 3)
    return out


async def start_router(urls: list[str], root: Path) -> SglangRouter:
    root.mkdir(parents=True, exist_ok=True)
    router = SglangRouter(RouterSettings(port=free_port(), prometheus_port=free_port()), root)
    await router.start()
    for u in urls:
        await router.add(u)
    deadline = time.monotonic() + 30
    while True:
        routed = [w for w in await router.list() if w.routable]
        if len(routed) == len(urls):
            return router
        if time.monotonic() > deadline:
            raise RuntimeError(f"router routes {len(routed)}/{len(urls)} workers after 30 s")
        await asyncio.sleep(0.2)


async def start_nginx(urls: list[str], root: Path) -> Nginx:
    root.mkdir(parents=True, exist_ok=True)
    nginx = Nginx(NginxSettings(port=free_port()), root)
    await nginx.start()
    for u in urls:
        await nginx.add(u)
    return nginx


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000, help="measured requests per target per run")
    ap.add_argument("--warmup", type=int, default=100, help="warm-up requests per target per run")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--no-nginx", action="store_true")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-balancer-"))
    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "loadavg_1m_at_start": round(os.getloadavg()[0], 2)},
        "method": {"requests_per_target_per_run": args.requests, "warmup": args.warmup,
                   "workers": args.workers, "client": "http.client keep-alive, sequential",
                   "model_latency_ms": 0},
        "runs": []}
    procs: list[subprocess.Popen[bytes]] = []
    router: SglangRouter | None = None
    nginx: Nginx | None = None
    loop = asyncio.new_event_loop()
    try:
        procs, urls = start_workers(args.workers, root)
        router = loop.run_until_complete(start_router(urls, root / "router"))
        paths = {"direct": urls, "sglang-router": [router.url]}
        if args.no_nginx:
            result["nginx_skipped"] = "--no-nginx"
        elif shutil.which("nginx") is None:
            result["nginx_skipped"] = "nginx not on PATH (apt-get install -y nginx)"
        else:
            nginx = loop.run_until_complete(start_nginx(urls, root / "nginx"))
            paths["nginx"] = [nginx.url]
        result["versions"] = {"sglang_router": _version("sglang_router"),
                              "nginx": _nginx_version() if nginx else None}
        for r in range(args.runs):
            run = one_run(paths, args.requests, args.warmup)
            run["loadavg_1m"] = round(os.getloadavg()[0], 2)
            result["runs"].append(run)
            print(f"[bench_balancer] run {r + 1}: {json.dumps(run)}", file=sys.stderr, flush=True)
    finally:
        for b in (nginx, router):
            if b is not None:
                with contextlib.suppress(Exception):
                    loop.run_until_complete(b.stop())
                with contextlib.suppress(Exception):
                    loop.run_until_complete(b.close())
        loop.close()
        for p in procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
    runs = result["runs"]
    med: dict[str, Any] = {}
    for name in runs[0] if runs else []:
        if name == "loadavg_1m":
            continue
        keys = [k for k in runs[0][name] if k not in ("n", "errors")]
        med[name] = {k: round(statistics.median(r[name][k] for r in runs), 3) for k in keys}
        med[name]["errors"] = sum(r[name]["errors"] for r in runs)
    result["median"] = med
    if "sglang-router" in med:
        added = med["sglang-router"]["added_p50_ms"]
        result["target_router_added_p50"] = {"target_ms": TARGET_ROUTER_ADDED_P50_MS,
                                             "measured_ms": added,
                                             "met": added <= TARGET_ROUTER_ADDED_P50_MS}
    print(json.dumps(result, indent=2))
    return 0


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist.replace("_", "-"))
    except PackageNotFoundError:
        return None


def _nginx_version() -> str | None:
    nginx = shutil.which("nginx")
    if nginx is None:
        return None
    out = subprocess.run([nginx, "-v"], capture_output=True, text=True, check=False)
    return (out.stderr or out.stdout).strip().removeprefix("nginx version: ")


if __name__ == "__main__":
    raise SystemExit(main())
