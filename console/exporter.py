"""The supervisor's own Prometheus endpoint: what the console sees, for Prometheus,
Grafana and Alertmanager.

Off by default; ``[exporter] port = 29100`` in ``fleet.toml`` serves ``GET /metrics`` on
``127.0.0.1:29100`` (`console.config.ExporterConfig`). The endpoint runs on a daemon thread
(prometheus_client's WSGI server) with its own `CollectorRegistry` (nothing of the default
process registry leaks in). At each scrape, `SupervisorCollector` asks the supervisor's
event loop for a plain-data view of its state (`read_state`, run on the loop, so a scrape
never reads half-updated state) and turns it into metric families:

=============================================  ===========  =======================================
metric                                         type         labels
=============================================  ===========  =======================================
``embedops_worker_state``                      gauge 0/1    worker, state (one series per state)
``embedops_worker_routed``                     gauge 0/1    worker
``embedops_worker_restarts_total``             counter      worker
``embedops_worker_probe_latency_seconds``      histogram    worker (edges from 1 ms, one at 1.2 s)
``embedops_worker_probe_failures_total``       counter      worker
``embedops_worker_latency_p50_seconds``        gauge        worker, source (histogram | probe)
``embedops_worker_latency_p95_seconds``        gauge        worker, source
``embedops_worker_gpu_memory_bytes``           gauge        worker, gpu (the worker's own share)
``embedops_worker_gpu_memory_used_ratio``      gauge        worker, gpu (its card's used/total)
``embedops_worker_memory_time_to_full_seconds`` gauge       worker (only while memory grows)
``embedops_gpu_memory_used_bytes`` / ``_total_bytes``  gauge  gpu
``embedops_alerts``                            gauge 1      rule, worker, severity, alertstate,
                                                            silenced (like Prometheus ``ALERTS``)
``embedops_balancer_healthy``                  gauge 0/1
``embedops_fleet_latency_p95_seconds``         gauge        source (balancer | workers_max)
=============================================  ===========  =======================================

The ``_p95`` and ``_used_ratio`` gauges are the very figures the built-in rules evaluate,
so a Prometheus rule over them (README, "Prometheus") agrees with the console.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import start_http_server

from console.model import AlertState, WorkerState

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from console.supervisor import Supervisor

MIB = 1024 * 1024
SCRAPE_TIMEOUT_S = 5.0
"""Longest a scrape waits for the supervisor's loop."""


@dataclass
class WorkerView:
    """What the exporter reports about one worker (plain data, read on the loop)."""

    name: str
    state: str
    managed: bool
    routed: bool
    restarts: int
    gpu: int | None
    probe_buckets: list[tuple[float, float]]
    probe_sum: float
    probe_failures: int
    p50_s: float | None
    p95_s: float | None
    latency_source: str
    gpu_mem_bytes: float | None
    card_used_ratio: float | None
    time_to_full_s: float | None


@dataclass
class StateView:
    """The whole view of one scrape."""

    workers: list[WorkerView] = field(default_factory=list)
    gpus: list[tuple[int, float | None, float | None]] = field(default_factory=list)
    """(index, used bytes, total bytes)."""
    alerts: list[tuple[str, str, str, str, bool]] = field(default_factory=list)
    """(rule, worker, severity, alertstate, silenced)."""
    balancer_healthy: bool | None = None
    fleet_p95_s: float | None = None
    fleet_source: str = "none"


def read_state(sup: Supervisor) -> StateView:
    """The exporter's view of `sup` now. Call it on the supervisor's event loop."""
    from console.api import _fleet_latency  # the snapshot's own rule for the fleet P95

    now = sup.clock()
    view = StateView(balancer_healthy=sup.balancer_healthy)
    rows = []
    for w in sup._all_runtimes():
        st = w.lifecycle.status(now)
        p50, p95, source = w.percentiles_ms(now)
        routed = bool(st.registered)
        if sup.balancer is not None and hasattr(w, "in_balancer"):
            routed = routed and bool(w.in_balancer)  # what the balancer really lists
        ratio = None
        if w.gpu_card_used_mib is not None and w.gpu_card_total_mib:
            ratio = w.gpu_card_used_mib / w.gpu_card_total_mib
        _, ttf = w.leak_figures(now)
        rows.append({"routed": routed, "p95_ms": p95})
        view.workers.append(WorkerView(
            name=w.name, state=st.state.value, managed=w.managed, routed=routed,
            restarts=st.restarts, gpu=w.spec.gpu, probe_buckets=w.probe_hist.buckets(),
            probe_sum=w.probe_hist.sum, probe_failures=w.probe_failures,
            p50_s=None if p50 is None else p50 / 1000.0,
            p95_s=None if p95 is None else p95 / 1000.0, latency_source=source,
            gpu_mem_bytes=None if w.gpu_mem_mib is None else float(w.gpu_mem_mib) * MIB,
            card_used_ratio=ratio, time_to_full_s=ttf))
    sample = sup._gpu_sample
    if sample is not None:
        for d in sample.devices:
            view.gpus.append((d.index, None if d.used_mib is None else float(d.used_mib) * MIB,
                              None if d.total_mib is None else float(d.total_mib) * MIB))
    for a in sup.alerts.alerts(now):
        if a.state in (AlertState.PENDING, AlertState.FIRING):
            view.alerts.append((a.rule, a.worker, a.severity.value, a.state.value,
                                a.silenced(now)))
    _, fleet_p95, view.fleet_source = _fleet_latency(sup, now, rows)
    view.fleet_p95_s = None if fleet_p95 is None else fleet_p95 / 1000.0
    return view


def _le(edge: float) -> str:
    return "+Inf" if math.isinf(edge) else f"{edge:g}"


def families(view: StateView) -> list[Metric]:
    """Metric families of one view (pure: no supervisor needed)."""
    states = [s.value for s in WorkerState]
    state = GaugeMetricFamily("embedops_worker_state",
                              "Lifecycle state of the worker: 1 for the current state",
                              labels=["worker", "state"])
    routed = GaugeMetricFamily("embedops_worker_routed",
                               "Whether the balancer routes client requests to the worker",
                               labels=["worker"])
    restarts = CounterMetricFamily("embedops_worker_restarts",
                                   "Starts of the worker after its first one", labels=["worker"])
    probe = HistogramMetricFamily("embedops_worker_probe_latency_seconds",
                                  "Latency of the supervisor's passing embedding probes",
                                  labels=["worker"])
    probe_fail = CounterMetricFamily("embedops_worker_probe_failures",
                                     "Failed embedding probes", labels=["worker"])
    p50 = GaugeMetricFamily("embedops_worker_latency_p50_seconds",
                            "Median request latency over 5 min (source: worker histogram "
                            "deltas, else probe samples)", labels=["worker", "source"])
    p95 = GaugeMetricFamily("embedops_worker_latency_p95_seconds",
                            "95th percentile request latency over 5 min (as the built-in "
                            "alert rules read it)", labels=["worker", "source"])
    mem = GaugeMetricFamily("embedops_worker_gpu_memory_bytes",
                            "GPU memory held by the worker's processes", labels=["worker", "gpu"])
    ratio = GaugeMetricFamily("embedops_worker_gpu_memory_used_ratio",
                              "Used / total memory of the worker's GPU (0-1), joined to the "
                              "worker", labels=["worker", "gpu"])
    ttf = GaugeMetricFamily("embedops_worker_memory_time_to_full_seconds",
                            "Projected time until the worker's GPU is full at the current "
                            "memory growth (present only while memory grows)",
                            labels=["worker"])
    for w in view.workers:
        gpu = "" if w.gpu is None else str(w.gpu)
        for s in states:
            state.add_metric([w.name, s], 1.0 if s == w.state else 0.0)
        routed.add_metric([w.name], 1.0 if w.routed else 0.0)
        restarts.add_metric([w.name], float(w.restarts))
        probe.add_metric([w.name], [(_le(le), c) for le, c in w.probe_buckets], w.probe_sum)
        probe_fail.add_metric([w.name], float(w.probe_failures))
        if w.p50_s is not None:
            p50.add_metric([w.name, w.latency_source], w.p50_s)
        if w.p95_s is not None:
            p95.add_metric([w.name, w.latency_source], w.p95_s)
        if w.gpu_mem_bytes is not None:
            mem.add_metric([w.name, gpu], w.gpu_mem_bytes)
        if w.card_used_ratio is not None:
            ratio.add_metric([w.name, gpu], w.card_used_ratio)
        if w.time_to_full_s is not None:
            ttf.add_metric([w.name], w.time_to_full_s)
    used = GaugeMetricFamily("embedops_gpu_memory_used_bytes", "Used memory of the GPU",
                             labels=["gpu"])
    total = GaugeMetricFamily("embedops_gpu_memory_total_bytes", "Total memory of the GPU",
                              labels=["gpu"])
    for index, u, t in view.gpus:
        if u is not None:
            used.add_metric([str(index)], u)
        if t is not None:
            total.add_metric([str(index)], t)
    alerts = GaugeMetricFamily("embedops_alerts",
                               "Active alerts (pending or firing), like Prometheus' ALERTS",
                               labels=["rule", "worker", "severity", "alertstate", "silenced"])
    for rule, worker, severity, alertstate, silenced in view.alerts:
        alerts.add_metric([rule, worker, severity, alertstate, str(silenced).lower()], 1.0)
    out: list[Metric] = [state, routed, restarts, probe, probe_fail, p50, p95, mem, ratio, ttf,
                         used, total, alerts]
    if view.balancer_healthy is not None:
        healthy = GaugeMetricFamily("embedops_balancer_healthy",
                                    "Whether the balancer answers its health check")
        healthy.add_metric([], 1.0 if view.balancer_healthy else 0.0)
        out.append(healthy)
    fleet = GaugeMetricFamily("embedops_fleet_latency_p95_seconds",
                              "Fleet P95 over 5 min (source: the balancer's request-duration "
                              "histogram, else the largest routed worker P95)",
                              labels=["source"])
    if view.fleet_p95_s is not None:
        fleet.add_metric([view.fleet_source], view.fleet_p95_s)
    out.append(fleet)
    return out


class SupervisorCollector:
    """A prometheus_client collector that reads the supervisor at scrape time."""

    def __init__(self, sup: Supervisor, loop: asyncio.AbstractEventLoop | None) -> None:
        """`loop`: the supervisor's event loop (scrapes come from another thread); None
        reads directly (only from the loop's own thread)."""
        self.sup = sup
        self.loop = loop

    def _view(self) -> StateView:
        if self.loop is None:
            return read_state(self.sup)

        async def read() -> StateView:
            return read_state(self.sup)

        return asyncio.run_coroutine_threadsafe(read(), self.loop).result(SCRAPE_TIMEOUT_S)

    def collect(self) -> Iterator[Metric]:
        """The metric families of the supervisor's state now."""
        t0 = time.perf_counter()
        fams = families(self._view())
        yield from fams
        took = GaugeMetricFamily("embedops_exporter_scrape_seconds",
                                 "Time this scrape took to read the supervisor's state")
        took.add_metric([], time.perf_counter() - t0)
        yield took


class Exporter:
    """A running ``/metrics`` endpoint; `stop` ends it."""

    def __init__(self, server: WSGIServer, thread: threading.Thread,
                 registry: CollectorRegistry) -> None:
        self.server = server
        self.thread = thread
        self.registry = registry

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) it listens on."""
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5.0)


def start_exporter(sup: Supervisor, *, host: str = "127.0.0.1", port: int,
                   loop: asyncio.AbstractEventLoop | None = None) -> Exporter:
    """Serve the supervisor's metrics on ``http://host:port/metrics`` from a daemon thread.

    Call from the supervisor's event loop (its loop is taken as the one to read on).
    Raises `OSError` when the port cannot be bound.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SupervisorCollector(sup, loop or asyncio.get_running_loop()))
    server, thread = start_http_server(port, addr=host, registry=registry)
    return Exporter(server, thread, registry)


__all__ = ["Exporter", "StateView", "SupervisorCollector", "WorkerView", "families",
           "read_state", "start_exporter"]
