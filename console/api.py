"""The supervisor's control API: routes on the control socket and the snapshot schema.

Documented in README ("Control API and `status --json`"). Schema version `SCHEMA`.
Reads are GETs; actions are POSTs that answer 202 with an action id, or, with
``?wait=1``, the action's outcome once it ended.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from backends.sglang import mask_argv
from console.control import ControlError, ControlRequest, ControlResponse, ControlServer
from console.model import AlertState
from console.supervisor import VERSION, ActionError, Supervisor

SCHEMA = 1
WORKER_ACTIONS = ("drain", "undrain", "restart", "kill", "retune", "remove")


def snapshot(sup: Supervisor, *, read_only: bool = False) -> dict[str, Any]:
    """The fleet as clients see it (`status --json`)."""
    now = sup.clock()
    wall = time.time()

    def to_wall(t: float | None) -> float | None:
        return None if t is None else round(wall - (now - t), 3)

    workers = [_worker_row(sup, w, now, wall) for w in sup._all_runtimes()]
    gpus = []
    sample = sup._gpu_sample
    if sample is not None:
        for d in sample.devices:
            share = {w.name: w.gpu_mem_mib for w in sup._all_runtimes()
                     if (w.spec.gpu if w.spec.gpu is not None else 0) == d.index}
            gpus.append({"index": d.index, "name": d.name, "total_mib": d.total_mib,
                         "used_mib": d.used_mib, "util_pct": d.util_pct,
                         "temperature_c": d.temperature_c, "power_w": d.power_w,
                         "error": "; ".join(f"{k}: {v}" for k, v in d.na.items()) or None,
                         "workers": share})
        if not sample.devices and sample.error:
            gpus.append({"index": None, "name": None, "total_mib": None, "used_mib": None,
                         "util_pct": None, "temperature_c": None, "power_w": None,
                         "error": sample.error, "workers": {}})
    alerts = []
    for a in sup.alerts.alerts(now):
        if a.state not in (AlertState.PENDING, AlertState.FIRING):
            continue
        alerts.append({"key": a.key, "rule": a.rule, "worker": a.worker, "state": a.state.value,
                       "since": to_wall(a.fired_at if a.state is AlertState.FIRING else a.active_at),
                       "message": a.summary, "severity": a.severity.value,
                       "silenced_until": to_wall(a.silenced_until)})
    fleet_p50, fleet_p95, fleet_source = _fleet_latency(sup, now, workers)
    fleet_rps = sum(r["rps"] or 0.0 for r in workers if r["managed"]) if workers else None
    return {
        "schema": SCHEMA, "time": round(wall, 3), "fleet": sup.cfg.name,
        "engine": sup.cfg.engine.value, "sglang_version": sup.cfg.sglang_version,
        "read_only": read_only,
        "supervisor": {"pid": os.getpid(), "uptime_s": round(wall - sup.started_wall, 1),
                       "version": VERSION, "state_dir": str(sup.state_dir.root)},
        "balancer": {"kind": sup.cfg.balancer.kind,
                     "url": sup.balancer.url if sup.balancer else None,
                     "healthy": sup.balancer_healthy, "p50_ms": fleet_p50, "p95_ms": fleet_p95,
                     "latency_source": fleet_source, "rps": fleet_rps},
        "workers": workers, "gpus": gpus, "alerts": alerts,
        "events": recent_events(sup, 100),
    }


def recent_events(sup: Supervisor, limit: int) -> list[dict[str, Any]]:
    """The newest `limit` timeline events, newest first."""
    out: list[dict[str, Any]] = []
    for e in reversed(sup.events):
        if len(out) >= limit:
            break
        out.append({"time": round(e.time, 3), "kind": e.kind, "worker": e.worker,
                    "message": e.message, "outcome": e.fields.get("outcome")})
    return out


def _fleet_latency(sup: Supervisor, now: float, workers: list[dict[str, Any]]
                   ) -> tuple[float | None, float | None, str]:
    """Fleet (P50, P95) ms and their source: ``balancer`` (its request-duration histogram
    deltas over 5 min: what clients see), else ``workers_max`` (the largest routed
    worker's P95, an upper bound; no P50), else ``none``."""
    win = sup.fleet_latency
    if win.count(now) >= 1:
        p50, p95 = win.quantile(0.5, now), win.quantile(0.95, now)
        if p95 is not None:
            return (None if p50 is None else round(p50 * 1000.0, 2), round(p95 * 1000.0, 2),
                    "balancer")
    routed = [r["p95_ms"] for r in workers if r["routed"] and r["p95_ms"] is not None]
    if routed:
        return None, max(routed), "workers_max"
    return None, None, "none"


def _worker_row(sup: Supervisor, w: Any, now: float, wall: float) -> dict[str, Any]:
    st = w.lifecycle.status(now)
    p50, p95, source = w.percentiles_ms(now)
    rps = w.rate.rate(now)
    errors = w.errors_rate.increase(now)
    drift = {}
    if w.config_spec is not None:
        for field in ("mem_fraction_static", "cuda_graph", "max_running_requests",
                      "chunked_prefill_size"):
            cur, conf = getattr(w.spec, field), getattr(w.config_spec, field)
            if cur != conf:
                drift[field] = {"config": conf, "current": cur}
    argv = list(w.raw_argv) if w.raw_argv else list(sup._launch(w).argv) if w.managed else []
    probe = w.last_probe
    return {
        "name": w.name, "state": st.state.value, "managed": w.managed,
        "routed": bool(st.registered) and (sup.balancer is None or w.in_balancer), "pid": w.identity.pid if w.identity else None,
        "port": w.spec.port, "url": w.spec.url, "gpu": w.spec.gpu,
        "mem_fraction_static": w.spec.mem_fraction_static, "cuda_graph": w.spec.cuda_graph,
        "max_running_requests": w.spec.max_running_requests,
        "chunked_prefill_size": w.spec.chunked_prefill_size,
        "p50_ms": p50, "p95_ms": p95, "latency_source": source,
        "rps": None if rps is None else round(rps, 2), "running": w.running, "queued": w.queued,
        "errors": None if errors is None else int(errors), "gpu_mem_mib": w.gpu_mem_mib,
        "restarts": st.restarts,
        "uptime_s": round(wall - w.started_wall, 1) if w.started_wall and w.identity else None,
        "last_probe_ms": None if probe is None else round(probe.latency_s * 1000, 2),
        "last_probe_ok": None if probe is None else probe.ok,
        "last_probe_error": None if probe is None else probe.error,
        "state_reason": st.reason, "startup_phase": st.startup_phase,
        "action": None if w.action is None else {
            "name": w.action.name, "progress": w.action.progress, "started_at": w.action.started_at},
        "next_start_in_s": None if st.next_start_at is None else round(st.next_start_at - now, 1),
        "drift": drift, "warnings": list(w.warnings), "argv": mask_argv(argv),
        "log_path": str(sup.state_dir.worker_log(w.name)), "sim": w.spec.engine.value == "sim",
        "cosine": None if w.cosine is None else round(w.cosine, 4),
    }


def series(sup: Supervisor, name: str, window_s: float) -> dict[str, Any]:
    """Plot series of one worker over the last `window_s` seconds."""
    w = _worker(sup, name)
    cutoff = time.time() - window_s
    points = [p for p in w.series if p[0] >= cutoff]
    slope, ttf = w.leak_figures(sup.clock())
    return {"worker": name, "t": [p[0] for p in points], "p50_ms": [p[1] for p in points],
            "p95_ms": [p[2] for p in points], "rps": [p[3] for p in points],
            "gpu_mem_mib": [p[4] for p in points],
            "leak": {"slope_mib_per_h": slope, "time_to_full_s": ttf,
                     "card_total_mib": w.gpu_card_total_mib}}


def _worker(sup: Supervisor, name: str) -> Any:
    w = sup.workers.get(name) or next(
        (u for u in sup.unmanaged.values() if u.name == name), None)
    if w is None:
        raise ControlError.not_found(f"no worker named {name!r}")
    return w


def _log_lines(path: Path, lines: int) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 256 * 1024))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    return data.splitlines()[-lines:]


async def _follow(path: Path, start_lines: int) -> Any:
    for line in _log_lines(path, start_lines):
        yield {"line": line}
    try:
        f = open(path, "rb")
    except OSError:
        return
    with f:
        f.seek(0, os.SEEK_END)
        buf = b""
        while True:
            chunk = f.read(65536)
            if not chunk:
                await asyncio.sleep(0.25)
                continue
            buf += chunk
            *complete, buf = buf.split(b"\n")
            for raw in complete:
                yield {"line": raw.decode("utf-8", "replace")}


def install_routes(server: ControlServer, sup: Supervisor) -> None:
    """Register every route of the control API on `server`."""

    async def status(req: ControlRequest) -> dict[str, Any]:
        return snapshot(sup, read_only=req.read_only)

    async def get_series(req: ControlRequest) -> dict[str, Any]:
        return series(sup, req.params["name"], req.query_float("window_s", 900.0, min=10,
                                                               max=86400))

    async def logs(req: ControlRequest) -> Any:
        w = _worker(sup, req.params["name"])
        lines = req.query_int("lines", 200, min=1, max=10000)
        path = sup.state_dir.worker_log(w.name)
        if req.query_bool("follow"):
            return ControlResponse.stream(_follow(path, lines))
        return {"worker": w.name, "path": str(path), "lines": _log_lines(path, lines)}

    async def audit(req: ControlRequest) -> dict[str, Any]:
        entries = sup.audit.read(limit=req.query_int("limit", 200, min=1, max=10000),
                                 worker=req.query.get("worker"), action=req.query.get("action"))
        return {"entries": entries}

    async def events(req: ControlRequest) -> dict[str, Any]:
        limit = req.query_int("limit", 200, min=1, max=500)
        return {"events": recent_events(sup, limit)}

    async def act(req: ControlRequest, action: str, worker: str | None,
                  args: dict[str, Any]) -> Any:
        if req.read_only:
            raise ControlError.forbidden("read-only client", code="read_only")
        try:
            action_id, task = sup.start_action(action, worker, caller_uid=req.peer.uid, args=args)
        except ActionError as exc:
            raise ControlError(exc.status, exc.code, str(exc)) from exc
        if not req.query_bool("wait"):
            # An action checks its arguments before its first await: one turn of the
            # loop is enough to answer a refusal (400 bad value...) instead of a 202.
            await asyncio.sleep(0)
            if not task.done() or task.result()["outcome"] != "refused":
                return ControlResponse.json({"action_id": action_id, "accepted": True},
                                            status=202)
        result = dict(await asyncio.shield(task))
        status, code = result.pop("_status", 409), result.pop("_code", "refused")
        if result["outcome"] == "refused":
            raise ControlError(status, code, result["message"])
        return result

    def body(req: ControlRequest) -> dict[str, Any]:
        if req.body is None:
            return {}
        if not isinstance(req.body, dict):
            raise ControlError.bad_request("request body must be a JSON object", code="bad_args")
        return dict(req.body)

    def worker_action(action: str) -> Any:
        async def handler(req: ControlRequest) -> Any:
            return await act(req, action, req.params["name"], body(req))
        return handler

    async def rollout(req: ControlRequest) -> Any:
        return await act(req, "rollout", None, body(req))

    async def adopt(req: ControlRequest) -> Any:
        return await act(req, "adopt", None, body(req))

    async def add(req: ControlRequest) -> Any:
        return await act(req, "add", None, body(req))

    async def delete(req: ControlRequest) -> Any:
        return await act(req, "remove", req.params["name"], {})

    async def validate(req: ControlRequest) -> Any:
        args = body(req)
        target = args.get("target", "balancer")
        worker = target if target in sup.workers else None
        result = await act(req, "validate", worker, {"target": target})
        if isinstance(result, dict) and "outcome" in result:
            result["report"] = sup.last_validation
        return result

    async def silence(req: ControlRequest) -> Any:
        args = body(req)
        args["key"] = req.params["key"]
        return await act(req, "silence", None, args)

    async def fault(req: ControlRequest) -> Any:
        return await act(req, "sim_fault", req.params["name"], body(req))

    async def shutdown(req: ControlRequest) -> Any:
        if req.read_only:
            raise ControlError.forbidden("read-only client", code="read_only")
        stop_workers = bool(body(req).get("stop_workers", False))
        asyncio.get_running_loop().call_soon(
            lambda: asyncio.ensure_future(sup.shutdown(stop_workers=stop_workers,
                                                       caller_uid=req.peer.uid)))
        return {"accepted": True, "stop_workers": stop_workers}

    server.route("GET", "/v1/status", status)
    server.route("GET", "/v1/workers/{name}/series", get_series)
    server.route("GET", "/v1/workers/{name}/logs", logs)
    server.route("GET", "/v1/audit", audit)
    server.route("GET", "/v1/events", events)
    for action in ("drain", "undrain", "restart", "kill", "retune"):
        server.route("POST", f"/v1/workers/{{name}}/{action}", worker_action(action))
    server.route("POST", "/v1/rollout", rollout)
    server.route("POST", "/v1/adopt", adopt)
    server.route("POST", "/v1/workers", add)
    server.route("DELETE", "/v1/workers/{name}", delete)
    server.route("POST", "/v1/validate", validate)
    server.route("POST", "/v1/alerts/{key}/silence", silence)
    server.route("POST", "/v1/sim/{name}/fault", fault)
    server.route("POST", "/v1/shutdown", shutdown)


__all__ = ["SCHEMA", "install_routes", "recent_events", "series", "snapshot"]
