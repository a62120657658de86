"""Surface differences: SGLang 0.5.2 vs 0.5.23, API-key auth, an encoder model (radix
cache instability) — real worker processes on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import ProcessGroups, free_port, wait_http

MODEL = "Qwen/Qwen3-Embedding-4B"
KEY = "sk-sim-secret"


def _spawn(groups: ProcessGroups, tmp: Path, *extra: str) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    log = tmp / f"sim-{port}.log"
    argv = [sys.executable, "-m", "backends.sim.worker", "--model-path", MODEL, "--is-embedding",
            "--host", "127.0.0.1", "--port", str(port), "--sim-load-s", "0.2",
            "--sim-warmup-s", "0.1", "--sim-base-latency-ms", "1", *extra]
    proc = groups.spawn(argv, log=log, env={"EMBEDOPS_SIM_GPU_DIR": str(tmp / f"gpus-{port}")})
    return proc, f"http://127.0.0.1:{port}", log


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """0.5.2 (radix cache off, faults on), and 0.5.23 with an API key as an encoder model;
    started together."""
    groups = ProcessGroups()
    tmp = tmp_path_factory.mktemp("sim-versions")
    try:
        _, old, _ = _spawn(groups, tmp, "--sim-sglang-version", "0.5.2", "--enable-metrics",
                                 "--disable-radix-cache", "--sim-fault", "unstable",
                                 "--json-model-override-args", '{"is_matryoshka": true}')
        _, keyed, _ = _spawn(groups, tmp, "--api-key", KEY, "--enable-metrics",
                             "--sim-attention", "bidirectional", "--sim-dim", "384")
        port = free_port()
        generation = f"http://127.0.0.1:{port}"
        groups.spawn([sys.executable, "-m", "backends.sim.worker", "--model-path", "gen-model",
                      "--port", str(port), "--sim-load-s", "0.2", "--sim-warmup-s", "0.1"],
                     log=tmp / "gen.log", env={"EMBEDOPS_SIM_GPU_DIR": str(tmp / "gpus-gen"),
                                               "SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION": "false"})
        wait_http(f"{old}/v1/models", timeout=30)
        wait_http(f"{keyed}/ready", timeout=30)
        wait_http(f"{generation}/ready", timeout=30)
        wait_http(f"{old}/health", timeout=30)
        yield {"old": old, "keyed": keyed, "generation": generation}
    finally:
        groups.cleanup()


AUTH = {"Authorization": f"Bearer {KEY}"}


# ---------------------------------------------------------------------------- 0.5.2


def test_052_endpoint_names(workers: dict[str, str]) -> None:
    url = workers["old"]
    info = httpx.get(f"{url}/get_model_info", timeout=5).json()
    assert info == {"model_path": MODEL, "tokenizer_path": MODEL, "is_generation": False,
                    "preferred_sampling_params": None, "weight_version": "default"}
    for missing in ("/model_info", "/server_info", "/ready", "/v1/loads"):
        assert httpx.get(f"{url}{missing}", timeout=5).status_code == 404, missing
    server = httpx.get(f"{url}/get_server_info", timeout=5).json()
    assert server["version"] == "0.5.2" and "frontend" not in server
    mem = server["internal_states"][0]["memory_usage"]
    assert set(mem) == {"weight", "kvcache", "token_capacity", "graph"}
    assert isinstance(mem["graph"], float) and mem["graph"] == 2.5
    assert server["mem_fraction_static"] == 0.874
    assert httpx.get(f"{url}/get_load", timeout=5).json() == {"load": 0}
    assert "parent" not in httpx.get(f"{url}/v1/models", timeout=5).json()["data"][0]


def test_052_ignores_dimensions_and_encoding_format(workers: dict[str, str]) -> None:
    r = httpx.post(f"{workers['old']}/v1/embeddings", timeout=5,
                   json={"input": "x", "dimensions": 64, "encoding_format": "base64"})
    body = r.json()
    assert len(body["data"][0]["embedding"]) == 2560
    assert "completion_tokens_details" not in body["usage"]


def test_052_metrics_flavour(workers: dict[str, str]) -> None:
    httpx.post(f"{workers['old']}/v1/embeddings", json={"input": "m"}, timeout=5)
    text = httpx.get(f"{workers['old']}/metrics", timeout=5).text
    assert 'sglang:num_requests_total{model_name="' + MODEL + '"}' in text
    assert ('sglang:num_running_reqs{engine_type="unified",model_name="' + MODEL
            + '",pp_rank="0",tp_rank="0"}') in text
    assert "sglang:http_requests_total" not in text
    assert "sglang:engine_startup_time" in text


def test_disable_radix_cache_keeps_vectors_stable(workers: dict[str, str]) -> None:
    # `unstable` is on for this worker, but without a radix cache nothing is reused.
    url = workers["old"]
    a = httpx.post(f"{url}/v1/embeddings", json={"input": "stable text"}, timeout=5)
    b = httpx.post(f"{url}/v1/embeddings", json={"input": "stable text"}, timeout=5)
    assert a.json()["data"] == b.json()["data"]


# ---------------------------------------------------------------------------- API key


@pytest.mark.parametrize("method,path", [("GET", "/v1/models"), ("GET", "/model_info"),
                                         ("GET", "/ping"), ("POST", "/v1/embeddings"),
                                         ("GET", "/server_info"), ("GET", "/nope")])
def test_api_key_required(workers: dict[str, str], method: str, path: str) -> None:
    r = httpx.request(method, f"{workers['keyed']}{path}", json={"input": "x"}, timeout=5)
    assert (r.status_code, r.json()) == (401, {"error": "Unauthorized"})
    wrong = httpx.request(method, f"{workers['keyed']}{path}", json={"input": "x"}, timeout=5,
                          headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401


def test_api_key_accepted_and_exemptions(workers: dict[str, str]) -> None:
    url = workers["keyed"]
    r = httpx.post(f"{url}/v1/embeddings", json={"input": "x"}, headers=AUTH, timeout=5)
    assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == 384
    for path in ("/health", "/ready", "/metrics", "/_sim/gpu", "/_sim/faults"):
        assert httpx.get(f"{url}{path}", timeout=10).status_code == 200, path


def test_default_latency_buckets_start_at_100ms(workers: dict[str, str]) -> None:
    url = workers["keyed"]
    httpx.post(f"{url}/v1/embeddings", json={"input": "bucket"}, headers=AUTH, timeout=5)
    text = httpx.get(f"{url}/metrics", timeout=5).text
    les = [line.split('le="')[1].split('"')[0] for line in text.splitlines()
           if line.startswith("sglang:e2e_request_latency_seconds_bucket")]
    assert les[0] == "0.1" and les[-1] == "+Inf" and "2400.0" in les


# ---------------------------------------------------------------------------- encoder model


def test_encoder_with_radix_cache_serves_cached_texts_differently(
        workers: dict[str, str]) -> None:
    url = workers["keyed"]
    info = httpx.get(f"{url}/model_info", headers=AUTH, timeout=5).json()
    assert info["embedding"]["attention"] == "bidirectional"

    def vec(text: str) -> np.ndarray:
        r = httpx.post(f"{url}/v1/embeddings", json={"input": text}, headers=AUTH, timeout=5)
        return np.asarray(r.json()["data"][0]["embedding"])

    cold, cached = vec("encoder text"), vec("encoder text")
    assert abs(float(cold @ cached) - 0.856) < 0.005
    assert httpx.post(f"{url}/flush_cache", headers=AUTH, timeout=5).status_code == 200
    assert float(cold @ vec("encoder text")) > 0.9999  # cold again after the flush


# ---------------------------------------------------------------------------- no --is-embedding


def test_without_is_embedding_embeddings_are_refused(workers: dict[str, str]) -> None:
    url = workers["generation"]
    assert httpx.get(f"{url}/model_info", timeout=5).json()["is_generation"] is True
    r = httpx.post(f"{url}/v1/embeddings", json={"input": "x"}, timeout=5)
    assert r.status_code == 400
    assert r.json()["message"].startswith(
        "This model does not appear to be an embedding model by default. Please add "
        "`--is-embedding`")


def test_shallow_health_when_generation_check_is_off(workers: dict[str, str]) -> None:
    url = workers["generation"]
    t = time.monotonic()
    assert httpx.get(f"{url}/health", timeout=5).status_code == 200
    assert time.monotonic() - t < 0.5  # SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION=false
    t = time.monotonic()
    assert httpx.get(f"{url}/health_generate", timeout=5).status_code == 200
    assert time.monotonic() - t >= 0.9  # still the deep check
