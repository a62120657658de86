"""The load generator against real simulated workers (fault switches do the breaking)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import httpx
import pytest

from backends.promtext import parse_metrics
from backends.sim.loadgen import LoadSpec, run_load
from tests.conftest import PYTHON, REPO, ProcessGroups
from tests.functional.test_sglang_client import SimWorker, start_sim

DIM = 2560
KEY = "sk-load-Pw33"


def _requests_served(url: str) -> float:
    text = httpx.get(url + "/metrics", headers={"Accept": "text/plain"}, timeout=5).text
    return parse_metrics(text).counter("sglang:num_requests_total") or 0.0


@pytest.fixture(scope="module")
def sims(tmp_path_factory) -> Iterator[dict[str, SimWorker]]:
    groups = ProcessGroups()
    d = tmp_path_factory.mktemp("lgsim")
    try:
        yield {"plain": start_sim(groups, log=d / "plain.log"),
               "keyed": start_sim(groups, "--api-key", KEY, log=d / "keyed.log")}
    finally:
        groups.cleanup()


@pytest.fixture
def sim(sims) -> Iterator[SimWorker]:
    sims["plain"].clear()
    yield sims["plain"]
    sims["plain"].clear()


@pytest.mark.parametrize("verify", ["cheap", "full"])
def test_all_ok_and_really_served(sims, verify):
    # the keyed worker: on a shared box a foreign client that remembers this port (another
    # fleet's supervisor probing it) gets 401 and cannot add to the served count
    sim = sims["keyed"]
    before = _requests_served(sim.url)
    r = run_load(LoadSpec(url=sim.url, rate=200, count=100, dimension=DIM, verify=verify,
                          model="sim/Qwen3-Embedding-4B", deadline_s=10, api_key=KEY))
    assert r.sent == 100 and r.ok == 100 and r.error_total == 0, r.to_json()
    assert _requests_served(sim.url) - before == 100
    assert r.latency_ms["n"] == 100 and r.latency_ms["p99"] < 10_000


def test_batches_and_long_inputs(sim):
    r = run_load(LoadSpec(url=sim.url, rate=50, count=10, batch=8, input_tokens=200,
                          dimension=DIM, verify="full"))
    assert r.ok == 10, r.to_json()


def test_slow_worker_does_not_slow_the_schedule(sim):
    sim.faults(slow_ms=300)
    r = run_load(LoadSpec(url=sim.url, rate=40, duration_s=1.0, dimension=DIM, deadline_s=10))
    assert r.sent == 40 and r.ok == 40, r.to_json()
    # sent on time although each answer takes >= 300 ms
    assert r.achieved_rps == pytest.approx(40, rel=0.2)
    assert r.send_lag_ms["p99"] < 500  # waiting for answers would lag by seconds
    assert r.max_in_flight >= 8
    assert r.latency_ms["p50"] >= 300


def test_hang_is_counted_as_timeouts(sim):
    sim.faults(hang=True)
    r = run_load(LoadSpec(url=sim.url, rate=20, count=6, deadline_s=0.6))
    assert r.ok == 0 and r.errors["timeout"] == 6, r.to_json()
    assert r.latency_all_ms["p50"] >= 600


def test_500s_by_code_and_retries(sim):
    sim.faults(error_rate=1.0)
    r = run_load(LoadSpec(url=sim.url, rate=50, count=8))
    assert r.errors["http_5xx"] == {"500": 8}, r.to_json()
    sim.faults(error_rate=0.5)
    r = run_load(LoadSpec(url=sim.url, rate=50, count=20, retries=4, dimension=DIM))
    assert r.ok >= 17, r.to_json()
    assert r.retries > 0 and r.ok_after_retry > 0


@pytest.mark.parametrize("fault,why", [("nan", "non-finite"), ("wrong_dim", "dimension")])
def test_bad_vectors_are_bad_body(sim, fault, why):
    sim.faults(**{fault: True})
    r = run_load(LoadSpec(url=sim.url, rate=50, count=5, dimension=DIM))
    assert r.errors["bad_body"] == 5 and r.ok == 0, r.to_json()
    assert why in r.error_samples[0]


def test_api_key(sims):
    keyed = sims["keyed"]
    r = run_load(LoadSpec(url=keyed.url, rate=50, count=5))
    assert r.errors["http_4xx"] == {"401": 5}
    r = run_load(LoadSpec(url=keyed.url, rate=50, count=5, api_key=KEY, dimension=DIM))
    assert r.ok == 5


def test_duration_and_count_bounds(sim):
    r = run_load(LoadSpec(url=sim.url, rate=100, duration_s=0.5, count=1000, dimension=DIM))
    assert r.sent == 50 and r.ok == 50
    r = run_load(LoadSpec(url=sim.url, rate=100, duration_s=10, count=7, dimension=DIM))
    assert r.sent == 7 and r.duration_s < 5


def test_cli_json(sim):
    out = subprocess.run(
        [PYTHON, "-m", "backends.sim.loadgen", "--url", sim.url, "--rate", "100", "--count", "20",
         "--model", "m", "--deadline-s", "5", "--dimension", str(DIM), "--json", "--quiet"],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    import json
    report = json.loads(out.stdout)
    assert report["sent"] == 20 and report["ok"] == 20 and report["model"] == "m"
    assert set(report["latency_ms"]) == {"n", "p50", "p95", "p99", "max", "mean"}

    sim.faults(error_rate=1.0)
    out = subprocess.run(
        [PYTHON, "-m", "backends.sim.loadgen", "--url", sim.url, "--rate", "100", "--count", "5"],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "errors 5" in out.stdout
