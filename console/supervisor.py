"""The supervisor: one per fleet, owns the workers and the balancer.

It applies the pure rules (`lifecycle`, `policy`, `alerts`, `stats`) to the world
through the backends: it spawns and adopts workers, probes and scrapes them
concurrently, watches for exits, drives the balancer, samples GPU memory, evaluates
alerts, writes the state file and the audit log, and carries out operator actions.
Clients reach it through `console.api` on the control socket.

Every worker has its own probe task (one slow worker never delays another's probe);
one task scrapes all workers concurrently; one watches exits every 100 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil

from backends import procs
from backends.balancer import Balancer, adopt_balancer, create_balancer, normalize_url
from backends.balancer_nginx import NginxSettings
from backends.balancer_router import RouterSettings
from backends.gpu import GpuSample, GpuSource, SimGpuSource, attribute, make_gpu_source
from backends.sglang import effect_warnings, mask_argv
from backends.sglang_client import SglangClient
from console import hostmem
from console.alert_rules import rules_from_config
from console.alerts import AlertEngine, AlertSettings, AlertTransition, WorkerFacts
from console.audit import AuditLog
from console.config import FleetConfig
from console.lifecycle import ActionKind, Decision, IllegalTransition, WorkerLifecycle
from console.model import Engine, Event, LaunchCommand, WorkerSpec, WorkerState
from console.policy import (
    BackoffPolicy,
    CrashLoopPolicy,
    LifecyclePolicy,
    OutlierPolicy,
    probe_timeout_s,
)
from console.runtime import SCRAPED_FAMILIES, ActionProgress, WorkerRuntime
from console.statedir import StateDir
from console.stats import HistogramWindow

log = logging.getLogger("embedops.supervisor")

VERSION = "0.1.0"
EXIT_POLL_S = 0.1
"""Exit polling period for a process no pidfd watches (elsewhere: woken at the exit)."""
EXIT_SAFETY_S = 2.0
"""Every worker's process is also looked at this often, watched or not."""
TICK_S = 0.2
BALANCER_POLL_S = 0.2
"""Balancer process polling period when no pidfd watches it."""
BALANCER_CHECK_S = 1.0
"""Period of the balancer's ``/liveness`` check and of the routed-set refresh."""
ROUTER_DURATION = "smg_router_request_duration_seconds"
"""sglang-router's histogram of client requests (embeddings are ``endpoint="other"``)."""
DISCOVER_S = 15.0
FLEET_ENV = "EMBEDOPS_FLEET_DIR"
"""Set in every worker's environment: the state directory of the fleet that started it."""
EVENTS_KEPT = 500
LOG_TAIL_BYTES = 16 * 1024
PORT_SETTLE_S = 3.0
"""How long a port held by a socket without an owner may take to clear before a start."""

S = WorkerState

CONFIG_ERROR_MARKERS: tuple[tuple[str, str], ...] = (
    ("Not enough memory", "not enough GPU memory at start: raise --mem-fraction-static"),
    ("OutOfMemoryError", "CUDA out of memory at start: lower --mem-fraction-static"),
    ("CUDA out of memory", "CUDA out of memory at start: lower --mem-fraction-static"),
    ("unrecognized arguments", "SGLang rejected a flag (unrecognized arguments)"),
    ("ambiguous option", "SGLang rejected a flag (ambiguous option)"),
    ("Address already in use", "port already in use"),
)
"""Log lines that make a failed start a configuration error (no restart loop)."""


def lifecycle_policy(cfg: FleetConfig) -> LifecyclePolicy:
    """The lifecycle rules configured in `cfg`."""
    r, p, o = cfg.restart, cfg.probe, cfg.outlier
    return LifecyclePolicy(
        eject_after_failures=p.eject_after_failures,
        readmit_after_successes=p.readmit_after_successes,
        restart_after_failures=p.restart_after_failures,
        slow_probe_s=p.slow_s,
        startup_budget_s=cfg.startup_timeout_s,
        drain_timeout_s=r.drain_timeout_s,
        backoff=BackoffPolicy(base_s=r.backoff_base_s, factor=r.backoff_factor,
                              cap_s=r.backoff_cap_s, first_immediate=r.first_immediate,
                              reset_after_s=r.reset_after_s),
        crash_loop=CrashLoopPolicy(threshold=r.crash_loop_failures,
                                   window_s=r.crash_loop_window_s),
        outlier=OutlierPolicy(enabled=o.enabled, error_share=o.error_share,
                              min_responses=o.min_responses, window_s=o.window_s,
                              ejection_s=o.ejection_s, max_ejection_s=o.max_ejection_s),
    )


def balancer_settings(cfg: FleetConfig) -> RouterSettings | NginxSettings | None:
    """Balancer settings from the config (None for ``kind = "none"``)."""
    b = cfg.balancer
    if b.kind == "sglang-router":
        return RouterSettings(
            port=b.port, prometheus_port=b.prometheus_port, host=b.host, policy=b.policy,
            log_level=b.log_level, request_timeout_s=int(b.request_timeout_s),
            health_check_interval_s=max(1, int(b.health_check_interval_s)),
            health_check_timeout_s=max(1, int(b.health_check_timeout_s)),
            health_failure_threshold=b.health_failure_threshold,
            health_success_threshold=b.health_success_threshold,
            cb_failure_threshold=b.cb_failure_threshold, cb_timeout_s=int(b.cb_timeout_s),
            retry_max_retries=b.retry_max_retries,
            duration_buckets_s=cfg.metrics.e2e_latency_buckets_s)
    if b.kind == "nginx":
        return NginxSettings(port=b.port, host=b.host, nginx_bin=b.nginx_binary,
                             read_timeout_s=max(1, math.ceil(b.request_timeout_s)),
                             max_fails=b.nginx_max_fails,
                             fail_timeout_s=max(1, math.ceil(b.nginx_fail_timeout_s)))
    return None


class ActionError(Exception):
    """An operator action was refused; `status` is the HTTP status the API answers."""

    def __init__(self, message: str, *, status: int = 409, code: str = "conflict") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class Supervisor:
    """Owns one fleet. `run` until `shutdown`."""

    def __init__(self, config: FleetConfig, state_dir: StateDir, *,
                 gpu_source: GpuSource | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = config
        self.state_dir = state_dir
        self.clock = clock
        self.policy = lifecycle_policy(config)
        self.audit = AuditLog(state_dir.audit_path)
        self.alerts = AlertEngine(rules_from_config(config), AlertSettings())
        self.workers: dict[str, WorkerRuntime] = {}
        self.unmanaged: dict[int, WorkerRuntime] = {}
        self.events: deque[Event] = deque(maxlen=EVENTS_KEPT)
        self.balancer: Balancer | None = None
        self.balancer_healthy: bool | None = None
        self._bsettings = balancer_settings(config)
        self._gpu = gpu_source
        self._gpu_sample: GpuSample | None = None
        self._http = httpx.AsyncClient(timeout=5.0, limits=httpx.Limits(
            max_connections=512, max_keepalive_connections=256))
        self._clients: dict[str, SglangClient] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self._probe_tasks: dict[str, asyncio.Task[Any]] = {}
        self._alive_cache: dict[str, tuple[procs.ProcessIdentity, psutil.Process]] = {}
        self._worker_exits = procs.ExitWatchers()
        self._balancer_exit = procs.ExitWatchers()
        self._jobs: dict[str, asyncio.Task[Any]] = {}
        self._rollout: asyncio.Task[Any] | None = None
        self._stopping = asyncio.Event()
        self._fleet_of: dict[procs.ProcessIdentity, str | None] = {}
        self._closed = asyncio.Event()
        self._shutdown_task: asyncio.Task[None] | None = None
        self._dirty = True
        self.started_wall = time.time()
        self.cycle_times: deque[float] = deque(maxlen=600)
        self.fleet_latency = HistogramWindow()
        """Client-perceived latency at the balancer (its request-duration histogram)."""
        self.last_validation: dict[str, Any] | None = None

    # ================================================================== lifecycle of the supervisor

    async def start(self) -> None:
        """Adopt or start the balancer and the workers, then start the loops."""
        self.state_dir.ensure()
        saved = self.state_dir.read_state()
        await self._start_balancer(saved.get("balancer") or {})
        if self._gpu is None:
            self._gpu = make_gpu_source("sim" if self.cfg.engine == Engine.SIM else "auto")
        specs = self.cfg.worker_specs()
        saved_workers: dict[str, Any] = saved.get("workers") or {}
        fresh: list[WorkerRuntime] = []
        for spec in specs:
            w = self._add_runtime(spec, config_spec=spec, saved=saved_workers.get(spec.name))
            if w.identity is None:
                fresh.append(w)
        for name, data in saved_workers.items():
            if name not in self.workers and data.get("added"):
                spec = _spec_from_json(data["spec"])
                w = self._add_runtime(spec, config_spec=None, saved=data)
                if w.identity is None:
                    fresh.append(w)
        self._update_gpu_urls()
        for name, fn in (("exits", self._exit_loop), ("scrape", self._scrape_loop),
                         ("gpu", self._gpu_loop), ("tick", self._tick_loop),
                         ("balancer", self._balancer_loop), ("discover", self._discover_loop)):
            self._tasks.append(asyncio.create_task(fn(), name=name))
        for w in self.workers.values():
            self._ensure_probe_task(w)
        self._tasks.append(asyncio.create_task(self._initial_starts(fresh), name="initial"))
        self._event("supervisor", None, f"supervisor started (pid {os.getpid()}), "
                    f"{len(self.workers)} workers, engine {self.cfg.engine.value}")
        self._save_state()

    def _add_runtime(self, spec: WorkerSpec, *, config_spec: WorkerSpec | None,
                     saved: dict[str, Any] | None) -> WorkerRuntime:
        now = self.clock()
        identity = None
        if saved:
            if saved.get("spec"):
                spec = _spec_from_json(saved["spec"], api_key=spec.api_key)
            ident = saved.get("identity")
            if ident:
                candidate = procs.ProcessIdentity.from_json(ident)
                if procs.verify(candidate):
                    identity = candidate
                else:
                    self._event("adopt", spec.name, f"recorded pid {candidate.pid} is gone or "
                                "belongs to another process: not adopted, starting fresh")
        lc = WorkerLifecycle(spec.name, self.policy,
                             initial=S.STARTING if identity else S.STOPPED, now=now)
        w = WorkerRuntime(spec=spec, lifecycle=lc, config_spec=config_spec, identity=identity,
                          raw_argv=tuple(saved["raw_argv"]) if saved and saved.get("raw_argv")
                          else None)
        if saved and saved.get("restarts"):
            lc._starts += int(saved["restarts"])  # keep the count across supervisor restarts
        w.warnings = effect_warnings(spec, self.cfg.sglang_version)
        if identity:
            w.started_wall = saved.get("started_wall") if saved else None
            self._event("adopt", spec.name, f"adopted running worker pid {identity.pid}")
        self.workers[spec.name] = w
        self._clients[spec.name] = SglangClient(spec.url, api_key=spec.api_key, http=self._http,
                                                model=spec.served_model_name or spec.model_path)
        return w

    async def _initial_starts(self, fresh: list[WorkerRuntime]) -> None:
        """Start new workers: one GPU at a time per card (parallel across cards), each
        after the previous one on its card is ready or has failed."""
        by_gpu: dict[int | None, list[WorkerRuntime]] = {}
        for w in fresh:
            by_gpu.setdefault(w.spec.gpu, []).append(w)

        async def start_card(ws: list[WorkerRuntime]) -> None:
            for w in ws:
                if w.state is not S.STOPPED or self._stopping.is_set():
                    continue
                await self._apply(w, w.lifecycle.start(self.clock()))
                deadline = self.clock() + self.policy.startup_budget_s + 5
                while (w.state is S.STARTING and self.clock() < deadline
                       and not self._stopping.is_set()):
                    await asyncio.sleep(0.1)

        await asyncio.gather(*(start_card(ws) for ws in by_gpu.values()))

    async def _start_balancer(self, saved: dict[str, Any]) -> None:
        if self._bsettings is None:
            return
        ident = saved.get("identity")
        if ident:
            identity = procs.ProcessIdentity.from_json(ident)
            if procs.verify(identity):
                try:
                    self.balancer = await adopt_balancer(self._bsettings, self.state_dir.root,
                                                         identity)
                    self._event("balancer", None, f"adopted running balancer pid {identity.pid}")
                    return
                except Exception as exc:  # noqa: BLE001 - fall back to a fresh one
                    self._event("balancer", None, f"could not adopt balancer: {exc}")
        self.balancer = create_balancer(self._bsettings, self.state_dir.root)
        await self.balancer.start()
        self.balancer_healthy = True
        self._event("balancer", None, f"balancer {self.cfg.balancer.kind} started at "
                    f"{self.balancer.url}")

    async def run(self) -> None:
        """Start, then serve until `shutdown` is called and has finished."""
        await self.start()
        await self.wait_closed()

    @property
    def stopping(self) -> bool:
        """`shutdown` has begun."""
        return self._shutdown_task is not None

    async def wait_stopping(self) -> None:
        """Return once the loops are stopping (workers, if asked, already stopped)."""
        await self._stopping.wait()

    async def wait_closed(self) -> None:
        """Return once `shutdown` has finished (state saved, connections closed)."""
        await self._closed.wait()

    async def shutdown(self, *, stop_workers: bool = False, caller_uid: int | None = None) -> None:
        """Stop the loops; with `stop_workers`, drain and stop every worker and the balancer
        (``embedops down``); otherwise everything keeps running for the next supervisor.

        A second call (a SIGTERM during ``embedops down``) waits for the first one.
        """
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.ensure_future(
                self._shutdown(stop_workers=stop_workers, caller_uid=caller_uid))
        await asyncio.shield(self._shutdown_task)

    async def _shutdown(self, *, stop_workers: bool, caller_uid: int | None) -> None:
        try:
            await self._shutdown_steps(stop_workers=stop_workers, caller_uid=caller_uid)
        finally:
            self._stopping.set()
            self._closed.set()

    async def _shutdown_steps(self, *, stop_workers: bool, caller_uid: int | None) -> None:
        t0 = time.monotonic()
        if stop_workers:
            await asyncio.gather(*(self._stop_worker_for_good(w) for w in self.workers.values()),
                                 return_exceptions=True)
            if self.balancer is not None:
                # the watcher first: a balancer restart racing this stop would leak one
                for task in self._tasks:
                    if task.get_name() == "balancer":
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            await task
                await self.balancer.stop()
            self.audit.record("down", worker=None, caller_uid=caller_uid, outcome="ok",
                              duration_s=time.monotonic() - t0)
        self._stopping.set()
        for task in [*self._tasks, *self._probe_tasks.values(), *self._jobs.values()]:
            task.cancel()
        for task in [*self._tasks, *self._probe_tasks.values(), *self._jobs.values()]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._save_state(stopped=stop_workers)
        if self.balancer is not None:
            with contextlib.suppress(Exception):
                await self.balancer.close()
        if self._gpu is not None:
            with contextlib.suppress(Exception):
                await self._gpu.close()
        for client in self._clients.values():
            client.close_connections()
        self._worker_exits.close()
        self._balancer_exit.close()
        await self._http.aclose()

    async def _stop_worker_for_good(self, w: WorkerRuntime) -> None:
        with contextlib.suppress(IllegalTransition):
            await self._apply(w, w.lifecycle.begin_stop(self.clock()))
        await self._wait_for(lambda: w.state in (S.STOPPED, S.FAILED),
                             self.policy.drain_timeout_s + self.cfg.restart.stop_grace_s + 10)

    # ================================================================== applying decisions

    async def _apply(self, w: WorkerRuntime, d: Decision) -> None:
        """Carry out a lifecycle decision's actions in order."""
        for t in d.transitions:
            self._event("transition", w.name, f"{t.source.value} → {t.target.value}: {t.reason}")
        for action in d.actions:
            kind = action.kind
            if kind is ActionKind.START:
                await self._spawn(w)
            elif kind is ActionKind.REGISTER:
                await self._register(w)
            elif kind is ActionKind.EJECT:
                await self._eject(w)
            elif kind in (ActionKind.STOP, ActionKind.KILL):
                self._begin_stop(w, kill=kind is ActionKind.KILL)
            elif kind is ActionKind.ROLLBACK:
                if w.previous_spec is not None:
                    self._event("retune", w.name, f"rolling back: {action.message}")
                    w.spec, w.previous_spec = w.previous_spec, None
                    w.rollback_reason = action.message
            elif kind is ActionKind.COMMIT:
                w.previous_spec = None
            elif kind is ActionKind.ALERT:
                self._event("alert", w.name, action.message)
            elif kind is ActionKind.START_AT:
                self._event("backoff", w.name, action.message)
        if d.transitions or d.actions:
            self._dirty = True

    def _launch(self, w: WorkerRuntime) -> LaunchCommand:
        if w.raw_argv:
            cmd = LaunchCommand(argv=w.raw_argv, env=dict(w.spec.env))
        else:
            cmd = self.cfg.launch_command(w.spec)
        # the fleet a worker belongs to, for other supervisors' discovery (not argv: the
        # stale-process check compares command lines)
        env = {**cmd.env, FLEET_ENV: str(self.state_dir.root)}
        if w.spec.engine == Engine.SIM:
            # simulated cards are per fleet: fleets (and test runs) on one box don't share them
            env["EMBEDOPS_SIM_GPU_DIR"] = str(self.state_dir.root / "sim-gpus")
        return LaunchCommand(argv=cmd.argv, env=env)

    async def _spawn(self, w: WorkerRuntime) -> None:
        now = self.clock()
        problem = await self._preflight(w)
        if problem is not None:
            await self._apply(w, w.lifecycle.observe_start_failed(now, problem, config_error=True))
            return
        cmd = self._launch(w)
        shown = mask_argv(cmd.argv)
        try:
            w.identity = await asyncio.to_thread(
                procs.spawn_detached, cmd, self.state_dir.worker_log(w.name),
                display_argv=shown)
        except procs.SpawnError as exc:
            await self._apply(w, w.lifecycle.observe_start_failed(now, str(exc), config_error=True))
            return
        w.new_generation(now)
        w.warnings = effect_warnings(w.spec, self.cfg.sglang_version)
        self._event("spawn", w.name, f"started pid {w.identity.pid}: {' '.join(shown)}")
        self._worker_exits.wake()  # watch it from now on
        self._save_state()

    async def _preflight(self, w: WorkerRuntime) -> str | None:
        """Why the worker must not be started (config error), or None."""
        spec = w.spec
        if spec.engine == Engine.SGLANG and not w.raw_argv and not Path(spec.model_path).exists():
            return f"model path {spec.model_path} does not exist"
        owner = await procs.port_owner_async(spec.port, spec.host)
        # A socket nobody owns any more is the previous generation's, still being torn
        # down (seen under load right after a stop): give it a moment before calling
        # the port taken; a foreign owner with a pid is refused at once.
        deadline = self.clock() + PORT_SETTLE_S
        while owner is not None and owner.pid is None and self.clock() < deadline:
            await asyncio.sleep(0.1)
            owner = await procs.port_owner_async(spec.port, spec.host)
        if owner is None:
            return None
        if owner.pid is not None and self._is_our_stale(w, owner.pid):
            self._event("preflight", w.name, f"port {spec.port} held by a stale process of ours "
                        f"(pid {owner.pid}); stopping it")
            ident = procs.identify(owner.pid)
            if ident is not None:
                await procs.kill_group_now(ident)
            if await procs.port_owner_async(spec.port, spec.host) is None:
                return None
        who = "an unknown process" if owner.pid is None else f"pid {owner.pid} ({owner.name})"
        return f"port {spec.port} is already in use by {who}; not starting (no signal sent)"

    def _is_our_stale(self, w: WorkerRuntime, pid: int) -> bool:
        """A process holding our port that runs exactly our worker command line."""
        ident = procs.identify(pid)
        argv = procs.read_argv(ident) if ident is not None else None
        return argv is not None and list(argv) == list(self._launch(w).argv)

    async def _register(self, w: WorkerRuntime) -> None:
        if self.balancer is None:
            return
        try:
            routed = await self.balancer.add(w.spec.url, api_key=w.spec.api_key)
            w.in_balancer = routed.routable and w.lifecycle.registered
            self._event("balancer", w.name, "registered in the balancer" if not routed.pending
                        else "registration sent; the balancer has not listed it yet")
        except Exception as exc:  # noqa: BLE001 - reported, retried by the balancer loop
            self._event("balancer", w.name, f"register failed: {exc}")

    async def _eject(self, w: WorkerRuntime) -> None:
        if self.balancer is None:
            return
        w.in_balancer = False
        try:
            await self.balancer.remove(w.spec.url)
            self._event("balancer", w.name, "removed from the balancer")
        except Exception as exc:  # noqa: BLE001
            self._event("balancer", w.name, f"remove failed: {exc}")

    def _begin_stop(self, w: WorkerRuntime, *, kill: bool) -> None:
        if w.identity is None or w.stop_in_progress:
            return
        w.stop_in_progress = True
        identity = w.identity

        async def stop() -> None:
            try:
                if kill:
                    result = await procs.kill_group_now(identity)
                else:
                    result = await procs.stop_group(identity, grace_s=self.cfg.restart.stop_grace_s)
                if result.refused:
                    self._event("stop", w.name, f"refused to signal: {result.refused}")
                if result.survivors:
                    self._event("stop", w.name, "survivors after stop: " + ", ".join(
                        f"{p.pid} {p.name} ({p.status})" for p in result.survivors))
                code = result.exit_code
                self._event("stop", w.name, f"{'killed' if kill else 'stopped'} pid "
                            f"{identity.pid} (exit {code}, {result.duration_s:.2f} s"
                            f"{', escalated to SIGKILL' if result.escalated else ''})")
                w.identity = None
                await self._apply(w, w.lifecycle.observe_exit(self.clock(), code))
            finally:
                w.stop_in_progress = False
                self._save_state()

        self._jobs[f"stop-{w.name}-{identity.pid}"] = asyncio.create_task(stop())

    # ================================================================== loops

    async def _exit_loop(self) -> None:
        """Handle workers that exited: woken by a worker's pidfd the moment it exits;
        a worker that cannot be watched is polled every `EXIT_POLL_S`, and every worker
        is looked at every `EXIT_SAFETY_S` regardless."""
        next_full = 0.0
        while True:
            self._worker_exits.sync({w.name: w.identity for w in self.workers.values()
                                     if w.identity is not None and not w.stop_in_progress})
            full = self.clock() >= next_full
            if full:
                next_full = self.clock() + EXIT_SAFETY_S
            for w in list(self.workers.values()):
                if w.identity is None or w.stop_in_progress:
                    continue
                if not full and not self._worker_exits.needs_poll(w.name):
                    continue
                if self._still_alive(w.name, w.identity):
                    continue
                code = procs.returncode(w.identity)
                if code is None:
                    if procs.is_running(w.identity):
                        continue
                    # shown as exited while its last threads go: reapable in moments
                    code = await asyncio.to_thread(procs.returncode, w.identity, 1.0)
                await self._handle_exit(w, code)
            polling = self._worker_exits.polling
            await self._worker_exits.wait(EXIT_POLL_S if polling else
                                          max(0.0, next_full - self.clock()))

    def _still_alive(self, name: str, identity: procs.ProcessIdentity) -> bool:
        """Cheap check (at a pidfd's wake-up, every 2 s, or every 0.1 s for a process no
        pidfd watches): the process verified once (pid,
        start time, command line) still runs and is no zombie. psutil's `is_running`
        compares the start time, so a reused pid reads as gone. Two /proc reads instead
        of the full verification's five (~30 µs instead of ~150 µs)."""
        cached = self._alive_cache.get(name)
        try:
            if cached is None or cached[0] != identity:
                if not procs.verify(identity):
                    return False
                cached = (identity, psutil.Process(identity.pid))
                self._alive_cache[name] = cached
            proc = cached[1]
            return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            self._alive_cache.pop(name, None)
            return False

    async def _handle_exit(self, w: WorkerRuntime, code: int | None) -> None:
        identity = w.identity
        assert identity is not None
        w.identity = None
        orphans = procs.find_orphans(identity)
        if orphans:
            self._event("exit", w.name, "killing leftovers of the old generation: " +
                        ", ".join(f"{p.pid} {p.name}" for p in orphans))
            for p in orphans:
                ident = procs.identify(p.pid)
                if ident is not None:
                    await procs.kill_group_now(ident)
        hint = self._diagnose(w) if w.state is S.STARTING else None
        self._event("exit", w.name, f"pid {identity.pid} exited with code {code}"
                    + (f" ({hint})" if hint else ""))
        await self._apply(w, w.lifecycle.observe_exit(self.clock(), code, config_error=hint))
        self._save_state()

    def _diagnose(self, w: WorkerRuntime) -> str | None:
        """A configuration cause found in the tail of the worker's log, or None."""
        tail = _tail(self.state_dir.worker_log(w.name), LOG_TAIL_BYTES)
        last_spawn = tail.rfind("embedops spawn:")
        tail = tail[last_spawn:] if last_spawn >= 0 else tail
        for marker, meaning in CONFIG_ERROR_MARKERS:
            if marker in tail:
                return meaning
        return None

    def _ensure_probe_task(self, w: WorkerRuntime) -> None:
        task = self._probe_tasks.get(w.name)
        if task is None or task.done():
            self._probe_tasks[w.name] = asyncio.create_task(self._probe_loop(w),
                                                            name=f"probe-{w.name}")

    async def _probe_loop(self, w: WorkerRuntime) -> None:
        interval = self.cfg.probe.interval_s
        while True:
            started = self.clock()
            if w.lifecycle.probing and (w.identity is not None or not w.managed):
                with contextlib.suppress(Exception):
                    await self._probe_once(w)
            elapsed = self.clock() - started
            await asyncio.sleep(max(0.05, interval - elapsed))

    async def _probe_once(self, w: WorkerRuntime) -> None:
        client = self._clients[w.name]
        if w.state is S.STARTING:
            # The real probe decides readiness; /health (which takes >= 1 s on SGLang:
            # a 1-token request plus a 1 s sleep) only names the startup phase, so it is
            # asked only while the probe does not pass yet.
            result = await client.probe(self.cfg.probe.text, dimension=w.spec.dimension,
                                        timeout_s=self.cfg.probe.timeout_floor_s)
            if result.ok and w.state is S.STARTING:
                progressed = w.fold_probe(self.clock(), result)
                await self._apply(w, w.lifecycle.observe_probe(
                    self.clock(), True, latency_s=result.latency_s, progressing=progressed))
                return
            # shown as last_probe_* while starting (refused, timeout...), not the previous
            # generation's last probe
            w.last_probe = result
            check = await client.health(timeout_s=max(3.0, self.cfg.probe.timeout_floor_s))
            await self._apply(w, w.lifecycle.observe_health(self.clock(), check.status))
            return
        now = self.clock()
        p99 = w.probe_window.percentile(0.99, now)
        timeout = probe_timeout_s(p99, floor_s=self.cfg.probe.timeout_floor_s)
        result = await client.probe(self.cfg.probe.text, dimension=w.spec.dimension,
                                    timeout_s=timeout)
        now = self.clock()
        progressed = w.fold_probe(now, result)
        if not w.managed:
            return
        if not result.ok and (w.last_probe is None or w.lifecycle.last_probe_ok is not False):
            self._event("probe", w.name, f"probe failed: {result.error}")
        # A worker that answers (an HTTP error, a bad vector) is broken, not hung: it stays
        # ejected and alerts (worker_down, error rules); the hang rule restarts only a
        # worker that stopped answering while nothing completes.
        answered = result.status is not None
        await self._apply(w, w.lifecycle.observe_probe(now, result.ok, latency_s=result.latency_s,
                                                       progressing=progressed or answered))

    async def _scrape_loop(self) -> None:
        """Scrape every worker's ``/metrics`` at once, every `scrape_interval_s` (0.2 s
        while one drains); the balancer's page alongside, outside the worker cycle's
        timing (`cycle_times`): sglang-router takes ~0.1 s to render it at 64 workers."""
        while True:
            t0 = time.perf_counter()
            targets = [w for w in self._all_runtimes()
                       if w.lifecycle.probing or w.state is S.DRAINING]
            balancer = asyncio.ensure_future(self._scrape_balancer())
            await asyncio.gather(*(self._scrape(w) for w in targets), return_exceptions=True)
            self.cycle_times.append(time.perf_counter() - t0)
            with contextlib.suppress(Exception):
                await balancer
            now = self.clock()
            wall = time.time()
            for w in targets:
                w.record_series(now, wall)
            draining = any(w.state is S.DRAINING for w in self.workers.values())
            await asyncio.sleep(0.2 if draining else self.cfg.metrics.scrape_interval_s)

    async def _scrape(self, w: WorkerRuntime) -> None:
        try:
            metrics = await self._clients[w.name].metrics(timeout_s=2.0,
                                                          families=SCRAPED_FAMILIES)
        except Exception:  # noqa: BLE001 - missing data is its own alert
            return
        now = self.clock()
        w.fold_metrics(now, metrics)
        lc = w.lifecycle
        if w.managed and lc.judged_since is not None:
            share, responses = w.error_share_of(now, since=lc.judged_since,
                                                window_s=self.policy.outlier.window_s)
            await self._apply(w, lc.observe_error_share(now, share, responses))
        if w.state is S.DRAINING and w.managed:
            inflight = None if w.running is None else w.running + (w.queued or 0)
            if w.action is not None:
                w.action.progress = f"draining: {inflight if inflight is not None else '?'} in flight"
            await self._apply(w, w.lifecycle.observe_inflight(now, inflight))

    async def _scrape_balancer(self) -> None:
        """Fold the balancer's request-duration histogram (sglang-router: every client
        request, retries included, all workers together) into `fleet_latency`."""
        read = getattr(self.balancer, "prometheus", None)  # nginx has no such page
        if read is None:
            return
        try:
            # fresh each cycle; the read also serves the router's own `list` (circuits)
            snap = await read(max_age_s=0.0, families=(ROUTER_DURATION,))
            hist = snap.histogram(ROUTER_DURATION) if snap is not None else None
        except Exception:  # noqa: BLE001 - the fleet P95 falls back to the workers'
            return
        if hist is not None:
            ident = self.balancer.identity if self.balancer else None
            self.fleet_latency.observe(self.clock(), hist.buckets,
                                       instance=ident.pid if ident else None)

    async def _gpu_loop(self) -> None:
        while True:
            sample = await self._gpu.sample() if self._gpu is not None else None
            self._gpu_sample = sample
            # one scan of the process table for the whole fleet, off the event loop
            # (one scan per worker cost ~10 ms each at 64 workers)
            idents = {w.name: w.identity for w in self._all_runtimes() if w.identity}
            trees = await procs.group_pids_many_async(idents)
            if sample is not None:
                self._fold_gpu(sample, trees)
            # the same pid sets give each group's host RSS (leak trend), also off the loop
            host = await hostmem.sample_async(trees)
            now = self.clock()
            for w in self._all_runtimes():
                w.trend_scale = self.cfg.metrics.trend_time_scale
                w.fold_host(now, host.rss_mib.get(w.name), host.available_mib)
            await asyncio.sleep(self.cfg.metrics.gpu_sample_s())

    def _fold_gpu(self, sample: GpuSample, groups: dict[str, set[int]]) -> None:
        trees = {w.name: groups.get(w.name, set()) | {w.identity.pid}
                 for w in self._all_runtimes() if w.identity is not None}
        shares = attribute(sample, trees)
        cards = {d.index: d for d in sample.devices}
        now = self.clock()
        for w in self._all_runtimes():
            w.trend_scale = self.cfg.metrics.trend_time_scale
            card = cards.get(w.spec.gpu if w.spec.gpu is not None else 0)
            w.fold_gpu(now, shares.get(w.name), card.used_mib if card else None,
                       card.total_mib if card else None,
                       util_pct=card.util_pct if card else None,
                       temperature_c=card.temperature_c if card else None)

    async def _tick_loop(self) -> None:
        last_alerts = 0.0
        while True:
            now = self.clock()
            for w in list(self.workers.values()):
                await self._apply(w, w.lifecycle.tick(now))
            if now - last_alerts >= 1.0:
                last_alerts = now
                await self._evaluate_alerts(now)
            if self._dirty:
                self._save_state()
            await asyncio.sleep(TICK_S)

    async def _evaluate_alerts(self, now: float) -> None:
        stale_after_s = self._stale_after_s()
        facts: dict[str, WorkerFacts] = {
            w.name: w.facts(now, stale_after_s=stale_after_s) for w in self._all_runtimes()}
        for tr in self.alerts.evaluate(now, facts):
            self._on_alert(tr)

    def _stale_after_s(self) -> float:
        """Age after which scraped or sampled data counts as missing ("no data"): 10 s,
        or three scrape / GPU periods when those are longer."""
        m = self.cfg.metrics
        return max(10.0, 3.0 * m.scrape_interval_s, 3.0 * m.gpu_sample_s())

    def _on_alert(self, tr: AlertTransition) -> None:
        a = tr.alert
        silenced = " (silenced)" if tr.silenced else ""
        self._event("alert", a.worker, f"{a.rule} {tr.target.value}: {a.summary}{silenced}")
        if tr.remediation is not None and a.worker in self.workers:
            self._event("remediation", a.worker, f"auto-remediation {tr.remediation.value} "
                        f"({a.rule})")
            try:  # drain: out of the balancer, left alive; drain_restart: + restart
                self.start_action(tr.remediation.action, a.worker, caller_uid=None)
            except ActionError as exc:
                self._event("remediation", a.worker, f"auto-remediation not started: {exc}")

    async def _balancer_loop(self) -> None:
        """Watch the balancer; restart it when it died (workers are not touched).

        Its process is watched by a pidfd (polled every `BALANCER_POLL_S` where it
        cannot be), so a dead balancer is replaced at once; ``/liveness`` and the
        routed set are read every `BALANCER_CHECK_S`."""
        exits = self._balancer_exit
        next_check = self.clock() + BALANCER_POLL_S
        while True:
            # (re)watch the current process first: a restart below replaced it
            ident = self.balancer.identity if self.balancer is not None else None
            exits.sync({"balancer": ident} if ident is not None else {})
            delay = max(0.0, next_check - self.clock())
            await exits.wait(min(delay, BALANCER_POLL_S) if exits.polling else delay)
            if self.balancer is None:
                next_check = self.clock() + BALANCER_CHECK_S
                continue
            ident = self.balancer.identity
            gone = (ident is not None and exits.needs_poll("balancer")
                    and not procs.is_running(ident))
            if not gone and self.clock() < next_check:
                continue
            next_check = self.clock() + BALANCER_CHECK_S
            healthy = False if gone else await self.balancer.healthy()
            if healthy != self.balancer_healthy:
                self._event("balancer", None, "balancer healthy" if healthy else
                            "balancer not answering")
            self.balancer_healthy = healthy
            if healthy:
                await self._refresh_routed()
            # never during a shutdown: `down` stops the balancer itself while this loop
            # still runs, and a replacement started then would outlive the supervisor
            if (not healthy and ident is not None and not self.stopping
                    and (gone or not procs.is_running(ident))):
                await self._restart_balancer()

    async def _restart_balancer(self) -> None:
        """Replace a dead balancer. The routed workers that need no API key are handed
        to the new one at start (sglang-router: ``--worker-urls``, registered by the
        router itself ~1 s after its port opens, no ``POST /workers`` round trips);
        keyed workers are added through the API. A start-up worker the balancer has
        not listed in time is added through the API as well."""
        assert self.balancer is not None and self._bsettings is not None
        self._event("balancer", None, "balancer process gone: restarting it")
        with contextlib.suppress(Exception):
            await self.balancer.stop()
        routed = [w for w in self.workers.values() if w.lifecycle.registered]
        for w in self.workers.values():
            w.in_balancer = False
        plain = [w for w in routed if not w.spec.api_key]
        try:
            self.balancer = create_balancer(self._bsettings, self.state_dir.root)
            await self.balancer.start(workers=[w.spec.url for w in plain])
            self._event("balancer", None, f"balancer restarted with {len(plain)} workers "
                        "at start-up")
            self._save_state()
            await asyncio.gather(*(self._register(w) for w in routed if w.spec.api_key))
            wait_s = getattr(self._bsettings, "worker_startup_timeout_s", 0) + 2.0
            deadline = self.clock() + wait_s
            while plain and self.clock() < deadline:
                await self._refresh_routed()
                plain = [w for w in plain if not w.in_balancer and w.lifecycle.registered]
                if plain:
                    await asyncio.sleep(0.1)
            await asyncio.gather(*(self._register(w) for w in plain))
        except Exception as exc:  # noqa: BLE001
            self._event("balancer", None, f"balancer restart failed: {exc}")

    async def _refresh_routed(self) -> None:
        """Read which workers the balancer really routes to (registration is asynchronous in
        sglang-router, and a restarted router forgets): `routed` is what it lists."""
        assert self.balancer is not None
        try:
            listed = {r.url: r.routable for r in await self.balancer.list()}
        except Exception:  # noqa: BLE001 - a failed read keeps the last known value
            return
        for w in self.workers.values():
            routed = listed.get(normalize_url(w.spec.url), False) and w.lifecycle.registered
            if routed != w.in_balancer:
                w.in_balancer = routed
                self._dirty = True

    async def _discover_loop(self) -> None:
        """List SGLang servers on this box that we did not start (attached, unmanaged)."""
        while True:
            with contextlib.suppress(Exception):
                await self._discover_once()
            await asyncio.sleep(DISCOVER_S)

    async def _discover_once(self) -> None:
        found = await procs.discover_sglang_servers_async()
        ours = {w.identity.pid for w in self.workers.values() if w.identity}
        idents = {w.name: w.identity for w in self.workers.values() if w.identity}
        ours |= {pid for pids in (await procs.group_pids_many_async(idents)).values()
                 for pid in pids}
        seen = set()
        for server in found:
            if server.pid in ours or self._other_fleet(server.identity):
                continue
            seen.add(server.pid)
            if server.pid in self.unmanaged:
                continue
            name = f"unmanaged-{server.port}"
            spec = WorkerSpec(name=name, port=server.port, model_path=server.model_path or "?",
                              engine=Engine.SIM if server.sim else Engine.SGLANG,
                              host=server.host if server.host not in ("0.0.0.0", "") else "127.0.0.1",
                              gpu=_first_gpu(server.cuda_visible_devices),
                              dimension=self.cfg.model.dimension)
            lc = WorkerLifecycle(name, self.policy, initial=S.UNMANAGED, now=self.clock())
            w = WorkerRuntime(spec=spec, lifecycle=lc, managed=False, identity=server.identity)
            self.unmanaged[server.pid] = w
            self._clients[name] = SglangClient(spec.url, http=self._http)
            self._ensure_probe_task(w)
            self._event("discover", name, f"found SGLang server pid {server.pid} on port "
                        f"{server.port} not started by us: attached, unmanaged")
        alive = {s.identity for s in found}
        self._fleet_of = {i: o for i, o in self._fleet_of.items() if i in alive}
        for pid in list(self.unmanaged):
            if pid not in seen:
                w = self.unmanaged.pop(pid)
                task = self._probe_tasks.pop(w.name, None)
                if task:
                    task.cancel()
                self._event("discover", w.name, f"unmanaged server pid {pid} is gone")

    def _other_fleet(self, ident: procs.ProcessIdentity | None) -> bool:
        """The server was started by another embedops fleet's supervisor on this box: that
        one manages it, so it is neither listed nor probed here (cached per process)."""
        if ident is None:
            return False
        if ident not in self._fleet_of:
            owner = procs.read_env_var(ident, FLEET_ENV)
            self._fleet_of[ident] = owner
            if owner is not None and owner != str(self.state_dir.root):
                log.info("pid %d on this box belongs to the fleet in %s: not attached",
                         ident.pid, owner)
        owner = self._fleet_of[ident]
        return owner is not None and owner != str(self.state_dir.root)

    # ================================================================== helpers

    def _all_runtimes(self) -> list[WorkerRuntime]:
        return [*self.workers.values(), *self.unmanaged.values()]

    def _update_gpu_urls(self) -> None:
        if isinstance(self._gpu, SimGpuSource):
            self._gpu.set_urls(w.spec.url for w in self._all_runtimes())

    def _event(self, kind: str, worker: str | None, message: str, **fields: Any) -> None:
        ev = Event(time=time.time(), kind=kind, worker=worker, message=message, fields=fields)
        self.events.append(ev)
        log.info("%s%s: %s", kind, f" [{worker}]" if worker else "", message)

    async def _wait_for(self, cond: Callable[[], bool], timeout_s: float) -> bool:
        deadline = self.clock() + timeout_s
        while not cond():
            if self.clock() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def _save_state(self, *, stopped: bool = False) -> None:
        self._dirty = False
        workers = {}
        for w in self.workers.values():
            workers[w.name] = {
                "identity": w.identity.to_json() if w.identity and not stopped else None,
                "spec": _spec_to_json(w.spec),
                "restarts": w.lifecycle.status(self.clock()).restarts,
                "started_wall": w.started_wall,
                "raw_argv": list(w.raw_argv) if w.raw_argv else None,
                "added": w.config_spec is None,
            }
        ident = self.balancer.identity if self.balancer and not stopped else None
        data = {"fleet": self.cfg.name, "saved_at": time.time(), "supervisor_pid": os.getpid(),
                "balancer": {"kind": self.cfg.balancer.kind,
                             "identity": ident.to_json() if ident else None,
                             "url": self.balancer.url if self.balancer else None},
                "workers": workers}
        try:
            self.state_dir.write_state(data)
        except OSError as exc:
            log.error("cannot write the state file: %s", exc)

    def _add_adopted(self, spec: WorkerSpec, identity: procs.ProcessIdentity,
                     argv: tuple[str, ...]) -> WorkerRuntime:
        """A managed runtime for an unmanaged server being adopted (relaunched verbatim)."""
        lc = WorkerLifecycle(spec.name, self.policy, initial=S.UNMANAGED, now=self.clock())
        w = WorkerRuntime(spec=spec, lifecycle=lc, identity=identity, raw_argv=argv)
        self.workers[spec.name] = w
        self._clients[spec.name] = SglangClient(spec.url, api_key=spec.api_key, http=self._http,
                                                model=spec.served_model_name or spec.model_path)
        self._ensure_probe_task(w)
        self._update_gpu_urls()
        self._worker_exits.wake()
        return w

    def _forget(self, w: WorkerRuntime) -> None:
        """Drop a stopped worker from the fleet."""
        task = self._probe_tasks.pop(w.name, None)
        if task:
            task.cancel()
        self.workers.pop(w.name, None)
        client = self._clients.pop(w.name, None)
        if client is not None:
            client.close_connections()
        self._update_gpu_urls()
        self._save_state()

    def new_worker_spec(self, args: dict[str, Any]) -> WorkerSpec:
        """A spec for `add`, from fleet defaults plus `args`; `ActionError` names the field."""
        from console.actions import NAME_RE

        allowed = {"name", "port", "gpu", "mem_fraction_static", "cuda_graph",
                   "max_running_requests", "chunked_prefill_size"}
        unknown = sorted(set(args) - allowed)
        if unknown:
            raise ActionError(f"unknown field(s) {unknown}; allowed: {sorted(allowed)}",
                              status=400, code="bad_args")
        name, port = args.get("name"), args.get("port")
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise ActionError("name: letters, digits and ._- (max 64)", status=400, code="bad_args")
        if name in self.workers:
            raise ActionError(f"name: a worker called {name!r} exists", status=400, code="bad_args")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ActionError("port: an integer in 1..65535", status=400, code="bad_args")
        taken = {w.spec.port for w in self.workers.values()}
        if self.cfg.balancer.kind != "none":
            taken |= {self.cfg.balancer.port, self.cfg.balancer.prometheus_port}
        if port in taken:
            raise ActionError(f"port: {port} is already used by this fleet", status=400,
                              code="bad_args")
        gpu = args.get("gpu")
        if gpu is not None and (isinstance(gpu, bool) or not isinstance(gpu, int) or gpu < 0):
            raise ActionError("gpu: a GPU index ≥ 0", status=400, code="bad_args")
        template = next(iter(self.workers.values())).spec if self.workers else None
        base = WorkerSpec(
            name=name, port=port, model_path=self.cfg.model.path, engine=self.cfg.engine,
            gpu=gpu, served_model_name=self.cfg.model.served_name,
            context_length=self.cfg.model.context_length, dimension=self.cfg.model.dimension,
            api_key=template.api_key if template else None,
            env=(("CUDA_VISIBLE_DEVICES", str(gpu)),) if gpu is not None else ())
        tune = {k: v for k, v in args.items() if k in (
            "mem_fraction_static", "cuda_graph", "max_running_requests", "chunked_prefill_size")}
        if not tune:
            return base
        from console.actions import retune_spec

        probe = WorkerRuntime(spec=base, lifecycle=WorkerLifecycle(name, self.policy))
        return retune_spec(self, probe, tune)

    async def validate(self, target: str) -> dict[str, Any]:
        """Run the deployment checks against the balancer, a worker, or a URL."""
        from console.validate import run_validation

        api_key = None
        if target == "balancer":
            if self.balancer is None:
                raise ActionError("this fleet has no balancer; name a worker", status=400,
                                  code="bad_args")
            url = self.balancer.url
        elif target in self.workers:
            url = self.workers[target].spec.url
            api_key = self.workers[target].spec.api_key
        elif target.startswith("http://127.") or target.startswith("http://localhost"):
            url = target
        else:
            raise ActionError(f"target {target!r}: 'balancer', a worker name, or a loopback "
                              "URL", status=400, code="bad_args")
        if api_key is None and self.workers:
            api_key = next(iter(self.workers.values())).spec.api_key
        return await run_validation(url, model=self.cfg.model.served_name or self.cfg.model.path,
                                    dimension=self.cfg.model.dimension, api_key=api_key,
                                    context_length=self.cfg.model.context_length)

    # ================================================================== operator actions

    def start_action(self, action: str, worker: str | None, *, caller_uid: int | None,
                     args: dict[str, Any] | None = None) -> tuple[str, asyncio.Task[dict[str, Any]]]:
        """Begin an operator action; returns its id and the task yielding its outcome.

        Raises `ActionError` (404 unknown worker, 409 another action is running) before
        anything changes.
        """
        from console import (
            actions,  # the action bodies live beside, to keep this file lean
        )

        body = actions.ACTIONS.get(action)
        if body is None:
            raise ActionError(f"unknown action {action!r}", status=400, code="bad_action")
        w = None
        if worker is not None:
            w = self.workers.get(worker)
            if w is None:
                raise ActionError(f"no worker named {worker!r}", status=404, code="not_found")
            if w.action is not None:
                raise ActionError(f"{worker}: {w.action.name} is already running "
                                  f"({w.action.progress or 'in progress'})")
        if self._rollout is not None and not self._rollout.done() and action != "silence":
            raise ActionError("a rolling restart is in progress")
        action_id = uuid.uuid4().hex[:12]
        if w is not None:
            w.action = ActionProgress(action_id, action, time.time())
        t0 = time.monotonic()
        before = _spec_to_json(w.spec) if w is not None else None

        async def run() -> dict[str, Any]:
            outcome, message = "failed", ""
            refusal: tuple[int, str] = (409, "refused")
            try:
                outcome, message = await body(self, w, args or {})
            except ActionError as exc:
                outcome, message = "refused", str(exc)
                refusal = (exc.status, exc.code)
            except IllegalTransition as exc:
                outcome, message = "refused", str(exc)
            except Exception as exc:
                log.exception("action %s failed", action)
                outcome, message = "failed", f"{type(exc).__name__}: {exc}"
            finally:
                if w is not None:
                    w.action = None
            duration = time.monotonic() - t0
            after = _spec_to_json(w.spec) if w is not None else None
            self.audit.record(action, worker=worker, caller_uid=caller_uid, outcome=outcome,
                              duration_s=duration, args_before=before,
                              args_after=after if after != before else None,
                              detail={"message": message, **(args or {})})
            self._event("action", worker, f"{action} {outcome}: {message} ({duration:.1f} s)",
                        outcome=outcome)
            self._save_state()
            result = {"action_id": action_id, "action": action, "worker": worker,
                      "outcome": outcome, "message": message, "duration_s": round(duration, 3)}
            if outcome == "refused":
                # how the API answers a refusal (400 bad value, 409 conflict...); not
                # part of the outcome body
                result["_status"], result["_code"] = refusal
            return result

        task = asyncio.create_task(run(), name=f"action-{action}-{worker}")
        self._jobs[action_id] = task
        task.add_done_callback(lambda _t: self._jobs.pop(action_id, None))
        if action == "rollout":
            self._rollout = task
        return action_id, task


def _tail(path: Path, size: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - size))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _first_gpu(visible: str | None) -> int | None:
    if not visible:
        return None
    first = visible.split(",")[0].strip()
    return int(first) if first.isdigit() else None


_SPEC_FIELDS = ("name", "port", "model_path", "host", "gpu", "served_model_name",
                "mem_fraction_static", "cuda_graph", "max_running_requests",
                "chunked_prefill_size", "context_length", "dimension")


def _spec_to_json(spec: WorkerSpec) -> dict[str, Any]:
    """A spec as stored in the state file (never the API key)."""
    data: dict[str, Any] = {k: getattr(spec, k) for k in _SPEC_FIELDS}
    data["engine"] = spec.engine.value
    data["extra_args"] = list(spec.extra_args)
    data["env"] = [list(kv) for kv in spec.env]
    return data


def _spec_from_json(data: dict[str, Any], *, api_key: str | None = None) -> WorkerSpec:
    return WorkerSpec(**{k: data[k] for k in _SPEC_FIELDS if k in data},
                      engine=Engine(data.get("engine", "sglang")),
                      extra_args=tuple(data.get("extra_args") or ()),
                      env=tuple(tuple(kv) for kv in data.get("env") or ()),  # type: ignore[misc]
                      api_key=api_key)


__all__ = ["ActionError", "Supervisor", "balancer_settings", "lifecycle_policy"]
