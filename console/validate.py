"""Post-deployment checks an operator runs against a worker or the balancer.

Bilingual input, a long input near the context limit, empty input → 400, `dimensions`
truncation where the model supports it, and the same text cold then cached giving the
same vector (real SGLang with its radix cache on fails this for encoder models).
"""

from __future__ import annotations

import math
import uuid
from typing import Any

import httpx

from backends.sglang_client import cosine

BILINGUAL = ["The quick brown fox jumps over the lazy dog.", "敏捷的棕色狐狸跳过了懒狗。"]
MIN_COSINE = 0.999


def _vectors(body: Any) -> list[list[float]]:
    return [d.get("embedding") or [] for d in (body or {}).get("data") or []]


def _finite(vec: list[float]) -> bool:
    return all(isinstance(x, (int, float)) and math.isfinite(x) for x in vec)


def _message(r: httpx.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        return r.text[:200]
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            return str(err.get("message", ""))[:200]
        return str(body.get("message") or err or body)[:200]
    return str(body)[:200]


async def run_validation(url: str, *, model: str, dimension: int,
                         api_key: str | None = None, context_length: int | None = None,
                         timeout_s: float = 60.0) -> dict[str, Any]:
    """Run every check against `url` (a worker or the balancer); never raises for a
    failed check. Returns ``{"url", "ok", "checks": [{"name", "ok", "detail"}]}``."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    checks: list[dict[str, Any]] = []

    def check(name: str, ok: bool, detail: str) -> None:
        checks.append({"name": name, "ok": ok, "detail": detail})

    async with httpx.AsyncClient(base_url=url.rstrip("/"), headers=headers,
                                 timeout=timeout_s) as http:

        async def embed(inp: Any, **extra: Any) -> httpx.Response:
            return await http.post("/v1/embeddings", json={"model": model, "input": inp, **extra})

        async def guarded(name: str, fn: Any) -> None:
            try:
                await fn()
            except httpx.HTTPError as exc:
                check(name, False, f"{type(exc).__name__}: {exc}")

        async def bilingual() -> None:
            r = await embed(BILINGUAL)
            vecs = _vectors(r.json()) if r.status_code == 200 else []
            ok = (r.status_code == 200 and len(vecs) == 2
                  and all(len(v) == dimension and _finite(v) for v in vecs))
            detail = (f"2 vectors of {dimension}" if ok else
                      f"HTTP {r.status_code}, dims {[len(v) for v in vecs]}, expected {dimension}"
                      + (f": {_message(r)}" if r.status_code != 200 else ""))
            check("bilingual (en + zh)", ok, detail)

        async def long_input() -> None:
            ctx = context_length
            if ctx is None:
                try:
                    models = (await http.get("/v1/models")).json().get("data") or []
                    ctx = int(models[0].get("max_model_len")) if models else None
                except (ValueError, TypeError, httpx.HTTPError):
                    ctx = None
            ctx = ctx or 8192
            words = max(16, int(ctx * 0.8))
            r = await embed(" ".join(["hello"] * words))
            vecs = _vectors(r.json()) if r.status_code == 200 else []
            ok = r.status_code == 200 and len(vecs) == 1 and len(vecs[0]) == dimension
            check(f"long input (~{words} tokens of {ctx})", ok,
                  "ok" if ok else f"HTTP {r.status_code}: {_message(r)}")

        async def empty() -> None:
            r = await embed("")
            ok = r.status_code == 400
            check("empty input → 400", ok, f"HTTP {r.status_code}: {_message(r)}")

        async def dims() -> None:
            want = min(256, dimension)
            r = await embed(BILINGUAL[0], dimensions=want)
            if r.status_code == 200:
                got = len(_vectors(r.json())[0])
                if got == want:
                    check("dimensions truncation", True, f"{want} dims as asked")
                else:
                    check("dimensions truncation", True,
                          f"ignored ({got} dims returned): this SGLang version ignores "
                          "`dimensions`")
            elif r.status_code == 400 and "matryoshka" in _message(r):
                check("dimensions truncation", True,
                      "not enabled for this model (needs --json-model-override-args "
                      "'{\"is_matryoshka\": true}')")
            else:
                check("dimensions truncation", False, f"HTTP {r.status_code}: {_message(r)}")

        async def cold_cached() -> None:
            text = f"embedops validate {uuid.uuid4().hex}: cold then cached"
            first = await embed(text)
            second = await embed(text)
            if first.status_code != 200 or second.status_code != 200:
                check("same vector cold and cached", False,
                      f"HTTP {first.status_code}/{second.status_code}")
                return
            c = cosine(_vectors(first.json())[0], _vectors(second.json())[0])
            ok = c >= MIN_COSINE
            check("same vector cold and cached", ok, f"cosine {c:.4f}" + (
                "" if ok else "; the radix (prefix) cache changes vectors of encoder models: "
                "relaunch with --disable-radix-cache"))

        for name, fn in (("bilingual (en + zh)", bilingual), ("long input", long_input),
                         ("empty input → 400", empty), ("dimensions truncation", dims),
                         ("same vector cold and cached", cold_cached)):
            await guarded(name, fn)
    return {"url": url, "ok": all(c["ok"] for c in checks), "checks": checks}


__all__ = ["run_validation"]
