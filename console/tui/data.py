"""The console's fetch layer: control-API JSON → plain dataclasses, and calls that never raise.

Widgets render these dataclasses; nothing here imports Textual. Parsing is tolerant:
a missing or mistyped field becomes ``None`` (shown as N/A) instead of an exception,
so a supervisor one schema revision ahead still renders.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote

from console.control import ControlError, SupervisorNotRunning


class Client(Protocol):
    """The part of `console.control.ControlClient` the console uses."""

    async def get(self, path: str, params: Mapping[str, Any] | None = None) -> Any: ...

    async def post(self, path: str, json: Any = None, params: Mapping[str, Any] | None = None,
                   *, timeout: float | None = None) -> Any: ...


# ---------------------------------------------------------------------------- parsing helpers


def _num(d: Mapping[str, Any], key: str) -> float | None:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def _int(d: Mapping[str, Any], key: str) -> int | None:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return int(v)


def _str(d: Mapping[str, Any], key: str, default: str = "") -> str:
    v = d.get(key)
    return v if isinstance(v, str) else default


def _opt_str(d: Mapping[str, Any], key: str) -> str | None:
    v = d.get(key)
    return v if isinstance(v, str) else None


def _bool(d: Mapping[str, Any], key: str) -> bool | None:
    v = d.get(key)
    return v if isinstance(v, bool) else None


def _dict(d: Mapping[str, Any], key: str) -> dict[str, Any]:
    v = d.get(key)
    return v if isinstance(v, dict) else {}


def _list(d: Mapping[str, Any], key: str) -> list[Any]:
    v = d.get(key)
    return v if isinstance(v, list) else []


# ---------------------------------------------------------------------------- snapshot


@dataclass(frozen=True)
class RunningAction:
    """An action in progress on a worker (the worker's ``action`` field)."""

    name: str
    progress: str
    started_at: float | None

    @classmethod
    def parse(cls, d: Any) -> RunningAction | None:
        """From the JSON object, or None when there is no action."""
        if not isinstance(d, dict) or not d:
            return None
        return cls(name=_str(d, "name", "action"), progress=_str(d, "progress"),
                   started_at=_num(d, "started_at"))


@dataclass(frozen=True)
class Worker:
    """One row of the fleet table, as the supervisor reported it."""

    name: str
    state: str
    managed: bool = True
    routed: bool | None = None
    pid: int | None = None
    port: int | None = None
    url: str | None = None
    gpu: int | None = None
    mem_fraction_static: float | None = None
    cuda_graph: bool | None = None
    max_running_requests: int | None = None
    chunked_prefill_size: int | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    latency_source: str | None = None
    rps: float | None = None
    running: int | None = None
    queued: int | None = None
    errors: int | None = None
    gpu_mem_mib: float | None = None
    restarts: int | None = None
    uptime_s: float | None = None
    last_probe_ms: float | None = None
    last_probe_ok: bool | None = None
    action: RunningAction | None = None
    next_start_in_s: float | None = None
    drift: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    argv: tuple[str, ...] = ()
    log_path: str | None = None
    sim: bool | None = None

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> Worker:
        """From one element of the snapshot's ``workers`` list."""
        drift = {k: v for k, v in _dict(d, "drift").items() if isinstance(v, dict)}
        return cls(
            name=_str(d, "name", "?"), state=_str(d, "state", "unknown"),
            managed=_bool(d, "managed") is not False, routed=_bool(d, "routed"),
            pid=_int(d, "pid"), port=_int(d, "port"), url=_opt_str(d, "url"), gpu=_int(d, "gpu"),
            mem_fraction_static=_num(d, "mem_fraction_static"), cuda_graph=_bool(d, "cuda_graph"),
            max_running_requests=_int(d, "max_running_requests"),
            chunked_prefill_size=_int(d, "chunked_prefill_size"),
            p50_ms=_num(d, "p50_ms"), p95_ms=_num(d, "p95_ms"),
            latency_source=_opt_str(d, "latency_source"), rps=_num(d, "rps"),
            running=_int(d, "running"), queued=_int(d, "queued"), errors=_int(d, "errors"),
            gpu_mem_mib=_num(d, "gpu_mem_mib"), restarts=_int(d, "restarts"),
            uptime_s=_num(d, "uptime_s"), last_probe_ms=_num(d, "last_probe_ms"),
            last_probe_ok=_bool(d, "last_probe_ok"), action=RunningAction.parse(d.get("action")),
            next_start_in_s=_num(d, "next_start_in_s"), drift=drift,
            warnings=tuple(str(w) for w in _list(d, "warnings")),
            argv=tuple(str(a) for a in _list(d, "argv")),
            log_path=_opt_str(d, "log_path"), sim=_bool(d, "sim"))


@dataclass(frozen=True)
class Gpu:
    """One GPU of the box."""

    index: int
    name: str
    total_mib: float | None
    used_mib: float | None
    util_pct: float | None
    temperature_c: float | None
    power_w: float | None
    error: str | None
    workers: dict[str, float]
    """Worker name → MiB that worker holds on this GPU."""

    @classmethod
    def parse(cls, d: Mapping[str, Any], position: int) -> Gpu:
        """From one element of the snapshot's ``gpus`` list."""
        shares = {str(k): float(v) for k, v in _dict(d, "workers").items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool)}
        index = _int(d, "index")
        return cls(index=position if index is None else index, name=_str(d, "name", "GPU"),
                   total_mib=_num(d, "total_mib"), used_mib=_num(d, "used_mib"),
                   util_pct=_num(d, "util_pct"), temperature_c=_num(d, "temperature_c"),
                   power_w=_num(d, "power_w"), error=_opt_str(d, "error"), workers=shares)


@dataclass(frozen=True)
class Alert:
    """A pending or firing alert."""

    key: str
    rule: str
    worker: str | None
    state: str
    since: float | None
    message: str
    severity: str
    silenced_until: float | None

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> Alert:
        """From one element of the snapshot's ``alerts`` list."""
        since = _num(d, "since")
        if since is None:
            since = _num(d, "active_at")
        return cls(key=_str(d, "key", "?"), rule=_str(d, "rule"), worker=_opt_str(d, "worker"),
                   state=_str(d, "state", "pending"), since=since,
                   message=_str(d, "message") or _str(d, "summary"),
                   severity=_str(d, "severity", "warning"),
                   silenced_until=_num(d, "silenced_until"))

    def silenced(self, now: float) -> bool:
        """Whether a silence covers the alert at `now`."""
        return self.silenced_until is not None and now < self.silenced_until


@dataclass(frozen=True)
class Event:
    """One timeline entry (state change, action outcome, alert, probe)."""

    time: float
    kind: str
    worker: str | None
    message: str
    outcome: str | None

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> Event:
        """From one element of the snapshot's (or /v1/events') ``events`` list."""
        return cls(time=_num(d, "time") or 0.0, kind=_str(d, "kind", "event"),
                   worker=_opt_str(d, "worker"), message=_str(d, "message"),
                   outcome=_opt_str(d, "outcome"))

    @property
    def identity(self) -> tuple[float, str, str | None, str]:
        """What tells two events apart (used to announce each new one once)."""
        return (self.time, self.kind, self.worker, self.message)


@dataclass(frozen=True)
class Balancer:
    """The load balancer in front of the fleet."""

    kind: str
    url: str | None
    healthy: bool | None
    p95_ms: float | None
    rps: float | None

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> Balancer:
        """From the snapshot's ``balancer`` object."""
        return cls(kind=_str(d, "kind", "balancer"), url=_opt_str(d, "url"),
                   healthy=_bool(d, "healthy"), p95_ms=_num(d, "p95_ms"), rps=_num(d, "rps"))


@dataclass(frozen=True)
class Snapshot:
    """``GET /v1/status``: everything the main screen shows."""

    time: float
    fleet: str
    engine: str
    read_only: bool
    supervisor: dict[str, Any]
    balancer: Balancer
    workers: tuple[Worker, ...]
    gpus: tuple[Gpu, ...]
    alerts: tuple[Alert, ...]
    events: tuple[Event, ...]
    schema: int | None = None

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> Snapshot:
        """From the JSON body; raises TypeError only when it is not an object."""
        if not isinstance(d, Mapping):
            raise TypeError(f"status is not a JSON object: {type(d).__name__}")
        return cls(
            time=_num(d, "time") or 0.0, fleet=_str(d, "fleet", "fleet"),
            engine=_str(d, "engine", "?"), read_only=_bool(d, "read_only") is True,
            supervisor=_dict(d, "supervisor"), balancer=Balancer.parse(_dict(d, "balancer")),
            workers=tuple(Worker.parse(w) for w in _list(d, "workers") if isinstance(w, dict)),
            gpus=tuple(Gpu.parse(g, i) for i, g in enumerate(_list(d, "gpus"))
                       if isinstance(g, dict)),
            alerts=tuple(Alert.parse(a) for a in _list(d, "alerts") if isinstance(a, dict)),
            events=tuple(Event.parse(e) for e in _list(d, "events") if isinstance(e, dict)),
            schema=_int(d, "schema"))

    def worker(self, name: str) -> Worker | None:
        """The worker called `name`, if the fleet has one."""
        for w in self.workers:
            if w.name == name:
                return w
        return None


@dataclass(frozen=True)
class Leak:
    """Memory trend of a worker (from the series endpoint)."""

    slope_mib_per_h: float | None
    time_to_full_s: float | None
    card_total_mib: float | None


@dataclass(frozen=True)
class Series:
    """``GET /v1/workers/{name}/series``: the last minutes of one worker."""

    worker: str
    t: tuple[float, ...]
    p95_ms: tuple[float | None, ...]
    p50_ms: tuple[float | None, ...]
    rps: tuple[float | None, ...]
    gpu_mem_mib: tuple[float | None, ...]
    rss_mib: tuple[float | None, ...]
    leak: Leak

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> Series:
        """From the JSON body."""
        def col(key: str) -> tuple[float | None, ...]:
            return tuple(float(v) if isinstance(v, (int, float)) and not isinstance(v, bool)
                         and math.isfinite(v) else None for v in _list(d, key))
        leak = _dict(d, "leak")
        return cls(worker=_str(d, "worker"), t=tuple(v or 0.0 for v in col("t")),
                   p95_ms=col("p95_ms"), p50_ms=col("p50_ms"), rps=col("rps"),
                   gpu_mem_mib=col("gpu_mem_mib"), rss_mib=col("rss_mib"),
                   leak=Leak(slope_mib_per_h=_num(leak, "slope_mib_per_h"),
                             time_to_full_s=_num(leak, "time_to_full_s"),
                             card_total_mib=_num(leak, "card_total_mib")))


@dataclass(frozen=True)
class AuditEntry:
    """One line of the audit log (``GET /v1/audit``)."""

    time: float
    user: str
    action: str
    worker: str | None
    outcome: str
    duration_s: float | None
    before: Any
    after: Any
    detail: Any

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> AuditEntry:
        """From one audit record."""
        when = _num(d, "epoch")
        if when is None:
            when = _num(d, "time") or 0.0
        return cls(time=when, user=_str(d, "user", "?"), action=_str(d, "action", "?"),
                   worker=_opt_str(d, "worker"), outcome=_str(d, "outcome", "?"),
                   duration_s=_num(d, "duration_s"), before=d.get("before"),
                   after=d.get("after"), detail=d.get("detail"))


@dataclass(frozen=True)
class Check:
    """One row of a validation result."""

    name: str
    ok: bool
    detail: str


# ---------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Fetched:
    """What a read returned: a value, or why there is none (never both)."""

    value: Any = None
    error: str | None = None
    unreachable: bool = False
    """True when nothing answers on the socket (as opposed to an error reply)."""
    at: float = 0.0
    """Wall-clock time of the attempt."""

    @property
    def ok(self) -> bool:
        """Whether the read succeeded."""
        return self.error is None


@dataclass(frozen=True)
class ActionResult:
    """What the supervisor said to a POST."""

    ok: bool
    body: Any = None
    status: int | None = None
    code: str | None = None
    message: str = ""
    unreachable: bool = False


async def _read(client: Client, path: str, params: Mapping[str, Any] | None,
                clock: Any) -> Fetched:
    at = clock()
    try:
        return Fetched(value=await client.get(path, params=params), at=at)
    except SupervisorNotRunning as e:
        return Fetched(error=e.reason, unreachable=True, at=at)
    except ControlError as e:
        return Fetched(error=f"{e.status} {e.code}: {e.message}",
                       unreachable=e.status == 504, at=at)
    except (OSError, ValueError) as e:
        return Fetched(error=f"{type(e).__name__}: {e}", unreachable=True, at=at)


async def fetch_status(client: Client, clock: Any = time.time) -> Fetched:
    """``GET /v1/status`` → `Fetched` holding a `Snapshot`."""
    got = await _read(client, "/v1/status", None, clock)
    if not got.ok:
        return got
    try:
        return Fetched(value=Snapshot.parse(got.value), at=got.at)
    except TypeError as e:
        return Fetched(error=str(e), at=got.at)


async def fetch_series(client: Client, worker: str, window_s: int = 900,
                       clock: Any = time.time) -> Fetched:
    """``GET /v1/workers/{worker}/series`` → `Fetched` holding a `Series`."""
    got = await _read(client, f"{worker_path(worker)}/series", {"window_s": window_s}, clock)
    if not got.ok:
        return got
    if not isinstance(got.value, dict):
        return Fetched(error="series is not a JSON object", at=got.at)
    return Fetched(value=Series.parse(got.value), at=got.at)


async def fetch_logs(client: Client, worker: str, lines: int = 200,
                     clock: Any = time.time) -> Fetched:
    """``GET /v1/workers/{worker}/logs`` → `Fetched` holding a list of lines."""
    got = await _read(client, f"{worker_path(worker)}/logs", {"lines": lines}, clock)
    if not got.ok:
        return got
    raw = got.value.get("lines") if isinstance(got.value, dict) else None
    return Fetched(value=[str(x) for x in raw] if isinstance(raw, list) else [], at=got.at)


async def fetch_audit(client: Client, limit: int = 200, clock: Any = time.time) -> Fetched:
    """``GET /v1/audit`` → `Fetched` holding a list of `AuditEntry`, newest first."""
    got = await _read(client, "/v1/audit", {"limit": limit}, clock)
    if not got.ok:
        return got
    raw = got.value.get("entries") if isinstance(got.value, dict) else None
    entries = [AuditEntry.parse(e) for e in raw or [] if isinstance(e, dict)]
    return Fetched(value=entries, at=got.at)


async def fetch_events(client: Client, limit: int = 200, clock: Any = time.time) -> Fetched:
    """``GET /v1/events`` → `Fetched` holding a list of `Event`, newest first."""
    got = await _read(client, "/v1/events", {"limit": limit}, clock)
    if not got.ok:
        return got
    raw = got.value.get("events") if isinstance(got.value, dict) else None
    return Fetched(value=[Event.parse(e) for e in raw or [] if isinstance(e, dict)], at=got.at)


def validation_report(body: Any) -> dict[str, Any]:
    """The check report of a ``POST /v1/validate?wait=1`` reply.

    The supervisor nests it under ``report`` in the action outcome; a bare
    ``{"checks", "ok"}`` body is accepted too.
    """
    if not isinstance(body, dict):
        return {}
    report = body.get("report")
    if isinstance(report, dict):
        return report
    return body if "checks" in body else {}


def parse_checks(body: Any) -> list[Check]:
    """The checks of a ``POST /v1/validate?wait=1`` reply."""
    raw = validation_report(body).get("checks")
    return [Check(name=_str(c, "name", "?"), ok=_bool(c, "ok") is True, detail=_str(c, "detail"))
            for c in raw if isinstance(c, dict)] if isinstance(raw, list) else []


async def send(client: Client, path: str, body: Any = None, *,
               params: Mapping[str, Any] | None = None,
               timeout: float | None = None) -> ActionResult:
    """POST an action; errors come back in the result, never as exceptions."""
    try:
        reply = await client.post(path, json={} if body is None else body, params=params,
                                  timeout=timeout)
    except SupervisorNotRunning as e:
        return ActionResult(ok=False, message=f"supervisor not answering: {e.reason}",
                            unreachable=True)
    except ControlError as e:
        return ActionResult(ok=False, status=e.status, code=e.code, message=e.message)
    except (OSError, ValueError) as e:
        return ActionResult(ok=False, message=f"{type(e).__name__}: {e}", unreachable=True)
    ok = not (isinstance(reply, dict) and reply.get("outcome") in ("failed", "refused"))
    message = str(reply.get("message", "")) if isinstance(reply, dict) else ""
    return ActionResult(ok=ok, body=reply, status=200, message=message)


def worker_path(name: str) -> str:
    """``/v1/workers/{name}`` with the name escaped as one path segment."""
    return f"/v1/workers/{quote(name, safe='')}"


def alert_path(key: str) -> str:
    """``/v1/alerts/{key}`` with the key escaped as one path segment (keys may hold '/')."""
    return f"/v1/alerts/{quote(key, safe='')}"


def select_workers(workers: Sequence[Worker], query: str) -> list[Worker]:
    """Workers whose name or state contains `query` (case-insensitive); all when empty."""
    q = query.strip().lower()
    if not q:
        return list(workers)
    return [w for w in workers if q in w.name.lower() or q in w.state.lower()]


class Streaming(Protocol):
    """A client that can follow a streamed endpoint (`ControlClient.stream`)."""

    def stream(self, path: str, params: Mapping[str, Any] | None = None
               ) -> AsyncIterator[Any]: ...


async def follow_logs(client: Streaming, worker: str, lines: int = 200) -> AsyncIterator[str]:
    """Yield the last `lines` lines of the worker's log, then each new one as it is written.

    Raises `ControlError` / `SupervisorNotRunning` like the client (the caller retries).
    """
    params = {"lines": lines, "follow": 1}
    async for item in client.stream(f"{worker_path(worker)}/logs", params=params):
        if isinstance(item, dict):
            if "line" in item:
                yield str(item["line"])
            elif isinstance(item.get("lines"), list):
                for line in item["lines"]:
                    yield str(line)
        elif isinstance(item, str):
            yield item
