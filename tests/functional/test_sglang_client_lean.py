"""SglangClient's lean keep-alive path (backends/http1.py) for the probe and /metrics,
against scripted HTTP servers on 127.0.0.1: reuse, chunked bodies, the API key, a
connection closed while idle, a hang, a drop mid-request, and no leak after timeouts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import orjson
import pytest

from backends.sglang_client import SglangClient, SglangError
from tests.conftest import free_port

DIM = 4
EMBEDDING = orjson.dumps({"object": "list", "data": [{"object": "embedding", "index": 0,
                                                       "embedding": [0.5, 0.25, 0.125, 1.0]}]})
METRICS = b"# TYPE sglang:num_running_reqs gauge\nsglang:num_running_reqs 3.0\n"


@dataclass
class Script:
    """What the server does; `requests` records (connection number, head) of each."""

    #: (connection number, request number on that connection, path) -> action:
    #: "ok", "chunked", "close" (close without answering), "hang", or an HTTP status
    action: Callable[[int, int, str], str | int] = lambda c, n, p: "ok"
    requests: list[tuple[int, bytes]] = field(default_factory=list)
    connections: int = 0


def _response(path: str, chunked: bool) -> bytes:
    body = METRICS if path == "/metrics" else EMBEDDING
    ctype = b"text/plain" if path == "/metrics" else b"application/json"
    if chunked:
        half = len(body) // 2
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:half], body[half:]))
        return (b"HTTP/1.1 200 OK\r\nContent-Type: " + ctype +
                b"\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n")
    return (b"HTTP/1.1 200 OK\r\nContent-Type: " + ctype +
            b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, Script]]:
    script = Script()
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        script.connections += 1
        conn_no = script.connections
        writers.append(writer)
        n = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                n += 1
                script.requests.append((conn_no, head))
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                if length:
                    await reader.readexactly(length)
                path = head.split(b" ")[1].decode()
                action = script.action(conn_no, n, path)
                if action == "close":
                    break
                if action == "hang":
                    await asyncio.sleep(60)
                    break
                if isinstance(action, int):
                    body = b'{"error":"Unauthorized"}'
                    writer.write(b"HTTP/1.1 %d Whatever\r\nContent-Length: %d\r\n\r\n"
                                 % (action, len(body)) + body)
                else:
                    writer.write(_response(path, action == "chunked"))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", script
    finally:
        for w in writers:
            w.close()
        srv.close()


async def test_probe_and_metrics_share_one_kept_alive_connection(server):
    url, script = server
    async with SglangClient(url, api_key="sk-lean-1", model="m") as c:
        for _ in range(3):
            r = await c.probe("hi", dimension=DIM, timeout_s=5)
            assert r.ok, r.error
            assert r.vector == (0.5, 0.25, 0.125, 1.0)
            assert "sglang:num_running_reqs 3.0" in await c.metrics_text(timeout_s=5)
    assert script.connections == 1 and len(script.requests) == 6
    for _, head in script.requests:
        assert b"Authorization: Bearer sk-lean-1\r\n" in head
    assert script.requests[0][1].startswith(b"POST /v1/embeddings HTTP/1.1\r\n")
    assert b"Accept: text/plain" in script.requests[1][1]


async def test_chunked_responses(server):
    url, script = server
    script.action = lambda c, n, p: "chunked"
    async with SglangClient(url) as c:
        r = await c.probe("hi", dimension=DIM, timeout_s=5)
        m = await c.metrics(timeout_s=5)
    assert r.ok and r.dim == DIM, r.error
    assert m.gauge("sglang:num_running_reqs") == 3.0


async def test_http_error_status_and_reason(server):
    url, script = server
    script.action = lambda c, n, p: 401
    async with SglangClient(url, api_key="sk-secret-9") as c:
        r = await c.probe("hi", dimension=DIM, timeout_s=5)
        with pytest.raises(SglangError) as e:
            await c.metrics_text(timeout_s=5)
    assert not r.ok and r.status == 401 and r.error == "HTTP 401: Unauthorized"
    assert e.value.status == 401 and "HTTP 401" in str(e.value)


async def test_connection_closed_while_idle_is_reopened_once(server):
    """The server drops a kept-alive connection as the next request arrives (the FIN
    raced the request): resent once on a new connection, no error."""
    url, script = server
    script.action = lambda c, n, p: "close" if n == 2 else "ok"
    async with SglangClient(url) as c:
        results = [await c.probe("hi", dimension=DIM, timeout_s=5) for _ in range(3)]
    assert all(r.ok for r in results), [r.error for r in results]
    # conn 1: ok, dropped; conn 2: ok, dropped; conn 3: ok
    assert script.connections == 3


async def test_drop_on_a_fresh_connection_is_an_error_not_retried(server):
    url, script = server
    script.action = lambda c, n, p: "close"
    async with SglangClient(url) as c:
        r = await c.probe("hi", dimension=DIM, timeout_s=5)
        with pytest.raises(SglangError) as e:
            await c.metrics_text(timeout_s=5)
    assert not r.ok and r.status is None
    assert r.error == "connection closed: Server disconnected without sending a response."
    assert "GET /metrics: connection closed" in str(e.value)
    assert script.connections == 2


async def test_hang_times_out_exactly_and_the_next_probe_uses_a_new_connection(server):
    url, script = server
    hang = {"on": True}
    script.action = lambda c, n, p: "hang" if hang["on"] else "ok"
    async with SglangClient(url) as c:
        for _ in range(3):  # more timeouts than the pool has connections: none may leak
            t = time.monotonic()
            r = await c.probe("hi", dimension=DIM, timeout_s=0.3)
            took = time.monotonic() - t
            assert not r.ok and r.status is None and r.error == "timeout after 0.3s"
            assert 0.28 <= took < 2.5 and 0.28 <= r.latency_s < 2.5
        with pytest.raises(SglangError, match=r"^GET /metrics: timeout after 0.3s$"):
            await c.metrics_text(timeout_s=0.3)
        hang["on"] = False
        r = await c.probe("hi", dimension=DIM, timeout_s=5)
    assert r.ok, r.error
    assert script.connections == 5


async def test_refused_and_concurrent_requests():
    async with SglangClient(f"http://127.0.0.1:{free_port()}") as c:
        r = await c.probe("hi", dimension=DIM, timeout_s=2)
        with pytest.raises(SglangError) as e:
            await c.metrics_text(timeout_s=2)
    assert r.error == "connection refused" and r.status is None
    assert str(e.value) == "GET /metrics: connection refused"


async def test_overlapping_probe_and_scrape_use_two_connections(server):
    url, script = server
    async with SglangClient(url) as c:
        for _ in range(3):
            r, text = await asyncio.gather(c.probe("hi", dimension=DIM, timeout_s=5),
                                           c.metrics_text(timeout_s=5))
            assert r.ok and text
    assert script.connections == 2 and len(script.requests) == 6


def test_finite_floats_fast_and_slow_paths():
    """The C-speed path for plain floats/ints and the per-value path agree on the rules:
    bool, None and strings are not numbers, NaN/inf and huge integers are not finite."""
    import math

    from backends.sglang_client import _finite_floats

    assert _finite_floats([1, 2.5]) == ((1.0, 2.5), True)
    assert _finite_floats([]) == ((), True)
    for bad in (float("nan"), float("inf"), True, None, "1", 10**400):
        vec, finite = _finite_floats([0.5, bad])
        assert finite is False and vec[0] == 0.5 and len(vec) == 2, bad
    vec, _ = _finite_floats([0.5, True, None])
    assert math.isnan(vec[1]) and math.isnan(vec[2])
