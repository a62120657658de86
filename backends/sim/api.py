"""Validation of embedding requests and SGLang's error bodies (pure functions).

Messages and their order follow `serving_embedding.py::_validate_request`,
`TokenizerManager._validate_for_matryoshka_dim` and the tokenizer's length check
(sglang-surface.md §2.4, sglang-observed.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson


def error_body(message: str, type_: str = "BadRequestError", code: int = 400) -> bytes:
    """SGLang's OpenAI-style `ErrorResponse` JSON."""
    return orjson.dumps({"object": "error", "message": message, "type": type_,
                         "param": None, "code": code})


def native_error_body(message: str) -> bytes:
    """The native API's error JSON (``/encode``)."""
    return orjson.dumps({"error": {"message": message}})


class ApiError(Exception):
    """An HTTP error answer: status and body."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(body.decode("utf-8", "replace"))
        self.status = status
        self.body = body


def bad_request(message: str) -> ApiError:
    """400 with SGLang's ``BadRequestError`` body."""
    return ApiError(400, error_body(message))


def pydantic_error(loc: str, msg: str, type_: str, input_repr: str = "None") -> ApiError:
    """400 ``"type": "Bad Request"`` as SGLang's RequestValidationError handler writes it."""
    detail = f"[{{'type': '{type_}', 'loc': {loc}, 'msg': '{msg}', 'input': {input_repr}}}]"
    return ApiError(400, error_body(detail, "Bad Request", 400))


@dataclass(frozen=True)
class Item:
    """One input of a request after tokenisation."""

    ntok: int
    key: int


@dataclass(frozen=True)
class EmbeddingRequest:
    """A validated ``/v1/embeddings`` (or ``/encode``) request."""

    items: list[Item]
    dimensions: int | None
    encoding_format: str
    rid: Any = None


@dataclass(frozen=True)
class Limits:
    """What the length and dimension checks need."""

    version: str
    model_path: str
    context_length: int
    max_req_input_len: int
    allow_auto_truncate: bool
    matryoshka: bool
    matryoshka_dimensions: list[int] | None
    hidden_size: int
    is_embedding: bool = True


Tokenize = Callable[[str], tuple[int, int]]
"""text → (n_tokens incl. EOS, key)."""
IdsKey = Callable[[list[int]], int]


def parse_json_body(body: bytes, content_type: str | None) -> dict[str, Any]:
    """The request object, or `ApiError` 400 as FastAPI + SGLang's handler answer."""
    if content_type is not None and "json" not in content_type.lower():
        raise pydantic_error("('body',)",
                             "Input should be a valid dictionary or object to extract fields from",
                             "model_attributes_type", repr(body[:64]))
    if not body:
        raise pydantic_error("('body',)", "Field required", "missing")
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise pydantic_error("('body', 0)", "JSON decode error", "json_invalid",
                             f"{{}}, 'ctx': {{'error': '{e.msg}'}}") from None
    if not isinstance(obj, dict):
        raise pydantic_error("('body',)",
                             "Input should be a valid dictionary or object to extract fields from",
                             "model_attributes_type", repr(obj)[:64])
    return obj


def _classify(inp: Any) -> str:
    if isinstance(inp, str):
        return "str"
    if isinstance(inp, list):
        if not inp:
            return "empty"
        if all(isinstance(x, str) for x in inp):
            return "strs"
        if all(isinstance(x, int) and not isinstance(x, bool) for x in inp):
            return "ids"
        if all(isinstance(x, list) and all(isinstance(t, int) and not isinstance(t, bool)
                                           for t in x) for x in inp):
            return "idss"
    return "bad"


def parse_embedding_request(obj: dict[str, Any], lim: Limits, tokenize: Tokenize,
                            ids_key: IdsKey) -> EmbeddingRequest:
    """Validate a ``/v1/embeddings`` body; raise `ApiError` with SGLang's answer."""
    if "input" not in obj:
        raise pydantic_error("('body', 'input')", "Field required", "missing", repr(obj)[:64])
    inp = obj["input"]
    kind = _classify(inp)
    if kind == "bad":
        raise pydantic_error("('body', 'input')",
                             "Input should be a valid string", "string_type", repr(inp)[:64])
    model = obj.get("model", "default")
    if not isinstance(model, str):
        raise pydantic_error("('body', 'model')", "Input should be a valid string",
                             "string_type", repr(model))
    if not lim.is_embedding:
        raise bad_request("This model does not appear to be an embedding model by default. "
                          "Please add `--is-embedding` when launching the server or try "
                          "another model.")
    # serving_embedding.py::_validate_request
    if kind == "empty" or (kind == "str" and inp == ""):
        raise bad_request("Input cannot be empty")
    if kind == "str" and not inp.strip():
        raise bad_request("Input cannot be empty or whitespace only")
    if kind == "strs":
        for i, s in enumerate(inp):
            if not s.strip():
                raise bad_request(f"Input at index {i} cannot be empty or whitespace only")
    if kind == "ids":
        for i, t in enumerate(inp):
            if t < 0:
                raise bad_request(f"Token ID at index {i} must be non-negative")
    if kind == "idss":
        for seq in inp:
            if not seq:
                raise bad_request("Input cannot be empty")
            for i, t in enumerate(seq):
                if t < 0:
                    raise bad_request(f"Token ID at index {i} must be non-negative")
    if lim.version != "0.5.2" and ":" in model:
        adapter = model.split(":", 1)[1]
        raise bad_request(f"LoRA adapter '{adapter}' was requested, but LoRA is not enabled. "
                          "Please launch the server with --enable-lora.")
    fmt = obj.get("encoding_format", "float")
    if lim.version == "0.5.2":
        fmt = "float"
    elif fmt not in ("float", "base64"):
        raise bad_request(f"encoding_format must be either 'float' or 'base64', got '{fmt}'")
    dims = obj.get("dimensions")
    if lim.version == "0.5.2":
        dims = None
    elif dims is not None:
        if isinstance(dims, bool) or not isinstance(dims, int):
            raise pydantic_error("('body', 'dimensions')", "Input should be a valid integer",
                                 "int_type", repr(dims))
        validate_dimensions(dims, lim)
    if kind == "str":
        texts_or_ids: list[Any] = [inp]
    elif kind == "ids":
        texts_or_ids = [inp]
    else:
        texts_or_ids = inp
    items = [_item(x, lim, tokenize, ids_key) for x in texts_or_ids]
    return EmbeddingRequest(items=items, dimensions=dims, encoding_format=fmt,
                            rid=obj.get("rid"))


def validate_dimensions(dims: int, lim: Limits) -> None:
    """`TokenizerManager._validate_for_matryoshka_dim`, in its order."""
    if not lim.matryoshka:
        raise bad_request(f"Model '{lim.model_path}' does not support matryoshka "
                          "representation, changing output dimensions will lead to poor "
                          "results.")
    if dims < 1:
        raise bad_request("Requested dimensions must be greater than 0")
    if lim.matryoshka_dimensions and dims not in lim.matryoshka_dimensions:
        raise bad_request(f"Model '{lim.model_path}' only supports "
                          f"{lim.matryoshka_dimensions} matryoshka dimensions, using other "
                          "output dimensions will lead to poor results.")
    if dims > lim.hidden_size:
        raise bad_request("Provided dimensions are greater than max embedding dimension: "
                          f"{lim.hidden_size}")


def _item(x: Any, lim: Limits, tokenize: Tokenize, ids_key: IdsKey) -> Item:
    if isinstance(x, str):
        ntok, key = tokenize(x)
    else:
        ntok, key = len(x), ids_key(x)
    if ntok >= lim.context_length:
        if not lim.allow_auto_truncate:
            raise bad_request(f"The input ({ntok} tokens) is longer than the model's context "
                              f"length ({lim.context_length} tokens).")
        ntok = lim.context_length - 1
    if ntok >= lim.max_req_input_len:
        if not lim.allow_auto_truncate:
            raise bad_request(f"Input length ({ntok} tokens) exceeds the maximum allowed "
                              f"length ({lim.max_req_input_len} tokens). Use a shorter input "
                              "or enable --allow-auto-truncate.")
        ntok = lim.max_req_input_len - 1
    return Item(ntok=ntok, key=key)


def parse_encode_request(obj: dict[str, Any], lim: Limits, tokenize: Tokenize,
                         ids_key: IdsKey) -> tuple[EmbeddingRequest, bool]:
    """Validate a native ``/encode`` body → (request, is_batch); `ApiError` 400 with
    ``{"error": {"message": ...}}`` otherwise."""
    text = obj.get("text")
    ids = obj.get("input_ids")
    if text is None and ids is None and obj.get("image_data") is None:
        raise ApiError(400, native_error_body(
            "At least one of text, input_ids, or image should be provided"))
    if text is not None and ids is not None:
        raise ApiError(400, native_error_body(
            "text and input_ids should not be provided at the same time"))
    values: list[Any]
    if text is not None:
        batch = isinstance(text, list)
        values = text if batch else [text]
        if not all(isinstance(t, str) for t in values) or not values:
            raise ApiError(400, native_error_body("text must be a string or a list of strings"))
    else:
        batch = isinstance(ids, list) and bool(ids) and isinstance(ids[0], list)
        values = ids if isinstance(ids, list) and batch else [ids]
        if not all(isinstance(v, list) and all(isinstance(t, int) for t in v) for v in values):
            raise ApiError(400, native_error_body("input_ids must be a list of integers "
                                                  "or a list of lists of integers"))
    dims = obj.get("dimensions")
    if lim.version == "0.5.2":
        dims = None
    elif dims is not None:
        if isinstance(dims, bool) or not isinstance(dims, int):
            raise ApiError(400, native_error_body("dimensions must be an integer"))
        try:
            validate_dimensions(dims, lim)
        except ApiError as e:
            raise ApiError(400, native_error_body(orjson.loads(e.body)["message"])) from None
    try:
        items = [_item(v, lim, tokenize, ids_key) for v in values]
    except ApiError as e:
        raise ApiError(400, native_error_body(orjson.loads(e.body)["message"])) from None
    return EmbeddingRequest(items=items, dimensions=dims, encoding_format="float",
                            rid=obj.get("rid")), batch
