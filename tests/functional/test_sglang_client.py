"""backends.sglang_client against real simulated-worker processes on 127.0.0.1."""

from __future__ import annotations

import asyncio
import math
import tempfile
import time
from collections.abc import Iterator, Sequence

import httpx
import pytest

from backends.promtext import detect_reset, parse_metrics
from backends.sglang_client import SglangClient, SglangError, cosine, error_message
from console.supervisor import FLEET_ENV
from tests.conftest import PYTHON, ProcessGroups, free_port, wait_http

DIM = 2560
KEY = "sk-test-Zq81"


class SimWorker:
    """A running `python -m backends.sim.worker` and its fault switch."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def faults(self, **patch: object) -> dict:
        r = httpx.post(self.url + "/_sim/faults", json=patch, timeout=5)
        r.raise_for_status()
        return r.json()

    def clear(self) -> None:
        self.faults(clear=True)


def start_sim(groups: ProcessGroups, *extra: str, log=None, ready_timeout: float = 60.0,
              zero_latency: bool = True) -> SimWorker:
    """Start a sim worker (fast startup) in its own process group; wait for /health 200.

    Each gets a private simulated-GPU registry, so workers of other tests running on the
    same box do not take its simulated memory.
    """
    port = free_port()
    gpu_dir = str(log.parent / f"gpu-{port}") if log else tempfile.mkdtemp(prefix="simgpu-")
    argv: list[str] = [PYTHON, "-m", "backends.sim.worker", "--model-path", "sim/Qwen3-Embedding-4B",
                       "--is-embedding", "--host", "127.0.0.1", "--port", str(port),
                       "--enable-metrics", "--sim-load-s", "0.2", "--sim-warmup-s", "0.1"]
    if zero_latency:
        argv += ["--sim-base-latency-ms", "0", "--sim-per-token-us", "0"]
    argv += list(extra)
    # Supervisors of fleets on a shared box discover every SGLang-like server and probe it
    # with real embedding requests; one marked as another fleet's worker is left alone, so
    # their probes cannot move the counters and gauges asserted here.
    groups.spawn(argv, log=log, env={"EMBEDOPS_SIM_GPU_DIR": gpu_dir, FLEET_ENV: gpu_dir})
    wait_http(f"http://127.0.0.1:{port}/health", timeout=ready_timeout)
    return SimWorker(port)


def _module_worker(tmp_path_factory, *extra: str) -> Iterator[SimWorker]:
    groups = ProcessGroups()
    log = tmp_path_factory.mktemp("sim") / "worker.log"
    try:
        try:
            worker = start_sim(groups, *extra, log=log)
        except TimeoutError:
            raise AssertionError(f"sim worker did not become ready; log:\n{log.read_text()[-3000:]}")
        yield worker
    finally:
        groups.cleanup()


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> Iterator[SimWorker]:
    yield from _module_worker(tmp_path_factory)


@pytest.fixture(scope="module")
def sim_keyed(tmp_path_factory) -> Iterator[SimWorker]:
    yield from _module_worker(tmp_path_factory, "--api-key", KEY)


@pytest.fixture(scope="module")
def sim_052(tmp_path_factory) -> Iterator[SimWorker]:
    yield from _module_worker(tmp_path_factory, "--sim-sglang-version", "0.5.2")


@pytest.fixture
def worker(sim) -> Iterator[SimWorker]:
    sim.clear()
    yield sim
    sim.clear()


# --------------------------------------------------------------------------- pure helpers

def test_cosine():
    assert cosine([1.0, 0.0], [1.0, 0.0]) == pytest.approx(1.0)
    assert cosine([1.0, 0.0], [0.0, 2.0]) == pytest.approx(0.0)
    assert cosine([1.0, 1.0], [-1.0, -1.0]) == pytest.approx(-1.0)
    assert cosine([3.0, 4.0], [4.0, 3.0]) == pytest.approx(24 / 25)
    assert cosine([0.0, 0.0], [1.0, 1.0]) == 0.0
    assert cosine([0.0, 0.0], [0.0, 0.0]) == 0.0  # equal, but no direction
    assert cosine((0.6, -0.8), (0.6, -0.8)) == 1.0  # equal vectors: exactly 1
    assert cosine([2.0, 1.0], [2.0, 1.0 + 1e-9]) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        cosine([1.0], [1.0, 2.0])


@pytest.mark.parametrize("body,expected", [
    (b'{"object":"error","message":"Input cannot be empty","type":"BadRequestError",'
     b'"param":null,"code":400}', "Input cannot be empty"),
    (b'{"error":"Unauthorized"}', "Unauthorized"),
    (b'{"error":{"message":"The model \'x\' does not exist","type":"invalid_request_error"}}',
     "The model 'x' does not exist"),
    (b'{"detail":"Not Found"}', "Not Found"),
    (b"Internal Server Error", "Internal Server Error"),
    (b"", "Service Unavailable"),
])
def test_error_message_shapes(body: bytes, expected: str):
    assert error_message(body, "Service Unavailable") == expected


# --------------------------------------------------------------------------- probe

async def test_probe_ok_and_stable(worker):
    async with SglangClient(worker.url, model="sim/Qwen3-Embedding-4B") as c:
        first = await c.probe("The capital city of France is", dimension=DIM, timeout_s=5)
        again = await c.probe("The capital city of France is", dimension=DIM, timeout_s=5)
        other = await c.probe("Quelle est la capitale de la France ?", dimension=DIM, timeout_s=5)
    assert first.ok and first.status == 200 and first.error is None
    assert first.dim == DIM and first.finite and len(first.vector) == DIM
    assert 0 < first.latency_s < 5
    assert math.isclose(math.sqrt(sum(x * x for x in first.vector)), 1.0, rel_tol=1e-3)
    assert cosine(first.vector, again.vector) == pytest.approx(1.0, abs=1e-6)
    assert cosine(first.vector, other.vector) < 0.99


async def test_probe_http_500(worker):
    worker.faults(error_rate=1.0)
    async with SglangClient(worker.url) as c:
        r = await c.probe("hello", dimension=DIM, timeout_s=5)
    assert not r.ok and r.status == 500 and r.vector is None
    assert r.error.startswith("HTTP 500: "), r.error
    assert len(r.error) > len("HTTP 500: ")


async def test_probe_nan(worker):
    worker.faults(nan=True)
    async with SglangClient(worker.url) as c:
        r = await c.probe("hello", dimension=DIM, timeout_s=5)
    assert not r.ok and r.status == 200
    assert r.error == "non-finite values" and r.finite is False and r.dim == DIM


async def test_probe_wrong_dimension(worker):
    worker.faults(wrong_dim=True)
    async with SglangClient(worker.url) as c:
        r = await c.probe("hello", dimension=DIM, timeout_s=5)
        assert not r.ok and r.status == 200 and r.finite
        assert r.error == f"dimension {DIM // 2} != {DIM}"
        worker.clear()
        # and a worker that is right about a dimension we did not configure
        r = await c.probe("hello", dimension=1024, timeout_s=5)
        assert not r.ok and r.error == f"dimension {DIM} != 1024"


async def test_probe_timeout_on_hang(worker):
    worker.faults(hang=True)
    async with SglangClient(worker.url) as c:
        t = time.monotonic()
        r = await c.probe("hello", dimension=DIM, timeout_s=0.5)
        took = time.monotonic() - t
    assert not r.ok and r.status is None
    assert r.error == "timeout after 0.5s"
    assert 0.45 <= took < 3.0
    assert 0.45 <= r.latency_s < 3.0


async def test_probe_connection_refused():
    async with SglangClient(f"http://127.0.0.1:{free_port()}") as c:
        r = await c.probe("hello", dimension=DIM, timeout_s=2)
        h = await c.health(timeout_s=2)
        with pytest.raises(SglangError) as e:
            await c.model_info(timeout_s=2)
    assert not r.ok and r.status is None and r.error == "connection refused"
    assert not h.ok and h.error == "connection refused"
    assert "connection refused" in str(e.value)


# --------------------------------------------------------------------------- endpoints

async def test_info_health_ping_metrics_loads_0523(worker):
    async with SglangClient(worker.url) as c:
        mi = await c.model_info()
        si = await c.server_info()
        loads = await c.loads()
        ping = await c.ping(timeout_s=3)
        health = await c.health(timeout_s=5)
        before = parse_metrics(await c.metrics_text())
        probe = await c.probe("count me", dimension=DIM, timeout_s=5)
        after = await c.metrics()
    assert mi["is_generation"] is False and "served_model_name" in mi
    assert si["version"] == "0.5.23"
    assert "mem_fraction_static" in si
    assert "loads" in loads
    assert ping.ok and ping.status == 200 and ping.latency_s < 3
    assert health.ok and health.status == 200
    assert probe.ok
    assert after.counter("sglang:num_requests_total") >= \
        (before.counter("sglang:num_requests_total") or 0) + 1
    assert not detect_reset(before, after)


async def test_old_endpoint_names_with_052(sim_052):
    sim_052.clear()
    async with SglangClient(sim_052.url) as c:
        mi = await c.model_info()
        si = await c.server_info()
        loads = await c.loads()
        mi2 = await c.model_info()  # second call goes straight to the name that worked
        probe = await c.probe("hello", dimension=DIM, timeout_s=5)
    # 0.5.2 serves only /get_model_info, with the short body
    assert set(mi) >= {"model_path", "tokenizer_path", "is_generation"}
    assert "served_model_name" not in mi and mi2 == mi
    assert si["version"] == "0.5.2"
    assert "load" in loads
    assert probe.ok
    # the new names really are absent there
    assert httpx.get(sim_052.url + "/model_info", timeout=5).status_code == 404
    assert httpx.get(sim_052.url + "/server_info", timeout=5).status_code == 404


async def test_metrics_disabled_is_a_clear_error(tmp_path):
    groups = ProcessGroups()
    try:
        port = free_port()
        groups.spawn([PYTHON, "-m", "backends.sim.worker", "--model-path", "m", "--is-embedding",
                      "--host", "127.0.0.1", "--port", str(port), "--sim-load-s", "0.1",
                      "--sim-warmup-s", "0.1"], log=tmp_path / "w.log",
                     env={"EMBEDOPS_SIM_GPU_DIR": str(tmp_path / "gpu")})
        wait_http(f"http://127.0.0.1:{port}/health", timeout=60)
        async with SglangClient(f"http://127.0.0.1:{port}") as c:
            with pytest.raises(SglangError) as e:
                await c.metrics_text()
        assert e.value.status == 404 and "HTTP 404" in str(e.value)
    finally:
        groups.cleanup()


# --------------------------------------------------------------------------- API key

async def test_api_key(sim_keyed):
    sim_keyed.clear()
    async with SglangClient(sim_keyed.url) as anon:
        r = await anon.probe("hello", dimension=DIM, timeout_s=5)
        assert not r.ok and r.status == 401 and r.error == "HTTP 401: Unauthorized"
        with pytest.raises(SglangError) as e:
            await anon.model_info()
        assert e.value.status == 401
        assert (await anon.health(timeout_s=5)).ok  # /health is exempt
        assert (await anon.metrics_text())  # /metrics too
    async with SglangClient(sim_keyed.url, api_key=KEY) as c:
        r = await c.probe("hello", dimension=DIM, timeout_s=5)
        assert r.ok
        assert (await c.ping(timeout_s=3)).ok
        si = await c.server_info()
        assert KEY not in repr(c)
    # SGLang puts the key in /server_info in clear text; the client masks it
    assert KEY not in repr(si)
    async with SglangClient(sim_keyed.url, api_key="wrong-key-77") as bad:
        r = await bad.probe("hello", dimension=DIM, timeout_s=5)
        assert r.status == 401 and "wrong-key-77" not in r.error
        with pytest.raises(SglangError) as e:
            await bad.server_info()
        assert "wrong-key-77" not in str(e.value)


async def test_shared_http_client_is_not_closed(worker, sim_052):
    async with httpx.AsyncClient() as http:
        clients: Sequence[SglangClient] = [SglangClient(worker.url, http=http),
                                           SglangClient(sim_052.url, http=http)]
        results = await asyncio.gather(*(c.probe("x", dimension=DIM, timeout_s=5)
                                         for c in clients))
        for c in clients:
            await c.aclose()
        assert all(r.ok for r in results)
        assert not http.is_closed
        # still usable after the per-worker clients were closed
        assert (await http.get(worker.url + "/v1/models", timeout=5)).status_code == 200
