"""Control socket: a real server on a real Unix socket, real clients (async, sync, raw)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from console.control import (
    ControlClient,
    ControlError,
    ControlRequest,
    ControlResponse,
    ControlServer,
    ControlSocketError,
    PeerCred,
    SocketInUse,
    SupervisorNotRunning,
    SyncControlClient,
    authorize,
    peer_credentials,
)

NOBODY = 65534


class Api:
    """A small route table shaped like the supervisor's, recording what it saw."""

    def __init__(self) -> None:
        self.follow_closed = asyncio.Event()
        self.follow_sent = 0

    def install(self, server: ControlServer) -> None:
        server.route("GET", "/v1/status", self.status)
        server.route("GET", "/v1/whoami", self.whoami)
        server.route("POST", "/v1/workers/{name}/drain", self.drain)
        server.route("POST", "/v1/workers/{name}/retune", self.retune)
        server.route("DELETE", "/v1/workers/{name}", self.remove)
        server.route("GET", "/v1/boom", self.boom)
        server.route("GET", "/v1/unserializable", self.unserializable)
        server.route("GET", "/v1/slow", self.slow)
        server.route("GET", "/v1/count", self.count)
        server.route("GET", "/v1/follow", self.follow)
        server.route("GET", "/v1/streamfail", self.streamfail)

    async def status(self, req: ControlRequest) -> dict:
        return {"schema": 1, "workers": [{"name": "w1", "state": "ready"}]}

    async def whoami(self, req: ControlRequest) -> dict:
        return {"uid": req.peer.uid, "pid": req.peer.pid, "gid": req.peer.gid,
                "user": req.peer.user, "read_only": req.read_only}

    async def drain(self, req: ControlRequest) -> ControlResponse:
        name = req.params["name"]
        if name == "busy":
            raise ControlError.conflict("restart already running on busy", code="action_running")
        if name not in ("w1", "w 1/x"):
            raise ControlError.not_found(f"unknown worker {name!r}", code="unknown_worker")
        return ControlResponse.json({"worker": name, "body": req.body,
                                     "wait": req.query_bool("wait")}, status=202)

    async def retune(self, req: ControlRequest) -> dict:
        mem = req.arg("mem_fraction_static", float, min=0.05, max=0.95)
        graph = req.arg("cuda_graph", bool, None)
        return {"mem_fraction_static": mem, "cuda_graph": graph}

    async def remove(self, req: ControlRequest) -> dict:
        return {"removed": req.params["name"]}

    async def boom(self, req: ControlRequest) -> dict:
        raise RuntimeError("disk on fire")

    async def unserializable(self, req: ControlRequest) -> dict:
        return {"x": object()}

    async def slow(self, req: ControlRequest) -> dict:
        s = req.query_float("s", 0.2, min=0, max=5)
        await asyncio.sleep(s)
        return {"slept": s}

    async def count(self, req: ControlRequest) -> ControlResponse:
        n = req.query_int("n", 3, min=0, max=10_000)

        async def gen() -> AsyncIterator[dict]:
            for i in range(n):
                yield {"i": i}
                await asyncio.sleep(0)
        return ControlResponse.stream(gen())

    async def follow(self, req: ControlRequest) -> ControlResponse:
        async def gen() -> AsyncIterator[dict]:
            try:
                for i in range(100_000):  # bounded; the client leaves long before
                    self.follow_sent += 1
                    yield {"line": f"log line {i}"}
                    await asyncio.sleep(0.02)
            finally:
                self.follow_closed.set()
        return ControlResponse.stream(gen())

    async def streamfail(self, req: ControlRequest) -> ControlResponse:
        async def gen() -> AsyncIterator[dict]:
            yield {"i": 0}
            yield {"i": 1}
            raise OSError("log file vanished")
        return ControlResponse.stream(gen())


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "control.sock"


@pytest.fixture
async def api(sock_path: Path) -> AsyncIterator[tuple[ControlServer, Api]]:
    server = ControlServer(sock_path, request_timeout_s=1.0, idle_timeout_s=2.0)
    handlers = Api()
    handlers.install(server)
    await server.start()
    try:
        yield server, handlers
    finally:
        await server.stop()


async def _raw(path: Path, data: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes, read until the server closes; return everything it sent."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


def _status_and_body(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


# ---------------------------------------------------------------- routes and replies


async def test_routes_params_query_body(api, sock_path: Path) -> None:
    async with ControlClient(sock_path) as client:
        assert (await client.get("/v1/status"))["workers"][0]["name"] == "w1"
        status, body = await client.request("POST", "/v1/workers/w1/drain",
                                            json={"timeout_s": 30}, params={"wait": "1"})
        assert status == 202
        assert body == {"worker": "w1", "body": {"timeout_s": 30}, "wait": True}
        # an encoded path segment arrives decoded, as one parameter
        got = await client.post("/v1/workers/w%201%2Fx/drain")
        assert got["worker"] == "w 1/x" and got["body"] is None and got["wait"] is False
        assert await client.delete("/v1/workers/w3") == {"removed": "w3"}
        assert await client.post("/v1/workers/w1/retune",
                                 {"mem_fraction_static": 0.5, "cuda_graph": False}) \
            == {"mem_fraction_static": 0.5, "cuda_graph": False}


async def test_sync_client_same_surface(api, sock_path: Path) -> None:
    def use() -> tuple:
        with SyncControlClient(sock_path) as c:
            s = c.get("/v1/status")
            d = c.post("/v1/workers/w1/drain", {"a": 1})
            items = list(c.stream("/v1/count", params={"n": 4}))
            with pytest.raises(ControlError) as err:
                c.post("/v1/workers/nope/drain")
            return s, d, items, err.value
    s, d, items, err = await asyncio.to_thread(use)
    assert s["schema"] == 1 and d["worker"] == "w1"
    assert items == [{"i": i} for i in range(4)]
    assert (err.status, err.code) == (404, "unknown_worker")


async def test_peer_uid_and_pid_reach_the_handler(api, sock_path: Path) -> None:
    async with ControlClient(sock_path) as client:
        me = await client.get("/v1/whoami")
    assert me["uid"] == os.geteuid() and me["gid"] == os.getegid()
    assert me["pid"] == os.getpid()
    assert me["read_only"] is False


@pytest.mark.parametrize("method,path,body,status,code", [
    ("GET", "/v1/nope", None, 404, "unknown_route"),
    ("POST", "/v1/status", None, 405, "method_not_allowed"),
    ("POST", "/v1/workers/ghost/drain", None, 404, "unknown_worker"),
    ("POST", "/v1/workers/busy/drain", None, 409, "action_running"),
    ("POST", "/v1/workers/w1/retune", {}, 400, "bad_args"),
    ("POST", "/v1/workers/w1/retune", {"mem_fraction_static": 1.5}, 400, "bad_args"),
    ("POST", "/v1/workers/w1/retune", {"mem_fraction_static": "0.5"}, 400, "bad_args"),
    ("POST", "/v1/workers/w1/retune", {"mem_fraction_static": 0.5, "cuda_graph": 1},
     400, "bad_args"),
    ("POST", "/v1/workers/w1/retune", [1, 2], 400, "bad_args"),
    ("GET", "/v1/slow?s=abc", None, 400, "bad_args"),
    ("GET", "/v1/boom", None, 500, "internal"),
    ("GET", "/v1/unserializable", None, 500, "internal"),
])
async def test_errors_are_json_with_status(api, sock_path: Path, method: str, path: str,
                                           body: object, status: int, code: str) -> None:
    async with ControlClient(sock_path) as client:
        with pytest.raises(ControlError) as info:
            await client.request(method, path, json=body)
    assert (info.value.status, info.value.code) == (status, code)
    assert info.value.message


async def test_error_body_shape_and_no_traceback(api, sock_path: Path) -> None:
    transport = httpx.AsyncHTTPTransport(uds=str(sock_path))
    async with httpx.AsyncClient(transport=transport, base_url="http://x") as http:
        r = await http.get("/v1/boom")
        assert r.status_code == 500
        assert r.json() == {"error": {"code": "internal", "message": "RuntimeError: disk on fire"}}
        assert "Traceback" not in r.text and "File \"" not in r.text
        bad = await http.post("/v1/workers/w1/drain", content=b"{not json",
                              headers={"content-type": "application/json"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_json"
        big = await http.post("/v1/workers/w1/drain", content=b"[" + b"1," * 600_000 + b"1]")
        assert big.status_code == 413 and big.json()["error"]["code"] == "too_large"
    # the server is still fine after all that
    async with ControlClient(sock_path) as client:
        assert (await client.get("/v1/status"))["schema"] == 1


async def test_garbage_and_stalled_requests_are_bounded(api, sock_path: Path) -> None:
    status, body = _status_and_body(await _raw(sock_path, b"HELLO THERE\r\n\r\n"))
    assert status == 400 and body["error"]["code"] == "bad_http"
    t0 = time.monotonic()
    raw = await _raw(sock_path, b"GET /v1/status HTTP/1.1\r\nHost: x\r\n")  # never finishes
    assert _status_and_body(raw)[0] == 408
    assert time.monotonic() - t0 < 5.0  # request_timeout_s=1.0 plus slack
    huge_header = b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n"
    assert _status_and_body(await _raw(sock_path, huge_header))[0] in (400, 431)


async def test_head_and_pipelined_requests(api, sock_path: Path) -> None:
    raw = await _raw(sock_path, b"HEAD /v1/status HTTP/1.1\r\nHost: x\r\n\r\n"
                                b"HEAD /v1/follow HTTP/1.1\r\nHost: x\r\n\r\n"
                                b"GET /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    parts = raw.split(b"HTTP/1.1 ")
    assert [p[:6] for p in parts[1:]] == [b"200 OK"] * 3
    assert parts[1].endswith(b"\r\n\r\n") and parts[2].endswith(b"\r\n\r\n")  # no bodies
    assert json.loads(parts[3].partition(b"\r\n\r\n")[2])["schema"] == 1


async def test_idle_keepalive_connection_is_closed(api, sock_path: Path) -> None:
    server, _ = api
    reader, writer = await asyncio.open_unix_connection(str(sock_path))
    try:
        t0 = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 10.0) == b""  # idle_timeout_s=2.0
        assert 1.5 < time.monotonic() - t0 < 8.0
    finally:
        writer.close()


async def test_keepalive_reuses_one_connection(api, sock_path: Path) -> None:
    server, _ = api
    async with ControlClient(sock_path) as client:
        for _ in range(5):
            await client.get("/v1/status")
        assert server.connection_count == 1


# ---------------------------------------------------------------- socket file


async def test_socket_and_dir_modes_even_with_permissive_umask(sock_path: Path) -> None:
    old = os.umask(0)
    try:
        server = ControlServer(sock_path)
        await server.start()
    finally:
        os.umask(old)
    try:
        st = os.stat(sock_path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert stat.S_IMODE(os.stat(sock_path.parent).st_mode) == 0o700
        assert [p.name for p in sock_path.parent.iterdir()] == ["control.sock"]  # no temp left
    finally:
        await server.stop()
    assert not sock_path.exists()


async def test_stale_socket_is_replaced(sock_path: Path) -> None:
    sock_path.parent.mkdir(mode=0o700)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock_path))  # a socket file nobody listens on: a dead supervisor's
    dead.close()
    assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)
    with pytest.raises(SupervisorNotRunning, match="refused"):
        await ControlClient(sock_path).get("/v1/status")
    server = ControlServer(sock_path)
    Api().install(server)
    await server.start()
    try:
        async with ControlClient(sock_path) as client:
            assert (await client.get("/v1/status"))["schema"] == 1
    finally:
        await server.stop()


async def test_live_socket_is_refused(api, sock_path: Path) -> None:
    rival = ControlServer(sock_path)
    with pytest.raises(SocketInUse, match="already answering"):
        await rival.start()
    async with ControlClient(sock_path) as client:  # the first one is untouched
        assert (await client.get("/v1/status"))["schema"] == 1


async def test_non_socket_file_is_not_replaced(sock_path: Path) -> None:
    sock_path.parent.mkdir(mode=0o700)
    sock_path.write_text("precious")
    with pytest.raises(ControlSocketError, match="not a socket"):
        await ControlServer(sock_path).start()
    assert sock_path.read_text() == "precious"


async def test_too_long_path_fails_clearly(tmp_path: Path) -> None:
    long = tmp_path / ("d" * 120) / "control.sock"
    with pytest.raises(ControlSocketError, match="107-byte limit"):
        await ControlServer(long).start()


async def test_shared_writable_dir_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "open"
    d.mkdir()
    os.chmod(d, 0o777)
    with pytest.raises(ControlSocketError, match="writable by other users"):
        await ControlServer(d / "control.sock").start()


async def test_stop_leaves_a_successors_socket_alone(sock_path: Path) -> None:
    first = ControlServer(sock_path)
    await first.start()
    os.unlink(sock_path)  # e.g. an operator removed it; a successor took the path
    second = ControlServer(sock_path)
    Api().install(second)
    await second.start()
    try:
        await first.stop()
        async with ControlClient(sock_path) as client:
            assert (await client.get("/v1/status"))["schema"] == 1
    finally:
        await second.stop()


async def test_client_timeout_and_unlimited_wait(api, sock_path: Path) -> None:
    async with ControlClient(sock_path, timeout=0.3) as client:
        with pytest.raises(ControlError) as info:
            await client.get("/v1/slow", params={"s": 2})
        assert (info.value.status, info.value.code) == (504, "timeout")
        # None = no limit, for `?wait=1` actions that take minutes
        _, body = await client.request("GET", "/v1/slow", params={"s": 0.6}, timeout=None)
        assert body == {"slept": 0.6}


async def test_no_supervisor_errors(tmp_path: Path) -> None:
    with pytest.raises(SupervisorNotRunning, match="no control socket"):
        await ControlClient(tmp_path / "none.sock").get("/v1/status")
    with pytest.raises(SupervisorNotRunning):
        with SyncControlClient(tmp_path / "none.sock") as c:
            c.get("/v1/status")
    with pytest.raises(SupervisorNotRunning):
        async with ControlClient(tmp_path / "none.sock") as c:
            async for _ in c.stream("/v1/follow"):
                pass


# ---------------------------------------------------------------- streaming


async def test_stream_yields_json_lines(api, sock_path: Path) -> None:
    async with ControlClient(sock_path) as client:
        items = [x async for x in client.stream("/v1/count", params={"n": 500})]
    assert items == [{"i": i} for i in range(500)]


async def test_stream_error_arrives_after_the_good_lines(api, sock_path: Path) -> None:
    got = []
    async with ControlClient(sock_path) as client:
        with pytest.raises(ControlError) as info:
            async for item in client.stream("/v1/streamfail"):
                got.append(item)
    assert got == [{"i": 0}, {"i": 1}]
    assert info.value.code == "stream_failed" and "log file vanished" in info.value.message


async def test_client_leaving_a_follow_stream_stops_the_generator(api, sock_path: Path) -> None:
    server, handlers = api
    async with ControlClient(sock_path) as client:
        async with contextlib.aclosing(client.stream("/v1/follow")) as lines:
            got = []
            async for item in lines:
                got.append(item)
                if len(got) == 3:
                    break
    assert got[2] == {"line": "log line 2"}
    await asyncio.wait_for(handlers.follow_closed.wait(), 5.0)
    sent = handlers.follow_sent
    await asyncio.sleep(0.2)
    assert handlers.follow_sent == sent  # nothing keeps producing for a gone client
    for _ in range(50):
        if server.connection_count == 0:
            break
        await asyncio.sleep(0.05)
    assert server.connection_count == 0


async def test_stop_ends_open_streams(sock_path: Path) -> None:
    server = ControlServer(sock_path)
    handlers = Api()
    handlers.install(server)
    await server.start()
    got = []

    async def follow() -> None:
        async with ControlClient(sock_path) as client:
            async for item in client.stream("/v1/follow"):
                got.append(item)

    task = asyncio.create_task(follow())
    for _ in range(100):
        if got:
            break
        await asyncio.sleep(0.02)
    await asyncio.wait_for(server.stop(), 10.0)
    await asyncio.wait_for(handlers.follow_closed.wait(), 5.0)
    with pytest.raises((SupervisorNotRunning, ControlError)):
        await asyncio.wait_for(task, 5.0)  # the stream was cut, not silently "complete"
    assert got and not sock_path.exists()


async def test_shutdown_route_may_stop_the_server_and_still_reply(sock_path: Path) -> None:
    server = ControlServer(sock_path)

    async def shutdown(req: ControlRequest) -> dict:
        await server.stop()
        return {"stopping": True}
    server.route("POST", "/v1/shutdown", shutdown)
    await server.start()
    try:
        async with ControlClient(sock_path) as client:
            assert await client.post("/v1/shutdown", {"stop_workers": False}) == {"stopping": True}
        assert not server.serving and not sock_path.exists()
        with pytest.raises(SupervisorNotRunning):
            await ControlClient(sock_path).get("/v1/status")
    finally:
        await server.stop()


# ---------------------------------------------------------------- concurrency


async def test_concurrent_clients_are_served_concurrently(api, sock_path: Path) -> None:
    clients = [ControlClient(sock_path) for _ in range(20)]
    try:
        t0 = time.monotonic()
        results = await asyncio.gather(*(c.get("/v1/slow", params={"s": 0.5}) for c in clients))
        elapsed = time.monotonic() - t0
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    assert results == [{"slept": 0.5}] * 20
    assert elapsed < 5.0  # 20 x 0.5 s = 10 s if they were served one by one


async def test_a_follow_stream_does_not_block_other_requests(api, sock_path: Path) -> None:
    async with ControlClient(sock_path) as streamer, ControlClient(sock_path) as other:
        async with contextlib.aclosing(streamer.stream("/v1/follow")) as lines:
            first = await anext(lines)
            assert first == {"line": "log line 0"}
            for _ in range(10):
                assert (await other.get("/v1/status"))["schema"] == 1


async def test_too_many_connections_get_503(sock_path: Path) -> None:
    server = ControlServer(sock_path, max_connections=2, idle_timeout_s=5.0)
    Api().install(server)
    await server.start()
    held = []
    try:
        for _ in range(2):
            held.append(await asyncio.open_unix_connection(str(sock_path)))
        for _ in range(50):
            if server.connection_count == 2:
                break
            await asyncio.sleep(0.02)
        raw = await _raw(sock_path, b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
        status, body = _status_and_body(raw)
        assert status == 503 and body["error"]["code"] == "busy"
    finally:
        for _, w in held:
            w.close()
        await server.stop()


# ---------------------------------------------------------------- who may connect


def test_authorize_rules() -> None:
    owner = 1000
    assert authorize(owner, "POST", owner_uid=owner) is False
    assert authorize(0, "POST", owner_uid=owner) is False  # root
    with pytest.raises(ControlError) as info:
        authorize(1001, "GET", owner_uid=owner)
    assert info.value.status == 403 and "1001" in info.value.message
    assert authorize(1001, "POST", owner_uid=owner, allowed_uids=frozenset({1001})) is False
    ro = frozenset({1002})
    assert authorize(1002, "GET", owner_uid=owner, read_only_uids=ro) is True
    with pytest.raises(ControlError) as info:
        authorize(1002, "POST", owner_uid=owner, read_only_uids=ro)
    assert (info.value.status, info.value.code) == (403, "read_only")


async def test_peer_credentials_of_a_socketpair() -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        assert peer_credentials(a) == PeerCred(pid=os.getpid(), uid=os.geteuid(),
                                               gid=os.getegid())


def _as_nobody(path: Path, request: bytes) -> tuple[str, object]:
    """Fork, drop to uid nobody, send `request` on the socket; ("ok", (status, body)) or
    ("oserror", errno). Only stdlib socket calls in the child (it is forked)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            try:
                s.connect(str(path))
            except OSError as e:
                out = json.dumps(["oserror", e.errno])
            else:
                s.sendall(request)
                chunks = []
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
                out = json.dumps(["ok", list(_status_and_body(b"".join(chunks)))])
            os.write(w, out.encode())
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    kind, value = json.loads(data)
    return kind, value


@pytest.fixture
def public_tmp() -> Path:
    """A directory other users can traverse (pytest's tmp_path is private to root)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another user")
    d = Path(tempfile.mkdtemp(prefix="embedops-ctl-"))
    os.chmod(d, 0o711)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


_GET = b"GET /v1/whoami HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
_POST = (b"POST /v1/workers/w1/drain HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
         b"Content-Length: 2\r\n\r\n{}")


async def _serve(path: Path, **kw) -> ControlServer:
    server = ControlServer(path, **kw)
    Api().install(server)
    await server.start()
    return server


async def test_other_user_cannot_even_connect_by_default(public_tmp: Path) -> None:
    server = await _serve(public_tmp / "s" / "control.sock")
    try:
        kind, value = await asyncio.to_thread(_as_nobody, server.socket_path, _GET)
        assert (kind, value) == ("oserror", 13)  # EACCES: 0700 dir / 0600 socket
    finally:
        await server.stop()


async def test_other_user_refused_by_peer_check(public_tmp: Path) -> None:
    # Another uid is configured, so the socket is connectable by all (0666) and the
    # SO_PEERCRED check is what stops nobody.
    server = await _serve(public_tmp / "s" / "control.sock", read_only_uids={12345})
    try:
        assert stat.S_IMODE(os.stat(server.socket_path).st_mode) == 0o666
        kind, (status, body) = await asyncio.to_thread(_as_nobody, server.socket_path, _GET)
        assert kind == "ok" and status == 403
        assert body["error"]["code"] == "forbidden" and "65534" in body["error"]["message"]
    finally:
        await server.stop()


async def test_read_only_user_may_read_but_not_act(public_tmp: Path) -> None:
    server = await _serve(public_tmp / "s" / "control.sock", read_only_uids={NOBODY})
    try:
        kind, (status, body) = await asyncio.to_thread(_as_nobody, server.socket_path, _GET)
        assert (kind, status) == ("ok", 200)
        assert body["uid"] == NOBODY and body["read_only"] is True
        kind, (status, body) = await asyncio.to_thread(_as_nobody, server.socket_path, _POST)
        assert (kind, status) == ("ok", 403) and body["error"]["code"] == "read_only"
    finally:
        await server.stop()


async def test_allowed_user_may_act(public_tmp: Path) -> None:
    server = await _serve(public_tmp / "s" / "control.sock", allowed_uids={NOBODY})
    try:
        kind, (status, body) = await asyncio.to_thread(_as_nobody, server.socket_path, _POST)
        assert (kind, status) == ("ok", 202) and body["worker"] == "w1"
    finally:
        await server.stop()
