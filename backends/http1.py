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
* `Client`: requests with a total deadline to one ``http://`` base URL over a `Pool`
  (the supervisor's periodic readers: worker probe and scrape, simulated GPU, router).
* Failures: `Http1Timeout` (deadline), `Disconnected` (closed before the response
  was complete; `got_bytes` says whether any of it had arrived), `BadResponse`
  (unparseable), and `OSError` from connecting (e.g. `ConnectionRefusedError`;
  `Client` wraps it in `ConnectError` and lets its deadline raise `TimeoutError`).
  `describe` words any of them.

Deadlines are on the `now` clock (`time.monotonic`; uvloop's ``loop.time()`` only moves
in whole milliseconds). Bodies delimited only by the server closing the connection are
not supported (SGLang, uvicorn and the routers always send a length or chunks).
"""

from __future__ import annotations

import asyncio
import errno
import select
import time
from collections import deque
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

import httptools

__all__ = [
    "ERRORS",
    "BadResponse",
    "Client",
    "ConnectError",
    "Connection",
    "Disconnected",
    "Http1Timeout",
    "Pool",
    "Reply",
    "build_request",
    "describe",
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
        self._closed = False

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
            if self._closed:  # in use when the pool was closed: nobody would reuse it
                self.discard(conn)
            else:
                self._idle.append(conn)

    def discard(self, conn: Connection) -> None:
        conn.close()
        self.open -= 1
        self._grow()

    def close(self) -> None:
        self._closed = True
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


class ConnectError(Exception):
    """`Client` could not connect; `error` is the OSError (e.g. ConnectionRefusedError)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


#: everything `Client.request` raises when no response came back (TimeoutError: its deadline)
ERRORS = (TimeoutError, Http1Timeout, Disconnected, BadResponse, ConnectError)

_REFUSED = f"[Errno {errno.ECONNREFUSED}]"


def describe(exc: BaseException, timeout_s: float) -> str:
    """A short text for one of `ERRORS` (``timeout after 2.0s``, ``connection refused``,
    ``connect error: ...``, ``connection closed: ...``), worded as httpx's failures are."""
    if isinstance(exc, (TimeoutError, Http1Timeout)):
        return f"timeout after {float(timeout_s)}s"
    if isinstance(exc, ConnectError):
        e = exc.error
        # asyncio says "Connect call failed" (or "Multiple exceptions: ..." for a name
        # with several addresses), not "refused"
        if isinstance(e, ConnectionRefusedError) or e.errno == errno.ECONNREFUSED \
                or _REFUSED in str(e) or "refused" in str(e).lower():
            return "connection refused"
        return f"connect error: {e}"
    if isinstance(exc, Disconnected):
        if exc.got_bytes:
            return "connection closed: peer closed connection without sending complete message body"
        return "connection closed: Server disconnected without sending a response."
    if isinstance(exc, BadResponse):
        return f"connection closed: {exc}"
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class Reply:
    """A response read by `Client` (the names are httpx.Response's)."""

    status_code: int
    reason_phrase: str
    """The server's reason phrase, else the standard one for the status."""
    content: bytes


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


#: cached request heads per `Client` (paths with ids, e.g. ``/workers/<uuid>``, vary)
_MAX_HEADS = 64


class Client:
    """Requests to one ``http://host:port[/prefix]`` over up to `connections` kept-alive
    connections (a `Pool`, re-created when the running event loop changes).

    `headers` go on every request (after ``Accept`` and ``User-Agent: embedops``).
    Usable again after `close`: the next request opens a new connection.
    Raises ValueError for a URL that is not plain ``http://`` with a host.
    """

    def __init__(self, base_url: str, *, headers: dict[str, str] | None = None,
                 connections: int = 1, connect_timeout_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        parts = urlsplit(self.base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"not a plain http:// URL: {base_url!r}")
        self._host = parts.hostname
        self._port = parts.port or 80
        self._prefix = parts.path
        self._headers = {"User-Agent": "embedops", **(headers or {})}
        self._connections = connections
        self._connect_timeout_s = connect_timeout_s
        self._pool: Pool | None = None
        self._heads: dict[tuple[str, str, str, str | None], bytes] = {}

    def close(self) -> None:
        """Close the kept-alive connections."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def _current_pool(self) -> Pool:
        loop = asyncio.get_running_loop()
        pool = self._pool
        if pool is None or pool.loop is not loop:
            if pool is not None:
                pool.close()
            pool = self._pool = Pool(loop, self._host, self._port, self._connections,
                                     connect_timeout_s=self._connect_timeout_s,
                                     max_connecting=self._connections)
        return pool

    def _bytes(self, method: str, path: str, accept: str, body: bytes | None,
               content_type: str) -> bytes:
        key = (method, path, accept, None if body is None else content_type)
        head = self._heads.get(key)
        if head is None:
            headers = {"Accept": accept, **self._headers}
            if body is not None:
                headers["Content-Type"] = content_type
            # everything up to the Content-Length line (added per request)
            head = build_request(method, self._host, self._port, self._prefix + path, headers)[:-2]
            if len(self._heads) >= _MAX_HEADS:
                self._heads.clear()
            self._heads[key] = head
        if body is None:
            return head + b"\r\n"
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body

    async def request(self, method: str, path: str, *, timeout_s: float,
                      body: bytes | None = None, accept: str = "*/*",
                      content_type: str = "application/json") -> tuple[Reply, float]:
        """One request with a total deadline of `timeout_s`; returns (reply, seconds taken).

        An idle connection that turns out to be closed (nothing came back) is replaced
        by a new one once, within that deadline. Raises one of `ERRORS`.
        """
        pool = self._current_pool()
        data = self._bytes(method, path, accept, body, content_type)
        start = time.perf_counter()
        # asyncio.timeout is the deadline; the pool's own (a second later) only bounds
        # its waits should the loop's clock and ours disagree
        pool_deadline = now() + timeout_s + 1.0
        async with asyncio.timeout(timeout_s):
            for attempt in range(2):
                try:
                    conn = await pool.acquire(pool_deadline)
                except OSError as e:
                    raise ConnectError(e) from e
                reused = conn.used > 0
                done = False
                try:
                    status, content = await conn.request(data)
                    done = True
                except Disconnected as e:
                    if attempt == 0 and reused and not e.got_bytes:
                        continue  # the server closed it while idle: once more on a new one
                    raise
                finally:
                    if done:
                        pool.release(conn)
                    else:
                        pool.discard(conn)  # a request may be outstanding on it
                reason = conn.reason.decode("latin-1") or _phrase(status)
                return Reply(status, reason, content), time.perf_counter() - start
        raise Disconnected(False)  # pragma: no cover - the loop returns or raises
