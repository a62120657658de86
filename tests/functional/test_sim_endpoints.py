"""The simulated worker's HTTP surface (SGLang 0.5.23 flavour), against a real worker
process on 127.0.0.1: every endpoint, status code, JSON shape, error body and metric."""

from __future__ import annotations

import base64
import concurrent.futures
import os
import socket
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ProcessGroups, free_port, wait_http

MODEL = "Qwen/Qwen3-Embedding-4B"
# The module's worker runs with an API key so that nothing else on a shared machine (a
# supervisor or router that still remembers this port from an earlier worker) can add
# embedding requests to the counters these tests compare: foreign requests get 401.
KEY = "endpoints-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


class Sim:
    """A running simulated worker."""

    def __init__(self, proc, port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.log = log
        self.url = f"http://127.0.0.1:{port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def spawn(groups: ProcessGroups, tmp: Path, *extra: str, env: dict[str, str] | None = None) -> Sim:
    port = free_port()
    log = tmp / f"sim-{port}.log"
    argv = [sys.executable, "-m", "backends.sim.worker", "--model-path", MODEL, "--is-embedding",
            "--host", "127.0.0.1", "--port", str(port), "--sim-load-s", "0.2",
            "--sim-warmup-s", "0.1", *extra]
    proc = groups.spawn(argv, log=log,
                        env={"EMBEDOPS_SIM_GPU_DIR": str(tmp / "gpus"), **(env or {})})
    return Sim(proc, port, log)


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    groups = ProcessGroups()
    tmp = tmp_path_factory.mktemp("sim-endpoints")
    try:
        s = spawn(groups, tmp, "--enable-metrics", "--json-model-override-args",
                  '{"is_matryoshka": true}', "--bucket-e2e-request-latency", "0.001", "0.005",
                  "0.01", "0.1", "--sim-base-latency-ms", "1", "--sim-per-token-us", "1",
                  "--context-length", "512", "--api-key", KEY)
        wait_http(f"{s.url}/ready", timeout=30)
        yield s
    finally:
        groups.cleanup()


@pytest.fixture(scope="module")
def client(sim: Sim) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.url, timeout=10, headers=AUTH) as c:
        yield c


def _embed(client: httpx.Client, **body: object) -> httpx.Response:
    return client.post("/v1/embeddings", json=body)


def _vec(r: httpx.Response, i: int = 0) -> np.ndarray:
    return np.asarray(r.json()["data"][i]["embedding"], dtype=np.float64)


def _metrics(client: httpx.Client) -> dict[tuple[str, frozenset], float]:
    r = client.get("/metrics")
    assert r.status_code == 200
    out = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def _metric(samples: dict, name: str, **labels: str) -> float:
    hits = [v for (n, lab), v in samples.items() if n == name and set(labels.items()) <= lab]
    assert hits, f"{name}{labels} not exposed"
    return sum(hits)


# ---------------------------------------------------------------------------- health & info


def test_health_is_deep_ping_is_instant(client: httpx.Client) -> None:
    t = time.monotonic()
    r = client.get("/health")
    took = time.monotonic() - t
    assert (r.status_code, r.content) == (200, b"")
    assert took >= 0.9  # a real 1-token request, checked after a 1 s sleep
    assert client.get("/health_generate").status_code == 200
    t = time.monotonic()
    assert client.get("/ping").status_code == 200
    assert time.monotonic() - t < 0.5
    assert client.get("/ready").status_code == 200


def test_model_info_with_embedding_block(client: httpx.Client) -> None:
    info = client.get("/model_info").json()
    assert info == client.get("/get_model_info").json()
    assert info["model_path"] == MODEL and info["is_generation"] is False
    assert info["architectures"] == ["Qwen3ForCausalLM"] and info["model_type"] == "qwen3"
    assert info["weight_version"] == "default" and info["disaggregation_mode"] == "null"
    emb = info["embedding"]
    assert emb["attention"] == "causal" and emb["pooling"] == "last"
    assert emb["supports_dimensions"] is True and emb["matryoshka_dimensions"] is None


def test_server_info(client: httpx.Client) -> None:
    info = client.get("/server_info").json()
    assert info.keys() == client.get("/get_server_info").json().keys()
    assert info["is_embedding"] is True and info["status"] == "ready"
    assert info["version"] == "0.5.23" and info["frontend"] == "python"
    assert info["context_length"] == 512 and info["chunked_prefill_size"] == 8192
    assert 0.82 <= info["mem_fraction_static"] <= 0.84
    assert isinstance(info["max_running_requests"], int) and info["max_running_requests"] > 0
    assert info["max_total_num_tokens"] > 100000
    assert info["max_req_input_len"] == 512 - 1 - 5
    mem = info["internal_states"][0]["memory_usage"]
    assert set(mem) == {"weight", "kvcache", "startup_available", "token_capacity",
                        "token_capacity_swa", "graph"}
    assert mem["weight"] == 7.5 and mem["graph"] == {"prefill": 1.5}


def test_models_and_card(client: httpx.Client) -> None:
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    (card,) = body["data"]
    assert card == {"id": MODEL, "object": "model", "created": card["created"],
                    "owned_by": "sglang", "root": MODEL, "parent": None, "max_model_len": 512}
    assert client.get(f"/v1/models/{MODEL}").json() == card
    r = client.get("/v1/models/nope")
    assert r.status_code == 404
    assert r.json() == {"error": {"message": "The model 'nope' does not exist",
                                  "type": "invalid_request_error", "param": "model",
                                  "code": "model_not_found"}}


def test_unknown_path_and_method(client: httpx.Client) -> None:
    r = client.get("/nope")
    assert (r.status_code, r.json()) == (404, {"detail": "Not Found"})
    r = client.get("/v1/embeddings")
    assert (r.status_code, r.json()) == (405, {"detail": "Method Not Allowed"})
    assert client.get("/get_load").status_code == 404  # removed in 0.5.23


def test_loads(client: httpx.Client) -> None:
    body = client.get("/v1/loads").json()
    assert body["version"] == "0.5.23" and len(body["loads"]) == 1
    load = body["loads"][0]
    assert load["dp_rank"] == 0 and load["num_running_reqs"] == 0
    assert load["max_total_num_tokens"] > 0
    assert set(load["memory"]) == {"weight_gb", "kv_cache_gb", "graph_gb", "token_capacity"}


# ---------------------------------------------------------------------------- embeddings


def test_single_text(client: httpx.Client) -> None:
    r = _embed(client, input="Hello world", model=MODEL)
    assert r.status_code == 200
    body = r.json()
    assert list(body) == ["data", "model", "object", "usage"]
    assert body["model"] == MODEL and body["object"] == "list"
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3, "completion_tokens": 0,
                             "prompt_tokens_details": None, "reasoning_tokens": 0,
                             "completion_tokens_details": None}
    (item,) = body["data"]
    assert item["index"] == 0 and item["object"] == "embedding"
    v = _vec(r)
    assert v.shape == (2560,) and abs(np.linalg.norm(v) - 1) < 1e-5


def test_vectors_are_deterministic_and_distinct(client: httpx.Client) -> None:
    a1 = _vec(_embed(client, input="determinism check"))
    a2 = _vec(_embed(client, input="determinism check"))  # radix hit: causal model, same vector
    b = _vec(_embed(client, input="something else entirely"))
    assert np.array_equal(a1, a2)
    assert abs(float(a1 @ b)) < 0.2


def test_model_field_is_optional(client: httpx.Client) -> None:
    assert _embed(client, input="no model field").status_code == 200


def test_batch_and_token_id_inputs(client: httpx.Client) -> None:
    r = _embed(client, input=["one", "two two", "three three three"])
    body = r.json()
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert body["usage"]["prompt_tokens"] == 2 + 3 + 4
    single = _vec(_embed(client, input="two two"))
    assert np.allclose(_vec(r, 1), single)
    ids = _embed(client, input=[101, 102, 103]).json()
    assert len(ids["data"]) == 1 and ids["usage"]["prompt_tokens"] == 3
    idss = _embed(client, input=[[1, 2], [3, 4, 5]]).json()
    assert len(idss["data"]) == 2 and idss["usage"]["prompt_tokens"] == 5


def test_matryoshka_dimensions(client: httpx.Client) -> None:
    full = _vec(_embed(client, input="mrl text"))
    r = _embed(client, input="mrl text", dimensions=256)
    v = _vec(r)
    assert v.shape == (256,) and abs(np.linalg.norm(v) - 1) < 1e-5
    assert np.allclose(v, full[:256] / np.linalg.norm(full[:256]), atol=1e-6)
    r = _embed(client, input="x", dimensions=4096)
    assert r.status_code == 400
    assert r.json()["message"] == "Provided dimensions are greater than max embedding dimension: 2560"


def test_base64_encoding(client: httpx.Client) -> None:
    floats = _vec(_embed(client, input="b64 text"))
    r = _embed(client, input="b64 text", encoding_format="base64")
    raw = base64.b64decode(r.json()["data"][0]["embedding"])
    assert np.allclose(np.frombuffer(raw, dtype="<f4"), floats, atol=1e-7)


@pytest.mark.parametrize("inp,message", [
    ([], "Input cannot be empty"), ("", "Input cannot be empty"),
    ("  ", "Input cannot be empty or whitespace only"),
    (["a", ""], "Input at index 1 cannot be empty or whitespace only"),
])
def test_empty_inputs_are_400(client: httpx.Client, inp: object, message: str) -> None:
    r = _embed(client, input=inp)
    assert r.status_code == 400
    assert r.json() == {"object": "error", "message": message, "type": "BadRequestError",
                        "param": None, "code": 400}


def test_other_400s(client: httpx.Client) -> None:
    r = _embed(client, input="word " * 600)
    assert r.status_code == 400
    assert r.json()["message"] == ("The input (601 tokens) is longer than the model's context "
                                   "length (512 tokens).")
    r = client.post("/v1/embeddings", content=b'{"input": "x"}',
                    headers={"content-type": "text/plain"})
    assert r.status_code == 400 and r.json()["type"] == "Bad Request"
    r = client.post("/v1/embeddings", content=b"{broken", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["code"] == 400
    r = _embed(client, input="x", encoding_format="hex")
    assert r.status_code == 400 and "encoding_format" in r.json()["message"]


def test_encode_native_api(client: httpx.Client) -> None:
    r = client.post("/encode", json={"text": "The capital city of France is"})
    body = r.json()
    assert r.status_code == 200 and len(body["embedding"]) == 2560
    meta = body["meta_info"]
    assert meta["finish_reason"] == {"type": "length", "length": 0}
    assert meta["prompt_tokens"] == 9 and meta["weight_version"] == "default"
    assert meta["num_retractions"] == 0 and meta["e2e_latency"] >= 0 and meta["id"]
    batch = client.put("/encode", json={"text": ["a", "b"]}).json()
    assert isinstance(batch, list) and len(batch) == 2
    r = client.post("/encode", json={"text": "a", "input_ids": [1]})
    assert r.status_code == 400 and set(r.json()["error"]) == {"message"}


def test_flush_cache(client: httpx.Client) -> None:
    r = client.post("/flush_cache")
    assert r.status_code == 200 and r.text.startswith("Cache flushed.\n")
    assert client.get("/flush_cache").status_code == 200


def test_control_endpoints(client: httpx.Client) -> None:
    assert client.post("/set_internal_state",
                       json={"server_args": {"pp_max_micro_batch_size": 4}}).json() == [True]
    assert client.post("/set_internal_state",
                       json={"server_args": {"mem_fraction_static": 0.5}}).json() == [False]
    assert client.post("/abort_request", json={"rid": "none", "abort_all": False}).status_code == 200
    assert client.post("/pause_generation", json={}).json() == {
        "message": "Generation paused successfully.", "status": "ok"}
    assert client.get("/ready").status_code == 503
    assert client.get("/ping").status_code == 200  # paused still answers /ping
    assert client.post("/continue_generation", json={}).json()["status"] == "ok"
    assert client.get("/ready").status_code == 200
    assert _embed(client, input="after pause").status_code == 200


# ---------------------------------------------------------------------------- metrics


def test_metrics_names_labels_and_custom_buckets(client: httpx.Client) -> None:
    _embed(client, input="metrics probe text")
    r = client.get("/metrics")
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    s = _metrics(client)
    sched = {"engine_type": "unified", "model_name": MODEL, "tp_rank": "0", "pp_rank": "0",
             "moe_ep_rank": "0"}
    assert _metric(s, "sglang:num_running_reqs", **sched) == 0
    assert _metric(s, "sglang:num_queue_reqs", **sched) == 0
    assert _metric(s, "sglang:max_total_num_tokens", **sched) > 0
    assert _metric(s, "sglang:num_requests_total", is_streaming="false") >= 1
    buckets = {dict(lab)["le"] for (n, lab) in s if n == "sglang:e2e_request_latency_seconds_bucket"}
    assert buckets == {"0.001", "0.005", "0.01", "0.1", "+Inf"}
    assert _metric(s, "sglang:http_requests_total", endpoint="/v1/embeddings", method="POST") >= 1
    assert _metric(s, "sglang:http_responses_total", endpoint="/v1/embeddings", method="POST",
                   status_code="200") >= 1
    om = client.get("/metrics", headers={"accept": "application/openmetrics-text"})
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    assert om.text.endswith("# EOF\n")
    assert client.get("/metrics/").status_code == 200


def test_health_checks_do_not_count_as_requests(client: httpx.Client) -> None:
    before = _metric(_metrics(client), "sglang:num_requests_total")
    assert client.get("/health").status_code == 200
    after = _metrics(client)
    assert _metric(after, "sglang:num_requests_total") == before
    assert _metric(after, "sglang:http_requests_total", endpoint="/health") >= 1


def test_running_and_queue_gauges_under_load(sim: Sim, client: httpx.Client) -> None:
    requests_total = _metric(_metrics(client), "sglang:num_requests_total")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futs = [pool.submit(httpx.post, f"{sim.url}/v1/embeddings",
                            json={"input": f"load {i} " + "word " * 400}, timeout=10,
                            headers=AUTH)
                for i in range(16)]
        assert all(f.result().status_code == 200 for f in futs)
    s = _metrics(client)
    assert _metric(s, "sglang:num_requests_total") == requests_total + 16
    assert _metric(s, "sglang:num_running_reqs") == 0  # back to 0 once idle (drain polls this)
    assert _metric(s, "sglang:prompt_tokens_total") >= 16 * 400


# ---------------------------------------------------------------------------- sim surface


def test_sim_gpu_reports_the_scheduler(sim: Sim, client: httpx.Client) -> None:
    g = client.get("/_sim/gpu").json()
    assert set(g) == {"gpu_index", "total_mib", "used_mib", "pid", "util_pct",
                      "temperature_c", "power_w"}
    assert g["gpu_index"] == 0 and g["total_mib"] == 81559
    assert 0.8 * 81559 < g["used_mib"] < 81559
    sched = psutil.Process(g["pid"])
    assert sched.cmdline()[0].startswith("sglang::scheduler")
    assert sched.ppid() == sim.proc.pid


def test_process_shape(sim: Sim) -> None:
    launcher = psutil.Process(sim.proc.pid)
    titles = sorted(c.cmdline()[0] for c in launcher.children())
    assert titles == ["sglang::detokenizer", "sglang::scheduler"]
    assert "backends.sim.worker" in " ".join(launcher.cmdline())
    for c in launcher.children():
        assert os.getpgid(c.pid) == sim.proc.pid  # same process group as the launcher


def test_sim_faults_endpoint_validation(client: httpx.Client) -> None:
    base = client.get("/_sim/faults").json()
    assert base["hang"] is False and base["crash_after_s"] is None
    r = client.post("/_sim/faults", json={"melt": True})
    assert r.status_code == 400 and "unknown fault" in r.json()["error"]
    assert client.post("/_sim/faults", json={"slow_ms": "x"}).status_code == 400
    assert client.post("/_sim/faults", json={"slow_ms": 1}).json()["slow_ms"] == 1.0
    assert client.post("/_sim/faults", json={"clear": True}).json() == base


def test_tcp_nodelay_keeps_small_requests_fast(sim: Sim) -> None:
    # Headers and body are separate writes; without TCP_NODELAY a client that delays
    # its ACK would see ~40 ms per request.
    body = b'{"input": "nagle"}'
    req = (b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s"
           % (KEY.encode(), len(body), body))
    took = []
    with socket.create_connection(("127.0.0.1", sim.port), timeout=5) as sock:
        f = sock.makefile("rb")
        for _ in range(20):
            t = time.perf_counter()
            sock.sendall(req)
            length = 0
            while (line := f.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            assert len(f.read(length)) == length
            took.append(time.perf_counter() - t)
    assert statistics.median(took) < 0.03


def test_requests_without_the_key_are_refused_and_not_counted(sim: Sim,
                                                               client: httpx.Client) -> None:
    before = _metric(_metrics(client), "sglang:num_requests_total")
    r = httpx.post(f"{sim.url}/v1/embeddings", json={"input": "no key"}, timeout=10)
    assert (r.status_code, r.json()) == (401, {"error": "Unauthorized"})
    assert _metric(_metrics(client), "sglang:num_requests_total") == before
