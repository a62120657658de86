"""Deterministic stand-ins for the tokenizer and the embedding model.

* Tokens: each whitespace-separated word is ``ceil(utf8_bytes / 5)`` pieces, plus one
  EOS token that Qwen3-Embedding's tokenizer appends (``"Hello world"`` → 3).
* Vectors: a unit vector drawn from a PRNG seeded with a 64-bit hash of the input, so
  the same input always gives the same vector and different inputs nearly orthogonal
  ones. The "cached" variant (radix-cache reuse on an encoder model) has cosine
  `UNSTABLE_COSINE` to the cold vector.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence

import numpy as np
import orjson

UNSTABLE_COSINE = 0.856
"""Cosine between the cold and the radix-cached vector observed on SGLang 0.5.17."""
_PIECE_BYTES = 5
_VARIANT_SALT = 0x9E3779B97F4A7C15


def count_tokens(text: str) -> int:
    """Number of tokens of `text`, EOS included."""
    n = 0
    for word in text.split():
        size = len(word) if word.isascii() else len(word.encode("utf-8"))
        n += (size + _PIECE_BYTES - 1) // _PIECE_BYTES
    return n + 1


def truncate_text(text: str, max_tokens: int) -> str:
    """The longest word-prefix of `text` with at most `max_tokens` tokens (EOS included)."""
    words = text.split()
    lo, hi = 0, len(words)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count_tokens(" ".join(words[:mid])) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo])


def text_key(text: str) -> int:
    """63-bit key of a text input (radix-cache identity and PRNG seed)."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def ids_key(ids: Sequence[int]) -> int:
    """63-bit key of a token-id input."""
    raw = np.asarray(ids, dtype=np.int64).tobytes()
    digest = hashlib.blake2b(b"ids:" + raw, digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def unit_vector(key: int, dim: int, variant: int = 0) -> np.ndarray:
    """The float32 unit vector of input `key`; `variant` 1 is the radix-cached one."""
    rng = np.random.Generator(np.random.PCG64(key))
    v = rng.standard_normal(dim, dtype=np.float32)
    v /= np.linalg.norm(v)
    if variant == 0 or dim < 2:
        return v
    rng2 = np.random.Generator(np.random.PCG64(key ^ _VARIANT_SALT))
    u = rng2.standard_normal(dim, dtype=np.float32)
    u -= np.dot(u, v) * v
    u /= np.linalg.norm(u)
    c = UNSTABLE_COSINE
    w = c * v + np.float32(np.sqrt(1.0 - c * c)) * u
    w /= np.linalg.norm(w)
    return w.astype(np.float32)


def truncate(v: np.ndarray, dims: int) -> np.ndarray:
    """Matryoshka truncation: the first `dims` components, L2-renormalised."""
    t = v[:dims].copy()
    n = np.linalg.norm(t)
    if n > 0:
        t /= n
    return t


def encode_float(v: np.ndarray) -> bytes:
    """JSON array of the vector's float32 values (``NaN`` for NaN, as Python's json)."""
    if np.isnan(v).any():
        return b"[" + b",".join(b"NaN" if np.isnan(x) else repr(float(x)).encode()
                                for x in v) + b"]"
    return orjson.dumps(v, option=orjson.OPT_SERIALIZE_NUMPY)


def encode_base64(v: np.ndarray) -> bytes:
    """JSON string: base64 of the little-endian float32 bytes."""
    return b'"' + base64.b64encode(v.astype("<f4").tobytes()) + b'"'
