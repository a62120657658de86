"""Balancers for real: sglang-router 0.3.2 and nginx in front of simulated SGLang
workers, all on 127.0.0.1.

Three sim workers are shared by the module (faults cleared after every test); every
test starts its own balancer and stops it by its verified process group. The nginx
variants skip with a reason when the binary is not installed.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from backends import procs as bprocs
from backends.balancer import Balancer, BalancerError, adopt_balancer, create_balancer
from backends.balancer_nginx import Nginx, NginxSettings
from backends.balancer_process import port_in_use
from backends.balancer_router import RouterSettings, SglangRouter
from backends.promtext import parse_metrics
from backends.sim.loadgen import LoadGen, LoadSpec
from tests.conftest import ProcessGroups, free_port, wait_http

MODEL = "sim-model"
KEY = "balancer-test-key"
"""The sims require this key: on a shared box other engineers' supervisors discover and
probe every sim worker; without the key their probes get 401 and do not disturb the
request counters and running-request gauges these tests assert on."""
NGINX = shutil.which("nginx")
NO_NGINX = "nginx not on PATH (apt-get install -y nginx); nginx variants skipped"

KINDS = [
    pytest.param("sglang-router", id="router"),
    pytest.param("nginx", id="nginx", marks=[
        pytest.mark.nginx, pytest.mark.skipif(NGINX is None, reason=NO_NGINX)]),
]


# --------------------------------------------------------------------------- workers

def sim_argv(port: int) -> list[str]:
    # a small static pool so several sims fit on one simulated card
    return [sys.executable, "-m", "backends.sim.worker", "--model-path", MODEL,
            "--is-embedding", "--host", "127.0.0.1", "--port", str(port),
            "--mem-fraction-static", "0.2", "--enable-metrics",
            "--sim-load-s", "0.2", "--sim-warmup-s", "0.2", "--api-key", KEY]


def sim_env(log_dir: Path) -> dict[str, str]:
    """A private simulated-GPU registry: other tests' sims do not use up our card."""
    return {"EMBEDOPS_SIM_GPU_DIR": str(log_dir / "gpu")}


def start_sims(groups: ProcessGroups, log_dir: Path, n: int) -> list[str]:
    urls = []
    for i in range(n):
        port = free_port()
        groups.spawn(sim_argv(port), log=log_dir / f"sim{i}.log", env=sim_env(log_dir))
        urls.append(f"http://127.0.0.1:{port}")
    for url in urls:
        wait_http(url + "/health", timeout=60)
    return urls


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Three ready sim workers shared by the module."""
    groups = ProcessGroups()
    try:
        yield start_sims(groups, tmp_path_factory.mktemp("sims"), 3)
    finally:
        groups.cleanup()


@pytest.fixture(autouse=True)
def _clear_faults(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "fleet" in request.fixturenames:
        for url in request.getfixturevalue("fleet"):
            httpx.post(url + "/_sim/faults", json={"clear": True}, timeout=5)


def set_fault(url: str, **faults: object) -> None:
    r = httpx.post(url + "/_sim/faults", json=faults, timeout=5)
    assert r.status_code == 200, r.text


async def metrics(client: httpx.AsyncClient, url: str):
    r = await client.get(url + "/metrics", timeout=5)
    r.raise_for_status()
    return parse_metrics(r.text, content_type=r.headers.get("content-type"))


def running_reader(client: httpx.AsyncClient, url: str):
    """The worker's own running + queued requests (absent series: nothing ran yet)."""
    async def read() -> int | None:
        snap = await metrics(client, url)
        vals = [snap.value("sglang:num_running_reqs"), snap.value("sglang:num_queue_reqs")]
        return int(sum(v for v in vals if v is not None))
    return read


async def served(client: httpx.AsyncClient, url: str) -> float:
    """Requests the worker completed (its own counter)."""
    return (await metrics(client, url)).value("sglang:num_requests_total") or 0.0


async def embed(client: httpx.AsyncClient, base: str, text: str = "hello", *,
                key: str | None = KEY) -> httpx.Response:
    """One embedding request; with `key=None` the client sends no Authorization header."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return await client.post(base + "/v1/embeddings", json={"model": MODEL, "input": text},
                             headers=headers, timeout=20)


async def join(b: Balancer, url: str):
    """Add a worker; the router holds the worker's key, nginx passes the client's."""
    return await b.add(url, api_key=KEY if b.kind == "sglang-router" else None)


# --------------------------------------------------------------------------- balancers

def settings_for(kind: str) -> RouterSettings | NginxSettings:
    if kind == "nginx":
        return NginxSettings(port=free_port(), read_timeout_s=15)
    # fast health checks so tests see state changes within a second or two
    return RouterSettings(port=free_port(), prometheus_port=free_port(),
                          health_check_interval_s=1, health_check_timeout_s=3,
                          request_timeout_s=15, shutdown_grace_s=3)


async def _force_stop(identity: bprocs.ProcessIdentity | None) -> None:
    if identity is not None and bprocs.verify(identity):
        await bprocs.stop_group(identity, grace_s=5)


@pytest.fixture(params=KINDS)
async def balancer(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Balancer]:
    """A started balancer of each kind; stopped (group) at teardown."""
    b = create_balancer(settings_for(request.param), tmp_path)
    await b.start()
    try:
        yield b
    finally:
        ident = b.identity
        try:
            await b.stop()
        finally:
            await _force_stop(ident)


@pytest.fixture
async def router(tmp_path: Path) -> AsyncIterator[SglangRouter]:
    b = SglangRouter(settings_for("sglang-router"), tmp_path)  # type: ignore[arg-type]
    await b.start()
    try:
        yield b
    finally:
        ident = b.identity
        try:
            await b.stop()
        finally:
            await _force_stop(ident)


@pytest.fixture
async def nginx(tmp_path: Path) -> AsyncIterator[Nginx]:
    if NGINX is None:
        pytest.skip(NO_NGINX)
    b = Nginx(settings_for("nginx"), tmp_path)  # type: ignore[arg-type]
    await b.start()
    try:
        yield b
    finally:
        ident = b.identity
        try:
            await b.stop()
        finally:
            await _force_stop(ident)


async def wait_for(pred, timeout_s: float, what: str, poll_s: float = 0.1):
    """Await `pred()` until truthy; bounded."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = await pred()
        if got:
            return got
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout_s}s (last {got!r})")
        await asyncio.sleep(poll_s)


# --------------------------------------------------------------------------- both kinds

async def test_start_healthy_stop_leaves_no_process(balancer: Balancer) -> None:
    ident = balancer.identity
    assert ident is not None and bprocs.verify(ident)
    assert await balancer.healthy()
    members = bprocs.group_pids(ident)
    assert ident.pid in members
    port = int(balancer.url.rsplit(":", 1)[1])
    assert port_in_use("127.0.0.1", port)

    await balancer.stop()

    assert not await balancer.healthy()
    for pid in members:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie", pid
    assert not port_in_use("127.0.0.1", port)
    await balancer.stop()  # idempotent


@pytest.mark.parametrize("kind", KINDS)
async def test_start_refuses_a_port_in_use(kind: str, tmp_path: Path) -> None:
    settings = settings_for(kind)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", settings.port))
        holder.listen()
        b = create_balancer(settings, tmp_path)
        with pytest.raises(BalancerError, match="in use"):
            await b.start()
        assert b.identity is None
        await b.close()


async def test_add_list_remove_routes_only_to_members(balancer: Balancer,
                                                      fleet: list[str]) -> None:
    a, b, c = fleet
    first = await join(balancer, a + "/")
    await join(balancer, b)
    again = await join(balancer, a)  # idempotent
    assert first.url == a and again.worker_id == first.worker_id
    listed = await balancer.list()
    assert sorted(w.url for w in listed) == sorted([a, b])
    if balancer.kind == "sglang-router":
        assert all(w.healthy is True and w.circuit == "closed" and w.worker_id for w in listed)
    else:
        assert all(w.healthy is None for w in listed)

    async with httpx.AsyncClient() as client:
        before = {u: await served(client, u) for u in fleet}
        for i in range(12):
            r = await embed(client, balancer.url, f"t{i}")
            assert r.status_code == 200, r.text
        mid = {u: await served(client, u) for u in fleet}
        assert mid[a] > before[a] and mid[b] > before[b]  # round robin over both
        assert mid[c] == before[c]

        assert await balancer.remove(b) is True
        assert [w.url for w in await balancer.list()] == [a]
        assert await balancer.state(b) is None and await balancer.state(a) is not None
        for i in range(8):
            assert (await embed(client, balancer.url, f"u{i}")).status_code == 200
        after = {u: await served(client, u) for u in fleet}
        assert after[b] == mid[b] and after[a] == mid[a] + 8
    assert await balancer.remove(b) is False


async def test_drain_waits_for_in_flight_requests(balancer: Balancer, fleet: list[str]) -> None:
    a, b, _ = fleet
    await join(balancer, a)
    await join(balancer, b)
    set_fault(b, slow_ms=2000)
    async with httpx.AsyncClient() as client:
        read_b = running_reader(client, b)
        calls = [asyncio.create_task(embed(client, balancer.url, f"s{i}")) for i in range(4)]
        await wait_for(read_b, 10, "requests running on the slow worker", poll_s=0.05)

        short = await balancer.drain(b, read_b, timeout_s=0.3)
        assert short.removed and short.timed_out and not short.drained
        assert short.in_flight is not None and short.in_flight >= 1
        assert await balancer.state(b) is None

        t0 = time.monotonic()
        full = await balancer.drain(b, read_b, timeout_s=15)
        assert full.drained and not full.removed and full.in_flight == 0
        # it really waited: the 2 s requests were still running when it began
        assert 0.5 <= full.elapsed_s < 10
        assert await read_b() == 0
        results = await asyncio.wait_for(asyncio.gather(*calls), 5)
        assert [r.status_code for r in results] == [200] * 4
        assert time.monotonic() - t0 < 10

        count_b = await served(client, b)
        for i in range(6):
            assert (await embed(client, balancer.url, f"n{i}")).status_code == 200
        assert await served(client, b) == count_b


async def test_remove_under_open_loop_load_loses_nothing(balancer: Balancer,
                                                         fleet: list[str]) -> None:
    a, b, c = fleet
    for url in fleet:
        await join(balancer, url)
    set_fault(c, slow_ms=150)  # keeps requests in flight on the one we drain
    spec = LoadSpec(url=balancer.url, rate=60, duration_s=5.0, model=MODEL, deadline_s=15,
                    api_key=KEY)
    gen = LoadGen(spec)
    async with httpx.AsyncClient() as client:
        load = asyncio.create_task(gen.run())
        await asyncio.sleep(1.5)
        result = await balancer.drain(c, running_reader(client, c), timeout_s=10)
        assert result.removed and result.drained, result
        left = await served(client, c)
        await asyncio.sleep(1.0)
        assert await served(client, c) == left  # nothing routed to it after the ack
        await join(balancer, c)  # undrain under load
        report = await asyncio.wait_for(load, 30)
        print(json.dumps({"kind": balancer.kind, "sent": report.sent, "ok": report.ok,
                          "errors": report.error_total, "drain_s": round(result.elapsed_s, 3),
                          "latency_ms": report.latency_ms}))
        assert await served(client, c) > left  # back in rotation
    assert report.error_total == 0, (report.errors, report.error_samples)
    assert report.ok == report.sent and report.sent >= 250


@pytest.mark.parametrize("kind", KINDS)
async def test_adopt_running_balancer_after_object_dropped(kind: str, tmp_path: Path,
                                                           fleet: list[str]) -> None:
    a, b, _ = fleet
    settings = settings_for(kind)
    first = create_balancer(settings, tmp_path)
    await first.start()
    ident = first.identity
    assert ident is not None
    try:
        await join(first, a)
        await first.close()
        del first
        async with httpx.AsyncClient() as client:
            # the supervisor is "gone": the balancer keeps serving clients
            for i in range(4):
                assert (await embed(client, settings.url, f"x{i}")).status_code == 200

            stranger = bprocs.identify(psutil.Process().pid)
            assert stranger is not None
            with pytest.raises(BalancerError):
                await adopt_balancer(settings, tmp_path, stranger)
            stale = bprocs.ProcessIdentity(ident.pid, ident.create_time - 100, ident.cmdline_hash)
            with pytest.raises(BalancerError):
                await adopt_balancer(settings, tmp_path, stale)

            again = await adopt_balancer(settings, tmp_path, ident)
            assert again.identity == ident and await again.healthy()
            assert [w.url for w in await again.list()] == [a]
            await join(again, b)
            assert sorted(w.url for w in await again.list()) == sorted([a, b])
            assert (await embed(client, settings.url)).status_code == 200
            members = bprocs.group_pids(ident)
            await again.stop()
        assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
                       for p in members)
    finally:
        await _force_stop(ident)


# --------------------------------------------------------------------------- router only

async def test_router_add_before_worker_is_up(router: SglangRouter, tmp_path: Path,
                                              procs: ProcessGroups) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    pending = await router.add(url, api_key=KEY, wait_s=0.5)
    assert pending.pending and pending.healthy is False and pending.worker_id
    assert [w.url for w in await router.list() if w.pending] == [url]
    # the router cannot cancel an add job that is still retrying: refuse loudly
    with pytest.raises(BalancerError, match="cannot cancel"):
        await router.remove(url, wait_s=0.3)

    procs.spawn(sim_argv(port), log=tmp_path / "late.log", env=sim_env(tmp_path))

    async def registered():
        w = await router.state(url)
        return w if w is not None and not w.pending and w.healthy else None

    w = await wait_for(registered, 30, "late worker registered")
    assert w.worker_id == pending.worker_id
    async with httpx.AsyncClient() as client:
        # no client key: the router sends the worker's key itself
        assert (await embed(client, router.url, key=None)).status_code == 200
    assert await router.remove(url) is True
    assert await router.list() == []


async def test_router_circuit_opens_and_clients_see_no_error(router: SglangRouter,
                                                             fleet: list[str]) -> None:
    a, b, _ = fleet
    await join(router, a)
    await join(router, b)
    set_fault(a, error_rate=1.0)
    async with httpx.AsyncClient() as client:
        for i in range(10):
            r = await embed(client, router.url, f"e{i}", key=None)
            assert r.status_code == 200, r.text  # retried on b
    state = await router.state(a)
    assert state is not None and state.circuit == "open" and not state.routable
    assert (await router.state(b)).circuit == "closed"  # type: ignore[union-attr]


# --------------------------------------------------------------------------- nginx only

async def test_nginx_rejected_config_rolls_back(nginx: Nginx, fleet: list[str]) -> None:
    a = fleet[0]
    await join(nginx, a)
    text, gen = nginx.upstream_path.read_text(), nginx.generation
    with pytest.raises(BalancerError, match="per-worker API key"):
        await nginx.add(fleet[1], api_key=KEY)
    with pytest.raises(BalancerError, match="host not found"):
        await nginx.add("http://no-such-host.invalid:1")
    assert nginx.upstream_path.read_text() == text and nginx.generation == gen
    assert [w.url for w in await nginx.list()] == [a]
    async with httpx.AsyncClient() as client:
        assert (await embed(client, nginx.url)).status_code == 200


async def test_nginx_empty_pool_503_and_large_bodies(nginx: Nginx, fleet: list[str]) -> None:
    async with httpx.AsyncClient() as client:
        assert (await embed(client, nginx.url)).status_code == 503
        await join(nginx, fleet[0])
        # > client_body_buffer_size default (16k): must not be spooled to a temp file
        big = " ".join(["word"] * 4000)  # ~20 KB
        r = await embed(client, nginx.url, big)
        assert r.status_code == 200, r.text[:300]
        await nginx.remove(fleet[0])
        assert (await embed(client, nginx.url)).status_code == 503
