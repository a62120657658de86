"""Lean keep-alive HTTP/1.1 client: an asyncio protocol over httptools' C parser.

Shared by the load generator (backends/sim/loadgen.py: ≥ 1,000 req/s from one process)
and the supervisor's hot requests (backends/sglang_client.py: the embedding probe and the
``/metrics`` scrape), where httpx costs ~1 ms of CPU per request and this ~0.15 ms.

* `Connection`: one connection, one request outstanding at a time; `request(bytes)`
  returns a future of ``(status, body)`` (Content-Length or chunked bodies); the reason
  phrase of the last response is `Connection.reason`.
* `Pool`: up to `limit` connections to one host, opened on demand, reused LIFO; an idle
  connection the server already closed is dropped before it is used (`peer_closed`).
* `build_request`: the bytes of one request.
* Failures: `Http1Timeout` (deadline), `Disconnected` (closed before the response
  was complete; `got_bytes` says whether any of it had arrived), `BadResponse`
  (unparseable), and `OSError` from connecting (e.g. `ConnectionRefusedError`).

Deadlines are on the `now` clock (`time.monotonic`; uvloop's ``loop.time()`` only moves
in whole milliseconds). Bodies delimited only by the server closing the connection are
not supported (SGLang, uvicorn and the routers always send a length or chunks).
"""

from __future__ import annotations

import asyncio
import select
import time
from collections import deque
from typing import Any

import httptools

__all__ = [
    "BadResponse",
    "Connection",
    "Disconnected",
    "Http1Timeout",
    "Pool",
    "build_request",
    "now",
    "peer_closed",
    "until",
]

#: the clock of every deadline here
now = time.monotonic


def build_request(method: str, host: str, port: int, path: str, headers: dict[str, str] | None = None,
                  body: bytes | None = None) -> bytes:
    """The bytes of one HTTP/1.1 request (``Content-Length`` added when `body` is not None)."""
    hostport = host if port == 80 else f"{host}:{port}"
    lines = [f"{method} {path} HTTP/1.1", f"Host: {hostport}"]
    if headers:
        lines.extend(f"{k}: {v}" for k, v in headers.items())
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + body if body else head


class Http1Timeout(Exception):
    """The deadline passed before a connection or the response."""


class Disconnected(Exception):
    """The connection closed before the response was complete."""

    def __init__(self, got_bytes: bool) -> None:
        super().__init__("connection closed")
        self.got_bytes = got_bytes


class BadResponse(Exception):
    """The response could not be parsed as HTTP/1.1."""


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one request outstanding at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.used = 0
        self.last_done = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._body: list[bytes] = []
        self._status = 0
        self._got_bytes = False
        self.keep_alive = True
        #: reason phrase of the last response (``b"Not Found"``)
        self.reason = b""

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(BadResponse(f"unparseable HTTP response: {e}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(Disconnected(self._got_bytes))

    # httptools callbacks
    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self._parser.should_keep_alive()
        self.last_done = now()
        waiter = self._waiter
        self._waiter = None
        body = b"".join(self._body)
        self._body = []
        if waiter is not None and not waiter.done():
            waiter.set_result((self._status, body))

    # client side
    def _fail(self, exc: Exception) -> None:
        waiter = self._waiter
        self._waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def request(self, data: bytes) -> asyncio.Future[tuple[int, bytes]]:
        """Write one request; the future resolves to (status, body)."""
        waiter = self._loop.create_future()
        if self.closed or self.transport is None:
            waiter.set_exception(Disconnected(False))
            return waiter
        self._waiter = waiter
        self._got_bytes = False
        self.reason = b""
        self.used += 1
        self.transport.write(data)
        return waiter

    def expire(self) -> None:
        """Deadline reached with the response outstanding."""
        self._fail(Http1Timeout())

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


def peer_closed(conn: Connection) -> bool:
    """Whether the server already closed this idle keep-alive connection.

    An idle connection has no request outstanding, so anything readable on its socket is
    the server's FIN (nginx closes idle connections on reload) or a stray byte; either way
    it must not carry the next request. The event loop may not have run the protocol's
    ``connection_lost`` yet on a busy box, so ask the kernel (one zero-timeout poll,
    as urllib3 does before reusing a connection).
    """
    t = conn.transport
    if t is None or t.is_closing():
        return True
    sock = t.get_extra_info("socket")
    if sock is None:
        return False
    try:
        p = select.poll()
        p.register(sock.fileno(), select.POLLIN)
        return bool(p.poll(0))
    except (OSError, ValueError):
        return True


class Pool:
    """Up to `limit` connections to one host, opened on demand, reused LIFO.

    A request that finds no idle connection queues; the pool then opens connections
    (at most `max_connecting` at once) and hands each one, like every released one, to
    the oldest waiter. So a burst is served by whichever comes first, a freed connection
    or a new one, instead of a SYN storm of one new connection per queued request.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, host: str, port: int, limit: int,
                 *, connect_timeout_s: float, max_connecting: int = 8) -> None:
        self._loop = loop
        #: the event loop the connections belong to
        self.loop = loop
        self._host = host
        self._port = port
        self._limit = limit
        self._max_connecting = max_connecting
        self._connect_timeout_s = connect_timeout_s
        self._idle: list[Connection] = []
        self._waiters: deque[asyncio.Future[Connection]] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self.open = 0  # established or connecting
        self.connecting = 0
        self.opened = 0

    async def acquire(self, deadline: float) -> Connection:
        """An idle or new connection; `Http1Timeout` at `deadline` (`now` clock), the
        OSError of a failed connect. Give it back with `release` or `discard`."""
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and not peer_closed(conn):
                return conn
            conn.close()
            self.open -= 1
        waiter: asyncio.Future[Connection] = self._loop.create_future()
        self._waiters.append(waiter)
        self._grow()
        try:
            return await until(self._loop, waiter, deadline)
        except asyncio.CancelledError:
            # cancelled just after a connection was handed over: give it back (else the
            # pool would count it as open forever and, at its limit, starve)
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.release(waiter.result())
            raise

    def _pending(self) -> int:
        while self._waiters and self._waiters[0].done():
            self._waiters.popleft()
        return len(self._waiters)

    def _grow(self) -> None:
        while (self.connecting < self._max_connecting and self.open < self._limit
               and self._pending() > self.connecting):
            self.open += 1
            self.connecting += 1
            task = self._loop.create_task(self._connect())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _connect(self) -> None:
        try:
            _, conn = await asyncio.wait_for(
                self._loop.create_connection(lambda: Connection(self._loop), self._host, self._port),
                self._connect_timeout_s)
        except (OSError, TimeoutError) as e:
            self.connecting -= 1
            self.open -= 1
            # the oldest waiter learns why; the others keep their turn (and deadline)
            error: BaseException = e if isinstance(e, OSError) else Http1Timeout()
            self._hand(None, error)
            self._grow()
            return
        self.connecting -= 1
        self.opened += 1
        self.release(conn)

    def _hand(self, conn: Connection | None, error: BaseException | None = None) -> bool:
        while self._waiters:
            waiter = self._waiters.popleft()
            if waiter.done():
                continue
            if conn is not None:
                waiter.set_result(conn)
            else:
                waiter.set_exception(error or Http1Timeout())
            return True
        return False

    def release(self, conn: Connection) -> None:
        if conn.closed or not conn.keep_alive:
            self.discard(conn)
            return
        if not self._hand(conn):
            self._idle.append(conn)

    def discard(self, conn: Connection) -> None:
        conn.close()
        self.open -= 1
        self._grow()

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for conn in self._idle:
            conn.close()
        self._idle.clear()


async def until(loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Any], deadline: float) -> Any:
    """Await `fut`, failing it with Http1Timeout at `deadline` (on the `_now` clock)."""
    def expire() -> None:
        if not fut.done():
            fut.set_exception(Http1Timeout())

    handle = loop.call_later(max(0.0, deadline - now()), expire)
    try:
        return await fut
    finally:
        handle.cancel()
