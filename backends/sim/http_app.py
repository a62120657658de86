"""The simulated worker's HTTP surface: a lean raw-ASGI app (sglang-surface.md §7.2).

Hot path (``POST /v1/embeddings``): orjson parse, cached tokenisation, one message to
the scheduler per event-loop tick, cached JSON of each vector, bytes-joined response.
"""

from __future__ import annotations

import datetime
import logging
import random
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from backends.sim import textmodel as tm
from backends.sim.api import (
    ApiError,
    EmbeddingRequest,
    Limits,
    error_body,
    native_error_body,
    parse_embedding_request,
    parse_encode_request,
    parse_json_body,
)
from backends.sim.engine import STARTING, UP, Aborted, Engine, QueueFull
from backends.sim.faults import FaultError

log = logging.getLogger("sglang.http")

JSON = b"application/json"
TEXT = b"text/plain; charset=utf-8"
_VEC_CACHE_MAX = 1024
_TOK_CACHE_MAX = 65536
_FLUSH_TEXT = (b"Cache flushed.\nPlease check backend logs for more details. (When there are "
               b"running or waiting requests, the operation will not be performed.)\n")
_NOT_FOUND = b'{"detail":"Not Found"}'
_NOT_ALLOWED = b'{"detail":"Method Not Allowed"}'
_UNAUTHORIZED = b'{"error":"Unauthorized"}'
_FORBIDDEN = b'{"error":"Forbidden"}'
_WHITELIST = {"0.5.2": {"max_micro_batch_size", "speculative_accept_threshold_single",
                        "speculative_accept_threshold_acc"},
              "0.5.23": {"pp_max_micro_batch_size", "speculative_accept_threshold_single",
                         "speculative_accept_threshold_acc"}}

Response = tuple[int, bytes | None, bytes]
"""(status, content type or None, body)."""
Handler = Callable[[dict[str, Any], bytes], Awaitable[Response]]


class NoDelayHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with TCP_NODELAY set on every connection (headers
    and body go out in two writes; without it direct clients see 40 ms stalls)."""

    def connection_made(self, transport: Any) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, AttributeError):
                pass
        super().connection_made(transport)


class _Route:
    __slots__ = ("exempt", "handler", "label", "methods", "read_body", "sim")

    def __init__(self, handler: Handler, methods: tuple[str, ...], label: str,
                 exempt: bool = False, sim: bool = False) -> None:
        self.handler = handler
        self.methods = methods
        self.label = label
        self.exempt = exempt
        self.sim = sim
        self.read_body = any(m in ("POST", "PUT") for m in methods)


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for k, v in scope["headers"]:
        if k == name:
            return str(v.decode("latin-1"))
    return None


def _json(obj: Any) -> bytes:
    return orjson.dumps(obj)


class SimApp:
    """ASGI application over an `Engine`."""

    def __init__(self, engine: Engine) -> None:
        self.e = engine
        self.cfg = engine.cfg
        self.new = engine.version != "0.5.2"
        cfg = self.cfg
        self.model_json = orjson.dumps(cfg.model_path)
        self.vec_cache: OrderedDict[tuple[int, int, int, str], bytes] = OrderedDict()
        self.tok_cache: dict[str, tuple[int, int]] = {}
        self.usage_tail = (b',"reasoning_tokens":0,"completion_tokens_details":null}}' if self.new
                           else b',"reasoning_tokens":0}}')
        self._http_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self.routes: dict[str, _Route] = {}
        self.prefix_routes: list[tuple[str, _Route]] = []
        self._build_routes()

    # ------------------------------------------------------------------ routing

    def _build_routes(self) -> None:
        r = self.routes
        new = self.new
        r["/health"] = _Route(self.health, ("GET",), "/health", exempt=True)
        r["/health_generate"] = _Route(self.health, ("GET",), "/health_generate", exempt=True)
        r["/ping"] = _Route(self.ping, ("GET",), "/ping")
        r["/get_model_info"] = _Route(self.get_model_info, ("GET",), "/get_model_info")
        r["/get_server_info"] = _Route(self.get_server_info, ("GET",), "/get_server_info")
        r["/v1/models"] = _Route(self.models, ("GET",), "/v1/models")
        r["/v1/embeddings"] = _Route(self.embeddings, ("POST",), "/v1/embeddings")
        r["/encode"] = _Route(self.encode, ("POST", "PUT"), "/encode")
        r["/flush_cache"] = _Route(self.flush_cache, ("GET", "POST"), "/flush_cache")
        r["/pause_generation"] = _Route(self.pause, ("POST",), "/pause_generation")
        r["/continue_generation"] = _Route(self.resume, ("POST",), "/continue_generation")
        r["/abort_request"] = _Route(self.abort_request, ("POST",), "/abort_request")
        r["/set_internal_state"] = _Route(self.set_internal_state, ("POST", "PUT"),
                                          "/set_internal_state")
        if new:
            r["/ready"] = _Route(self.ready, ("GET",), "/ready", exempt=True)
            r["/model_info"] = _Route(self.model_info, ("GET",), "/model_info")
            r["/server_info"] = _Route(self.server_info, ("GET",), "/server_info")
            r["/v1/loads"] = _Route(self.loads, ("GET",), "/v1/loads")
        else:
            r["/get_load"] = _Route(self.get_load, ("GET",), "/get_load")
        if self.cfg.enable_metrics:
            r["/metrics"] = _Route(self.metrics, ("GET",), "/metrics", exempt=True)
            r["/metrics/"] = r["/metrics"]
        r["/_sim/gpu"] = _Route(self.sim_gpu, ("GET",), "/_sim/gpu", exempt=True, sim=True)
        r["/_sim/faults"] = _Route(self.sim_faults, ("GET", "POST"), "/_sim/faults",
                                   exempt=True, sim=True)
        self.prefix_routes.append(
            ("/v1/models/", _Route(self.model_card, ("GET",), "/v1/models/{model}")))

    def _route(self, path: str) -> _Route | None:
        route = self.routes.get(path)
        if route is None:
            for prefix, pr in self.prefix_routes:
                if path.startswith(prefix) and len(path) > len(prefix):
                    return pr
        return route

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        method = scope["method"]
        route = self._route(path)
        e = self.e
        key = self.cfg.api_key
        if (key and method != "OPTIONS" and (route is None or not route.exempt)
                and _header(scope, b"authorization") != "Bearer " + key):
            await _send(send, 401, JSON, _UNAUTHORIZED)
            return
        if route is None:
            await _send(send, 404, JSON, _NOT_FOUND)
            return
        if method not in route.methods:
            await _send(send, 405, JSON, _NOT_ALLOWED)
            return
        if route.sim:
            client = scope.get("client") or ("", 0)
            if not _is_loopback(client[0]):
                await _send(send, 403, JSON, _FORBIDDEN)
                return
        body = b""
        if route.read_body:
            more = True
            while more:
                msg = await receive()
                body += msg.get("body", b"")
                more = msg.get("more_body", False)
        metrics = e.metrics if (self.new and not route.sim) else None
        if metrics is not None:
            children = self._http_children.get((route.label, method))
            if children is None:
                children = (metrics.http_requests.labels(route.label, method),
                            metrics.http_active.labels(route.label, method))
                self._http_children[(route.label, method)] = children
            children[0].inc()
            children[1].inc()
            try:
                status, ctype, out = await route.handler(scope, body)
            finally:
                children[1].dec()
            metrics.http_responses.labels(route.label, method, str(status)).inc()
        else:
            status, ctype, out = await route.handler(scope, body)
        await _send(send, status, ctype, out)

    # ------------------------------------------------------------------ health & info

    async def health(self, scope: dict[str, Any], body: bytes) -> Response:
        return await self.e.health_generate(scope["path"]), None, b""

    async def ready(self, scope: dict[str, Any], body: bytes) -> Response:
        e = self.e
        ok = e.status == UP and not e.is_pause and not e.gracefully_exit
        return (200 if ok else 503), None, b""

    async def ping(self, scope: dict[str, Any], body: bytes) -> Response:
        e = self.e
        if self.new and (e.status == STARTING or e.gracefully_exit):
            return 503, None, b""
        return 200, None, b""

    def _embedding_block(self) -> dict[str, Any]:
        cfg = self.cfg
        decoder = cfg.attention == "causal"
        return {
            "family": "explicit_decoder_embedding" if decoder else "encoder_embedding",
            "enabled": cfg.is_embedding,
            "pooling": "last" if decoder else "mean",
            "attention": cfg.attention,
            "supports_dimensions": cfg.matryoshka,
            "matryoshka_dimensions": cfg.matryoshka_dimensions,
        }

    def _model_info_obj(self) -> dict[str, Any]:
        cfg = self.cfg
        tok = cfg.args.get("tokenizer_path") or cfg.model_path
        if not self.new:
            return {"model_path": cfg.model_path, "tokenizer_path": tok,
                    "is_generation": not cfg.is_embedding, "preferred_sampling_params": None,
                    "weight_version": "default"}
        decoder = cfg.attention == "causal"
        return {
            "model_path": cfg.model_path, "served_model_name": cfg.served_model_name,
            "tokenizer_path": tok, "is_generation": not cfg.is_embedding,
            "preferred_sampling_params": None, "weight_version": "default",
            "load_format": cfg.args.get("load_format") or "auto", "reasoning_parser": None,
            "tool_call_parser": None, "disaggregation_mode": "null",
            "has_image_understanding": False, "has_audio_understanding": False,
            "model_type": "qwen3" if decoder else "bert",
            "architectures": ["Qwen3ForCausalLM"] if decoder else ["BertModel"],
            "embedding": self._embedding_block(),
        }

    async def model_info(self, scope: dict[str, Any], body: bytes) -> Response:
        return 200, JSON, _json(self._model_info_obj())

    async def get_model_info(self, scope: dict[str, Any], body: bytes) -> Response:
        if self.new:
            log.warning("Endpoint '/get_model_info' is deprecated and will be removed in a "
                        "future version. Please use '/model_info' instead.")
        return 200, JSON, _json(self._model_info_obj())

    def _memory_usage(self) -> dict[str, Any]:
        info = self.e.info
        weight = round(info.get("weights_mib", 0) / 1024, 2)
        kv = round(info.get("kv_mib", 0) / 1024, 2)
        graph = round(info.get("graph_mib", 0) / 1024, 2)
        tokens = info.get("max_total_num_tokens", 0)
        if not self.new:
            return {"weight": weight, "kvcache": kv, "token_capacity": tokens, "graph": graph}
        return {"weight": weight, "kvcache": kv,
                "startup_available": round(info.get("startup_available_mib", 0) / 1024, 2),
                "token_capacity": tokens, "token_capacity_swa": None,
                "graph": {"prefill": graph} if graph else {}}

    def _server_info_obj(self) -> dict[str, Any]:
        e = self.e
        cfg = self.cfg
        args = dict(cfg.args)
        internal = {**args, "last_gen_throughput": 0.0, "memory_usage": self._memory_usage()}
        out: dict[str, Any] = {**args}
        if self.new:
            out["launch_command"] = " ".join(_mask_argv(cfg.argv))
        out.update(status="ready", max_total_num_tokens=e.info.get("max_total_num_tokens"),
                   max_req_input_len=e.info.get("max_req_input_len"))
        if self.new:
            out["startup_time"] = round(e.info.get("startup_time", 0.0), 3)
            out["kv_events"] = None
        else:
            internal["load"] = e.stats.get("used_tokens", 0)
        out["internal_states"] = [internal]
        out["version"] = e.version
        if self.new:
            out["frontend"] = "python"
        return out

    async def server_info(self, scope: dict[str, Any], body: bytes) -> Response:
        return 200, JSON, _json(self._server_info_obj())

    async def get_server_info(self, scope: dict[str, Any], body: bytes) -> Response:
        if self.new:
            log.warning("Endpoint '/get_server_info' is deprecated and will be removed in a "
                        "future version. Please use '/server_info' instead.")
        return 200, JSON, _json(self._server_info_obj())

    def _card(self) -> dict[str, Any]:
        cfg = self.cfg
        card: dict[str, Any] = {"id": cfg.served_model_name, "object": "model",
                                "created": int(self.e.start_time), "owned_by": "sglang",
                                "root": cfg.served_model_name}
        if self.new:
            card["parent"] = None
        card["max_model_len"] = cfg.context_length
        return card

    async def models(self, scope: dict[str, Any], body: bytes) -> Response:
        return 200, JSON, _json({"object": "list", "data": [self._card()]})

    async def model_card(self, scope: dict[str, Any], body: bytes) -> Response:
        mid = scope["path"][len("/v1/models/"):]
        if mid == self.cfg.served_model_name:
            return 200, JSON, _json(self._card())
        return 404, JSON, _json({"error": {"message": f"The model '{mid}' does not exist",
                                           "type": "invalid_request_error", "param": "model",
                                           "code": "model_not_found"}})

    async def loads(self, scope: dict[str, Any], body: bytes) -> Response:
        e = self.e
        s = e.stats
        cap = e.info.get("max_total_num_tokens", 0) or 1
        qs = scope.get("query_string", b"").decode("latin-1")
        include = "core,memory"
        for part in qs.split("&"):
            if part.startswith("include="):
                include = part[len("include="):].replace("%2C", ",")
        load: dict[str, Any] = {
            "dp_rank": 0, "num_running_reqs": s["running"], "num_waiting_reqs": s["queue"],
            "num_used_tokens": s["used_tokens"], "max_total_num_tokens": cap,
            "token_usage": round(s["used_tokens"] / cap, 4),
            "cache_hit_rate": round(s["cache_hit_rate"], 4), "utilization": 0.0}
        if "memory" in include or "all" in include:
            info = e.info
            load["memory"] = {"weight_gb": round(info.get("weights_mib", 0) / 1024, 2),
                              "kv_cache_gb": round(info.get("kv_mib", 0) / 1024, 2),
                              "graph_gb": round(info.get("graph_mib", 0) / 1024, 2),
                              "token_capacity": cap}
        return 200, JSON, _json({
            "timestamp": datetime.datetime.now(datetime.UTC).isoformat(),
            "version": e.version, "accelerator": "cuda", "num_accelerators": 1,
            "loads": [load]})

    async def get_load(self, scope: dict[str, Any], body: bytes) -> Response:
        s = self.e.stats
        return 200, JSON, _json({"load": s["used_tokens"]})

    async def metrics(self, scope: dict[str, Any], body: bytes) -> Response:
        m = self.e.metrics
        if m is None:
            return 404, JSON, _NOT_FOUND
        out, ctype = m.render(_header(scope, b"accept"))
        return 200, ctype.encode(), out

    # ------------------------------------------------------------------ control

    async def flush_cache(self, scope: dict[str, Any], body: bytes) -> Response:
        ok = await self.e.flush_cache()
        return (200 if ok else 400), TEXT, _FLUSH_TEXT

    async def pause(self, scope: dict[str, Any], body: bytes) -> Response:
        self.e.pause()
        return 200, JSON, b'{"message":"Generation paused successfully.","status":"ok"}'

    async def resume(self, scope: dict[str, Any], body: bytes) -> Response:
        self.e.resume()
        return 200, JSON, b'{"message":"Generation continued successfully.","status":"ok"}'

    async def abort_request(self, scope: dict[str, Any], body: bytes) -> Response:
        try:
            obj = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            obj = {}
        if not isinstance(obj, dict):
            obj = {}
        self.e.abort(obj.get("rid"), bool(obj.get("abort_all")))
        return 200, None, b""

    async def set_internal_state(self, scope: dict[str, Any], body: bytes) -> Response:
        try:
            obj = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            obj = {}
        keys = set((obj.get("server_args") or {}) if isinstance(obj, dict) else {})
        allowed = _WHITELIST["0.5.23" if self.new else "0.5.2"]
        ok = bool(keys) and keys <= allowed
        if not ok:
            for k in sorted(keys - allowed):
                log.info("Updating %s is not supported.", k)
        return 200, JSON, b"[true]" if ok else b"[false]"

    # ------------------------------------------------------------------ sim endpoints

    async def sim_gpu(self, scope: dict[str, Any], body: bytes) -> Response:
        e = self.e
        util = float(e.stats.get("util_pct", 0.0))
        used = 0 if e.sched_dead else int(e.stats.get("used_mib", 0))
        return 200, JSON, _json({
            "gpu_index": self.cfg.gpu_index, "total_mib": self.cfg.gpu_mib, "used_mib": used,
            "pid": e.sched_pid, "util_pct": round(util, 1),
            "temperature_c": round(32.0 + 0.45 * util, 1),
            "power_w": round(70.0 + 6.3 * util, 1)})

    async def sim_faults(self, scope: dict[str, Any], body: bytes) -> Response:
        e = self.e
        if scope["method"] == "POST":
            try:
                patch = orjson.loads(body)
                e.set_faults(e.faults.updated(patch))
            except (orjson.JSONDecodeError, FaultError) as err:
                return 400, JSON, _json({"error": str(err)})
            log.info("sim faults set: %s", {k: v for k, v in e.faults.to_json().items()
                                            if v not in (False, 0.0, None)})
        return 200, JSON, _json(e.faults.to_json())

    # ------------------------------------------------------------------ embeddings

    def limits(self) -> Limits:
        """The checks' parameters (known once the scheduler reported its pool)."""
        cfg = self.cfg
        return Limits(version=self.e.version, model_path=cfg.model_path,
                      context_length=cfg.context_length,
                      max_req_input_len=self.e.info.get("max_req_input_len", cfg.context_length),
                      allow_auto_truncate=cfg.allow_auto_truncate, matryoshka=cfg.matryoshka,
                      matryoshka_dimensions=cfg.matryoshka_dimensions, hidden_size=cfg.dim,
                      is_embedding=cfg.is_embedding)

    def tokenize(self, text: str) -> tuple[int, int]:
        """(n_tokens, key) of `text`, cached."""
        hit = self.tok_cache.get(text)
        if hit is None:
            if len(self.tok_cache) >= _TOK_CACHE_MAX:
                self.tok_cache.clear()
            hit = self.tok_cache[text] = (tm.count_tokens(text), tm.text_key(text))
        return hit

    def vector_json(self, key: int, variant: int, dims: int | None, fmt: str) -> bytes:
        """Encoded vector of input `key` (faults applied), cached when healthy."""
        f = self.e.faults
        full = self.cfg.dim
        d = dims or full
        if f.nan or f.wrong_dim:
            if f.wrong_dim:
                d = max(1, d // 2)
            v = tm.truncate(tm.unit_vector(key, full, variant), d)
            if f.nan:
                v = np.full(d, np.nan, dtype=np.float32)
            return tm.encode_base64(v) if fmt == "base64" else tm.encode_float(v)
        ck = (key, variant, d, fmt)
        cache = self.vec_cache
        out = cache.get(ck)
        if out is not None:
            cache.move_to_end(ck)
            return out
        v = tm.unit_vector(key, full, variant)
        if d != full:
            v = tm.truncate(v, d)
        out = tm.encode_base64(v) if fmt == "base64" else tm.encode_float(v)
        cache[ck] = out
        if len(cache) > _VEC_CACHE_MAX:
            cache.popitem(last=False)
        return out

    async def _run(self, req: EmbeddingRequest) -> list[tuple[int, int, float]]:
        futs = await self.e.submit([(it.ntok, it.key) for it in req.items], req.rid)
        try:
            if len(futs) == 1:
                return [await futs[0]]
            return [await f for f in futs]
        finally:
            self.e.forget_user_rid(req.rid)

    async def embeddings(self, scope: dict[str, Any], body: bytes) -> Response:
        t0 = time.perf_counter()
        try:
            obj = parse_json_body(body, _header(scope, b"content-type"))
            req = parse_embedding_request(obj, self.limits(), self.tokenize, tm.ids_key)
        except ApiError as err:
            return err.status, JSON, err.body
        try:
            results = await self._run(req)
        except QueueFull:
            return 503, JSON, error_body("The request queue is full.", "503", 503)
        except Aborted:
            return 500, JSON, error_body("Internal server error: 'embedding'",
                                         "InternalServerError", 500)
        e = self.e
        rate = e.faults.error_rate
        if rate and random.random() < rate:
            return 500, JSON, error_body(
                "Internal server error: simulated fault (error_rate)", "InternalServerError", 500)
        parts = [b'{"data":[']
        total = 0
        for i, (item, (variant, _cached, _q)) in enumerate(zip(req.items, results)):
            if i:
                parts.append(b",")
            parts += (b'{"embedding":',
                      self.vector_json(item.key, variant, req.dimensions, req.encoding_format),
                      b',"index":', str(i).encode(), b',"object":"embedding"}')
            total += item.ntok
        n = str(total).encode()
        parts += (b'],"model":', self.model_json, b',"object":"list","usage":{"prompt_tokens":',
                  n, b',"total_tokens":', n,
                  b',"completion_tokens":0,"prompt_tokens_details":null', self.usage_tail)
        m = e.metrics
        if m is not None:
            e2e = time.perf_counter() - t0
            for item, (_v, cached, qtime) in zip(req.items, results):
                m.request_done(item.ntok, cached, e2e, qtime)
        return 200, JSON, b"".join(parts)

    async def encode(self, scope: dict[str, Any], body: bytes) -> Response:
        t0 = time.perf_counter()
        try:
            obj = orjson.loads(body) if body else None
        except orjson.JSONDecodeError as err:
            return 400, JSON, native_error_body(f"JSON decode error: {err.msg}")
        if not isinstance(obj, dict):
            return 400, JSON, native_error_body("Request body must be a JSON object")
        if not self.cfg.is_embedding:
            return 400, JSON, native_error_body(
                "This model does not appear to be an embedding model by default. Please add "
                "`--is-embedding` when launching the server or try another model.")
        try:
            req, batch = parse_encode_request(obj, self.limits(), self.tokenize, tm.ids_key)
        except ApiError as err:
            return err.status, JSON, err.body
        try:
            results = await self._run(req)
        except QueueFull:
            return 503, JSON, native_error_body("The request queue is full.")
        except Aborted:
            return 400, JSON, native_error_body("Request aborted.")
        e2e = time.perf_counter() - t0
        outs = []
        for item, (variant, cached, qtime) in zip(req.items, results):
            meta = (b'{"id":"' + _rid().encode() + b'","finish_reason":{"type":"length",'
                    b'"length":0},"prompt_tokens":' + str(item.ntok).encode()
                    + b',"weight_version":"default"'
                    + (b',"num_retractions":0' if self.new else b"")
                    + b',"e2e_latency":' + repr(round(e2e, 6)).encode() + b"}")
            outs.append(b'{"embedding":' + self.vector_json(item.key, variant, req.dimensions,
                                                            "float")
                        + b',"meta_info":' + meta + b"}")
            if self.e.metrics is not None:
                self.e.metrics.request_done(item.ntok, cached, e2e, qtime)
        body_out = (b"[" + b",".join(outs) + b"]") if batch else outs[0]
        return 200, JSON, body_out


def _rid() -> str:
    return f"{random.getrandbits(128):032x}"


def _is_loopback(host: str) -> bool:
    return host == "::1" or host.startswith("127.") or host == "localhost"


def _mask_argv(argv: list[str]) -> list[str]:
    out = list(argv)
    for i, tok in enumerate(out):
        if tok in ("--api-key", "--admin-api-key") and i + 1 < len(out):
            out[i + 1] = "***"
        elif tok.startswith(("--api-key=", "--admin-api-key=")):
            out[i] = tok.split("=", 1)[0] + "=***"
    return out


async def _send(send: Any, status: int, ctype: bytes | None, body: bytes) -> None:
    headers = [(b"content-length", str(len(body)).encode())]
    if ctype is not None:
        headers.append((b"content-type", ctype))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
