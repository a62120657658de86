"""A simulated fleet under a real supervisor, for fault drills and functional tests.

`Fleet` writes a sim fleet file with free loopback ports into a temporary directory,
runs `console.daemon.serve` IN-PROCESS on a background thread with its own event loop
(so the supervisor keeps its cadence while a test blocks or drives load on its own
loop), and talks to it over the real control socket with `ControlClient` /
`SyncControlClient`. Workers are real sim processes behind a real sglang-router.

Cleanup never goes by name: every process identity the state file ever recorded
(workers, router) is remembered, and at teardown whatever of those still verifies
(pid + create_time + cmdline) is SIGKILLed by its process group, together with any
member left behind in an old generation's group.

Load: `Load` runs the open-loop `LoadGen` on its own thread against the router, and
`StatusSampler` polls `/v1/status` from a thread, so a test can record what the
fleet looked like while a fault played out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import psutil

from backends import procs
from backends.promtext import MetricsSnapshot, parse_metrics
from backends.sim.loadgen import BackgroundLoad, LoadReport, LoadSpec
from console import config as fleet_config
from console.control import ControlError, SupervisorNotRunning, SyncControlClient
from console.statedir import StateDir
from tests.conftest import free_port

DIMENSION = 256
MODEL = "sim-embed"
ROUTED = ("ready", "degraded")


@dataclass
class WorkerDef:
    """One ``[[workers]]`` entry."""

    name: str
    gpu: int = 0
    port: int = 0
    mem_fraction_static: float | None = None
    extra_args: tuple[str, ...] = ()


def fleet_toml(workers: Iterable[WorkerDef], *, router_port: int, prom_port: int,
               gpus: int = 2, mem_fraction: float = 0.3, load_s: float = 0.3,
               warmup_s: float = 0.2, request_timeout_s: float = 2.0,
               drain_timeout_s: float = 10.0, stop_grace_s: float = 3.0,
               startup_timeout_s: float = 20.0, sim_faults: Iterable[str] = (),
               outlier: bool = True, outlier_ejection_s: float = 5.0,
               extra: str = "", name: str = "chaos") -> str:
    """A sim fleet file (the shape of `console.demo.demo_config`, tuned for tests:
    fast sim start, router per-try timeout `request_timeout_s`, 1 s health checks, an
    outlier held out `outlier_ejection_s` instead of 30 s)."""
    faults = ", ".join(json.dumps(f) for f in sim_faults)
    lines = [
        f'name = "{name}"', 'engine = "sim"', "",
        "[model]", 'path = "Qwen/Qwen3-Embedding-4B"', f'served_name = "{MODEL}"',
        f"dimension = {DIMENSION}", "",
        "[defaults]", f"mem_fraction_static = {mem_fraction}", "",
        "[balancer]", 'kind = "sglang-router"', f"port = {router_port}",
        f"prometheus_port = {prom_port}", f"request_timeout_s = {request_timeout_s:g}",
        "health_check_interval_s = 1", "health_check_timeout_s = 3", "",
        "[outlier]", f"enabled = {str(outlier).lower()}",
        f"ejection_s = {outlier_ejection_s:g}", "",
        "[restart]", f"startup_timeout_s = {startup_timeout_s:g}",
        f"stop_grace_s = {stop_grace_s:g}", f"drain_timeout_s = {drain_timeout_s:g}", "",
        "[sim]", f"gpu_count = {gpus}", f"load_s = {load_s:g}", f"warmup_s = {warmup_s:g}",
        "base_latency_ms = 5", "per_token_us = 10", f"faults = [{faults}]", "",
    ]
    for w in workers:
        lines += ["[[workers]]", f'name = "{w.name}"', f"gpu = {w.gpu}", f"port = {w.port}"]
        if w.mem_fraction_static is not None:
            lines.append(f"mem_fraction_static = {w.mem_fraction_static}")
        if w.extra_args:
            lines.append(f"extra_args = {json.dumps(list(w.extra_args))}")
        lines.append("")
    return "\n".join(lines) + "\n" + extra


class Fleet:
    """A fleet directory plus an in-process supervisor on a background thread."""

    def __init__(self, root: Path, workers: Iterable[WorkerDef] | int = 3, **toml: Any) -> None:
        if isinstance(workers, int):
            workers = [WorkerDef(f"w{i + 1}", gpu=i % toml.get("gpus", 2))
                       for i in range(workers)]
        self.defs = [WorkerDef(w.name, w.gpu, w.port or free_port(), w.mem_fraction_static,
                               w.extra_args) for w in workers]
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.router_port = free_port()
        self.prom_port = free_port()
        self.config_path = self.root / "fleet.toml"
        self.config_path.write_text(fleet_toml(self.defs, router_port=self.router_port,
                                               prom_port=self.prom_port, **toml))
        self.cfg = fleet_config.load_config(self.config_path)
        self.sd = StateDir(self.root / "state")
        self.router_url = f"http://127.0.0.1:{self.router_port}"
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[int] | None = None
        self._error: BaseException | None = None
        self.identities: dict[tuple[int, float], procs.ProcessIdentity] = {}
        self.spawned: list[procs.ProcessIdentity] = []
        """Supervisor processes a test started with `spawn_supervisor`."""

    # ------------------------------------------------------------------ supervisor

    def start(self, *, wait_ready: bool = True, timeout_s: float = 60.0) -> None:
        """Run `serve` on a thread; wait until the socket answers (and all workers are
        routed, with `wait_ready`)."""
        from console.daemon import serve

        assert self._thread is None or not self._thread.is_alive(), "already running"
        started = threading.Event()
        self._error = None

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            ready = asyncio.Event()
            self._task = asyncio.ensure_future(serve(self.cfg, self.sd, ready=ready))
            waiter = asyncio.ensure_future(ready.wait())
            await asyncio.wait({self._task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            started.set()
            try:
                await self._task
            finally:
                waiter.cancel()

        def run() -> None:
            try:
                asyncio.run(main())
            except BaseException as exc:  # noqa: BLE001 - surfaced to the test
                self._error = exc
            finally:
                started.set()

        self._thread = threading.Thread(target=run, name="supervisor", daemon=True)
        self._thread.start()
        if not started.wait(timeout_s):
            raise TimeoutError("the supervisor did not start")
        if self._error is not None:
            raise RuntimeError(f"the supervisor failed to start: {self._error!r}") from self._error
        self.remember()
        if wait_ready:
            self.wait_routed([d.name for d in self.defs], timeout_s=timeout_s)

    @property
    def running(self) -> bool:
        """The in-process supervisor thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def crash(self, timeout_s: float = 15.0) -> None:
        """End the in-process supervisor abruptly, as a SIGKILL would: every task is
        cancelled, nothing is stopped, the state file stays as last written."""
        assert self._loop is not None and self._thread is not None
        loop = self._loop

        def cancel_all() -> None:
            for task in asyncio.all_tasks(loop):
                task.cancel()

        loop.call_soon_threadsafe(cancel_all)
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "supervisor thread did not end"
        # the lock is an flock on an fd of this process: a crash of a real process drops it
        self._thread = None

    def spawn_supervisor(self, timeout_s: float = 60.0) -> procs.ProcessIdentity:
        """Start a real ``embedops supervise`` process for this fleet (detached, as
        ``embedops up`` does) and wait until its socket answers. It is recorded for
        teardown (`kill_leftovers` SIGKILLs it if it still runs)."""
        from console.daemon import spawn_supervisor

        assert not self.running, "the in-process supervisor is running"
        ident = spawn_supervisor(self.config_path, self.sd, timeout_s=timeout_s)
        self.spawned.append(ident)
        self.remember()
        return ident

    def shutdown(self, *, stop_workers: bool = True, timeout_s: float = 90.0) -> None:
        """``POST /v1/shutdown`` and wait for the thread to end."""
        if not self.running:
            return
        self.remember()
        try:
            with self.client(timeout=10.0) as c:
                c.post("/v1/shutdown", json={"stop_workers": stop_workers})
        except (SupervisorNotRunning, OSError, ControlError):
            pass
        assert self._thread is not None
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self.crash()

    def close(self) -> None:
        """Teardown: stop everything, then kill whatever we recorded that survived."""
        try:
            self.shutdown(stop_workers=True)
        finally:
            self.kill_leftovers()

    def kill_leftovers(self) -> list[int]:
        """SIGKILL every recorded process (group) that still verifies, and members left
        behind in the groups of recorded leaders. Returns the pids signalled."""
        self.remember()
        killed: list[int] = []
        for ident in [*self.identities.values(), *self.spawned]:
            if procs.verify(ident):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(ident.pid, signal.SIGKILL)  # leader of its own group
                killed.append(ident.pid)
            for orphan in procs.find_orphans(ident):
                again = procs.identify(orphan.pid)
                if again is not None and procs.verify(again):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(orphan.pid, signal.SIGKILL)
                    killed.append(orphan.pid)
        for ident in [*self.identities.values(), *self.spawned]:
            procs.returncode(ident)  # reap our own children
        return killed

    # ------------------------------------------------------------------ state

    def state(self) -> dict[str, Any]:
        """The state file (empty when absent)."""
        try:
            return json.loads(self.sd.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def remember(self) -> None:
        """Record every identity the state file holds now (for teardown)."""
        data = self.state()
        idents = [w.get("identity") for w in (data.get("workers") or {}).values()]
        idents.append((data.get("balancer") or {}).get("identity"))
        for raw in idents:
            if raw:
                ident = procs.ProcessIdentity.from_json(raw)
                self.identities[(ident.pid, ident.create_time)] = ident

    # ------------------------------------------------------------------ client helpers

    def client(self, timeout: float = 30.0) -> SyncControlClient:
        """A blocking control client."""
        return SyncControlClient(self.sd.socket_path, timeout=timeout)

    def status(self) -> dict[str, Any]:
        """``GET /v1/status`` (and remember the identities it reveals)."""
        with self.client() as c:
            snap = c.get("/v1/status")
        self.remember()
        return snap

    def worker(self, name: str, snap: dict[str, Any] | None = None) -> dict[str, Any]:
        """One worker row."""
        snap = snap or self.status()
        for w in snap["workers"]:
            if w["name"] == name:
                return w
        raise KeyError(name)

    def post(self, path: str, body: Any = None, *, wait: bool = True,
             timeout: float = 120.0) -> Any:
        """POST an action (``?wait=1`` by default)."""
        with self.client(timeout=timeout) as c:
            return c.post(path, json=body, params={"wait": 1} if wait else None)

    def wait_for(self, cond: Callable[[dict[str, Any]], Any], *, timeout_s: float,
                 every_s: float = 0.1, what: str = "condition") -> tuple[Any, float]:
        """Poll the snapshot until `cond(snapshot)` is truthy; returns (value, seconds)."""
        t0 = time.monotonic()
        deadline = t0 + timeout_s
        snap: dict[str, Any] = {}
        while True:
            snap = self.status()
            value = cond(snap)
            if value:
                return value, time.monotonic() - t0
            if time.monotonic() >= deadline:
                rows = [(w["name"], w["state"], w["pid"], w.get("state_reason"))
                        for w in snap.get("workers", [])]
                raise TimeoutError(f"{what} not reached within {timeout_s:g} s; workers: {rows}")
            time.sleep(every_s)

    def wait_routed(self, names: Iterable[str], *, timeout_s: float = 60.0) -> float:
        """Wait until every named worker is routed; returns the seconds it took."""
        names = list(names)

        def ok(snap: dict[str, Any]) -> bool:
            rows = {w["name"]: w for w in snap["workers"]}
            return all(n in rows and rows[n]["state"] in ROUTED and rows[n]["routed"]
                       for n in names)

        return self.wait_for(ok, timeout_s=timeout_s, what=f"{names} routed")[1]

    def events(self, worker: str | None = None, limit: int = 500) -> list[dict[str, Any]]:
        """Timeline events (newest first)."""
        with self.client() as c:
            evs = c.get("/v1/events", params={"limit": limit})["events"]
        return [e for e in evs if worker is None or e["worker"] == worker]

    def removed_ack(self, name: str, *, after: float, timeout_s: float = 15.0) -> float:
        """Wall time of the supervisor's "removed from the balancer" event for `name` (the
        balancer acknowledged the removal) at or after wall time `after`; waits for it."""
        deadline = time.monotonic() + timeout_s
        while True:
            acks = [e["time"] for e in self.events(name) if e["kind"] == "balancer"
                    and "removed from the balancer" in e["message"] and e["time"] >= after]
            if acks:
                return float(min(acks))
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no balancer removal of {name} within {timeout_s:g} s")
            time.sleep(0.05)

    def port_of(self, name: str) -> int:
        """The port of a worker defined in the fleet file."""
        return next(d.port for d in self.defs if d.name == name)

    def url_of(self, name: str) -> str:
        """The URL the balancer knows a worker by."""
        return f"http://127.0.0.1:{self.port_of(name)}"

    def router_metrics(self) -> MetricsSnapshot:
        """The router's Prometheus metrics (``smg_*``; per-worker series are labelled
        ``worker="<url>"``)."""
        import httpx

        r = httpx.get(f"http://127.0.0.1:{self.prom_port}/metrics", timeout=5.0)
        r.raise_for_status()
        return parse_metrics(r.text)

    def worker_metrics(self, name: str) -> MetricsSnapshot:
        """A worker's own ``/metrics`` (``sglang:*``), read directly, not via the router."""
        import httpx

        r = httpx.get(f"{self.url_of(name)}/metrics", timeout=5.0)
        r.raise_for_status()
        return parse_metrics(r.text)

    def sim_faults(self, name: str, faults: dict[str, Any]) -> dict[str, Any]:
        """Set faults on a sim worker directly (its test-only endpoint)."""
        import httpx

        r = httpx.post(f"{self.url_of(name)}/_sim/faults", json=faults, timeout=5.0)
        r.raise_for_status()
        return dict(r.json())

    def group_members(self, pid: int) -> list[psutil.Process]:
        """Live processes in process group `pid` (a worker generation)."""
        out = []
        for p in psutil.process_iter(["pid"]):
            with contextlib.suppress(psutil.Error):
                if os.getpgid(p.pid) == pid and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p)
        return out


# ---------------------------------------------------------------------- load and sampling


class Load(BackgroundLoad):
    """Open-loop load against the router (the fleet's model and dimension checked)."""

    def __init__(self, url: str, *, rate: float = 40.0, deadline_s: float = 10.0,
                 duration_s: float | None = None) -> None:
        super().__init__(LoadSpec(url=url, rate=rate, model=MODEL, deadline_s=deadline_s,
                                  duration_s=duration_s, dimension=DIMENSION, vary_text=True,
                                  max_connections=64))


def summary(report: LoadReport) -> dict[str, Any]:
    """The figures a test prints."""
    return {"sent": report.sent, "ok": report.ok, "errors": report.error_total,
            "by_kind": {k: v for k, v in report.errors.items() if v},
            "p50_ms": report.latency_ms.get("p50"), "p99_ms": report.latency_ms.get("p99"),
            "max_ms": report.latency_ms.get("max"), "samples": report.error_samples}


class BackgroundPoller:
    """A context manager running `_run` on a daemon thread until exit; subclasses (data
    classes) provide `_run`, `_stop` (an Event `_run` watches) and `_thread`."""

    _stop: threading.Event
    _thread: threading.Thread | None

    def _run(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self._run, name=type(self).__name__,
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15)


@dataclass
class StatusSampler(BackgroundPoller):
    """Polls `/v1/status` on a thread; keeps (monotonic time, snapshot) pairs."""

    fleet: Fleet
    every_s: float = 0.1
    samples: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        with self.fleet.client(timeout=10.0) as c:
            while not self._stop.is_set():
                with contextlib.suppress(Exception):
                    self.samples.append((time.monotonic(), c.get("/v1/status")))
                self._stop.wait(self.every_s)

    def first(self, cond: Callable[[dict[str, Any]], bool], after: float = 0.0) -> float | None:
        """Monotonic time of the first sample at or after `after` satisfying `cond`."""
        for t, snap in self.samples:
            try:
                hit = t >= after and cond(snap)
            except (StopIteration, KeyError):  # a worker not listed yet (still starting)
                hit = False
            if hit:
                return t
        return None


def report(name: str, **figures: Any) -> None:
    """Print a drill's figures as one JSON line (``[F4 ...] {...}``; run with ``-s``)."""
    print(f"\n[{name}] " + json.dumps(figures, default=str))


def row(snap: dict[str, Any], name: str) -> dict[str, Any]:
    """A worker's row in a snapshot."""
    return next(w for w in snap["workers"] if w["name"] == name)


@contextlib.contextmanager
def running_fleet(root: Path, workers: Iterable[WorkerDef] | int = 3, *, start: bool = True,
                  **toml: Any) -> Iterator[Fleet]:
    """A started fleet, always torn down (workers stopped, leftovers killed)."""
    fleet = Fleet(root, workers, **toml)
    try:
        if start:
            fleet.start()
        yield fleet
    finally:
        fleet.close()


__all__ = ["DIMENSION", "MODEL", "BackgroundPoller", "Fleet", "Load", "StatusSampler", "WorkerDef", "fleet_toml",
           "report", "row", "running_fleet", "summary"]
