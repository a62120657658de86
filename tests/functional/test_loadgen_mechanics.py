"""Load generator mechanics against a small real HTTP server on 127.0.0.1.

The server (this file run as ``python -m tests.functional.test_loadgen_mechanics PORT LOG``)
is a Starlette app on uvicorn whose behaviour is switched at run time through
``POST /_ctl``: a fixed delay, a status code, a hang, a wrong dimension, NaN values, or
dropping the connection. It logs every request's arrival time and ids to LOG, so the
tests can check what the generator really sent and when. Everything that the simulated
worker can do is tested against it in test_loadgen_sim.py; this file covers the cases
that need exact, deliberately broken server behaviour.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from backends.sim.loadgen import LoadGen, LoadSpec, run_load
from tests.conftest import PYTHON, REPO, free_port, wait_http

DIM = 8


# --------------------------------------------------------------------------- the server

def _serve(port: int, log_path: str) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    state: dict = {"delay_ms": 0.0, "status": 200, "hang": False, "dim": DIM, "nan": False,
                   "drop": False, "hang_next": 0}
    log = open(log_path, "a", buffering=1)

    class _Truncated(Response):
        """Headers promising 1000 bytes, 10 bytes of body, then the connection drops."""

        async def __call__(self, scope, receive, send) -> None:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", b"1000")]})
            await send({"type": "http.response.body", "body": b'{"data": [', "more_body": True})
            raise ConnectionAbortedError("drop")

    async def ctl(request: Request) -> Response:
        state.update(await request.json())
        return JSONResponse(state)

    async def embeddings(request: Request) -> Response:
        arrived = time.time()
        body = await request.json()
        log.write(json.dumps({"t": arrived, "rid": body.get("rid"),
                              "hdr": request.headers.get("x-request-id"),
                              "auth": request.headers.get("authorization"),
                              "model": body.get("model"), "input": body.get("input")}) + "\n")
        if state["hang_next"] > 0:
            state["hang_next"] -= 1
            await asyncio.sleep(3600)
        if state["hang"]:
            await asyncio.sleep(3600)
        if state["delay_ms"]:
            await asyncio.sleep(state["delay_ms"] / 1000.0)
        if state["drop"]:
            return _Truncated()
        if state["status"] != 200:
            return JSONResponse({"object": "error", "message": "injected", "type": "X",
                                 "param": None, "code": state["status"]},
                                status_code=state["status"])
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        value = float("nan") if state["nan"] else 0.125
        data = [{"embedding": [value] * state["dim"], "index": i, "object": "embedding"}
                for i in range(len(inputs))]
        text = json.dumps({"data": data, "model": "m", "object": "list",
                           "usage": {"prompt_tokens": 1, "total_tokens": 1}})
        return Response(text, media_type="application/json")

    async def health(request: Request) -> Response:
        return Response(status_code=200)

    app = Starlette(routes=[Route("/_ctl", ctl, methods=["POST"]),
                            Route("/v1/embeddings", embeddings, methods=["POST"]),
                            Route("/health", health)])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="critical")


# --------------------------------------------------------------------------- fixtures

class Server:
    def __init__(self, port: int, log: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log

    def set(self, **kw) -> None:
        httpx.post(self.url + "/_ctl", json=kw, timeout=5).raise_for_status()

    def reset(self) -> None:
        self.set(delay_ms=0, status=200, hang=False, dim=DIM, nan=False, drop=False, hang_next=0)
        self.log.write_text("")

    def requests(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tests.conftest import ProcessGroups

    groups = ProcessGroups()
    port = free_port()
    log = tmp_path_factory.mktemp("lg") / "requests.jsonl"
    log.write_text("")
    groups.spawn([PYTHON, "-m", "tests.functional.test_loadgen_mechanics", str(port), str(log)])
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=30)
        yield Server(port, log)
    finally:
        groups.cleanup()


@pytest.fixture
def srv(server):
    server.reset()
    yield server
    server.reset()


# --------------------------------------------------------------------------- tests

def test_count_bound_ids_model_and_auth(srv):
    spec = LoadSpec(url=srv.url, rate=200, count=40, model="my-model", api_key="s3cret-key",
                    dimension=DIM, deadline_s=5)
    report = run_load(spec)
    assert report.sent == 40 and report.ok == 40 and report.error_total == 0
    seen = srv.requests()
    assert len(seen) == 40
    assert len({r["rid"] for r in seen}) == 40
    assert all(r["hdr"] == r["rid"] for r in seen)
    assert {r["model"] for r in seen} == {"my-model"}
    assert {r["auth"] for r in seen} == {"Bearer s3cret-key"}
    assert report.latency_ms["n"] == 40 and report.latency_ms["p50"] > 0
    assert "s3cret-key" not in json.dumps(report.to_json())


def test_open_loop_keeps_schedule_with_slow_server(srv):
    # 400 ms per request at 25 req/s: a closed loop with few connections would send
    # about 2.5 req/s; open loop sends on schedule and the latency shows the delay
    srv.set(delay_ms=400)
    t_start = time.time()
    report = run_load(LoadSpec(url=srv.url, rate=25, duration_s=1.0, deadline_s=10,
                               dimension=DIM))
    assert report.sent == 25 and report.ok == 25
    arrivals = sorted(r["t"] - t_start for r in srv.requests())
    assert len(arrivals) == 25
    # arrivals follow the schedule (i / 25 s), not the server's pace
    assert arrivals[-1] < 1.0 + 0.6
    for i, t in enumerate(arrivals):
        assert t >= i / 25 - 0.05
    assert report.latency_ms["p50"] >= 400
    assert report.latency_ms["max"] < 400 + 1500
    assert report.max_in_flight >= 5
    assert report.achieved_rps == pytest.approx(25, rel=0.25)


def test_latency_counts_from_scheduled_time_when_pool_is_exhausted(srv):
    # one connection and 200 ms per request at 20 req/s: requests queue in the client;
    # measured from their scheduled time, the queueing shows up as growing latency
    srv.set(delay_ms=200)
    report = run_load(LoadSpec(url=srv.url, rate=20, count=10, max_connections=1,
                               deadline_s=10, dimension=DIM))
    assert report.ok == 10
    # the 10th request is served at ~2.0 s but was due at 0.45 s
    assert report.latency_ms["max"] >= 1400
    assert report.send_lag_ms["max"] >= 1000


def test_deadline_errors_counted_as_timeout(srv):
    srv.set(hang=True)
    t = time.monotonic()
    report = run_load(LoadSpec(url=srv.url, rate=20, count=6, deadline_s=0.5))
    took = time.monotonic() - t
    assert report.sent == 6 and report.ok == 0
    assert report.errors["timeout"] == 6
    assert report.error_total == 6
    # the deadline timer may fire a fraction of a millisecond early (seen: 499.9 ms)
    assert report.latency_all_ms["p50"] >= 495
    assert took < 0.25 + 0.5 + 3.0  # bounded by the deadline, not the hang


def test_per_try_timeout_is_retried_within_the_deadline(srv):
    srv.set(hang_next=3)
    r = run_load(LoadSpec(url=srv.url, rate=100, count=3, deadline_s=5, try_timeout_s=0.3,
                          retries=1, dimension=DIM))
    assert r.ok == 3 and r.ok_after_retry == 3 and r.retries == 3, r.to_json()
    assert 300 <= r.latency_ms["p50"] < 300 + 1500
    seen = srv.requests()
    assert len(seen) == 6 and len({x["hdr"] for x in seen}) == 3
    # without a per-try timeout the deadline is spent on the first try: no retry
    srv.set(hang_next=2)
    r = run_load(LoadSpec(url=srv.url, rate=100, count=2, deadline_s=0.4, retries=3))
    assert r.errors["timeout"] == 2 and r.retries == 0


def test_http_errors_by_code_and_retries(srv):
    srv.set(status=503)
    report = run_load(LoadSpec(url=srv.url, rate=50, count=5, retries=2, deadline_s=5))
    assert report.errors["http_5xx"] == {"503": 5}
    assert report.retries == 10  # 2 extra attempts each
    assert len(srv.requests()) == 15
    # a retry keeps the request id in the header and makes the body rid unique
    seen = srv.requests()
    assert len({r["hdr"] for r in seen}) == 5
    assert len({r["rid"] for r in seen}) == 15

    srv.reset()
    srv.set(status=404)
    report = run_load(LoadSpec(url=srv.url, rate=50, count=4, retries=2, deadline_s=5))
    assert report.errors["http_4xx"] == {"404": 4}
    assert report.retries == 0  # 4xx is not retried
    assert report.error_samples and report.error_samples[0].startswith("http_4xx")


@pytest.mark.parametrize("verify", ["cheap", "full"])
def test_bad_bodies(srv, verify):
    srv.set(dim=DIM - 1)
    r = run_load(LoadSpec(url=srv.url, rate=100, count=3, dimension=DIM, verify=verify))
    assert r.errors["bad_body"] == 3 and r.ok == 0
    assert any(f"dimension {DIM - 1} != {DIM}" in s for s in r.error_samples)
    srv.set(dim=DIM, nan=True)
    r = run_load(LoadSpec(url=srv.url, rate=100, count=3, dimension=DIM, verify=verify))
    assert r.errors["bad_body"] == 3
    assert any("non-finite" in s for s in r.error_samples)
    srv.set(nan=False)
    r = run_load(LoadSpec(url=srv.url, rate=100, count=3, dimension=DIM, batch=4, verify=verify))
    assert r.ok == 3 and [len(x["input"]) for x in srv.requests()[-3:]] == [4, 4, 4]


def test_dropped_connection_is_disconnect_and_retried(srv):
    srv.set(drop=True)
    r = run_load(LoadSpec(url=srv.url, rate=50, count=4, deadline_s=5))
    assert r.ok == 0 and r.errors["disconnect"] == 4
    r = run_load(LoadSpec(url=srv.url, rate=50, count=2, deadline_s=5, retries=1))
    assert r.errors["disconnect"] == 2 and r.retries == 2


def test_connect_refused():
    port = free_port()
    r = run_load(LoadSpec(url=f"http://127.0.0.1:{port}", rate=100, count=3, deadline_s=2))
    assert r.errors["connect"] == 3 and r.sent == 3


def test_duration_bound(srv):
    t = time.monotonic()
    r = run_load(LoadSpec(url=srv.url, rate=40, duration_s=0.5, dimension=DIM))
    assert r.sent == 20 and r.ok == 20
    assert time.monotonic() - t < 5


async def test_runs_until_stop_event_with_live_stats(srv):
    srv.set(delay_ms=20)
    stop = asyncio.Event()
    seen = []
    gen = LoadGen(LoadSpec(url=srv.url, rate=100, dimension=DIM, window_s=2.0),
                  on_progress=seen.append, progress_interval_s=0.2)
    task = asyncio.create_task(gen.run(stop))
    await asyncio.sleep(1.0)
    live = gen.snapshot()
    assert live.sent >= 50 and live.ok >= 40
    assert live.recent_p50_ms is not None and live.recent_p50_ms >= 20
    assert live.recent_ok_rps > 30
    stop.set()
    report = await asyncio.wait_for(task, 5)
    assert report.stopped_early
    assert report.sent == report.ok + report.error_total
    assert report.error_total == 0
    assert len(seen) >= 3 and seen[-1].sent <= report.sent


def test_cli_runs_until_sigterm_then_reports(srv):
    proc = subprocess.Popen(
        [PYTHON, "-m", "backends.sim.loadgen", "--url", srv.url, "--rate", "50", "--json",
         "--progress", "json", "--dimension", str(DIM)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        time.sleep(1.5)
        proc.send_signal(signal.SIGTERM)  # the process we just started
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    assert proc.returncode == 0, err
    report = json.loads(out)
    assert report["stopped_early"] is True
    assert 20 <= report["sent"] <= 200 and report["ok"] == report["sent"]
    progress = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert progress and progress[-1]["sent"] <= report["sent"]


if __name__ == "__main__":
    _serve(int(sys.argv[1]), sys.argv[2])


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_idle_connection_closed_by_the_server_is_not_reused(loop_kind: str):
    """A keep-alive connection the server closed while it sat idle (nginx closes them on
    reload) is dropped by the pool before a request is written to it, even when the
    close has reached the kernel but not yet the event loop (a busy box)."""
    import socket
    import threading

    from backends.sim.loadgen import _Pool

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    close_first = threading.Event()
    conns: list[socket.socket] = []

    def serve() -> None:
        listener.settimeout(10)
        for _ in range(2):
            c, _ = listener.accept()
            conns.append(c)
            c.recv(65536)
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            if len(conns) == 1:
                close_first.wait(10)
                c.close()

    server = threading.Thread(target=serve, daemon=True)
    server.start()

    async def go() -> None:
        loop = asyncio.get_running_loop()
        pool = _Pool(loop, "127.0.0.1", port, 4, connect_timeout_s=5)
        deadline = time.monotonic() + 10
        req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        first = await pool.acquire(deadline)
        assert await first.request(req) == (200, b"ok")
        pool.release(first)
        close_first.set()
        time.sleep(0.3)  # noqa: ASYNC251 - blocks the loop: the FIN reaches only the kernel
        second = await pool.acquire(deadline)
        assert second is not first and first.closed
        assert await second.request(req) == (200, b"ok")
        pool.close()

    try:
        if loop_kind == "uvloop":
            uvloop = pytest.importorskip("uvloop")
            uvloop.run(go())
        else:
            asyncio.run(go())
    finally:
        server.join(5)
        for c in conns:
            c.close()
        listener.close()
