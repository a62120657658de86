"""The sim's tokenizer and embedding stand-ins: determinism, unit norm, the radix-cache
variant's cosine, matryoshka truncation and encodings."""

from __future__ import annotations

import base64
import json
import math

import numpy as np

from backends.sim import textmodel as tm


def test_token_count_includes_eos_and_grows_with_text() -> None:
    assert tm.count_tokens("Hello world") == 3  # PR #11142's example: 2 words + EOS
    assert tm.count_tokens("") == 1
    assert tm.count_tokens("a " * 100) == 101
    assert tm.count_tokens("x" * 50) == 11  # one long word: ceil(50 / 5) pieces + EOS
    assert tm.count_tokens("数据库") == 3  # 9 UTF-8 bytes → 2 pieces + EOS
    assert tm.count_tokens("one two three four") < tm.count_tokens("one two three four five")


def test_truncate_text_respects_the_budget() -> None:
    text = " ".join(f"word{i}" for i in range(100))
    cut = tm.truncate_text(text, 20)
    assert tm.count_tokens(cut) <= 20
    assert tm.count_tokens(cut + " word99") > 20
    assert text.startswith(cut)


def test_vectors_are_deterministic_unit_and_distinct() -> None:
    k1, k2 = tm.text_key("first text"), tm.text_key("second text")
    assert k1 == tm.text_key("first text") and k1 != k2
    v1 = tm.unit_vector(k1, 2560)
    assert v1.dtype == np.float32 and v1.shape == (2560,)
    assert math.isclose(float(np.linalg.norm(v1)), 1.0, rel_tol=1e-5)
    assert np.array_equal(v1, tm.unit_vector(k1, 2560))
    v2 = tm.unit_vector(k2, 2560)
    assert abs(float(np.dot(v1, v2))) < 0.2


def test_ids_keys_depend_on_the_ids() -> None:
    assert tm.ids_key([1, 2, 3]) == tm.ids_key([1, 2, 3])
    assert tm.ids_key([1, 2, 3]) != tm.ids_key([3, 2, 1])


def test_cached_variant_has_the_observed_cosine() -> None:
    key = tm.text_key("seen before")
    cold, cached = tm.unit_vector(key, 2560), tm.unit_vector(key, 2560, variant=1)
    assert math.isclose(float(np.linalg.norm(cached)), 1.0, rel_tol=1e-5)
    assert abs(float(np.dot(cold, cached)) - tm.UNSTABLE_COSINE) < 0.002
    assert np.array_equal(cached, tm.unit_vector(key, 2560, variant=1))


def test_matryoshka_truncation_renormalises() -> None:
    v = tm.unit_vector(tm.text_key("mrl"), 2560)
    t = tm.truncate(v, 256)
    assert t.shape == (256,)
    assert math.isclose(float(np.linalg.norm(t)), 1.0, rel_tol=1e-5)
    assert float(np.dot(t, v[:256] / np.linalg.norm(v[:256]))) > 0.9999


def test_encodings_round_trip() -> None:
    v = tm.unit_vector(tm.text_key("enc"), 64)
    assert np.allclose(json.loads(tm.encode_float(v)), v, atol=1e-7)
    raw = base64.b64decode(json.loads(tm.encode_base64(v)))
    assert np.array_equal(np.frombuffer(raw, dtype="<f4"), v)
    nan = tm.encode_float(np.full(3, np.nan, dtype=np.float32))
    assert nan == b"[NaN,NaN,NaN]"
    assert all(math.isnan(x) for x in json.loads(nan))
