"""The shared lean HTTP/1.1 client (`backends.http1.Client`) and its users that poll
periodically (`SimGpuSource`, `SglangRouter`: its cached Prometheus read), against
scripted asyncio HTTP servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from backends import http1
from backends.balancer import BalancerError
from backends.balancer_router import REQUEST_DURATION, RouterSettings, SglangRouter
from backends.gpu import SimGpuSource
from tests.conftest import free_port


@dataclass(frozen=True)
class Request:
    """One request as the server read it."""

    conn: int
    """Connection number (1 = the first accepted)."""
    method: str
    path: str
    head: bytes
    body: bytes


#: what the server does for a request: (status, body[, headers]), or "close" (close
#: without answering), "hang" (never answer), or "slow" (200 after 0.3 s)
Action = tuple[int, bytes] | tuple[int, bytes, dict[str, str]] | str


@dataclass
class Server:
    """A scripted keep-alive HTTP/1.1 server; `respond` decides per request."""

    respond: Callable[[Request, int], Action]
    """(request, its number on its connection) -> action."""
    url: str = ""
    port: int = 0
    requests: list[Request] = field(default_factory=list)
    connections: int = 0
    closed: int = 0
    """Connections the client closed (EOF seen)."""
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    """Set at teardown: hanging handlers return."""
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]


async def _serve(server: Server, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
    server.connections += 1
    server.writers.append(writer)
    conn = server.connections
    n = 0
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                server.closed += 1
                return
            n += 1
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            body = await reader.readexactly(length) if length else b""
            method, path = head.split(b" ")[:2]
            req = Request(conn, method.decode(), path.decode(), head, body)
            server.requests.append(req)
            action = server.respond(req, n)
            if action == "close":
                return
            if action == "hang":
                await server.stop.wait()
                return
            if action == "slow":
                await asyncio.sleep(0.3)
                action = (200, b"slow")
            assert not isinstance(action, str)
            status, payload = action[0], action[1]
            extra = action[2] if len(action) == 3 else {}  # type: ignore[misc]
            lines = [f"HTTP/1.1 {status} {extra.pop('reason', 'OK' if status == 200 else '')}",
                     f"Content-Length: {len(payload)}", *(f"{k}: {v}" for k, v in extra.items())]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    """Start scripted servers: ``await serve(respond, port=None)``; closed at teardown."""
    started: list[tuple[asyncio.Server, Server, set[asyncio.Task[None]]]] = []

    async def start(respond: Callable[[Request, int], Action], port: int = 0) -> Server:
        server = Server(respond)
        tasks: set[asyncio.Task[None]] = set()

        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            tasks.add(task)
            try:
                await _serve(server, r, w)
            finally:
                tasks.discard(task)

        srv = await asyncio.start_server(handle, "127.0.0.1", port)
        server.port = srv.sockets[0].getsockname()[1]
        server.url = f"http://127.0.0.1:{server.port}"
        started.append((srv, server, tasks))
        return server

    yield start
    for srv, server, tasks in started:
        srv.close()
        server.stop.set()
        for w in server.writers:
            w.close()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        await srv.wait_closed()


async def eventually(pred: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    """Poll `pred` until true; bounded."""
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout_s}s")
        await asyncio.sleep(0.02)


def ok(body: bytes = b"{}") -> Callable[[Request, int], Action]:
    return lambda req, n: (200, body)


# --------------------------------------------------------------------------- Client

async def test_requests_share_one_connection_with_cached_heads(serve) -> None:
    srv = await serve(lambda req, n: (201, req.body or b"got " + req.path.encode(),
                                      {"reason": "Created"}))
    c = http1.Client(srv.url + "/api/", headers={"Authorization": "Bearer k"})
    try:
        for i in range(3):
            reply, took = await c.request("GET", f"/x{i % 2}", timeout_s=5, accept="text/plain")
            assert reply == http1.Reply(201, "Created", f"got /api/x{i % 2}".encode())
            assert 0 <= took < 5
        reply, _ = await c.request("POST", "/x0", timeout_s=5, body=b'{"a":1}')
        assert reply.content == b'{"a":1}'
    finally:
        c.close()
    assert srv.connections == 1
    assert srv.paths() == ["/api/x0", "/api/x1", "/api/x0", "/api/x0"]
    first, post = srv.requests[0].head, srv.requests[3].head
    assert first.startswith(b"GET /api/x0 HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % srv.port)
    assert (b"Accept: text/plain\r\nUser-Agent: embedops\r\nAuthorization: Bearer k\r\n"
            in first)
    assert b"Content-Length" not in first and b"Content-Type" not in first
    assert b"Accept: */*\r\n" in post and b"Content-Type: application/json\r\n" in post
    assert b"Content-Length: 7\r\n" in post


async def test_reason_phrase_falls_back_to_the_standard_one(serve) -> None:
    srv = await serve(lambda req, n: (404, b"nope", {"reason": ""}))
    c = http1.Client(srv.url)
    reply, _ = await c.request("GET", "/missing", timeout_s=5)
    c.close()
    assert (reply.status_code, reply.reason_phrase, reply.content) == (404, "Not Found", b"nope")


async def test_idle_connection_closed_by_peer_is_retried_once(serve) -> None:
    # every connection serves one request and then drops the next one unanswered
    srv = await serve(lambda req, n: "close" if n == 2 else (200, b"ok"))
    c = http1.Client(srv.url)
    try:
        for _ in range(3):
            reply, _ = await c.request("GET", "/", timeout_s=5)
            assert reply.content == b"ok"
    finally:
        c.close()
    assert srv.connections == 3 and len(srv.requests) == 5


async def test_drop_on_a_fresh_connection_is_not_retried(serve) -> None:
    srv = await serve(lambda req, n: "close")
    c = http1.Client(srv.url)
    with pytest.raises(http1.Disconnected) as e:
        await c.request("GET", "/", timeout_s=5)
    c.close()
    assert srv.connections == 1
    assert http1.describe(e.value, 5) == \
        "connection closed: Server disconnected without sending a response."


async def test_timeouts_are_exact_and_leak_no_connection(serve) -> None:
    hang = {"on": True}
    srv = await serve(lambda req, n: "hang" if hang["on"] else (200, b"ok"))
    c = http1.Client(srv.url, connections=1)
    try:
        for _ in range(3):  # more timeouts than connections: each one must be given back
            t = time.monotonic()
            with pytest.raises(TimeoutError) as e:
                await c.request("GET", "/", timeout_s=0.3)
            assert 0.28 <= time.monotonic() - t < 2.5
            assert http1.describe(e.value, 0.3) == "timeout after 0.3s"
        hang["on"] = False
        reply, _ = await c.request("GET", "/", timeout_s=5)
    finally:
        c.close()
    assert reply.content == b"ok" and srv.connections == 4


async def test_refused_and_bad_urls() -> None:
    c = http1.Client(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(http1.ConnectError) as e:
        await c.request("GET", "/", timeout_s=2)
    c.close()
    assert isinstance(e.value, http1.ERRORS)
    assert http1.describe(e.value, 2) == "connection refused"
    for bad in ("https://127.0.0.1:1", "127.0.0.1:80", "http:///x"):
        with pytest.raises(ValueError):
            http1.Client(bad)


async def test_close_keeps_the_client_usable(serve) -> None:
    srv = await serve(ok(b"ok"))
    c = http1.Client(srv.url)
    await c.request("GET", "/", timeout_s=5)
    c.close()
    reply, _ = await c.request("GET", "/", timeout_s=5)
    c.close()
    assert reply.content == b"ok" and srv.connections == 2


async def test_close_during_a_request_closes_its_connection_afterwards(serve) -> None:
    srv = await serve(lambda req, n: "slow")
    c = http1.Client(srv.url)
    pending = asyncio.ensure_future(c.request("GET", "/", timeout_s=5))
    await eventually(lambda: len(srv.requests) == 1, "request arrived")
    c.close()
    reply, _ = await pending
    assert reply.content == b"slow"
    await eventually(lambda: srv.closed == 1, "connection closed, not left idle")


def test_a_new_event_loop_gets_a_new_pool() -> None:
    """Connections belong to the loop that opened them (the TUI and tests run several)."""
    hits: list[int] = []

    async def once(client: http1.Client) -> None:
        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await r.readuntil(b"\r\n\r\n")
            hits.append(1)
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await w.drain()
            w.close()

        srv = await asyncio.start_server(handle, "127.0.0.1", port)
        try:
            reply, _ = await client.request("GET", "/", timeout_s=5)
            assert reply.content == b"ok"
        finally:
            client.close()
            srv.close()
            await srv.wait_closed()

    port = free_port()
    client = http1.Client(f"http://127.0.0.1:{port}")
    asyncio.run(once(client))
    asyncio.run(once(client))
    assert len(hits) == 2


# --------------------------------------------------------------------------- SimGpuSource

async def test_sim_gpu_source_keeps_one_connection_per_worker(serve) -> None:
    report = {"gpu_index": 0, "pid": 4242, "used_mib": 1000, "total_mib": 8000,
              "util_pct": 10.0, "temperature_c": 40.0, "power_w": 50.0}
    srv = await serve(ok(orjson.dumps(report)))
    bad = await serve(lambda req, n: (200, b"not json"))
    src = SimGpuSource([srv.url + "/", bad.url], timeout_s=2)
    for _ in range(3):
        sample = await src.sample()
        assert sample.error is None and [d.used_mib for d in sample.devices] == [1000]
        assert [(p.pid, p.used_mib) for p in sample.processes] == [(4242, 1000)]
    assert srv.connections == 1 and srv.paths() == ["/_sim/gpu"] * 3
    src.set_urls([srv.url])  # dropped: its connection is closed
    await eventually(lambda: bad.closed == 1, "dropped worker's connection closed")
    assert srv.closed == 0
    await src.close()
    await eventually(lambda: srv.closed == 1, "connections closed by close()")


# --------------------------------------------------------------------------- SglangRouter

def _prometheus_page(state: int) -> bytes:
    return (b"# TYPE smg_worker_cb_state gauge\n"
            b'smg_worker_cb_state{worker="http://127.0.0.1:1"} %d\n' % state +
            b"# TYPE smg_other_total counter\nsmg_other_total 7\n"
            b"# TYPE smg_router_request_duration_seconds histogram\n"
            b'smg_router_request_duration_seconds_bucket{le="0.1"} 3\n'
            b'smg_router_request_duration_seconds_bucket{le="+Inf"} 4\n'
            b"smg_router_request_duration_seconds_sum 0.5\n"
            b"smg_router_request_duration_seconds_count 4\n")


WORKERS = orjson.dumps({"workers": [{"id": "w1", "url": "http://127.0.0.1:1",
                                      "is_healthy": True, "load": 2}]})


async def _router(serve, tmp_path: Path,
                  cb_state: dict[str, int]) -> tuple[SglangRouter, Server, Server]:
    """An adapter whose router API and Prometheus port are scripted servers."""
    api = await serve(lambda req, n: (200, WORKERS) if req.path == "/workers" else (200, b"OK"))
    prom = await serve(lambda req, n: (200, _prometheus_page(cb_state["v"]),
                                       {"Content-Type": "text/plain; version=0.0.4"}))
    settings = RouterSettings(port=api.port, prometheus_port=prom.port)
    return SglangRouter(settings, tmp_path), api, prom


async def test_router_prometheus_page_is_read_at_most_once_per_max_age(serve, tmp_path) -> None:
    cb = {"v": 0}
    router, api, prom = await _router(serve, tmp_path, cb)
    try:
        listed = await router.list()
        assert [(w.url, w.healthy, w.load, w.circuit) for w in listed] == [
            ("http://127.0.0.1:1", True, 2, "closed")]
        cb["v"] = 1
        for _ in range(3):  # within 2 s: the cached page
            assert (await router.list())[0].circuit == "closed"
        assert len(prom.requests) == 1 and api.paths() == ["/workers"] * 4
        # the supervisor's fresh read each scrape cycle, which `list` then reuses
        snap = await router.prometheus(max_age_s=0, families=(REQUEST_DURATION,))
        assert snap is not None
        hist = snap.histogram(REQUEST_DURATION)
        assert hist is not None and hist.buckets == ((0.1, 3.0), (float("inf"), 4.0))
        assert not snap.has("smg_other_total")  # only the families asked for are parsed
        assert (await router.list())[0].circuit == "open"
        assert len(prom.requests) == 2
        # families not parsed yet: the cached text is parsed again, not fetched
        snap = await router.prometheus(max_age_s=60, families=("smg_other_total",))
        assert snap is not None and snap.value("smg_other_total") == 7.0
        assert len(prom.requests) == 2
        # `state` is an explicit question: read fresh
        cb["v"] = 2
        state = await router.state("http://127.0.0.1:1/")
        assert state is not None and state.circuit == "half_open"
        assert len(prom.requests) == 3 and prom.connections == 1
        assert await router._live() and api.requests[-1].path == "/liveness"
        assert api.connections == 1
    finally:
        await router.close()


async def test_router_unreachable_ports(serve, tmp_path) -> None:
    api = await serve(lambda req, n: (200, WORKERS))
    router = SglangRouter(RouterSettings(port=api.port, prometheus_port=free_port()), tmp_path)
    dead = SglangRouter(RouterSettings(port=free_port(), prometheus_port=free_port()), tmp_path)
    try:
        # no Prometheus page: circuits unknown, and a failed read is not cached
        assert await router.prometheus(max_age_s=60) is None
        assert router._page is None
        assert (await router.list())[0].circuit is None
        # nothing answers: transport errors become BalancerError, liveness False
        assert not await dead._live()
        with pytest.raises(BalancerError, match=r"^sglang-router GET /workers: connection refused$"):
            await dead.list()
        with pytest.raises(BalancerError, match=r"^sglang-router DELETE /workers/x: connection refused$"):
            await dead._request("DELETE", "/workers/x")
    finally:
        await router.close()
        await dead.close()
