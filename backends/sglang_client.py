"""Async HTTP client for one SGLang embedding worker (real or simulated).

The probe is a real ``POST /v1/embeddings`` (DESIGN.md: `/health` alone is not trusted).
Info endpoints try the 0.5.23 names first and fall back to the 0.5.2 ones on 404.
The API key travels only in the ``Authorization`` header and is scrubbed from every
error message this module produces.

The two requests the supervisor makes every second per worker, the probe and the
``/metrics`` scrape, go over the lean keep-alive HTTP/1.1 client of `backends.http1`
(httpx costs ~1 ms of CPU per request, that client ~0.15 ms): at most two connections per
worker, so a probe never queues behind a slow scrape; usually one, reused. Everything else
(info endpoints, /health, /ping) uses httpx. Timeouts and error texts are the same on both
paths: ``timeout after Xs``, ``connection refused``, ``connect error: ...``,
``connection closed: ...``, ``HTTP <status>: <message>``.
"""

from __future__ import annotations

import asyncio
import json
import math
import operator
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from backends import http1
from backends.promtext import MetricsSnapshot, parse_metrics

__all__ = [
    "HttpCheck",
    "ProbeResult",
    "SglangClient",
    "SglangError",
    "cosine",
    "error_message",
]

_MAX_MESSAGE = 300


class SglangError(Exception):
    """A request to the worker failed; `status` is the HTTP status when one was received."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ProbeResult:
    """Outcome of one embedding probe.

    `ok` only when the status is 200, the vector has the configured dimension and every
    value is finite. `vector` is the first embedding whenever one could be read (also
    when it failed the checks); `error` says why `ok` is False.
    """

    ok: bool
    status: int | None
    latency_s: float
    dim: int | None
    finite: bool
    vector: tuple[float, ...] | None
    error: str | None


@dataclass(frozen=True)
class HttpCheck:
    """Outcome of a cheap GET such as ``/health`` or ``/ping``."""

    ok: bool
    status: int | None
    latency_s: float
    error: str | None


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity of two equal-length vectors (0.0 when either has zero norm)."""
    if len(a) != len(b):
        raise ValueError(f"cosine of vectors of different length ({len(a)} != {len(b)})")
    if a == b and any(a):
        # the usual probe: the same text gives the very same vector (C-speed compare)
        return 1.0
    dot = math.fsum(map(operator.mul, a, b))
    na = math.sqrt(math.fsum(map(operator.mul, a, a)))
    nb = math.sqrt(math.fsum(map(operator.mul, b, b)))
    if na == 0.0 or nb == 0.0:
        return 0.0
    return dot / (na * nb)


def error_message(body: bytes, reason: str = "") -> str:
    """The human message inside an SGLang error body (any of its shapes), else the text."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip()
        return (text or reason)[:_MAX_MESSAGE]
    if isinstance(data, dict):
        for key in ("message", "error", "detail"):
            value = data.get(key)
            if isinstance(value, dict) and isinstance(value.get("message"), str):
                return value["message"][:_MAX_MESSAGE]
            if isinstance(value, str):
                return value[:_MAX_MESSAGE]
    return body.decode("utf-8", "replace").strip()[:_MAX_MESSAGE] or reason


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether `kind` is in the cause/context chain of `exc` (bounded walk)."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _transport_error(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return f"timeout after {float(timeout_s)}s"
    if isinstance(exc, http1.ERRORS):
        return http1.describe(exc, timeout_s)
    if isinstance(exc, httpx.ConnectError):
        if "refused" in str(exc).lower() or _caused_by(exc, ConnectionRefusedError):
            return "connection refused"
        return f"connect error: {exc}"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"connection closed: {exc}"
    return f"{type(exc).__name__}: {exc}"


_KEY_FIELDS = frozenset({"api_key", "admin_api_key"})


def _mask_keys(obj: Any, key: str | None) -> Any:
    """A copy of a JSON value with API keys masked (see `SglangClient.server_info`)."""
    if isinstance(obj, dict):
        return {k: ("***" if k in _KEY_FIELDS and v else _mask_keys(v, key))
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [_mask_keys(v, key) for v in obj]
    if isinstance(obj, str) and key and key in obj:
        return obj.replace(key, "***")
    return obj


_PLAIN_NUMBERS = frozenset({float, int})


def _finite_floats(values: list[Any]) -> tuple[tuple[float, ...], bool]:
    """The values as floats, and whether all of them were finite numbers."""
    if set(map(type, values)) <= _PLAIN_NUMBERS:  # the usual case, at C speed (bool excluded)
        try:
            vec = tuple(map(float, values))
        except OverflowError:
            pass
        else:
            return vec, all(map(math.isfinite, vec))
    out: list[float] = []
    finite = True
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            finite = False
            out.append(math.nan)
            continue
        try:
            f = float(v)
        except OverflowError:  # an integer beyond any float
            f = math.inf
        if finite and not math.isfinite(f):
            finite = False
        out.append(f)
    return tuple(out), finite


#: connections per worker on the lean path: the probe and the scrape each get one when
#: they overlap (a probe must not wait behind a slow scrape: its timeout detects hangs)
_LEAN_CONNECTIONS = 2


def _loads_lenient(body: bytes) -> Any:
    """JSON, also accepting the NaN/Infinity literals Python's json module writes."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)


class SglangClient:
    """Client for one worker at `base_url` (``http://127.0.0.1:30001``).

    Pass `http` to share one `httpx.AsyncClient` (and its connection pool) across many
    workers; it is then not closed by `aclose`. `model` is sent as the request's
    ``model`` field (SGLang ignores it; sglang-router requires one).
    """

    def __init__(self, base_url: str, *, api_key: str | None = None,
                 http: httpx.AsyncClient | None = None, model: str | None = None,
                 timeout_s: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout_s = timeout_s
        self._api_key = api_key
        self._own_http = http is None
        self._http = http if http is not None else httpx.AsyncClient(
            timeout=timeout_s, limits=httpx.Limits(max_keepalive_connections=4))
        self._headers: dict[str, str] = {}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        # which spelling of a renamed endpoint this worker answered, once known
        self._paths: dict[str, str] = {}
        # the probe and the scrape (plain http only; https stays on httpx)
        self._lean: http1.Client | None = None
        try:
            self._lean = http1.Client(self.base_url, headers=self._headers,
                                      connections=_LEAN_CONNECTIONS,
                                      connect_timeout_s=max(10.0, timeout_s))
        except ValueError:
            pass

    def __repr__(self) -> str:
        key = ", api_key=***" if self._api_key else ""
        return f"SglangClient({self.base_url!r}{key})"

    async def __aenter__(self) -> SglangClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the probe/scrape connections, and the httpx pool if this client created it."""
        self.close_connections()
        if self._own_http:
            await self._http.aclose()

    def close_connections(self) -> None:
        """Close the probe/scrape keep-alive connections (the client stays usable: the
        next request opens a new one). For a worker that is being forgotten."""
        if self._lean is not None:
            self._lean.close()

    def _scrub(self, text: str) -> str:
        if self._api_key and self._api_key in text:
            return text.replace(self._api_key, "***")
        return text

    async def _request(self, method: str, path: str, *, timeout_s: float,
                       json_body: bytes | None = None,
                       headers: dict[str, str] | None = None) -> tuple[httpx.Response, float]:
        """One request with a total deadline; returns (response, seconds taken)."""
        all_headers = dict(self._headers)
        if json_body is not None:
            all_headers["Content-Type"] = "application/json"
        if headers:
            all_headers.update(headers)
        start = time.perf_counter()
        async with asyncio.timeout(timeout_s):
            resp = await self._http.request(method, self.base_url + path, content=json_body,
                                            headers=all_headers, timeout=timeout_s)
        return resp, time.perf_counter() - start

    async def probe(self, text: str, *, dimension: int, timeout_s: float) -> ProbeResult:
        """A real embedding request for `text`; checks status, dimension and finiteness."""
        body: dict[str, Any] = {"input": text}
        if self.model is not None:
            body["model"] = self.model
        start = time.perf_counter()
        resp: httpx.Response | http1.Reply
        try:
            if self._lean is not None:
                resp, latency = await self._lean.request(
                    "POST", "/v1/embeddings", timeout_s=timeout_s, body=orjson.dumps(body),
                    accept="application/json")
            else:
                resp, latency = await self._request("POST", "/v1/embeddings",
                                                    timeout_s=timeout_s,
                                                    json_body=orjson.dumps(body))
        except (httpx.HTTPError, OSError, *http1.ERRORS) as e:
            return ProbeResult(False, None, time.perf_counter() - start, None, False, None,
                               self._scrub(_transport_error(e, timeout_s)))
        status = resp.status_code
        if status != 200:
            msg = error_message(resp.content, resp.reason_phrase)
            return ProbeResult(False, status, latency, None, False, None,
                               self._scrub(f"HTTP {status}: {msg}"))
        try:
            data = _loads_lenient(resp.content)
            raw = data["data"][0]["embedding"]
            if not isinstance(raw, list):
                raise TypeError("embedding is not a list")
        except (ValueError, KeyError, IndexError, TypeError) as e:
            return ProbeResult(False, status, latency, None, False, None,
                               f"bad response body: {type(e).__name__}: {e}"[:_MAX_MESSAGE])
        vector, finite = _finite_floats(raw)
        dim = len(vector)
        error: str | None = None
        if dim != dimension:
            error = f"dimension {dim} != {dimension}"
        elif not finite:
            error = "non-finite values"
        return ProbeResult(error is None, status, latency, dim, finite, vector, error)

    async def _get_json(self, paths: Sequence[str], *, timeout_s: float | None) -> Any:
        """GET the first of `paths` that is not 404 (remembered for next time)."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        known = self._paths.get(paths[0])
        order = [known] + [p for p in paths if p != known] if known else list(paths)
        last: SglangError | None = None
        for path in order:
            try:
                resp, _ = await self._request("GET", path, timeout_s=timeout)
            except (httpx.HTTPError, TimeoutError, OSError) as e:
                raise SglangError(self._scrub(f"GET {path}: {_transport_error(e, timeout)}")) from None
            if resp.status_code == 404:
                last = SglangError(f"GET {path}: HTTP 404: "
                                   f"{error_message(resp.content, resp.reason_phrase)}", status=404)
                continue
            if resp.status_code != 200:
                msg = self._scrub(error_message(resp.content, resp.reason_phrase))
                raise SglangError(f"GET {path}: HTTP {resp.status_code}: {msg}",
                                  status=resp.status_code)
            try:
                data = _loads_lenient(resp.content)
            except ValueError as e:
                raise SglangError(f"GET {path}: invalid JSON: {e}", status=200) from None
            self._paths[paths[0]] = path
            return data
        assert last is not None
        raise last

    async def server_info(self, *, timeout_s: float | None = None) -> dict[str, Any]:
        """``/server_info`` (0.5.23) or ``/get_server_info`` (0.5.2).

        The body includes the server args, and SGLang puts ``api_key`` there in clear text
        (also nested, and inside ``launch_command``): every ``api_key``/``admin_api_key``
        value and every occurrence of this client's key is replaced with ``***``.
        """
        data = await self._get_json(("/server_info", "/get_server_info"), timeout_s=timeout_s)
        return _mask_keys(data, self._api_key)

    async def model_info(self, *, timeout_s: float | None = None) -> dict[str, Any]:
        """``/model_info`` (0.5.15+) or ``/get_model_info`` (0.5.2)."""
        return await self._get_json(("/model_info", "/get_model_info"), timeout_s=timeout_s)

    async def loads(self, *, timeout_s: float | None = None) -> dict[str, Any]:
        """``/v1/loads`` (0.5.23) or ``/get_load`` (≤ 0.5.20)."""
        return await self._get_json(("/v1/loads", "/get_load"), timeout_s=timeout_s)

    async def metrics_text(self, *, timeout_s: float | None = None) -> str:
        """The ``/metrics`` body in Prometheus text format (``Accept: text/plain``)."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        resp: httpx.Response | http1.Reply
        try:
            if self._lean is not None:
                resp, _ = await self._lean.request("GET", "/metrics", timeout_s=timeout,
                                                   accept="text/plain")
            else:
                resp, _ = await self._request("GET", "/metrics", timeout_s=timeout,
                                              headers={"Accept": "text/plain"})
        except (httpx.HTTPError, OSError, *http1.ERRORS) as e:
            raise SglangError(self._scrub(f"GET /metrics: {_transport_error(e, timeout)}")) from None
        if resp.status_code != 200:
            msg = self._scrub(error_message(resp.content, resp.reason_phrase))
            raise SglangError(f"GET /metrics: HTTP {resp.status_code}: {msg}",
                              status=resp.status_code)
        return resp.content.decode("utf-8", "replace")

    async def metrics(self, *, timeout_s: float | None = None,
                      families: Iterable[str] | None = None) -> MetricsSnapshot:
        """``/metrics`` parsed into a `MetricsSnapshot`; with `families`, only the samples
        of those metric families (`parse_metrics`: the other lines are skipped unparsed)."""
        return parse_metrics(await self.metrics_text(timeout_s=timeout_s), families=families)

    async def _check(self, path: str, timeout_s: float | None) -> HttpCheck:
        timeout = self.timeout_s if timeout_s is None else timeout_s
        start = time.perf_counter()
        try:
            resp, latency = await self._request("GET", path, timeout_s=timeout)
        except (httpx.HTTPError, TimeoutError, OSError) as e:
            return HttpCheck(False, None, time.perf_counter() - start,
                             self._scrub(_transport_error(e, timeout)))
        if resp.status_code == 200:
            return HttpCheck(True, 200, latency, None)
        msg = self._scrub(error_message(resp.content, resp.reason_phrase))
        return HttpCheck(False, resp.status_code, latency, f"HTTP {resp.status_code}: {msg}")

    async def health(self, *, timeout_s: float | None = None) -> HttpCheck:
        """``GET /health`` (on real SGLang a 1-token request: ≥ 1 s when healthy)."""
        return await self._check("/health", timeout_s)

    async def ping(self, *, timeout_s: float | None = None) -> HttpCheck:
        """``GET /ping``: a cheap flag check (needs the API key when one is set)."""
        return await self._check("/ping", timeout_s)
