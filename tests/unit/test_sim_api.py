"""Embedding request validation: SGLang's messages, order and error shapes."""

from __future__ import annotations

import json

import pytest

from backends.sim import textmodel as tm
from backends.sim.api import (
    ApiError,
    Limits,
    parse_embedding_request,
    parse_encode_request,
    parse_json_body,
)


def _lim(**kw: object) -> Limits:
    base: dict[str, object] = {
        "version": "0.5.23", "model_path": "Qwen/Qwen3-Embedding-4B", "context_length": 512,
        "max_req_input_len": 506, "allow_auto_truncate": False, "matryoshka": False,
        "matryoshka_dimensions": None, "hidden_size": 2560}
    base.update(kw)
    return Limits(**base)  # type: ignore[arg-type]


def _tok(text: str) -> tuple[int, int]:
    return tm.count_tokens(text), tm.text_key(text)


def _parse(obj: dict, **kw: object):
    return parse_embedding_request(obj, _lim(**kw), _tok, tm.ids_key)


def _err(obj: dict, **kw: object) -> tuple[int, dict]:
    with pytest.raises(ApiError) as ei:
        _parse(obj, **kw)
    return ei.value.status, json.loads(ei.value.body)


def test_input_shapes() -> None:
    assert [i.ntok for i in _parse({"input": "Hello world"}).items] == [3]
    assert len(_parse({"input": ["a", "b c"]}).items) == 2
    ids = _parse({"input": [1, 2, 3]})
    assert [i.ntok for i in ids.items] == [3]
    assert len(_parse({"input": [[1, 2], [3]]}).items) == 2
    assert _parse({"input": "x", "model": "anything"}).encoding_format == "float"


@pytest.mark.parametrize("inp,message", [
    ([], "Input cannot be empty"),
    ("", "Input cannot be empty"),
    ("   ", "Input cannot be empty or whitespace only"),
    (["ok", " "], "Input at index 1 cannot be empty or whitespace only"),
    ([1, -2], "Token ID at index 1 must be non-negative"),
])
def test_empty_and_invalid_inputs(inp: object, message: str) -> None:
    status, body = _err({"input": inp})
    assert status == 400
    assert body == {"object": "error", "message": message, "type": "BadRequestError",
                    "param": None, "code": 400}


def test_type_errors_are_bad_request_type() -> None:
    status, body = _err({"input": 5})
    assert status == 400 and body["type"] == "Bad Request" and body["code"] == 400
    status, body = _err({"model": "m"})
    assert status == 400 and "Field required" in body["message"]


def test_dimensions_need_matryoshka() -> None:
    _, body = _err({"input": "x", "dimensions": 256})
    assert body["message"] == ("Model 'Qwen/Qwen3-Embedding-4B' does not support matryoshka "
                               "representation, changing output dimensions will lead to poor "
                               "results.")
    assert _parse({"input": "x", "dimensions": 256}, matryoshka=True).dimensions == 256
    assert _err({"input": "x", "dimensions": 0}, matryoshka=True)[1]["message"] == \
        "Requested dimensions must be greater than 0"
    assert _err({"input": "x", "dimensions": 4096}, matryoshka=True)[1]["message"] == \
        "Provided dimensions are greater than max embedding dimension: 2560"
    assert "only supports [64, 128]" in _err(
        {"input": "x", "dimensions": 100}, matryoshka=True,
        matryoshka_dimensions=[64, 128])[1]["message"]


def test_0_5_2_ignores_dimensions_and_encoding_format() -> None:
    req = _parse({"input": "x", "dimensions": 256, "encoding_format": "weird"}, version="0.5.2")
    assert req.dimensions is None and req.encoding_format == "float"


def test_encoding_format() -> None:
    assert _parse({"input": "x", "encoding_format": "base64"}).encoding_format == "base64"
    assert _err({"input": "x", "encoding_format": "hex"})[1]["message"] == \
        "encoding_format must be either 'float' or 'base64', got 'hex'"


def test_length_limits_and_auto_truncate() -> None:
    long = "word " * 600
    status, body = _err({"input": long})
    assert status == 400
    assert body["message"] == ("The input (601 tokens) is longer than the model's context "
                               "length (512 tokens).")
    edge = "w " * 508  # 509 tokens: under the context length, over max_req_input_len
    assert body != _err({"input": edge})[1]
    assert "exceeds the maximum allowed length (506 tokens)" in _err({"input": edge})[1]["message"]
    cut = _parse({"input": long}, allow_auto_truncate=True)
    assert cut.items[0].ntok < 506


def test_not_an_embedding_model() -> None:
    assert "--is-embedding" in _err({"input": "x"}, is_embedding=False)[1]["message"]


def test_lora_syntax_without_lora() -> None:
    assert "LoRA adapter 'y' was requested" in _err({"input": "x", "model": "m:y"})[1]["message"]


def test_body_parsing_errors() -> None:
    for body, ctype in ((b"{", "application/json"), (b"[1]", "application/json"),
                        (b'{"input": "x"}', "text/plain"), (b"", None)):
        with pytest.raises(ApiError) as ei:
            parse_json_body(body, ctype)
        assert ei.value.status == 400
        assert json.loads(ei.value.body)["type"] == "Bad Request"
    assert parse_json_body(b'{"input": "x"}', None) == {"input": "x"}


def test_encode_requests() -> None:
    req, batch = parse_encode_request({"text": "a b"}, _lim(), _tok, tm.ids_key)
    assert not batch and req.items[0].ntok == 3
    req, batch = parse_encode_request({"text": ["a", "b"]}, _lim(), _tok, tm.ids_key)
    assert batch and len(req.items) == 2
    req, batch = parse_encode_request({"input_ids": [[1], [2, 3]]}, _lim(), _tok, tm.ids_key)
    assert batch and [i.ntok for i in req.items] == [1, 2]
    for obj in ({}, {"text": "a", "input_ids": [1]}):
        with pytest.raises(ApiError) as ei:
            parse_encode_request(obj, _lim(), _tok, tm.ids_key)
        assert ei.value.status == 400 and set(json.loads(ei.value.body)) == {"error"}
