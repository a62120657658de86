"""The simulated worker's fault switches, at run time (``POST /_sim/faults``) and at
start (``--sim-fault``), against real worker processes on 127.0.0.1."""

from __future__ import annotations

import concurrent.futures
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest

from console.supervisor import FLEET_ENV
from tests.conftest import ProcessGroups, free_port, wait_http

MODEL = "Qwen/Qwen3-Embedding-4B"


class Sim:
    """A running simulated worker."""

    def __init__(self, proc: subprocess.Popen, port: int, log: Path) -> None:
        self.proc = proc
        self.url = f"http://127.0.0.1:{port}"
        self.log = log

    def faults(self, **patch: object) -> dict:
        r = httpx.post(f"{self.url}/_sim/faults", json=patch, timeout=5)
        assert r.status_code == 200, r.text
        return r.json()

    def embed(self, text: str, timeout: float = 5.0) -> httpx.Response:
        return httpx.post(f"{self.url}/v1/embeddings", json={"input": text}, timeout=timeout)

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def spawn(groups: ProcessGroups, tmp: Path, *extra: str, env: dict[str, str] | None = None) -> Sim:
    port = free_port()
    log = tmp / f"sim-{port}.log"
    argv = [sys.executable, "-m", "backends.sim.worker", "--model-path", MODEL, "--is-embedding",
            "--host", "127.0.0.1", "--port", str(port), "--sim-load-s", "0.2",
            "--sim-warmup-s", "0.1", *extra]
    # Supervisors of fleets on a shared box discover every SGLang-like server and probe it
    # with real embedding requests; one marked as another fleet's worker is left alone, so
    # their probes cannot move the gauges, counters and drain counts asserted here.
    proc = groups.spawn(argv, log=log, env={"EMBEDOPS_SIM_GPU_DIR": str(tmp / f"gpus-{port}"),
                                            FLEET_ENV: str(tmp), **(env or {})})
    return Sim(proc, port, log)


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    groups = ProcessGroups()
    try:
        s = spawn(groups, tmp_path_factory.mktemp("sim-faults"), "--enable-metrics",
                  "--sim-base-latency-ms", "1", "--sim-per-token-us", "0",
                  env={"SGLANG_HEALTH_CHECK_TIMEOUT": "2"})
        wait_http(f"{s.url}/ready", timeout=30)
        yield s
    finally:
        groups.cleanup()


@pytest.fixture
def worker(sim: Sim) -> Iterator[Sim]:
    """The module worker, with every fault cleared after the test."""
    sim.faults(clear=True)
    yield sim
    sim.faults(clear=True)
    assert sim.proc.poll() is None


def _gauge(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exposed")


def _cos(a: httpx.Response, b: httpx.Response) -> float:
    va = np.asarray(a.json()["data"][0]["embedding"])
    vb = np.asarray(b.json()["data"][0]["embedding"])
    return float(va @ vb / np.linalg.norm(va) / np.linalg.norm(vb))


# ---------------------------------------------------------------------------- run time


def test_stall_passes_health_but_never_answers(worker: Sim) -> None:
    worker.faults(stall=True)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        fut = pool.submit(worker.embed, "stalled request", 15.0)
        assert httpx.get(f"{worker.url}/health", timeout=10).status_code == 200
        assert not fut.done()
        assert _gauge(worker.url, "sglang:num_running_reqs") >= 1
        worker.faults(stall=False)
        assert fut.result(10).status_code == 200
    assert _gauge(worker.url, "sglang:num_running_reqs") == 0


def test_hang_fails_health_after_the_timeout_then_recovers(worker: Sim) -> None:
    worker.faults(hang=True)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        fut = pool.submit(worker.embed, "hung request", 15.0)
        t = time.monotonic()
        assert httpx.get(f"{worker.url}/health", timeout=10).status_code == 503
        assert time.monotonic() - t >= 1.9
        assert httpx.get(f"{worker.url}/ready", timeout=5).status_code == 503  # UnHealthy
        assert not fut.done()
        worker.faults(hang=False)
        assert fut.result(10).status_code == 200
    assert httpx.get(f"{worker.url}/health", timeout=10).status_code == 200


def test_unstable_gives_seen_texts_another_vector(worker: Sim) -> None:
    worker.faults(unstable=True)
    cold = worker.embed("a text seen twice while unstable")
    warm = worker.embed("a text seen twice while unstable")
    again = worker.embed("a text seen twice while unstable")
    assert abs(_cos(cold, warm) - 0.856) < 0.005
    assert _cos(warm, again) > 0.9999
    worker.faults(unstable=False)
    assert _cos(cold, worker.embed("a text seen twice while unstable")) > 0.9999


def test_nan_and_wrong_dim(worker: Sim) -> None:
    worker.faults(nan=True)
    r = worker.embed("nan text")
    assert r.status_code == 200 and b"NaN" in r.content
    assert all(math.isnan(x) for x in r.json()["data"][0]["embedding"])
    worker.faults(nan=False, wrong_dim=True)
    assert len(worker.embed("short text").json()["data"][0]["embedding"]) == 1280
    worker.faults(wrong_dim=False)
    assert len(worker.embed("short text").json()["data"][0]["embedding"]) == 2560


def test_error_rate_gives_500s_with_sglang_body(worker: Sim) -> None:
    worker.faults(error_rate=1.0)
    r = worker.embed("x")
    assert r.status_code == 500
    body = r.json()
    assert body["object"] == "error" and body["type"] == "InternalServerError"
    assert body["code"] == 500 and body["message"].startswith("Internal server error: ")
    worker.faults(error_rate=0.5)
    codes = {worker.embed(f"mix {i}").status_code for i in range(40)}
    assert codes == {200, 500}


def test_slow_ms_adds_latency(worker: Sim) -> None:
    worker.faults(slow_ms=300)
    t = time.monotonic()
    assert worker.embed("slow").status_code == 200
    assert time.monotonic() - t >= 0.3


def test_freeze_scheduler_stops_the_child(worker: Sim) -> None:
    sched = psutil.Process(httpx.get(f"{worker.url}/_sim/gpu", timeout=5).json()["pid"])
    worker.faults(freeze_scheduler=True)
    assert sched.status() == psutil.STATUS_STOPPED
    with pytest.raises(httpx.TimeoutException):
        worker.embed("frozen", timeout=1.0)
    assert httpx.get(f"{worker.url}/ping", timeout=2).status_code == 200
    assert httpx.get(f"{worker.url}/metrics", timeout=2).status_code == 200
    worker.faults(freeze_scheduler=False)
    assert sched.status() != psutil.STATUS_STOPPED
    assert worker.embed("thawed").status_code == 200


def test_paused_server_fails_health_after_the_timeout(worker: Sim) -> None:
    assert httpx.post(f"{worker.url}/pause_generation", json={}, timeout=5).status_code == 200
    try:
        t = time.monotonic()
        assert httpx.get(f"{worker.url}/health", timeout=10).status_code == 503
        assert time.monotonic() - t >= 1.9
    finally:
        httpx.post(f"{worker.url}/continue_generation", json={}, timeout=5)
    assert httpx.get(f"{worker.url}/health", timeout=10).status_code == 200


def test_sim_endpoints_refuse_other_hosts(worker: Sim) -> None:
    # Only loopback clients may use /_sim/*: reach the worker from a non-loopback
    # address of this machine when it has one.
    addrs = [a.address for nic in psutil.net_if_addrs().values() for a in nic
             if a.family.name == "AF_INET" and not a.address.startswith("127.")]
    if not addrs:
        pytest.skip("no non-loopback IPv4 address to connect from")
    import socket
    port = int(worker.url.rsplit(":", 1)[1])
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=2,
                                        source_address=(addrs[0], 0))
    except OSError:
        pytest.skip("cannot bind a non-loopback source address")
    with sock:
        sock.sendall(b"GET /_sim/gpu HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.1 403")
    assert data.endswith(b'{"error":"Forbidden"}')


# ---------------------------------------------------------------------------- capacity


def test_latency_grows_with_tokens_and_overload_queues(tmp_path: Path,
                                                       procs: ProcessGroups) -> None:
    s = spawn(procs, tmp_path, "--enable-metrics", "--max-running-requests", "2",
              "--max-queued-requests", "2", "--sim-base-latency-ms", "100",
              "--sim-per-token-us", "2000")
    wait_http(f"{s.url}/ready", timeout=30)
    t = time.monotonic()
    assert s.embed("hi").status_code == 200  # 2 tokens: ~104 ms
    short = time.monotonic() - t
    t = time.monotonic()
    assert s.embed("word " * 150).status_code == 200  # 151 tokens: ~402 ms
    assert time.monotonic() - t - short > 0.2

    max_running = max_queue = 0.0
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        futs = [pool.submit(s.embed, f"request {i} " + "word " * 150, 15.0) for i in range(6)]
        deadline = time.monotonic() + 10
        while not all(f.done() for f in futs) and time.monotonic() < deadline:
            max_running = max(max_running, _gauge(s.url, "sglang:num_running_reqs"))
            max_queue = max(max_queue, _gauge(s.url, "sglang:num_queue_reqs"))
            time.sleep(0.05)
        rs = [f.result() for f in futs]
    codes = sorted(r.status_code for r in rs)
    assert codes.count(200) >= 2 and 503 in codes
    assert 1 <= max_running <= 2 and max_queue == 2
    full = next(r for r in rs if r.status_code == 503)
    assert full.json() == {"object": "error", "message": "The request queue is full.",
                           "type": "503", "param": None, "code": 503}
    assert _gauge(s.url, "sglang:num_running_reqs") == 0
    assert _gauge(s.url, "sglang:num_queue_reqs") == 0


# ---------------------------------------------------------------------------- start flags


@pytest.fixture(scope="module")
def doomed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Sim]]:
    """Workers that are meant to die, started together so their waits overlap."""
    groups = ProcessGroups()
    tmp = tmp_path_factory.mktemp("sim-doomed")
    try:
        yield {
            "crash": spawn(groups, tmp, "--sim-fault", "crash_after_s=0.5"),
            "watchdog": spawn(groups, tmp, "--sim-fault", "hang", "--watchdog-timeout", "1"),
            "startup": spawn(groups, tmp, "--sim-fault", "startup-fail"),
            "leak": spawn(groups, tmp, "--sim-gpu-mib", "20000", "--mem-fraction-static", "0.5",
                          "--sim-fault", "leak_mib_s=20000"),
        }
    finally:
        groups.cleanup()


def test_crash_after_s_kills_the_tree(doomed: dict[str, Sim]) -> None:
    s = doomed["crash"]
    assert s.proc.wait(timeout=30) == 137
    text = s.text()
    assert "The server is fired up and ready to roll!" in text  # armed once ready
    assert "Scheduler hit an exception" in text
    assert "CUDA error: an illegal memory access was encountered" in text


def test_hang_with_a_batch_in_flight_trips_the_watchdog(doomed: dict[str, Sim]) -> None:
    s = doomed["watchdog"]
    wait_http(f"{s.url}/ready", timeout=30)
    with pytest.raises(httpx.HTTPError):
        s.embed("never answered", timeout=30)  # the server dies under it
    assert s.proc.wait(timeout=15) == 137
    assert "Scheduler watchdog timeout (self.watchdog_timeout=1.0" in s.text()


def test_startup_fail_exits_non_zero_without_opening_the_port(doomed: dict[str, Sim]) -> None:
    s = doomed["startup"]
    assert s.proc.wait(timeout=30) != 0
    text = s.text()
    assert "Scheduler hit an exception" in text and "startup-fail" in text
    assert "Uvicorn running" not in text


def test_leak_ends_in_cuda_oom(doomed: dict[str, Sim]) -> None:
    s = doomed["leak"]
    assert s.proc.wait(timeout=30) != 0
    text = s.text()
    assert "torch.OutOfMemoryError: CUDA out of memory." in text
    assert "GPU 0 has a total capacity of 19.53 GiB" in text


def test_orphan_child_outlives_the_worker(tmp_path: Path, procs: ProcessGroups) -> None:
    s = spawn(procs, tmp_path)
    wait_http(f"{s.url}/ready", timeout=30)
    assert s.faults(orphan_child=True)["orphan_child"] is True
    pgid = s.proc.pid
    deadline = time.monotonic() + 10
    orphans: list[psutil.Process] = []
    while not orphans and time.monotonic() < deadline:
        orphans = [p for p in psutil.process_iter(["cmdline"])
                   if (p.info["cmdline"] or [""])[0] == "sglang::scheduler_orphan"
                   and _pgid(p.pid) == pgid]
        time.sleep(0.05)
    (orphan,) = orphans
    assert orphan.pid not in [c.pid for c in psutil.Process(s.proc.pid).children(recursive=True)]
    os.kill(orphan.pid, signal.SIGTERM)  # ignored
    s.proc.send_signal(signal.SIGKILL)  # the launcher only: its children follow it
    s.proc.wait(timeout=10)
    time.sleep(0.3)
    assert orphan.is_running() and orphan.status() != psutil.STATUS_ZOMBIE
    os.killpg(pgid, signal.SIGKILL)  # a group kill reaches it
    orphan.wait(timeout=10)
    assert not orphan.is_running()


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None
