"""The control socket: the supervisor's JSON-over-HTTP/1.1 API on a Unix domain socket.

Server side, `ControlServer` is a small asyncio HTTP/1.1 server (h11 for the protocol)
that knows each connection's peer from ``SO_PEERCRED`` and refuses other users. Routes
are registered as ``server.route("POST", "/v1/workers/{name}/drain", handler)``;
handlers take a `ControlRequest` and return a `ControlResponse`, or any JSON-able value
(sent as 200). Errors are JSON ``{"error": {"code", "message"}}``, never a traceback.

Client side, `ControlClient` (async) and `SyncControlClient` (for the CLI) wrap httpx
on the same socket, raise `ControlError` for error replies and `SupervisorNotRunning`
when nothing answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import errno
import json
import logging
import math
import os
import pwd
import re
import socket
import stat
import struct
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    Mapping,
)
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote

import h11
import httpx

log = logging.getLogger(__name__)

MAX_SOCKET_PATH_BYTES = 107
"""Longest Unix socket path Linux accepts (``sun_path`` is 108 bytes with the NUL)."""

_BASE_URL = "http://embedops"  # the host part is only a label on a Unix socket
_JSON = "application/json"
_NDJSON = "application/x-ndjson"
_REQUIRED: Any = object()
_DEFAULT: Any = object()  # "the client's default timeout" (None means no timeout)


# ---------------------------------------------------------------------------- errors


class ControlError(Exception):
    """An error reply: HTTP status, a stable machine code, a human message.

    Raised by handlers to answer with that error, and by the clients when the
    supervisor answered with one.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message

    def to_json(self) -> dict[str, Any]:
        """The wire form, ``{"error": {"code": ..., "message": ...}}``."""
        return {"error": {"code": self.code, "message": self.message}}

    @classmethod
    def bad_request(cls, message: str, code: str = "bad_request") -> ControlError:
        """400: malformed or invalid arguments (the message names the field)."""
        return cls(400, code, message)

    @classmethod
    def forbidden(cls, message: str, code: str = "forbidden") -> ControlError:
        """403: the caller may not do this (other user, read-only client)."""
        return cls(403, code, message)

    @classmethod
    def not_found(cls, message: str, code: str = "not_found") -> ControlError:
        """404: unknown route, worker, alert..."""
        return cls(404, code, message)

    @classmethod
    def conflict(cls, message: str, code: str = "conflict") -> ControlError:
        """409: e.g. another action is already running on that worker."""
        return cls(409, code, message)


class SupervisorNotRunning(Exception):
    """Nothing answers on the control socket (missing, stale, or the connection died)."""

    def __init__(self, socket_path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(f"no supervisor answering on {socket_path}: {reason}")
        self.socket_path = str(socket_path)
        self.reason = reason


class ControlSocketError(RuntimeError):
    """The server cannot (safely) create its socket: path too long, unsafe directory..."""


class SocketInUse(ControlSocketError):
    """A live server already answers on the socket path (another supervisor)."""


# ---------------------------------------------------------------------------- peers


@dataclasses.dataclass(frozen=True)
class PeerCred:
    """Credentials of the process at the other end of a Unix socket (``SO_PEERCRED``)."""

    pid: int
    uid: int
    gid: int

    @property
    def user(self) -> str:
        """The uid's login name, or the uid as text when it has none."""
        return user_name(self.uid)


def user_name(uid: int) -> str:
    """Login name of `uid`, or ``str(uid)`` when the passwd database has none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def peer_credentials(sock: socket.socket) -> PeerCred:
    """Read ``SO_PEERCRED`` (pid, uid, gid) of a connected Unix socket."""
    fmt = "3i"
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize(fmt))
    pid, uid, gid = struct.unpack(fmt, raw)
    return PeerCred(pid=pid, uid=uid, gid=gid)


_READ_METHODS = frozenset({"GET", "HEAD"})


def authorize(peer_uid: int, method: str, *, owner_uid: int,
              allowed_uids: frozenset[int] = frozenset(),
              read_only_uids: frozenset[int] = frozenset()) -> bool:
    """Decide whether `peer_uid` may call `method`; return True when it is read-only.

    The owner and root are always allowed everything, `allowed_uids` too;
    `read_only_uids` may only read (GET/HEAD). Anyone else gets a 403 `ControlError`.
    """
    if peer_uid in (0, owner_uid) or peer_uid in allowed_uids:
        return False
    if peer_uid in read_only_uids:
        if method.upper() in _READ_METHODS:
            return True
        raise ControlError.forbidden(
            f"uid {peer_uid} ({user_name(peer_uid)}) is a read-only client", code="read_only")
    raise ControlError.forbidden(
        f"uid {peer_uid} ({user_name(peer_uid)}) may not use this supervisor "
        f"(owned by uid {owner_uid})")


# ---------------------------------------------------------------------------- requests


@dataclasses.dataclass(frozen=True)
class ControlRequest:
    """One parsed request, as a handler sees it."""

    method: str
    path: str
    params: Mapping[str, str]
    """Path parameters, e.g. ``{"name": "w1"}`` for ``/v1/workers/{name}/drain``."""
    query: Mapping[str, str]
    """Query string (last value wins for repeated keys)."""
    body: Any
    """The decoded JSON body, or None when the request had none."""
    peer: PeerCred
    """Who is calling (``SO_PEERCRED``): log ``peer.uid`` in the audit log."""
    read_only: bool = False
    """True when the caller is a read-only client (it only gets here for GETs)."""
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def arg(self, name: str, kind: type | tuple[type, ...] = object, default: Any = _REQUIRED,
            *, min: float | None = None, max: float | None = None) -> Any:
        """A field of the JSON-object body, type- and range-checked (400 names the field).

        `kind` float accepts ints too; bool is never accepted as an int.
        """
        body = self.body if self.body is not None else {}
        if not isinstance(body, dict):
            raise ControlError.bad_request("request body must be a JSON object", code="bad_args")
        value = body.get(name)
        if value is None:
            if default is _REQUIRED:
                raise ControlError.bad_request(f"missing field {name!r}", code="bad_args")
            return default
        return _check_value(name, value, kind, min, max)

    def query_int(self, name: str, default: int, *, min: int | None = None,
                  max: int | None = None) -> int:
        """An integer query parameter with bounds (400 when malformed or out of range)."""
        raw = self.query.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ControlError.bad_request(
                f"query parameter {name!r} must be an integer, got {raw!r}", code="bad_args") from None
        return _check_value(name, value, int, min, max)

    def query_float(self, name: str, default: float, *, min: float | None = None,
                    max: float | None = None) -> float:
        """A finite float query parameter with bounds."""
        raw = self.query.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ControlError.bad_request(
                f"query parameter {name!r} must be a number, got {raw!r}", code="bad_args") from None
        return _check_value(name, value, float, min, max)

    def query_bool(self, name: str, default: bool = False) -> bool:
        """A boolean query parameter: 1/true/yes/on or 0/false/no/off."""
        raw = self.query.get(name)
        if raw is None or raw == "":
            return default
        low = raw.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ControlError.bad_request(
            f"query parameter {name!r} must be a boolean (1/0), got {raw!r}", code="bad_args")


def _check_value(name: str, value: Any, kind: type | tuple[type, ...],
                 lo: float | None, hi: float | None) -> Any:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if kinds != (object,):
        accepted = tuple(kinds) + ((int,) if float in kinds else ())
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, accepted):
            names = " or ".join(k.__name__ for k in kinds)
            raise ControlError.bad_request(
                f"field {name!r} must be {names}, got {type(value).__name__}", code="bad_args")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if float in kinds and int not in kinds:
            value = float(value)
        if isinstance(value, float) and not math.isfinite(value):
            raise ControlError.bad_request(f"field {name!r} must be finite", code="bad_args")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ControlError.bad_request(
                f"field {name!r} = {value} is out of range [{lo}, {hi}]", code="bad_args")
    return value


@dataclasses.dataclass
class ControlResponse:
    """What a handler returns: a JSON body, or a stream of JSON lines."""

    status: int = 200
    body: Any = None
    lines: AsyncIterable[Any] | None = None
    """When set, the response is a stream: each item is sent as one JSON line."""

    @classmethod
    def json(cls, body: Any, status: int = 200) -> ControlResponse:
        """A JSON reply (e.g. ``ControlResponse.json({...}, status=202)``)."""
        return cls(status=status, body=body)

    @classmethod
    def stream(cls, items: AsyncIterable[Any], status: int = 200) -> ControlResponse:
        """A streamed reply (``application/x-ndjson``) that ends when `items` ends.

        If the client goes away, the iterator is cancelled/closed, so a follow-style
        generator's ``finally`` runs. An exception inside it is sent as a last
        ``{"error": ...}`` line.
        """
        return cls(status=status, lines=items)

    @classmethod
    def error(cls, status: int, code: str, message: str) -> ControlResponse:
        """An error reply in the standard shape."""
        return cls(status=status, body=ControlError(status, code, message).to_json())


Handler = Callable[[ControlRequest], Awaitable[Any]]


def json_default(obj: Any) -> Any:
    """JSON encoding for the types handlers naturally return (dataclasses, enums, paths, sets)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, default=json_default, ensure_ascii=False,
                      separators=(",", ":")).encode()


@dataclasses.dataclass(frozen=True)
class _Route:
    method: str
    pattern: str
    regex: re.Pattern[str]
    handler: Handler


_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _compile(pattern: str) -> re.Pattern[str]:
    if not pattern.startswith("/"):
        raise ValueError(f"route pattern must start with '/': {pattern!r}")
    out, pos = [], 0
    for m in _PARAM.finditer(pattern):
        out.append(re.escape(pattern[pos:m.start()]))
        out.append(f"(?P<{m.group(1)}>[^/]+)")
        pos = m.end()
    out.append(re.escape(pattern[pos:]))
    return re.compile("".join(out) + r"\Z")


class _Reject(Exception):
    """The request cannot be read; answer with this status and close."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.error = ControlError(status, code, message)


# ---------------------------------------------------------------------------- server


class ControlServer:
    """HTTP/1.1 + JSON control API on a Unix socket, with per-connection peer checks.

    The socket is created mode 0600 (0666 when other uids are configured: then the
    ``SO_PEERCRED`` check is the gate) in a directory created 0700 (0711). A stale
    socket left by a dead server is replaced; a live one raises `SocketInUse`.
    """

    def __init__(self, socket_path: str | os.PathLike[str], *,
                 allowed_uids: set[int] | frozenset[int] | None = None,
                 read_only_uids: set[int] | frozenset[int] | None = None,
                 owner_uid: int | None = None,
                 max_body_bytes: int = 1 << 20,
                 max_header_bytes: int = 16 << 10,
                 request_timeout_s: float = 10.0,
                 idle_timeout_s: float = 120.0,
                 max_connections: int = 64) -> None:
        """Configure, without touching the filesystem (see `start`).

        `allowed_uids`: uids with full access besides the owner (default: the current
        effective uid) and root. `read_only_uids`: uids that may only GET.
        """
        self._path = Path(socket_path)
        self.owner_uid = os.geteuid() if owner_uid is None else owner_uid
        self.allowed_uids = frozenset(allowed_uids or ())
        self.read_only_uids = frozenset(read_only_uids or ()) - self.allowed_uids
        extra = (self.allowed_uids | self.read_only_uids) - {0, self.owner_uid}
        self.socket_mode = 0o666 if extra else 0o600
        self.dir_mode = 0o711 if extra else 0o700
        self._max_body = max_body_bytes
        self._max_header = max_header_bytes
        self._request_timeout = request_timeout_s
        self._idle_timeout = idle_timeout_s
        self._max_connections = max_connections
        self._routes: list[_Route] = []
        self._server: asyncio.AbstractServer | None = None
        self._inode: tuple[int, int] | None = None
        self._conns: set[asyncio.Task[Any]] = set()

    @property
    def socket_path(self) -> Path:
        """Where the socket lives."""
        return self._path

    @property
    def serving(self) -> bool:
        """True between `start` and `stop`."""
        return self._server is not None

    @property
    def connection_count(self) -> int:
        """Connections open right now."""
        return len(self._conns)

    def route(self, method: str, pattern: str,
              handler: Handler | None = None) -> Any:
        """Register `handler` for `method` + `pattern` (``{name}`` = one path segment).

        Usable directly, ``server.route("GET", "/v1/status", h)``, or as a decorator,
        ``@server.route("GET", "/v1/status")``.
        """
        def add(h: Handler) -> Handler:
            self._routes.append(_Route(method.upper(), pattern, _compile(pattern), h))
            return h
        return add if handler is None else add(handler)

    # -- lifecycle

    async def start(self) -> None:
        """Create the socket and start accepting connections."""
        if self._server is not None:
            raise RuntimeError("control server already started")
        path = self._path
        check_socket_path(path)
        _ensure_socket_dir(path.parent, self.dir_mode)
        if await _socket_answers(path):
            raise SocketInUse(
                f"another supervisor is already answering on {path}; "
                f"stop it first (embedops down) or use another state directory")
        # Bind under a temporary name with a umask that leaves no wider window, then
        # rename over the final path: a stale socket is replaced atomically.
        tmp = path.parent / f".{os.getpid():x}.sock"
        check_socket_path(tmp)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            old_umask = os.umask(0o777 & ~self.socket_mode)
            try:
                sock.bind(os.fspath(tmp))
            finally:
                os.umask(old_umask)
            os.chmod(tmp, self.socket_mode)
            sock.listen(128)
            sock.setblocking(False)
            os.rename(tmp, path)
            st = os.stat(path)
            self._inode = (st.st_dev, st.st_ino)
            self._server = await asyncio.start_unix_server(self._on_connection, sock=sock)
        except BaseException:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        log.info("control socket listening on %s (mode %o)", path, self.socket_mode)

    async def stop(self) -> None:
        """Stop accepting, end open connections and streams, remove the socket file.

        Handlers still running are cancelled. Called from inside a handler (a shutdown
        route), that handler's own connection is left to finish its reply.
        """
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        tasks = [t for t in self._conns if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), timeout=5.0)
        # Only remove the file if it is still ours (a successor may have replaced it).
        try:
            st = os.stat(self._path)
            if (st.st_dev, st.st_ino) == self._inode:
                os.unlink(self._path)
        except FileNotFoundError:
            pass
        self._inode = None

    async def __aenter__(self) -> ControlServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- connections

    async def _on_connection(self, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            if len(self._conns) > self._max_connections:
                await self._send_error_and_close(reader, writer, ControlError(
                    503, "busy", "too many control connections"))
                return
            sock = writer.get_extra_info("socket")
            peer = peer_credentials(sock)
            await self._serve(reader, writer, peer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("control connection failed")
        finally:
            self._conns.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), timeout=1.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     peer: PeerCred) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self._max_header)
        while True:
            try:
                got = await self._read_request(conn, reader)
            except _Reject as r:
                await self._send_error_and_close(reader, writer, r.error)
                return
            if got is None:
                return
            request, body = got
            resp = await self._dispatch(request, body, peer)
            if request.method == b"HEAD":  # headers only; never start a stream
                if resp.lines is not None:
                    with contextlib.suppress(Exception):
                        await resp.lines.aclose()  # type: ignore[attr-defined]
                    resp = dataclasses.replace(resp, lines=None)
                await self._send_json(conn, writer, resp, head_only=True)
            elif resp.lines is not None:
                await self._send_stream(conn, reader, writer, resp)
                return
            else:
                await self._send_json(conn, writer, resp)
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _read_request(self, conn: h11.Connection, reader: asyncio.StreamReader
                            ) -> tuple[h11.Request, bytes] | None:
        request: h11.Request | None = None
        body = bytearray()
        deadline: float | None = None  # set once the first byte of a request arrives
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as e:
                raise _Reject(e.error_status_hint, "bad_http", str(e)) from None
            if event is h11.NEED_DATA:
                if deadline is None:
                    timeout = self._idle_timeout
                else:
                    timeout = deadline - time.monotonic()
                    if timeout <= 0:
                        raise _Reject(408, "timeout", "request not received in time")
                try:
                    data = await asyncio.wait_for(reader.read(65536), timeout)
                except TimeoutError:
                    if deadline is None:
                        return None  # idle keep-alive connection: just close it
                    raise _Reject(408, "timeout", "request not received in time") from None
                if deadline is None and data:
                    deadline = time.monotonic() + self._request_timeout
                conn.receive_data(data)
            elif isinstance(event, h11.Request):
                request = event
                # h11 bounds only an *incomplete* head; bound a complete one too.
                head = len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
                if head > self._max_header:
                    raise _Reject(431, "headers_too_large",
                                  f"request head over {self._max_header} bytes")
                length = _header(list(event.headers), b"content-length")
                if length is not None and length.isdigit() and int(length) > self._max_body:
                    raise _Reject(413, "too_large",
                                  f"request body over {self._max_body} bytes")
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > self._max_body:
                    raise _Reject(413, "too_large", f"request body over {self._max_body} bytes")
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                return request, bytes(body)
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None

    async def _dispatch(self, request: h11.Request, body: bytes,
                        peer: PeerCred) -> ControlResponse:
        method = request.method.decode("ascii", "replace").upper()
        target = request.target.decode("latin-1")
        path, _, query_string = target.partition("?")
        try:
            read_only = authorize(peer.uid, method, owner_uid=self.owner_uid,
                                  allowed_uids=self.allowed_uids,
                                  read_only_uids=self.read_only_uids)
            route, params = self._match("GET" if method == "HEAD" else method, path)
            payload: Any = None
            if body.strip():
                try:
                    payload = json.loads(body)
                except ValueError as e:
                    raise ControlError.bad_request(f"body is not valid JSON: {e}",
                                                   code="bad_json") from None
            req = ControlRequest(
                method=method, path=path, params=params,
                query=dict(parse_qsl(query_string, keep_blank_values=True)),
                body=payload, peer=peer, read_only=read_only,
                headers={k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers})
            result = await route.handler(req)
            resp = result if isinstance(result, ControlResponse) else ControlResponse.json(result)
            if resp.lines is None:
                _dumps(resp.body)  # fail here (as a 500) rather than while sending
            return resp
        except ControlError as e:
            return ControlResponse(status=e.status, body=e.to_json())
        except Exception as e:
            log.exception("control handler for %s %s failed", method, path)
            return ControlResponse.error(500, "internal", f"{type(e).__name__}: {e}")

    def _match(self, method: str, path: str) -> tuple[_Route, dict[str, str]]:
        allowed: set[str] = set()
        for r in self._routes:
            m = r.regex.match(path)
            if m is None:
                continue
            if r.method == method:
                return r, {k: unquote(v) for k, v in m.groupdict().items()}
            allowed.add(r.method)
        if allowed:
            raise ControlError(405, "method_not_allowed",
                               f"{method} not allowed on {path} (allowed: {', '.join(sorted(allowed))})")
        raise ControlError.not_found(f"no such endpoint: {method} {path}", code="unknown_route")

    async def _send_json(self, conn: h11.Connection, writer: asyncio.StreamWriter,
                         resp: ControlResponse, *, head_only: bool = False) -> None:
        data = b"" if resp.body is None and resp.status == 204 else _dumps(resp.body) + b"\n"
        headers = [("content-type", _JSON), ("content-length", str(len(data)))]
        writer.write(conn.send(h11.Response(status_code=resp.status, headers=headers,
                                            reason=_reason(resp.status))))
        if data and not head_only:
            writer.write(conn.send(h11.Data(data=data)))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()

    async def _send_error_and_close(self, reader: asyncio.StreamReader,
                                    writer: asyncio.StreamWriter, err: ControlError) -> None:
        data = _dumps(err.to_json()) + b"\n"
        head = (f"HTTP/1.1 {err.status} {_reason(err.status)}\r\ncontent-type: {_JSON}\r\n"
                f"content-length: {len(data)}\r\nconnection: close\r\n\r\n").encode()
        # Written raw: h11 refuses to send a response in some broken-request states.
        writer.write(head + data)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        await self._linger(reader, writer)

    async def _linger(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Half-close, then discard what the client still sends (bounded) before closing.

        Closing a socket with unread input makes the kernel reset the connection, and
        the client may then lose the error reply it has not read yet.
        """
        with contextlib.suppress(OSError, RuntimeError):
            writer.write_eof()
        deadline = time.monotonic() + 1.0
        budget = self._max_body + self._max_header
        with contextlib.suppress(OSError, TimeoutError):
            while budget > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                chunk = await asyncio.wait_for(reader.read(65536), left)
                if not chunk:
                    break
                budget -= len(chunk)

    async def _send_stream(self, conn: h11.Connection, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter, resp: ControlResponse) -> None:
        lines = resp.lines
        assert lines is not None
        headers = [("content-type", _NDJSON), ("connection", "close"),
                   ("cache-control", "no-store")]
        writer.write(conn.send(h11.Response(status_code=resp.status, headers=headers,
                                            reason=_reason(resp.status))))
        await writer.drain()

        async def pump() -> None:
            try:
                async for item in lines:
                    writer.write(conn.send(h11.Data(data=_dumps(item) + b"\n")))
                    await writer.drain()
            except (ConnectionError, asyncio.CancelledError):
                raise
            except Exception as e:
                log.exception("control stream failed")
                err = ControlError(500, "stream_failed", f"{type(e).__name__}: {e}")
                writer.write(conn.send(h11.Data(data=_dumps(err.to_json()) + b"\n")))
            writer.write(conn.send(h11.EndOfMessage()))
            await writer.drain()

        async def client_gone() -> None:
            # The request is complete, so the client has nothing more to send: any
            # read that returns means it closed (or broke protocol); stop streaming.
            while True:
                if not await reader.read(4096):
                    return

        pumping = asyncio.create_task(pump())
        watching = asyncio.create_task(client_gone())
        try:
            await asyncio.wait({pumping, watching}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (pumping, watching):
                t.cancel()
            await asyncio.gather(pumping, watching, return_exceptions=True)
            aclose = getattr(lines, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for k, v in headers:
        if k.lower() == name:
            return v.decode("latin-1").strip()
    return None


def _reason(status: int) -> str:
    from http import HTTPStatus
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def check_socket_path(path: str | os.PathLike[str]) -> None:
    """Raise `ControlSocketError` when `path` is too long for a Unix socket."""
    n = len(os.fsencode(path))
    if n > MAX_SOCKET_PATH_BYTES:
        raise ControlSocketError(
            f"control socket path is {n} bytes, over the {MAX_SOCKET_PATH_BYTES}-byte limit "
            f"of Unix sockets: {os.fspath(path)} (use a shorter state directory)")


def _ensure_socket_dir(directory: Path, mode: int) -> None:
    """Create the socket's directory with `mode`, or check an existing one is safe.

    An existing directory is never chmod-ed (it may be shared, like /tmp); it must be
    owned by us or root, and when not sticky it must not be writable by others
    (they could swap the socket for their own).
    """
    try:
        directory.mkdir(mode=mode, parents=True)
        os.chmod(directory, mode)  # mkdir's mode is filtered by the umask
        return
    except FileExistsError:
        pass
    st = os.stat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise ControlSocketError(f"{directory} is not a directory")
    if st.st_uid not in (os.geteuid(), 0):
        raise ControlSocketError(
            f"socket directory {directory} is owned by uid {st.st_uid}, not by us")
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise ControlSocketError(
            f"socket directory {directory} is writable by other users "
            f"(mode {stat.S_IMODE(st.st_mode):o}); refusing to put the control socket there")


async def _socket_answers(path: Path, timeout: float = 2.0) -> bool:
    """True when a server accepts connections on the socket at `path`.

    False when there is no file or a stale one (connection refused); other states
    (not a socket, no permission) raise `ControlSocketError` rather than guessing.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlSocketError(f"{path} exists and is not a socket; refusing to replace it")
    try:
        _, writer = await asyncio.wait_for(asyncio.open_unix_connection(os.fspath(path)), timeout)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except TimeoutError:
        return True  # something holds it and is slow: do not steal it
    except OSError as e:
        if e.errno == errno.ECONNREFUSED:
            return False
        raise ControlSocketError(f"cannot check existing socket {path}: {e}") from e
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return True


# ---------------------------------------------------------------------------- clients


def _root_oserror(exc: BaseException) -> OSError | None:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError):
            return cur
        cur = cur.__cause__ or cur.__context__
    return None


def _transport_error(exc: httpx.TransportError, socket_path: str) -> Exception:
    if isinstance(exc, httpx.TimeoutException):
        return ControlError(504, "timeout", f"supervisor did not answer in time ({exc!r})")
    root = _root_oserror(exc)
    if isinstance(root, PermissionError):
        return ControlError.forbidden(
            f"not allowed to connect to {socket_path}: {root.strerror}", code="permission_denied")
    if isinstance(root, FileNotFoundError):
        return SupervisorNotRunning(socket_path, "no control socket")
    if isinstance(root, ConnectionRefusedError):
        return SupervisorNotRunning(socket_path, "connection refused (stale socket)")
    if isinstance(exc, httpx.ConnectError):
        return SupervisorNotRunning(socket_path, str(exc) or type(exc).__name__)
    return SupervisorNotRunning(socket_path, f"connection lost: {exc or type(exc).__name__}")


def _error_from(status: int, content: bytes) -> ControlError:
    try:
        err = json.loads(content)["error"]
        return ControlError(status, str(err["code"]), str(err["message"]))
    except (ValueError, KeyError, TypeError):
        return ControlError(status, "http_error", content[:500].decode("utf-8", "replace"))


def _decode(resp: httpx.Response) -> Any:
    if resp.status_code >= 400:
        raise _error_from(resp.status_code, resp.content)
    if not resp.content.strip():
        return None
    return resp.json()


def _stream_item(line: str) -> Any:
    item = json.loads(line)
    if isinstance(item, dict) and set(item) == {"error"} and isinstance(item["error"], dict):
        err = item["error"]
        raise ControlError(500, str(err.get("code", "stream_failed")), str(err.get("message", "")))
    return item


class ControlClient:
    """Async client of the control API (for the TUI).

    ``await client.get("/v1/status")``; ``async for item in client.stream(path)``.
    Raises `ControlError` for error replies, `SupervisorNotRunning` when nothing answers.
    """

    def __init__(self, socket_path: str | os.PathLike[str], *, timeout: float = 10.0) -> None:
        self.socket_path = os.fspath(socket_path)
        self._timeout = timeout
        # verify=False: plain HTTP on a local socket; it skips building a TLS context
        # (~20 ms of CA loading per client, noticeable for every CLI command).
        self._http = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=self.socket_path, verify=False),
            base_url=_BASE_URL, timeout=timeout, verify=False)

    async def request(self, method: str, path: str, *, json: Any = None,
                      params: Mapping[str, Any] | None = None,
                      timeout: float | None = _DEFAULT) -> tuple[int, Any]:
        """Send one request; return (status, decoded body) for 2xx, else raise.

        `timeout` defaults to the client's; None waits without limit (``?wait=1``).
        """
        if not os.path.exists(self.socket_path):
            raise SupervisorNotRunning(self.socket_path, "no control socket")
        try:
            resp = await self._http.request(
                method, path, json=json, params=params,
                timeout=self._timeout if timeout is _DEFAULT else timeout)
        except httpx.TransportError as e:
            raise _transport_error(e, self.socket_path) from e
        return resp.status_code, _decode(resp)

    async def get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        """GET `path` and return the decoded JSON body."""
        return (await self.request("GET", path, params=params))[1]

    async def post(self, path: str, json: Any = None, params: Mapping[str, Any] | None = None,
                   *, timeout: float | None = _DEFAULT) -> Any:
        """POST `json` to `path` and return the decoded JSON body."""
        return (await self.request("POST", path, json=json, params=params, timeout=timeout))[1]

    async def delete(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        """DELETE `path` and return the decoded JSON body."""
        return (await self.request("DELETE", path, params=params))[1]

    async def stream(self, path: str, params: Mapping[str, Any] | None = None
                     ) -> AsyncIterator[Any]:
        """GET a streamed endpoint and yield its JSON lines until the server ends it.

        No read timeout applies while streaming (a follow may be quiet for long).
        """
        if not os.path.exists(self.socket_path):
            raise SupervisorNotRunning(self.socket_path, "no control socket")
        timeout = httpx.Timeout(self._timeout, read=None)
        try:
            async with self._http.stream("GET", path, params=params, timeout=timeout) as resp:
                if resp.status_code >= 400:
                    raise _error_from(resp.status_code, await resp.aread())
                async for line in resp.aiter_lines():
                    if line.strip():
                        yield _stream_item(line)
        except httpx.TransportError as e:
            raise _transport_error(e, self.socket_path) from e

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> ControlClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class SyncControlClient:
    """Blocking client of the control API (for the CLI); same methods as `ControlClient`."""

    def __init__(self, socket_path: str | os.PathLike[str], *, timeout: float = 10.0) -> None:
        self.socket_path = os.fspath(socket_path)
        self._timeout = timeout
        self._http = httpx.Client(  # verify=False: see ControlClient
            transport=httpx.HTTPTransport(uds=self.socket_path, verify=False),
            base_url=_BASE_URL, timeout=timeout, verify=False)

    def request(self, method: str, path: str, *, json: Any = None,
                params: Mapping[str, Any] | None = None,
                timeout: float | None = _DEFAULT) -> tuple[int, Any]:
        """Send one request; return (status, decoded body) for 2xx, else raise.

        `timeout` defaults to the client's; None waits without limit (``?wait=1``).
        """
        if not os.path.exists(self.socket_path):
            raise SupervisorNotRunning(self.socket_path, "no control socket")
        try:
            resp = self._http.request(method, path, json=json, params=params,
                                      timeout=self._timeout if timeout is _DEFAULT else timeout)
        except httpx.TransportError as e:
            raise _transport_error(e, self.socket_path) from e
        return resp.status_code, _decode(resp)

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        """GET `path` and return the decoded JSON body."""
        return self.request("GET", path, params=params)[1]

    def post(self, path: str, json: Any = None, params: Mapping[str, Any] | None = None,
             *, timeout: float | None = _DEFAULT) -> Any:
        """POST `json` to `path` and return the decoded JSON body."""
        return self.request("POST", path, json=json, params=params, timeout=timeout)[1]

    def delete(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        """DELETE `path` and return the decoded JSON body."""
        return self.request("DELETE", path, params=params)[1]

    def stream(self, path: str, params: Mapping[str, Any] | None = None) -> Iterator[Any]:
        """GET a streamed endpoint and yield its JSON lines (no read timeout)."""
        if not os.path.exists(self.socket_path):
            raise SupervisorNotRunning(self.socket_path, "no control socket")
        timeout = httpx.Timeout(self._timeout, read=None)
        try:
            with self._http.stream("GET", path, params=params, timeout=timeout) as resp:
                if resp.status_code >= 400:
                    raise _error_from(resp.status_code, resp.read())
                for line in resp.iter_lines():
                    if line.strip():
                        yield _stream_item(line)
        except httpx.TransportError as e:
            raise _transport_error(e, self.socket_path) from e

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> SyncControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
