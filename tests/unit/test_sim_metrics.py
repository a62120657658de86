"""The sim's Prometheus exposition: SGLang's names, labels, buckets per version."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from backends.sim.metrics import E2E_BUCKETS, SimMetrics

INFO = {"max_total_num_tokens": 400000, "weights_mib": 7680, "kv_mib": 56000,
        "graph_mib": 1536, "startup_available_mib": 80000}
STATS = {"running": 3, "queue": 2, "used_tokens": 40, "evictable_tokens": 100,
         "cache_hit_rate": 0.25, "util_pct": 50.0, "used_mib": 70000,
         "prefill_compute": 30, "prefill_cache": 10, "passes": 4}


def _samples(m: SimMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, _ = m.render("text/plain")
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _names(m: SimMetrics) -> set[str]:
    return {name for name, _ in _samples(m)}


def test_0523_series_names_labels_and_buckets() -> None:
    m = SimMetrics(version="0.5.23", model_name="Qwen/Qwen3-Embedding-4B", scheduler_pid=4242)
    m.set_startup(INFO, context_len=32768, load_s=1.0, total_s=2.0, cuda_graph=True)
    m.scheduler_stats(STATS, INFO["max_total_num_tokens"])
    # request series appear only after the first finished request
    assert "sglang:e2e_request_latency_seconds_count" not in _names(m)
    m.request_done(prompt_tokens=12, cached_tokens=11, e2e_s=0.009, queue_s=0.0005)
    s = _samples(m)
    sched = (("engine_type", "unified"), ("model_name", "Qwen/Qwen3-Embedding-4B"),
             ("moe_ep_rank", "0"), ("pp_rank", "0"), ("tp_rank", "0"))
    assert s[("sglang:num_running_reqs", sched)] == 3
    assert s[("sglang:num_queue_reqs", sched)] == 2
    assert s[("sglang:max_total_num_tokens", sched)] == 400000
    assert s[("sglang:kv_available_tokens", sched)] == 400000 - 40 - 100
    req = (("engine_type", "unified"), ("is_streaming", "false"),
           ("model_name", "Qwen/Qwen3-Embedding-4B"))
    assert s[("sglang:num_requests_total", req)] == 1
    assert s[("sglang:prompt_tokens_total", req)] == 12
    # default latency buckets start at 0.1 s: a 9 ms request lands in the first one
    assert s[("sglang:e2e_request_latency_seconds_bucket", (*req[:1], ("is_streaming", "false"),
                                                            ("le", "0.1"), req[2]))] == 1
    les = sorted(float(dict(lab)["le"]) for (n, lab) in s
                 if n == "sglang:e2e_request_latency_seconds_bucket" and dict(lab)["le"] != "+Inf")
    assert les == E2E_BUCKETS
    assert s[("sglang:cached_tokens_total", (("cache_source", "device"),
                                             ("engine_type", "unified"),
                                             ("model_name", "Qwen/Qwen3-Embedding-4B")))] == 11
    assert s[("sglang:num_retracted_reqs", (*sched[:3], ("pid", "4242"), *sched[3:]))] == 0
    names = _names(m)
    for name in ("sglang:queue_time_seconds_count", "sglang:realtime_tokens_total",
                 "sglang:cuda_graph_passes_total", "sglang:startup_time_seconds",
                 "sglang:uncached_prompt_tokens_histogram_count", "sglang:token_usage",
                 "sglang:weight_memory_usage_gb", "sglang:graph_memory_usage_gb"):
        assert name in names, name
    assert not any(n.endswith("_created") or n.startswith(("process_", "python_"))
                   for n in names)
    assert "sglang_gpu_memory_used_bytes" not in names


def test_custom_e2e_buckets() -> None:
    m = SimMetrics(version="0.5.23", model_name="m", scheduler_pid=1,
                   e2e_buckets=[0.005, 0.01, 0.05])
    m.request_done(prompt_tokens=2, cached_tokens=0, e2e_s=0.007, queue_s=0.0)
    s = _samples(m)
    les = {dict(lab)["le"]: v for (n, lab), v in s.items()
           if n == "sglang:e2e_request_latency_seconds_bucket"}
    assert les == {"0.005": 0, "0.01": 1, "0.05": 1, "+Inf": 1}


def test_0_5_2_flavour() -> None:
    m = SimMetrics(version="0.5.2", model_name="m", scheduler_pid=1, tokens_histogram=False)
    m.set_startup(INFO, context_len=32768, load_s=1.0, total_s=2.0, cuda_graph=False)
    m.scheduler_stats(STATS, INFO["max_total_num_tokens"])
    m.request_done(prompt_tokens=2, cached_tokens=0, e2e_s=0.007, queue_s=0.0)
    s = _samples(m)
    assert s[("sglang:num_running_reqs", (("engine_type", "unified"), ("model_name", "m"),
                                           ("pp_rank", "0"), ("tp_rank", "0")))] == 3
    assert s[("sglang:num_requests_total", (("model_name", "m"),))] == 1
    names = _names(m)
    assert "sglang:engine_startup_time" in names
    assert not any(n.startswith(("sglang:http_", "sglang:queue_time")) for n in names)
    assert "sglang:prompt_tokens_histogram_count" not in names


def test_openmetrics_negotiation() -> None:
    m = SimMetrics(version="0.5.23", model_name="m", scheduler_pid=1)
    body, ctype = m.render("application/openmetrics-text")
    assert ctype.startswith("application/openmetrics-text") and body.endswith(b"# EOF\n")
    body, ctype = m.render(None)
    assert ctype == "text/plain; version=0.0.4; charset=utf-8"
