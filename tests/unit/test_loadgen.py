"""Pure parts of the load generator: percentiles, report math, body checks, spec rules."""

from __future__ import annotations

import json
import random

import pytest

from backends.sim.loadgen import (
    LoadGen,
    LoadSpec,
    _Reservoir,
    _target,
    check_body,
    make_text,
    percentile,
    summarize_ms,
)


def test_percentile_nearest_rank():
    values = list(range(1, 101))  # 1..100
    assert percentile(values, 0.50) == 50
    assert percentile(values, 0.95) == 95
    assert percentile(values, 0.99) == 99
    assert percentile(values, 1.0) == 100
    assert percentile(values, 0.0) == 1
    # small n: P95 of 10 samples is the max (index ceil(9.5) - 1 = 9)
    assert percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 0.95) == 10
    assert percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 0.5) == 5
    assert percentile([7.0], 0.99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 0.5)
    with pytest.raises(ValueError):
        percentile([1], 1.5)


def test_summarize_ms():
    lat = [0.001 * i for i in range(1, 201)]  # 1..200 ms
    random.Random(1).shuffle(lat)
    s = summarize_ms(lat)
    assert s == {"n": 200, "p50": 100.0, "p95": 190.0, "p99": 198.0, "max": 200.0,
                 "mean": 100.5}
    assert summarize_ms([]) == {"n": 0, "p50": None, "p95": None, "p99": None, "max": None,
                                "mean": None}
    # a reservoir subset reports the true max it was told
    assert summarize_ms([0.001, 0.002], exact_max_s=0.5)["max"] == 500.0


def test_reservoir_keeps_everything_then_a_bounded_uniform_sample():
    r = _Reservoir(100, random.Random(3))
    for i in range(50):
        r.add(float(i))
    assert list(r.values) == [float(i) for i in range(50)]
    for i in range(50, 10_000):
        r.add(float(i))
    assert len(r.values) == 100 and r.seen == 10_000 and r.max == 9999.0
    # uniform: the kept sample's median is near the population's (4999.5)
    kept = sorted(r.values)
    assert 3000 < kept[50] < 7000


def _body(n: int, dim: int, value: str = "0.5", spaced: bool = False) -> bytes:
    sep = ", " if spaced else ","
    vec = "[" + sep.join([value] * dim) + "]"
    items = [f'{{"embedding":{vec},"index":{i},"object":"embedding"}}' for i in range(n)]
    usage = '"usage":{"prompt_tokens":3,"total_tokens":3,"prompt_tokens_details":null}'
    return ('{"data":[' + ",".join(items) + '],"model":"m","object":"list",' + usage + "}").encode()


@pytest.mark.parametrize("verify", ["cheap", "full"])
def test_check_body(verify):
    ok = _body(1, 16)
    assert check_body(ok, n_inputs=1, dimension=16, verify=verify) is None
    assert check_body(ok, n_inputs=1, dimension=None, verify=verify) is None
    assert check_body(_body(3, 16), n_inputs=3, dimension=16, verify=verify) is None
    assert check_body(_body(3, 16, spaced=True), n_inputs=3, dimension=16, verify=verify) is None
    assert check_body(ok, n_inputs=1, dimension=8, verify=verify) == "dimension 16 != 8"
    assert check_body(_body(2, 16), n_inputs=3, dimension=16, verify=verify) == \
        "2 vectors for 3 inputs"
    for bad in ("NaN", "null", "Infinity", "-Infinity"):
        assert check_body(_body(1, 4, bad), n_inputs=1, dimension=4, verify=verify) == \
            "non-finite values", bad
    assert check_body(b"<html>oops</html>", n_inputs=1, dimension=4, verify=verify) is not None
    # a real JSON encoder's output (json.dumps puts spaces after ':' and ',')
    doc = {"data": [{"embedding": [0.1, -2e-05, 3.0], "index": 0, "object": "embedding"}],
           "model": "m", "object": "list", "usage": {"prompt_tokens_details": None}}
    assert check_body(json.dumps(doc).encode(), n_inputs=1, dimension=3, verify=verify) is None


def test_full_verify_checks_every_vector_cheap_only_the_first_length():
    two = ('{"data":[{"embedding":[1,2,3,4],"index":0,"object":"embedding"},'
           '{"embedding":[1,2,3],"index":1,"object":"embedding"}],"object":"list"}').encode()
    assert check_body(two, n_inputs=2, dimension=4, verify="full") == "dimension 3 != 4"
    assert check_body(two, n_inputs=2, dimension=4, verify="cheap") is None


def test_spec_validation_and_target():
    with pytest.raises(ValueError):
        LoadSpec(url="http://127.0.0.1:1", rate=0)
    with pytest.raises(ValueError):
        LoadSpec(url="https://127.0.0.1:1", rate=1)
    with pytest.raises(ValueError):
        LoadSpec(url="http://127.0.0.1:1", rate=1, batch=0)
    with pytest.raises(ValueError):
        LoadSpec(url="http://127.0.0.1:1", rate=1, verify="all")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        LoadSpec(url="http://127.0.0.1:1", rate=1, deadline_s=0)
    assert _target("http://127.0.0.1:8000") == ("127.0.0.1", 8000, "/v1/embeddings")
    assert _target("http://127.0.0.1:8000/") == ("127.0.0.1", 8000, "/v1/embeddings")
    assert _target("http://localhost/v1/embeddings") == ("localhost", 80, "/v1/embeddings")


def test_make_text():
    base = LoadSpec(url="http://127.0.0.1:1", rate=1)
    assert make_text(base) == "What is the capital city of France?"
    t = make_text(LoadSpec(url="http://127.0.0.1:1", rate=1, input_tokens=100))
    assert len(t.split()) == 100
    assert make_text(LoadSpec(url="http://127.0.0.1:1", rate=1, text="x y")) == "x y"


def _split_request(raw: bytes) -> tuple[dict[str, str], dict]:
    head, body = raw.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v1/embeddings HTTP/1.1"
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
    assert int(headers["content-length"]) == len(body)
    return headers, json.loads(body)


def test_request_bytes():
    gen = LoadGen(LoadSpec(url="http://127.0.0.1:8123", rate=1, model="Qwen/Qwen3-Embedding-4B",
                           api_key="k-123", rid_prefix="t"))
    headers, body = _split_request(gen._request_bytes(7, "t-7", 0))
    assert headers["host"] == "127.0.0.1:8123"
    assert headers["content-type"] == "application/json"
    assert headers["authorization"] == "Bearer k-123"
    assert headers["x-request-id"] == "t-7"
    assert body == {"model": "Qwen/Qwen3-Embedding-4B",
                    "input": "What is the capital city of France?", "rid": "t-7"}
    # a retry keeps the header id; the body rid must stay unique for SGLang
    headers, body = _split_request(gen._request_bytes(7, "t-7", 2))
    assert headers["x-request-id"] == "t-7" and body["rid"] == "t-7.2"

    batch = LoadGen(LoadSpec(url="http://127.0.0.1:8123", rate=1, batch=3, vary_text=True))
    headers, body = _split_request(batch._request_bytes(4, "x-4", 0))
    assert "authorization" not in headers
    assert body["model"] == "default"
    assert len(body["input"]) == 3 and len(set(body["input"])) == 3
    assert all("#4" in t for t in body["input"])
    assert "rid" not in body  # SGLang wants a list of rids for a batch; the header carries it
