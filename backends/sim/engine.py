"""The launcher side of the simulated worker: what SGLang's TokenizerManager and
`launch_server` do — child processes, request routing to the scheduler, the deep
health check, warmup, SIGTERM drain, SIGQUIT and child-crash handling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from typing import Any, NoReturn, cast

import psutil

from backends.sim import protocol as P
from backends.sim.children import detokenizer_main, fork_child, spawn_orphan
from backends.sim.cli import SimConfig
from backends.sim.faults import Faults
from backends.sim.gpumem import GpuRegistry
from backends.sim.metrics import SimMetrics
from backends.sim.scheduler import scheduler_main

log = logging.getLogger("sglang.launcher")

STARTING, UP, UNHEALTHY = "Starting", "Up", "UnHealthy"
WARMUP_TEXT = "The capital city of France is"


class QueueFull(Exception):
    """The scheduler rejected the request: waiting queue at --max-queued-requests."""


class Aborted(Exception):
    """The request was aborted (/pause_generation, /abort_request)."""


def health_check_timeout() -> float:
    """``SGLANG_HEALTH_CHECK_TIMEOUT`` (default 20 s)."""
    try:
        return float(os.environ.get("SGLANG_HEALTH_CHECK_TIMEOUT", "20"))
    except ValueError:
        return 20.0


def _env_true(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return raw.strip().lower() in ("1", "true", "yes", "on")


class _SchedulerLink(asyncio.Protocol):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.buf = P.LineBuffer()

    def data_received(self, data: bytes) -> None:
        for msg in self.buf.feed(data):
            self.engine.on_message(msg)

    def connection_lost(self, exc: Exception | None) -> None:
        self.engine.link_lost()


class Engine:
    """Process tree, scheduler link and server state of one simulated worker."""

    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.version = cfg.version
        self.pid = os.getpid()
        self.start_time = time.time()
        self.status = STARTING
        self.gracefully_exit = False
        self.is_pause = False
        self.shutting_down = False
        self.sigterm_installed = False
        self.faults = Faults()
        self.start_faults = cfg.faults
        self.sched_pid = 0
        self.detok_pid = 0
        self.sched_dead = False
        self.crash_reported = False
        self.orphans: list[int] = []
        self.info: dict[str, Any] = {}
        self.stats: dict[str, Any] = {"running": 0, "queue": 0, "used_tokens": 0,
                                      "evictable_tokens": 0, "cache_hit_rate": 0.0,
                                      "util_pct": 0.0, "used_mib": 0, "prefill_compute": 0,
                                      "prefill_cache": 0, "passes": 0}
        self.metrics: SimMetrics | None = None
        self.last_receive = 0.0
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.pending_health: set[int] = set()
        self.user_rids: dict[str, list[int]] = {}
        self._next_rid = 1
        self._out: list[list[int]] = []
        self._flush_scheduled = False
        self._flush_waiters: dict[int, asyncio.Future[bool]] = {}
        self._transport: asyncio.WriteTransport | None = None
        self._ready: asyncio.Future[dict[str, Any]] | None = None
        self._pause_event: asyncio.Event | None = None
        self._sock: socket.socket | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.registry = GpuRegistry(cfg.gpu_index)
        self.uvicorn_server: Any = None

    # ------------------------------------------------------------------ processes

    def spawn_children(self) -> None:
        """Fork ``sglang::detokenizer`` and ``sglang::scheduler`` (before any loop/thread)."""
        me = os.getpid()
        self.detok_pid = fork_child("sglang::detokenizer", lambda: detokenizer_main(me))
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        cfg = self.cfg
        self.sched_pid = fork_child(
            "sglang::scheduler", lambda: scheduler_main(child_sock, cfg, me),
            close_fds=(parent_sock.fileno(),))
        child_sock.close()
        self._sock = parent_sock

    def kill_tree_and_exit(self, code: int | None = None) -> NoReturn:
        """`kill_process_tree(os.getpid(), include_parent=True)`: SIGKILL every
        descendant, then die (0.5.2: by SIGKILL; 0.5.23: exit status 137), or exit
        with `code` when given."""
        self.shutting_down = True
        if self.version != "0.5.2":
            log.info("kill_process_tree called: parent_pid=%d, include_parent=True, pid=%d",
                     self.pid, self.pid)
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    child.kill()
        if self.sched_pid:
            self.registry.remove(self.sched_pid)
        for h in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                h.flush()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        if code is not None:
            os._exit(code)
        if self.version == "0.5.2":
            os.kill(self.pid, signal.SIGKILL)
        os._exit(137)

    def _watch_child(self, name: str, pid: int) -> None:
        assert self.loop is not None
        try:
            fd = os.pidfd_open(pid)
        except (OSError, AttributeError):
            return
        self.loop.add_reader(fd, self._child_exited, name, pid, fd)

    def _child_exited(self, name: str, pid: int, fd: int) -> None:
        assert self.loop is not None
        self.loop.remove_reader(fd)
        os.close(fd)
        code: int | None = None
        with contextlib.suppress(ChildProcessError):
            _, status = os.waitpid(pid, os.WNOHANG)
            code = os.waitstatus_to_exitcode(status)
        if self.shutting_down:
            return
        if pid == self.sched_pid:
            self.sched_dead = True
            self.registry.remove(pid)
        if self.status == STARTING and self._ready is not None and not self._ready.done():
            log.error("Rank 0 scheduler is dead. Please check if there are relevant logs.")
            self.kill_tree_and_exit()
        if self.version == "0.5.2":
            # No subprocess watchdog in 0.5.2: the HTTP server lives on, requests hang.
            return
        if code == 0 or self.crash_reported:
            return
        self.crash_reported = True
        log.error("Subprocess %s (pid=%d) crashed with exit code %s. Triggering SIGQUIT "
                  "for cleanup...", name, pid, code)
        self.loop.create_task(self._crash_cleanup())

    async def _crash_cleanup(self) -> None:
        self._log_sigquit()
        await asyncio.sleep(self.cfg.crash_wait_s)
        self.kill_tree_and_exit()

    def _log_sigquit(self) -> None:
        if self.version == "0.5.2":
            log.error("Received sigquit from a child process. It usually means the child failed.")
        else:
            log.error("SIGQUIT received. signum=None, frame=None. It usually means one child "
                      "failed.")

    def on_sigquit(self) -> None:
        """A child failed (exception, watchdog, OOM): kill the whole tree."""
        self._log_sigquit()
        self.kill_tree_and_exit()

    # ------------------------------------------------------------------ scheduler link

    def on_message(self, msg: list[Any]) -> None:
        """Dispatch one message from the scheduler."""
        kind = msg[0]
        if kind == P.DONE:
            self.last_receive = time.time()
            pending = self.pending
            health = self.pending_health
            for rid, variant, cached, qtime in msg[1]:
                fut = pending.pop(rid, None)
                if fut is None:
                    health.discard(rid)
                elif not fut.done():
                    fut.set_result((variant, cached, qtime))
        elif kind == P.STATS:
            self.stats = msg[1]
            if self.metrics is not None and self.info:
                self.metrics.scheduler_stats(msg[1], self.info["max_total_num_tokens"])
        elif kind == P.QUEUE_FULL:
            for rid in msg[1]:
                fut = self.pending.pop(rid, None)
                if fut is not None and not fut.done():
                    fut.set_exception(QueueFull())
        elif kind == P.FLUSH:
            waiter = self._flush_waiters.pop(msg[1], None)
            if waiter is not None and not waiter.done():
                waiter.set_result(bool(msg[2]))
        elif kind == P.READY and self._ready is not None and not self._ready.done():
            self._ready.set_result(msg[1])

    def link_lost(self) -> None:
        """The scheduler's end closed (it died)."""
        self._transport = None

    def _send(self, msg: list[Any]) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(P.encode(msg))

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out:
            out, self._out = self._out, []
            self._send([P.REQ, out])

    async def submit(self, items: list[tuple[int, int]],
                     rid: Any = None) -> list[asyncio.Future[Any]]:
        """Queue requests for the scheduler; futures resolve to
        ``(variant, cached_tokens, queue_time_s)`` or raise `QueueFull`/`Aborted`."""
        if not self.sigterm_installed:
            self._install_sigterm()
        if self.is_pause and self._pause_event is not None:
            await self._pause_event.wait()
        loop = self.loop
        assert loop is not None
        futs = []
        rids = []
        for ntok, key in items:
            r = self._next_rid
            self._next_rid += 1
            fut = loop.create_future()
            self.pending[r] = fut
            self._out.append([r, ntok, key, P.KIND_REQUEST])
            futs.append(fut)
            rids.append(r)
        if isinstance(rid, str):
            self.user_rids[rid] = rids
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return futs

    def forget_user_rid(self, rid: Any) -> None:
        """Drop the rid mapping of a finished request."""
        if isinstance(rid, str):
            self.user_rids.pop(rid, None)

    @property
    def inflight(self) -> int:
        """Requests sent and not answered (SGLang's ``len(rid_to_state)``)."""
        return len(self.pending)

    def abort(self, rid: Any = None, abort_all: bool = False) -> None:
        """Abort requests: their HTTP answer becomes an error."""
        targets = list(self.pending) if abort_all else self.user_rids.get(rid, [])
        for r in targets:
            fut = self.pending.pop(r, None)
            if fut is not None and not fut.done():
                fut.set_exception(Aborted())

    def pause(self) -> None:
        """/pause_generation (abort mode): abort in-flight, block new requests."""
        self.is_pause = True
        if self._pause_event is None:
            self._pause_event = asyncio.Event()
        self._pause_event.clear()
        self.abort(abort_all=True)

    def resume(self) -> None:
        """/continue_generation."""
        self.is_pause = False
        if self._pause_event is not None:
            self._pause_event.set()

    async def flush_cache(self) -> bool:
        """Ask the scheduler to flush the radix cache; False when requests are in flight."""
        assert self.loop is not None
        fid = self._next_rid
        self._next_rid += 1
        fut: asyncio.Future[bool] = self.loop.create_future()
        self._flush_waiters[fid] = fut
        self._send([P.FLUSH, fid])
        return await fut

    # ------------------------------------------------------------------ faults

    def set_faults(self, new: Faults) -> None:
        """Apply fault settings (forward the scheduler's part, signal freeze/thaw)."""
        old = self.faults
        self.faults = new
        self._send([P.FAULTS, new.scheduler_part()])
        if new.freeze_scheduler != old.freeze_scheduler and self.sched_pid and not self.sched_dead:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.sched_pid, signal.SIGSTOP if new.freeze_scheduler else signal.SIGCONT)
        if new.orphan_child and not old.orphan_child:
            pid = spawn_orphan(self.cfg.gpu_index, self.cfg.port)
            if pid:
                self.orphans.append(pid)
                log.warning("sim fault orphan_child: spawned pid %d (ignores SIGTERM)", pid)

    # ------------------------------------------------------------------ health

    async def health_generate(self, path: str) -> int:
        """SGLang's deep ``/health`` / ``/health_generate``: status code."""
        if self.gracefully_exit:
            log.info("Health check request received during shutdown. Returning 503.")
            return 503
        if self.status == STARTING:
            return 503
        if (self.version != "0.5.2" and path == "/health"
                and not _env_true("SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION", True)):
            return 200
        tic = time.time()
        timeout = health_check_timeout()
        if self.is_pause and self._pause_event is not None:
            # The health request blocks on the pause condition like any other request.
            try:
                await asyncio.wait_for(self._pause_event.wait(), timeout)
            except TimeoutError:
                return self._health_failed(tic, timeout)
        r = self._next_rid
        self._next_rid += 1
        self.pending_health.add(r)
        self._out.append([r, 1, -1, P.KIND_HEALTH])
        if not self._flush_scheduled:
            self._flush_scheduled = True
            assert self.loop is not None
            self.loop.call_soon(self._flush)
        while time.time() < tic + timeout:
            await asyncio.sleep(1)
            if self.last_receive > tic:
                self.status = UP
                return 200
        self.pending_health.discard(r)
        return self._health_failed(tic, timeout)

    def _health_failed(self, tic: float, timeout: float) -> int:
        log.error("Health check failed. Server couldn't get a response from detokenizer for "
                  "last %d seconds. tic start time: %.2f. last_heartbeat time: %.2f",
                  int(timeout), tic, self.last_receive)
        self.status = UNHEALTHY
        return 503

    # ------------------------------------------------------------------ lifecycle

    def _install_sigterm(self) -> None:
        assert self.loop is not None
        self.sigterm_installed = True
        self.loop.add_signal_handler(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self) -> None:
        if not self.gracefully_exit:
            log.warning("SIGTERM received. signum=None frame=None. Draining requests and "
                        "shutting down...")
        self.gracefully_exit = True

    async def _sigterm_watchdog(self) -> None:
        poll = self.cfg.drain_poll_s
        while not self.gracefully_exit:
            await asyncio.sleep(poll)
        while True:
            if self.status == UNHEALTHY:
                log.error("Signal SIGTERM received while health check failed. Force exiting.")
                break
            if _env_true("SGL_FORCE_SHUTDOWN", False):
                log.error("Signal SIGTERM received while force shutdown flag set. "
                          "Force exiting.")
                break
            n = self.inflight
            log.info("Gracefully exiting... Remaining number of requests %d", n)
            if n == 0:
                break
            await asyncio.sleep(poll)
        self.kill_tree_and_exit()

    async def _wait_ready(self) -> dict[str, Any]:
        assert self.loop is not None and self._sock is not None
        self._ready = self.loop.create_future()
        transport, _ = await self.loop.create_unix_connection(
            lambda: _SchedulerLink(self), sock=self._sock)
        # uvloop's transports do not subclass asyncio's: a cast, not an isinstance check
        self._transport = cast("asyncio.WriteTransport", transport)
        return await self._ready

    def _apply_ready(self, info: dict[str, Any], load_s: float) -> None:
        self.info = info
        info["startup_time"] = time.time() - self.start_time
        self.cfg.args["max_running_requests"] = info["max_running_requests"]
        self.cfg.args["max_total_tokens"] = self.cfg.max_total_tokens
        self.stats["used_mib"] = info["used_mib"]
        if self.cfg.enable_metrics:
            self.metrics = SimMetrics(
                version=self.version, model_name=self.cfg.served_model_name,
                scheduler_pid=self.sched_pid, e2e_buckets=self.cfg.bucket_e2e,
                ttft_buckets=self.cfg.bucket_ttft,
                tokens_histogram=(self.version != "0.5.2"
                                  or bool(self.cfg.args.get("collect_tokens_histogram"))))
            self.metrics.set_startup(info, context_len=self.cfg.context_length, load_s=load_s,
                                     total_s=time.time() - self.start_time,
                                     cuda_graph=bool(info.get("graph_mib")))
            self.metrics.scheduler_stats(self.stats, info["max_total_num_tokens"])

    async def _warmup(self) -> None:
        from backends.sim.selfclient import http_request

        cfg = self.cfg
        if cfg.skip_server_warmup:
            self.status = UP
            log.info("The server is fired up and ready to roll!")
            self._arm_start_faults()
            return
        await asyncio.sleep(cfg.warmup_s)
        headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
        info_path = "/get_model_info" if self.version == "0.5.2" else "/model_info"
        host = "127.0.0.1" if cfg.host in ("0.0.0.0", "", "::") else cfg.host
        try:
            for _ in range(120):
                status, _ = await http_request(host, cfg.port, "GET", info_path, headers=headers)
                if status == 200:
                    break
                await asyncio.sleep(1)
            if cfg.is_embedding:
                body = b'{"text": "' + WARMUP_TEXT.encode() + (
                    b'", "sampling_params": {"max_new_tokens": 1, "temperature": 0}}')
                status, text = await http_request(host, cfg.port, "POST", "/encode", body=body,
                                                  headers=headers, timeout=600)
                if status != 200:
                    raise RuntimeError(f"{status} {text[:200]!r}")
            else:
                # A generation model warms up with /generate, which the sim does not
                # serve: run the same 1-token request through the scheduler directly.
                (fut,) = await self.submit([(len(WARMUP_TEXT.split()) + 1, -2)])
                await asyncio.wait_for(fut, 600)
        except Exception as e:  # noqa: BLE001 - SGLang logs any warmup failure and dies
            log.error("Initialization failed. warmup error: %s", e)
            self.kill_tree_and_exit()
        self.status = UP
        log.info("The server is fired up and ready to roll!")
        self._arm_start_faults()

    def _arm_start_faults(self) -> None:
        default = Faults().to_json()
        patch = {k: v for k, v in self.start_faults.to_json().items() if v != default[k]}
        if patch:
            # On top of whatever was switched at run time during the warmup.
            self.set_faults(self.faults.updated(patch))

    async def run(self, app: Any) -> None:
        """Load (port closed), serve, warm up, run until a shutdown path exits."""
        import uvicorn

        from backends.sim.http_app import NoDelayHttpToolsProtocol

        self.loop = asyncio.get_running_loop()
        self.loop.add_signal_handler(signal.SIGQUIT, self.on_sigquit)
        self._watch_child("detokenizer", self.detok_pid)
        self._watch_child("scheduler_0", self.sched_pid)
        t0 = time.time()
        info = await self._wait_ready()
        self._apply_ready(info, time.time() - t0)
        config = uvicorn.Config(
            app, host=self.cfg.host, port=self.cfg.port, http=NoDelayHttpToolsProtocol,
            lifespan="off", access_log=False, proxy_headers=False,
            log_level=(self.cfg.args.get("log_level_http") or self.cfg.log_level).lower(),
            timeout_keep_alive=5, timeout_graceful_shutdown=1)
        server = uvicorn.Server(config)
        self.uvicorn_server = server

        async def serve() -> None:
            with contextlib.suppress(SystemExit):
                await server.serve()

        serve_task = asyncio.create_task(serve())
        while not server.started and not serve_task.done():
            await asyncio.sleep(0.01)
        if serve_task.done():
            # uvicorn could not bind the port (it logged why).
            self.kill_tree_and_exit(1)
        self.loop.create_task(self._warmup())
        self.loop.create_task(self._sigterm_watchdog())
        await serve_task
        # uvicorn handled SIGTERM/SIGINT itself (before the first request installed
        # SGLang's handler); `launch_server` then kills the process tree.
        self.kill_tree_and_exit()
