"""A real control server with canned data, for the console's tests.

`StaticSupervisor` runs a real `console.control.ControlServer` on a real Unix socket in
its own thread and event loop (so it also serves apps that `snap_compare` runs in a
loop of their own). It registers the control API's routes, answers reads with a fixed
snapshot (frozen time: every age on screen is deterministic), and records every action
POST it receives as ``(path, body)`` in `posts`. It is not a mock: the console talks
HTTP over the socket to it exactly as to the supervisor.
"""

from __future__ import annotations

import asyncio
import copy
import math
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from console.control import ControlError, ControlRequest, ControlResponse, ControlServer

T0 = 1764070000.0
"""The snapshot's frozen wall-clock time."""


def _worker(name: str, **over: Any) -> dict[str, Any]:
    port = over.pop("port", 30001)
    base: dict[str, Any] = {
        "name": name, "state": "ready", "managed": True, "routed": True, "pid": 4000 + port % 100,
        "port": port, "url": f"http://127.0.0.1:{port}", "gpu": 0,
        "mem_fraction_static": 0.42, "cuda_graph": True, "max_running_requests": None,
        "chunked_prefill_size": None, "p50_ms": 9.1, "p95_ms": 14.0,
        "latency_source": "histogram", "rps": 12.0, "running": 1, "queued": 0, "errors": 0,
        "gpu_mem_mib": 34000, "restarts": 0, "uptime_s": 7265.0, "last_probe_ms": 9.0,
        "last_probe_ok": True, "action": None, "next_start_in_s": None, "drift": {},
        "warnings": [],
        "argv": ["python", "-m", "backends.sim.worker", "--model-path", "Qwen/Qwen3-Embedding-4B",
                 "--is-embedding", "--host", "127.0.0.1", "--port", str(port),
                 "--mem-fraction-static", "0.42", "--api-key", "****"],
        "log_path": f"/state/logs/{name}.log", "sim": True,
    }
    base.update(over)
    return base


def default_snapshot() -> dict[str, Any]:
    """A fleet with one worker in most situations the console must show."""
    workers = [
        _worker("w1", port=30001),
        _worker("w2", port=30002, state="draining", routed=False, running=3, rps=0.0,
                action={"name": "drain", "progress": "draining: 3 in flight",
                        "started_at": T0 - 4.0}),
        _worker("w3", port=30003, gpu=1, state="degraded", p50_ms=420.0, p95_ms=1412.0,
                rps=3.5, queued=7, errors=2, gpu_mem_mib=75800, restarts=2, uptime_s=312.0,
                mem_fraction_static=0.40, cuda_graph=False, last_probe_ok=False,
                drift={"mem_fraction_static": {"config": 0.42, "current": 0.40}},
                warnings=[("--disable-cuda-graph has no effect for embedding models "
                           "on SGLang 0.5.23")],
                argv=["python", "-m", "backends.sim.worker", "--model-path",
                      "Qwen/Qwen3-Embedding-4B", "--is-embedding", "--port", "30003",
                      "--mem-fraction-static", "0.40", "--disable-cuda-graph",
                      "--api-key", "****"]),
        _worker("w4", port=30004, gpu=1, state="backoff", routed=False, pid=None, p50_ms=None,
                p95_ms=None, rps=None, running=None, queued=None, gpu_mem_mib=None,
                restarts=5, uptime_s=None, next_start_in_s=8.0, last_probe_ok=None),
        _worker("ext1", port=30009, gpu=1, state="unmanaged", managed=False, pid=5555,
                routed=False, restarts=None, mem_fraction_static=None, cuda_graph=None,
                argv=["python", "-m", "sglang.launch_server", "--port", "30009"]),
    ]
    return {
        "schema": 1, "time": T0, "fleet": "demo", "engine": "sim", "read_only": False,
        "supervisor": {"pid": 123, "uptime_s": 7300.0, "version": "0.1.0",
                       "state_dir": "/state"},
        "balancer": {"kind": "sglang-router", "url": "http://127.0.0.1:8000", "healthy": True,
                     "p95_ms": 15.2, "rps": 27.5},
        "workers": workers,
        "gpus": [
            {"index": 0, "name": "sim-H100", "total_mib": 81559, "used_mib": 70000,
             "util_pct": 40.0, "temperature_c": 55.0, "power_w": 300.0, "error": None,
             "workers": {"w1": 34000, "w2": 34000}},
            {"index": 1, "name": "sim-H100", "total_mib": 81559, "used_mib": 78100,
             "util_pct": 97.0, "temperature_c": 71.0, "power_w": 650.0, "error": None,
             "workers": {"w3": 75800, "ext1": 2300}},
        ],
        "alerts": [
            {"key": "gpu_mem_and_p95/w3", "rule": "gpu_mem_and_p95", "worker": "w3",
             "state": "firing", "since": T0 - 372.0, "severity": "critical",
             "message": "GPU memory 93% and P95 1.4 s", "silenced_until": None},
            {"key": "crash_loop/w4", "rule": "crash_loop", "worker": "w4", "state": "pending",
             "since": T0 - 45.0, "severity": "warning",
             "message": "5 failures in 10 min", "silenced_until": None},
        ],
        "events": [
            {"time": T0 - 4.0, "kind": "action", "worker": "w2", "message": "drain started",
             "outcome": None},
            {"time": T0 - 60.0, "kind": "state", "worker": "w4",
             "message": "crashed → backoff (exit code -9)", "outcome": None},
            {"time": T0 - 300.0, "kind": "action", "worker": "w3",
             "message": "retune mem_fraction_static 0.42 → 0.40 ok (48.2 s)", "outcome": "ok"},
            {"time": T0 - 372.0, "kind": "alert", "worker": "w3",
             "message": "gpu_mem_and_p95 pending", "outcome": None},
        ],
    }


def series_for(name: str, points: int = 91) -> dict[str, Any]:
    """A deterministic 15-minute series; w3 leaks 20 MiB per 10 s."""
    t = [T0 - 900.0 + 10.0 * i for i in range(points)]
    leaking = name == "w3"
    mem = [(60000.0 + 20.0 * i) if leaking else 34000.0 + (i % 3) for i in range(points)]
    slope = 7200.0 if leaking else None
    ttf = (81559 - mem[-1]) / slope * 3600 if slope else None
    return {
        "worker": name, "t": t,
        "p95_ms": [None if i in (10, 11) else 14.0 + 3.0 * math.sin(i / 7.0) for i in range(points)],
        "p50_ms": [9.0 + math.sin(i / 5.0) for i in range(points)],
        "rps": [12.0 + 2.0 * math.cos(i / 9.0) for i in range(points)],
        "gpu_mem_mib": mem, "rss_mib": [2100.0] * points,
        "leak": {"slope_mib_per_h": slope, "time_to_full_s": ttf, "card_total_mib": 81559},
    }


def log_lines(name: str, n: int = 30) -> list[str]:
    """Canned log lines of worker `name` (every 7th is an error)."""
    return [f"[2025-11-25 10:{i // 60:02d}:{i % 60:02d}] {name} "
            + ("ERROR request failed: CUDA out of memory" if i % 7 == 3 else
               f"INFO POST /v1/embeddings 200 batch={i % 5 + 1}") for i in range(n)]


AUDIT = [
    {"ts": "2025-11-25T11:41:40.000Z", "epoch": T0 - 300.0, "uid": 1000, "user": "oncall",
     "pid": 777, "action": "retune", "worker": "w3", "outcome": "ok", "duration_s": 48.2,
     "before": {"mem_fraction_static": 0.42}, "after": {"mem_fraction_static": 0.40},
     "detail": None},
    {"ts": "2025-11-25T11:30:00.000Z", "epoch": T0 - 1000.0, "uid": None, "user": "supervisor",
     "pid": None, "action": "restart", "worker": "w4", "outcome": "failed", "duration_s": 3.1,
     "before": None, "after": None, "detail": "exit code -9 at start"},
]

ACTION_ROUTES = (
    "/v1/workers/{name}/drain", "/v1/workers/{name}/undrain", "/v1/workers/{name}/restart",
    "/v1/workers/{name}/kill", "/v1/workers/{name}/retune", "/v1/sim/{name}/fault",
)


class StaticSupervisor:
    """A real `ControlServer` serving canned data, in a thread; records action POSTs."""

    def __init__(self, socket_path: str | Path, snapshot: dict[str, Any] | None = None) -> None:
        self.socket_path = Path(socket_path)
        self.snapshot = snapshot if snapshot is not None else default_snapshot()
        self.posts: list[tuple[str, Any]] = []
        self.status_requests = 0
        self.log_requests: list[dict[str, str]] = []
        self.series_requests: list[dict[str, str]] = []
        self.validate_delay_s = 0.0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: ControlServer | None = None
        self._log_queues: list[asyncio.Queue[str]] = []

    # -- test-side API (any thread)

    def start(self, timeout: float = 10.0) -> StaticSupervisor:
        """Start serving; returns once the socket accepts connections."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                self._server = self._make_server()
                loop.run_until_complete(self._server.start())
            except BaseException as e:  # noqa: BLE001 - handed to the starting thread
                failure.append(e)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._server.stop())
            loop.close()

        self._thread = threading.Thread(target=run, name="static-supervisor", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise TimeoutError("static supervisor did not start")
        if failure:
            raise failure[0]
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving and remove the socket (the console then sees no supervisor)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        self._loop = self._thread = None

    def restart(self) -> None:
        """Serve again on the same socket after `stop`."""
        self.start()

    def mutate(self, change: Callable[[dict[str, Any]], None]) -> None:
        """Change the served snapshot (thread-safe)."""
        with self._lock:
            change(self.snapshot)

    def posted(self) -> list[tuple[str, Any]]:
        """The action POSTs received so far."""
        with self._lock:
            return list(self.posts)

    def push_log(self, line: str) -> None:
        """Send `line` to every console following a log."""
        loop = self._loop
        if loop is None:
            return
        for q in list(self._log_queues):
            loop.call_soon_threadsafe(q.put_nowait, line)

    def following(self) -> int:
        """How many log follow streams are open."""
        return len(self._log_queues)

    # -- server side

    def _make_server(self) -> ControlServer:
        server = ControlServer(self.socket_path)
        server.route("GET", "/v1/status", self._status)
        server.route("GET", "/v1/workers/{name}/series", self._series)
        server.route("GET", "/v1/workers/{name}/logs", self._logs)
        server.route("GET", "/v1/audit", self._audit)
        server.route("GET", "/v1/events", self._events)
        for pattern in ACTION_ROUTES:
            server.route("POST", pattern, self._worker_action)
        server.route("POST", "/v1/rollout", self._record)
        server.route("POST", "/v1/adopt", self._record)
        server.route("POST", "/v1/validate", self._validate)
        server.route("POST", "/v1/alerts/{key}/silence", self._silence)
        return server

    def _names(self) -> set[str]:
        with self._lock:
            return {w["name"] for w in self.snapshot["workers"]}

    def _known(self, name: str) -> None:
        if name not in self._names():
            raise ControlError.not_found(f"unknown worker {name!r}", code="unknown_worker")

    async def _status(self, req: ControlRequest) -> Any:
        with self._lock:
            self.status_requests += 1
            return copy.deepcopy(self.snapshot)

    async def _series(self, req: ControlRequest) -> Any:
        self._known(req.params["name"])
        with self._lock:
            self.series_requests.append(dict(req.query))
        return series_for(req.params["name"])

    async def _logs(self, req: ControlRequest) -> Any:
        name = req.params["name"]
        self._known(name)
        self.log_requests.append(dict(req.query))
        lines = log_lines(name)[-req.query_int("lines", 200, min=1, max=10000):]
        if not req.query_bool("follow"):
            return {"lines": lines}
        queue: asyncio.Queue[str] = asyncio.Queue()
        self._log_queues.append(queue)

        async def stream() -> AsyncIterator[dict[str, str]]:
            try:
                for line in lines:
                    yield {"line": line}
                while True:
                    yield {"line": await queue.get()}
            finally:
                self._log_queues.remove(queue)

        return ControlResponse.stream(stream())

    async def _audit(self, req: ControlRequest) -> Any:
        return {"entries": copy.deepcopy(AUDIT)}

    async def _events(self, req: ControlRequest) -> Any:
        with self._lock:
            return {"events": copy.deepcopy(self.snapshot["events"])}

    async def _worker_action(self, req: ControlRequest) -> Any:
        self._known(req.params["name"])
        return await self._record(req)

    async def _record(self, req: ControlRequest) -> Any:
        with self._lock:
            self.posts.append((req.path, req.body))
            n = len(self.posts)
        return ControlResponse.json({"action_id": f"a{n}", "accepted": True}, status=202)

    async def _silence(self, req: ControlRequest) -> Any:
        with self._lock:
            keys = {a["key"] for a in self.snapshot["alerts"]}
        if req.params["key"] not in keys:
            raise ControlError.not_found(f"no alert {req.params['key']!r}")
        return await self._record(req)

    async def _validate(self, req: ControlRequest) -> Any:
        """Like the supervisor: an action; with ``?wait=1`` its outcome carries the report."""
        if not req.query_bool("wait"):
            return await self._record(req)
        with self._lock:
            self.posts.append((req.path, req.body))
        if self.validate_delay_s:
            await asyncio.sleep(self.validate_delay_s)
        target = (req.body or {}).get("target", "balancer")
        return {"action_id": "v1", "action": "validate", "worker": target, "outcome": "failed",
                "message": "failed: empty_input_400", "duration_s": 2.5,
                "report": {"url": f"http://127.0.0.1:30003 ({target})", "ok": False, "checks": [
                    {"name": "bilingual", "ok": True, "detail": "en/zh cosine 0.83"},
                    {"name": "long_text_32k", "ok": True, "detail": "32768 tokens in 1.9 s"},
                    {"name": "empty_input_400", "ok": False, "detail": "got 200, expected 400"},
                    {"name": "dimensions", "ok": True, "detail": "2560"},
                ]}}


def short_socket_dir() -> Path:
    """A fresh private directory with a path short enough for a Unix socket."""
    return Path(tempfile.mkdtemp(prefix="eotui-", dir="/tmp"))


def remove_dir(path: Path) -> None:
    """Remove a directory made by `short_socket_dir`."""
    shutil.rmtree(path, ignore_errors=True)
