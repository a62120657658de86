"""The ``sglang::scheduler`` child: loads "weights", holds the simulated GPU memory and
runs every request through batched forward passes.

Requests arrive over a socketpair (`backends.sim.protocol`). Forward model: one batch at
a time, up to ``--max-running-requests`` requests and ``--chunked-prefill-size`` tokens;
a batch takes ``base_latency_ms + slow_ms + per_token_us × tokens``; the rest wait in
the queue. Because the work really happens here, SIGSTOP of this process freezes every
request while the launcher keeps answering /ping and /metrics.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import time
import traceback
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, NoReturn

from backends.sim import protocol as P
from backends.sim.cli import SimConfig
from backends.sim.gpumem import (
    CONTEXT_MIB,
    CudaOutOfMemory,
    GpuRegistry,
    MemoryPlan,
    NotEnoughMemory,
    oom_message,
    plan_memory,
)

log = logging.getLogger("sglang.scheduler")

_RADIX_MAX_ENTRIES = 200_000
_BATCH_LOG_INTERVAL_S = 1.0
_STATS_MIN_INTERVAL_S = 0.01
_STATS_IDLE_INTERVAL_S = 1.0
_REGISTRY_INTERVAL_S = 0.5
_WATCHDOG_GRACE_S = 5.0


class SchedulerCrash(Exception):
    """An error whose last traceback line is `line` (e.g. a CUDA error)."""

    def __init__(self, line: str) -> None:
        super().__init__(line)
        self.line = line


@dataclass
class _Req:
    rid: int
    ntok: int
    key: int
    kind: int
    arrived: float


def derived_limits(cfg: SimConfig, max_total_num_tokens: int) -> tuple[int, int]:
    """(max_running_requests, max_req_input_len) as SGLang derives them."""
    ctx = cfg.context_length
    if cfg.max_running_requests:
        max_running = cfg.max_running_requests
    else:
        pool = min(max(int(max_total_num_tokens / ctx * 512), 2048), 4096)
        max_running = max(1, min(max_total_num_tokens // 2, pool))
    max_req_input_len = min(ctx - 1, max_total_num_tokens - 1) - 5
    return max_running, max_req_input_len


def configure_child_logging(cfg: SimConfig, prefix: str) -> None:
    """SGLang's log format for a child: ``[time TP0] message``."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(f"[%(asctime)s{prefix}] %(message)s",
                                           datefmt="%Y-%m-%d %H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(getattr(logging, cfg.log_level.upper(), logging.INFO))


class Scheduler:
    """State and loop of the scheduler child."""

    def __init__(self, sock: socket.socket, cfg: SimConfig, parent_pid: int) -> None:
        self.sock = sock
        self.cfg = cfg
        self.parent_pid = parent_pid
        self.pid = os.getpid()
        self.registry = GpuRegistry(cfg.gpu_index)
        self.faults: dict[str, Any] = {"hang": False, "stall": False, "unstable": False,
                                       "crash_after_s": None, "slow_ms": 0.0,
                                       "leak_mib_s": 0.0}
        self.crash_deadline: float | None = None
        self.inbuf = P.LineBuffer()
        self.outbuf: list[bytes] = []
        self.waiting: deque[_Req] = deque()
        self.stuck: list[_Req] = []
        self.batch: list[_Req] | None = None
        self.batch_hits: list[int] = []
        self.batch_start = 0.0
        self.batch_end = 0.0
        self.batch_tokens = 0
        self.radix: OrderedDict[int, int] = OrderedDict()
        self.radix_tokens = 0
        self.plan: MemoryPlan | None = None
        self.leaked_mib = 0.0
        self.others_mib = 0
        self.max_running = 1
        self.token_budget = 0
        self.last_hit_rate = 0.0
        self.prefill_compute = 0
        self.prefill_cache = 0
        self.passes = 0
        self.busy_s = 0.0
        self.util_window_start = time.monotonic()
        self.util_pct = 0.0
        self.stats_dirty = True
        self.last_stats = 0.0
        self.last_registry = 0.0
        self.last_leak_tick = time.monotonic()
        self.last_batch_log = 0.0

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> NoReturn:
        """Load, report ready, serve forever; on an exception behave like SGLang's
        scheduler: log it and SIGQUIT the launcher, which kills the tree."""
        try:
            self._load()
            self._loop()
        except (SchedulerCrash, NotEnoughMemory, CudaOutOfMemory, RuntimeError) as e:
            line = e.line if isinstance(e, SchedulerCrash) else f"RuntimeError: {e}"
            if isinstance(e, CudaOutOfMemory):
                line = str(e)
            tb = traceback.format_exc().rstrip().splitlines()[:-1]
            log.error("Scheduler hit an exception: %s\n%s", "\n".join(tb), line)
            self._die_via_parent()
        os._exit(0)

    def _die_via_parent(self) -> NoReturn:
        try:
            os.kill(self.parent_pid, signal.SIGQUIT)
        except ProcessLookupError:
            os._exit(1)
        # The launcher kills its tree; do not outlive it if it does not.
        deadline = time.monotonic() + 60.0
        while time.monotonic() < deadline and os.getppid() == self.parent_pid:
            time.sleep(0.2)
        os._exit(1)

    def _load(self) -> None:
        cfg = self.cfg
        total = cfg.gpu_mib
        others = self.registry.used_by_others(self.pid)
        log.info("Load weight begin. avail mem=%.2f GB", (total - others - CONTEXT_MIB) / 1024)
        time.sleep(cfg.load_s * 0.7)
        if cfg.startup_fail:
            raise SchedulerCrash(
                "RuntimeError: Failed to load the model weights: simulated initialization "
                "failure (--sim-fault startup-fail)")
        with self.registry.lock():
            others = self.registry.used_by_others(self.pid)
            free = total - others
            if CONTEXT_MIB + cfg.weights_mib > free:
                raise CudaOutOfMemory(oom_message(
                    gpu_index=cfg.gpu_index, total_mib=total, free_mib=free - CONTEXT_MIB,
                    alloc_mib=min(cfg.weights_mib, 1024), process_mib=CONTEXT_MIB))
            avail_after_weights = free - CONTEXT_MIB - cfg.weights_mib
            log.info("Load weight end. type=%s, dtype=torch.bfloat16, avail mem=%.2f GB, "
                     "mem usage=%.2f GB.", self._arch(), avail_after_weights / 1024,
                     cfg.weights_mib / 1024)
            plan = plan_memory(version=cfg.version, total_mib=total, weights_mib=cfg.weights_mib,
                               mem_fraction=cfg.mem_fraction_static, cuda_graph=cfg.cuda_graph,
                               max_total_tokens=cfg.max_total_tokens)
            if CONTEXT_MIB + plan.static_mib > free:
                raise CudaOutOfMemory(oom_message(
                    gpu_index=cfg.gpu_index, total_mib=total, free_mib=avail_after_weights,
                    alloc_mib=plan.kv_mib / 2, process_mib=CONTEXT_MIB + cfg.weights_mib))
            kv_gb = plan.kv_mib / 1024
            log.info("KV Cache is allocated. #tokens: %d, K size: %.2f GB, V size: %.2f GB",
                     plan.max_total_num_tokens, kv_gb / 2, kv_gb / 2)
            after_pool = free - CONTEXT_MIB - plan.static_mib
            log.info("Memory pool end. avail mem=%.2f GB", after_pool / 1024)
            if plan.graph_mib:
                log.info("Capture cuda graph begin. This can take up to several minutes. "
                         "avail mem=%.2f GB", after_pool / 1024)
                if plan.used_mib > free:
                    raise CudaOutOfMemory(oom_message(
                        gpu_index=cfg.gpu_index, total_mib=total, free_mib=after_pool,
                        alloc_mib=plan.graph_mib, process_mib=CONTEXT_MIB + plan.static_mib))
            self.registry.write(self.pid, plan.used_mib, total, "scheduler", cfg.port)
            self.others_mib = others
        self.plan = plan
        time.sleep(cfg.load_s * 0.3)
        if plan.graph_mib:
            log.info("Capture cuda graph end. Time elapsed: %.2f s. mem usage=%.2f GB. "
                     "avail mem=%.2f GB.", cfg.load_s * 0.3, plan.graph_mib / 1024,
                     (free - plan.used_mib) / 1024)
        self.max_running, max_req_input_len = derived_limits(cfg, plan.max_total_num_tokens)
        self.token_budget = max(0, cfg.chunked_prefill_size)
        log.info("max_total_num_tokens=%d, chunked_prefill_size=%d, max_prefill_tokens=%d, "
                 "max_running_requests=%d, context_len=%d, available_gpu_mem=%.2f GB",
                 plan.max_total_num_tokens, cfg.chunked_prefill_size,
                 cfg.args.get("max_prefill_tokens") or 16384, self.max_running,
                 cfg.context_length, (free - plan.used_mib) / 1024)
        self._send([P.READY, {
            "pid": self.pid, "max_total_num_tokens": plan.max_total_num_tokens,
            "max_running_requests": self.max_running, "max_req_input_len": max_req_input_len,
            "weights_mib": plan.weights_mib, "kv_mib": plan.kv_mib, "graph_mib": plan.graph_mib,
            "used_mib": plan.used_mib, "startup_available_mib": total - others,
            "mem_fraction_static": plan.mem_fraction_static,
        }])
        self._stats(time.monotonic(), force=True)
        self._flush_out()

    def _arch(self) -> str:
        return "BertModel" if self.cfg.attention == "bidirectional" else "Qwen3ForCausalLM"

    # ------------------------------------------------------------------ I/O

    def _send(self, msg: list[Any]) -> None:
        self.outbuf.append(P.encode(msg))

    def _flush_out(self) -> None:
        if self.outbuf:
            data = b"".join(self.outbuf)
            self.outbuf.clear()
            try:
                self.sock.sendall(data)
            except OSError:
                os._exit(0)

    def _read(self) -> None:
        try:
            data = self.sock.recv(1 << 20)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            os._exit(0)
        if not data:
            os._exit(0)  # the launcher closed its end
        now = time.monotonic()
        for msg in self.inbuf.feed(data):
            kind = msg[0]
            if kind == P.REQ:
                self._accept(msg[1], now)
            elif kind == P.FAULTS:
                self._set_faults(msg[1], now)
            elif kind == P.FLUSH:
                ok = self.batch is None and not self.waiting and not self.stuck
                if ok:
                    self.radix.clear()
                    self.radix_tokens = 0
                    log.info("Cache flushed successfully!")
                self._send([P.FLUSH, msg[1], ok])

    def _accept(self, reqs: list[list[int]], now: float) -> None:
        limit = self.cfg.max_queued_requests
        rejected: list[int] = []
        for rid, ntok, key, kind in reqs:
            req = _Req(rid, ntok, key, kind, now)
            if kind == P.KIND_REQUEST and self.faults["stall"]:
                self.stuck.append(req)
            elif limit is not None and len(self.waiting) >= limit:
                rejected.append(rid)
            else:
                self.waiting.append(req)
        if rejected:
            self._send([P.QUEUE_FULL, rejected])
        self.stats_dirty = True

    def _set_faults(self, patch: dict[str, Any], now: float) -> None:
        old_crash = self.faults.get("crash_after_s")
        self.faults.update(patch)
        crash = self.faults.get("crash_after_s")
        if crash is None:
            self.crash_deadline = None
        elif crash != old_crash or self.crash_deadline is None:
            self.crash_deadline = now + float(crash)
        if not self.faults["stall"] and self.stuck:
            self.waiting.extendleft(reversed(self.stuck))
            self.stuck.clear()
        self.stats_dirty = True

    # ------------------------------------------------------------------ the loop

    def _loop(self) -> None:
        self.sock.setblocking(True)
        fd = self.sock.fileno()
        while True:
            now = time.monotonic()
            timeout = self._timeout(now)
            ready, _, _ = select.select([fd], [], [], timeout)
            if ready:
                self._read()
            self._progress(time.monotonic())
            self._flush_out()

    def _timeout(self, now: float) -> float:
        t = _STATS_IDLE_INTERVAL_S
        if self.batch is not None and not self.faults["hang"]:
            t = min(t, self.batch_end - now)
        elif self.batch is None and self.waiting:
            t = 0.0
        if self.faults["leak_mib_s"]:
            t = min(t, _REGISTRY_INTERVAL_S)
        if self.crash_deadline is not None:
            t = min(t, self.crash_deadline - now)
        if self.batch is not None and self.faults["hang"]:
            t = min(t, 0.1)
        if self.stats_dirty:
            t = min(t, max(0.0, self.last_stats + _STATS_MIN_INTERVAL_S - now))
        return max(0.0, t)

    def _progress(self, now: float) -> None:
        if self.crash_deadline is not None and now >= self.crash_deadline:
            raise SchedulerCrash(
                "RuntimeError: CUDA error: an illegal memory access was encountered\n"
                "CUDA kernel errors might be asynchronously reported at some other API call, "
                "so the stacktrace below might be incorrect.\n"
                "For debugging consider passing CUDA_LAUNCH_BLOCKING=1")
        for _ in range(64):  # zero-latency batches complete inline; bounded per wakeup
            if self.batch is not None:
                if self.faults["hang"]:
                    self._watchdog(now)
                    break
                if now < self.batch_end:
                    break
                self._finish_batch(now)
            if not self.waiting:
                break
            self._start_batch(now)
        self._leak(now)
        self._util(now)
        self._stats(now)

    def _start_batch(self, now: float) -> None:
        batch: list[_Req] = []
        tokens = 0
        cached_total = 0
        radix_on = not self.cfg.disable_radix_cache
        while self.waiting and len(batch) < self.max_running:
            req = self.waiting[0]
            if batch and self.token_budget and tokens + req.ntok > self.token_budget:
                break
            self.waiting.popleft()
            batch.append(req)
            tokens += req.ntok
        hits: list[int] = []
        for req in batch:
            cached = 0
            if radix_on and req.kind == P.KIND_REQUEST:
                if req.key in self.radix:
                    self.radix.move_to_end(req.key)
                    cached = max(req.ntok - 1, 0)
                else:
                    self.radix[req.key] = req.ntok
                    self.radix_tokens += req.ntok
                    self._evict()
            hits.append(cached)
            cached_total += cached
        self.batch = batch
        self.batch_hits = hits
        self.batch_tokens = tokens
        self.batch_start = now
        dur = ((self.cfg.base_latency_ms + float(self.faults["slow_ms"])) / 1000.0
               + self.cfg.per_token_us * (tokens - cached_total) / 1e6)
        self.batch_end = now + dur
        self.busy_s += dur
        self.last_hit_rate = cached_total / tokens if tokens else 0.0
        self.prefill_compute += tokens - cached_total
        self.prefill_cache += cached_total
        self.passes += 1
        self.stats_dirty = True
        if now - self.last_batch_log >= _BATCH_LOG_INTERVAL_S:
            self.last_batch_log = now
            self._log_batch(len(batch), tokens - cached_total, cached_total)

    def _log_batch(self, nseq: int, new: int, cached: int) -> None:
        usage = self.batch_tokens / self.plan.max_total_num_tokens if self.plan else 0.0
        if self.cfg.version == "0.5.2":
            log.info("Prefill batch. #new-seq: %d, #new-token: %d, #cached-token: %d, "
                     "token usage: %.2f, #running-req: %d, #queue-req: %d",
                     nseq, new, cached, usage, len(self.stuck), len(self.waiting))
        else:
            log.info("Prefill batch, #new-seq: %d, #new-token: %d, #cached-token: %d, "
                     "token usage: %.2f, #running-req: %d, #queue-req: %d, #pending-token: %d, "
                     "cuda graph: %s", nseq, new, cached, usage, len(self.stuck),
                     len(self.waiting), sum(r.ntok for r in self.waiting),
                     bool(self.plan and self.plan.graph_mib))

    def _evict(self) -> None:
        cap = self.plan.max_total_num_tokens if self.plan else 0
        while self.radix and (len(self.radix) > _RADIX_MAX_ENTRIES
                              or (cap and self.radix_tokens > cap)):
            _, ntok = self.radix.popitem(last=False)
            self.radix_tokens -= ntok

    def _finish_batch(self, now: float) -> None:
        batch = self.batch or []
        unstable = (not self.cfg.disable_radix_cache
                    and (self.faults["unstable"] or self.cfg.attention == "bidirectional"))
        done = []
        for req, cached in zip(batch, self.batch_hits):
            variant = 1 if (unstable and cached) else 0
            done.append([req.rid, variant, cached, round(self.batch_start - req.arrived, 6)])
        self._send([P.DONE, done])
        self.batch = None
        self.stats_dirty = True

    def _watchdog(self, now: float) -> None:
        timeout = self.cfg.watchdog_timeout
        if timeout <= 0 or now - self.batch_start < timeout:
            return
        if self.cfg.version == "0.5.2":
            log.error("Watchdog timeout (self.watchdog_timeout=%s)", timeout)
        else:
            log.error("Scheduler watchdog timeout (self.watchdog_timeout=%s, self.soft=False)",
                      timeout)
        self._flush_out()
        time.sleep(_WATCHDOG_GRACE_S)
        self._die_via_parent()

    def _leak(self, now: float) -> None:
        dt = now - self.last_leak_tick
        self.last_leak_tick = now
        rate = float(self.faults["leak_mib_s"])
        if rate <= 0 or self.plan is None:
            return
        self.leaked_mib += rate * dt
        self.stats_dirty = True
        if now - self.last_registry < _REGISTRY_INTERVAL_S:
            return
        self.last_registry = now
        used = self.plan.used_mib + int(self.leaked_mib)
        self.others_mib = self.registry.used_by_others(self.pid)
        if self.others_mib + used > self.cfg.gpu_mib:
            free = self.cfg.gpu_mib - self.others_mib - (used - int(rate * dt + 1))
            raise CudaOutOfMemory(oom_message(
                gpu_index=self.cfg.gpu_index, total_mib=self.cfg.gpu_mib, free_mib=free,
                alloc_mib=max(rate * _REGISTRY_INTERVAL_S, 2.0), process_mib=used))
        self.registry.write(self.pid, used, self.cfg.gpu_mib, "scheduler", self.cfg.port)

    def _util(self, now: float) -> None:
        elapsed = now - self.util_window_start
        if elapsed >= 1.0:
            self.util_pct = min(100.0, 100.0 * self.busy_s / elapsed)
            self.busy_s = 0.0
            self.util_window_start = now
            self.stats_dirty = True

    def _stats(self, now: float, force: bool = False) -> None:
        idle = self.batch is None and not self.waiting
        due = now - self.last_stats >= _STATS_IDLE_INTERVAL_S
        if not (force or due or (self.stats_dirty and (
                idle or now - self.last_stats >= _STATS_MIN_INTERVAL_S))):
            return
        running = (len(self.batch) if self.batch else 0) + len(self.stuck)
        used_tok = self.batch_tokens if self.batch else 0
        used_tok += sum(r.ntok for r in self.stuck)
        used_mib = (self.plan.used_mib if self.plan else 0) + int(self.leaked_mib)
        self._send([P.STATS, {
            "running": running, "queue": len(self.waiting), "used_tokens": used_tok,
            "evictable_tokens": self.radix_tokens, "cache_hit_rate": self.last_hit_rate,
            "util_pct": self.util_pct, "used_mib": used_mib,
            "prefill_compute": self.prefill_compute, "prefill_cache": self.prefill_cache,
            "passes": self.passes,
        }])
        self.stats_dirty = False
        self.last_stats = now


def scheduler_main(sock: socket.socket, cfg: SimConfig, parent_pid: int) -> None:
    """Entry point of the forked scheduler child."""
    configure_child_logging(cfg, " TP0")
    Scheduler(sock, cfg, parent_pid).run()
