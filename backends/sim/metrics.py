"""SGLang's Prometheus metrics for the simulated worker (names, help texts, labels and
buckets of sglang-surface.md §3 and Appendix A; 0.5.2 flavour per §3.5).

One registry without process/platform collectors and without ``*_created`` series, as
SGLang's multiprocess collector exposes. Labelled series appear on first write.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.exposition import choose_encoder

disable_created_metrics()  # type: ignore[no-untyped-call]

TTFT_BUCKETS = [0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 20.0, 40.0, 60.0,
                80.0, 100.0, 200.0, 400.0]
E2E_BUCKETS = [0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 20.0, 40.0, 60.0,
               80.0, 100.0, 200.0, 400.0, 600.0, 1200.0, 1800.0, 2400.0]
QUEUE_BUCKETS = [0.0, 0.001, 0.005, 0.01, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 10.0,
                 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0, 200.0, 300.0,
                 400.0, 500.0, 600.0, 700.0, 800.0, 900.0, 1000.0, 1200.0, 1400.0, 1600.0,
                 1800.0, 2000.0, 2500.0, 3000.0]
TOKENS_BUCKETS = [100.0, 300.0, 500.0, 700.0, 1000.0, 1500.0, 2000.0, 3000.0, 4000.0, 5000.0,
                  6000.0, 7000.0, 8000.0, 9000.0, 10000.0, 12500.0, 15000.0, 17500.0, 20000.0,
                  22500.0, 25000.0, 27500.0, 30000.0, 35000.0, 40000.0, 60000.0, 80000.0,
                  100000.0, 200000.0, 300000.0, 400000.0, 600000.0, 800000.0, 1e6, 1.1e6]

_GAUGES_023 = (
    ("num_running_reqs", "The number of running requests."),
    ("num_queue_reqs", "The number of requests in the waiting queue."),
    ("num_grammar_queue_reqs", "The number of requests in the grammar waiting queue."),
    ("gen_throughput", "The generation throughput (token/s)."),
    ("cache_hit_rate", "The prefix cache hit rate."),
    ("decode_sum_seq_lens", "The sum of all sequence lengths in decode."),
    ("token_usage", "The token usage."),
    ("full_token_usage", "The token usage for full attention layers."),
    ("num_used_tokens", "The number of used tokens."),
    ("kv_available_tokens", "Number of free token slots in the KV cache pool."),
    ("kv_evictable_tokens",
     "Number of evictable (radix-cached) token slots in the KV cache pool."),
    ("kv_used_tokens", "Number of actively used token slots in the KV cache pool."),
    ("utilization", "The utilization."),
    ("new_token_ratio", "The new token ratio."),
    ("is_cuda_graph", "Whether the batch is using CUDA graph."),
    ("max_total_num_tokens", "Maximum total number of tokens in the KV cache pool."),
    ("weight_memory_usage_gb", "Memory used by model weights in GB."),
    ("kv_cache_memory_usage_gb", "Memory used by the KV cache pools in GB."),
    ("page_size", "KV cache page size in tokens."),
    ("num_pages", "Number of KV cache pages."),
    ("context_len", "Maximum context length."),
    ("startup_available_gpu_memory_gb", "Available GPU memory in GB at startup."),
)
_GAUGES_052 = (
    ("num_running_reqs", "The number of running requests."),
    ("num_used_tokens", "The number of used tokens."),
    ("token_usage", "The token usage."),
    ("swa_token_usage", "The token usage for SWA layers."),
    ("gen_throughput", "The generation throughput (token/s)."),
    ("num_queue_reqs", "The number of requests in the waiting queue."),
    ("num_grammar_queue_reqs", "The number of requests in the grammar waiting queue."),
    ("num_running_reqs_offline_batch",
     "The number of running low-priority offline batch requests(label is 'batch')."),
    ("avg_request_queue_latency",
     "The average request queue latency for the last batch of requests in seconds."),
    ("cache_hit_rate", "The prefix cache hit rate."),
    ("spec_accept_length", "The average acceptance length of speculative decoding."),
    ("utilization", "The utilization."),
    ("total_retracted_reqs", "The total number of retracted requests due to kvcache full."),
    ("engine_startup_time", "The time taken for the engine to start up."),
    ("engine_load_weights_time", "The time taken for the engine to load weights."),
)


class SimMetrics:
    """The worker's metric families and the updates the launcher applies."""

    def __init__(self, *, version: str, model_name: str, scheduler_pid: int,
                 e2e_buckets: Sequence[float] | None = None,
                 ttft_buckets: Sequence[float] | None = None,
                 tokens_histogram: bool = True) -> None:
        self.version = version
        self.new = version != "0.5.2"
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        if self.new:
            self.sched_labels: tuple[str, ...] = ("engine_type", "model_name", "moe_ep_rank",
                                                  "pp_rank", "tp_rank")
            self.sched_values: tuple[str, ...] = ("unified", model_name, "0", "0", "0")
            self.req_labels: tuple[str, ...] = ("engine_type", "is_streaming", "model_name")
            self.req_values: tuple[str, ...] = ("unified", "false", model_name)
            self.tok_labels: tuple[str, ...] = ("engine_type", "model_name")
            self.tok_values: tuple[str, ...] = ("unified", model_name)
            gauges: tuple[tuple[str, str], ...] = _GAUGES_023
        else:
            self.sched_labels = ("engine_type", "model_name", "pp_rank", "tp_rank")
            self.sched_values = ("unified", model_name, "0", "0")
            self.req_labels = ("model_name",)
            self.req_values = (model_name,)
            self.tok_labels = ("model_name",)
            self.tok_values = (model_name,)
            gauges = _GAUGES_052
        self.g: dict[str, Any] = {
            name: Gauge(f"sglang:{name}", doc, self.sched_labels, registry=r)
            for name, doc in gauges}
        pid_labels = (*self.sched_labels, "pid")
        self.pid_values = (*self.sched_values, str(scheduler_pid))
        self.g["num_retracted_reqs"] = Gauge("sglang:num_retracted_reqs",
                                             "The number of retracted requests.", pid_labels,
                                             registry=r)
        self.g["num_paused_reqs"] = Gauge("sglang:num_paused_reqs",
                                          "The number of paused requests by async weight sync.",
                                          pid_labels, registry=r)
        self.ttft = Histogram("sglang:time_to_first_token_seconds",
                              "Histogram of time to first token in seconds.", self.req_labels,
                              buckets=list(ttft_buckets or TTFT_BUCKETS), registry=r)
        self.e2e = Histogram("sglang:e2e_request_latency_seconds",
                             "Histogram of End-to-end request latency in seconds",
                             self.req_labels, buckets=list(e2e_buckets or E2E_BUCKETS),
                             registry=r)
        self.prompt_tokens = Counter("sglang:prompt_tokens_total",
                                     "Number of prefill tokens processed.", self.req_labels,
                                     registry=r)
        self.generation_tokens = Counter("sglang:generation_tokens_total",
                                         "Number of generation tokens processed.",
                                         self.req_labels, registry=r)
        self.num_requests = Counter("sglang:num_requests_total", "Number of requests processed.",
                                    self.req_labels, registry=r)
        cached_labels = ("cache_source", *self.tok_labels) if self.new else self.tok_labels
        self.cached_values = ("device", *self.tok_values) if self.new else self.tok_values
        self.cached_tokens = Counter(
            "sglang:cached_tokens_total",
            "Number of cached prompt tokens by source (device/host/storage)." if self.new
            else "Number of cached prompt tokens.", cached_labels, registry=r)
        self.tokens_hist = tokens_histogram
        self.prompt_hist = Histogram("sglang:prompt_tokens_histogram",
                                     "Histogram of prompt token length.", self.tok_labels,
                                     buckets=TOKENS_BUCKETS, registry=r)
        self.generation_hist = Histogram("sglang:generation_tokens_histogram",
                                         "Histogram of generation token length.",
                                         self.tok_labels, buckets=TOKENS_BUCKETS, registry=r)
        if self.new:
            self.uncached_hist = Histogram("sglang:uncached_prompt_tokens_histogram",
                                           "Histogram of uncached (compute) prompt token length.",
                                           self.tok_labels, buckets=TOKENS_BUCKETS, registry=r)
            self.queue_time = Histogram("sglang:queue_time_seconds",
                                        "Histogram of queueing time in seconds.",
                                        self.sched_labels, buckets=QUEUE_BUCKETS, registry=r)
            self.realtime_tokens = Counter(
                "sglang:realtime_tokens_total",
                "Total number of tokens processed (updated on each log interval). mode: "
                "prefill_compute, prefill_cache, decode.", (*self.sched_labels, "mode"),
                registry=r)
            self.graph_passes = Counter("sglang:cuda_graph_passes_total",
                                        "Total number of forward passes categorized by CUDA graph.",
                                        (*self.sched_labels, "mode"), registry=r)
            self.startup_time = Gauge("sglang:startup_time_seconds",
                                      "Engine startup duration by phase in seconds.",
                                      ("engine_type", "model_name", "phase"), registry=r)
            self.graph_memory = Gauge("sglang:graph_memory_usage_gb",
                                      "Memory used by CUDA graphs in GB.",
                                      (*self.sched_labels, "phase"), registry=r)
            self.http_active = Gauge("sglang:http_requests_active",
                                     "Number of currently active HTTP requests",
                                     ("endpoint", "method"), registry=r)
            self.http_requests = Counter("sglang:http_requests_total",
                                         "Total number of HTTP requests by endpoint and method",
                                         ("endpoint", "method"), registry=r)
            self.http_responses = Counter(
                "sglang:http_responses_total",
                "Total number of HTTP responses by endpoint and status code",
                ("endpoint", "method", "status_code"), registry=r)
        else:
            # Defined in 0.5.2 but never observed: no series ever appears.
            self.queue_time = Histogram("sglang:queue_time_s",
                                        "Histogram of queueing time in seconds.",
                                        self.sched_labels, buckets=QUEUE_BUCKETS, registry=r)
        self._req_children: tuple[Any, ...] | None = None
        self._cached_child: Any = None
        self._last_counters = {"prefill_compute": 0, "prefill_cache": 0, "passes": 0}
        self.cuda_graph = False

    # ------------------------------------------------------------------ startup

    def set_startup(self, info: dict[str, Any], *, context_len: int, load_s: float,
                    total_s: float, cuda_graph: bool) -> None:
        """Constants SGLang writes once the KV pool exists."""
        self.cuda_graph = cuda_graph
        sv = self.sched_values
        if self.new:
            self.g["max_total_num_tokens"].labels(*sv).set(info["max_total_num_tokens"])
            self.g["weight_memory_usage_gb"].labels(*sv).set(round(info["weights_mib"] / 1024, 2))
            self.g["kv_cache_memory_usage_gb"].labels(*sv).set(round(info["kv_mib"] / 1024, 2))
            self.g["page_size"].labels(*sv).set(1)
            self.g["num_pages"].labels(*sv).set(info["max_total_num_tokens"])
            self.g["context_len"].labels(*sv).set(context_len)
            self.g["startup_available_gpu_memory_gb"].labels(*sv).set(
                round(info["startup_available_mib"] / 1024, 2))
            if info.get("graph_mib"):
                self.graph_memory.labels(*sv, "prefill").set(round(info["graph_mib"] / 1024, 2))
            tv = self.tok_values
            self.startup_time.labels(*tv, "load_weight").set(round(load_s * 0.7, 3))
            self.startup_time.labels(*tv, "kv_cache_allocation").set(round(load_s * 0.3, 3))
            self.startup_time.labels(*tv, "scheduler_e2e").set(round(load_s, 3))
            self.startup_time.labels(*tv, "tokenizer_e2e").set(round(total_s, 3))
        else:
            self.g["engine_load_weights_time"].labels(*sv).set(round(load_s * 0.7, 3))
            self.g["engine_startup_time"].labels(*sv).set(round(total_s, 3))
        self.g["num_retracted_reqs"].labels(*self.pid_values).set(0)
        self.g["num_paused_reqs"].labels(*self.pid_values).set(0)

    # ------------------------------------------------------------------ updates

    def scheduler_stats(self, s: dict[str, Any], max_total_num_tokens: int) -> None:
        """Apply one stats message of the scheduler."""
        g = self.g
        sv = self.sched_values
        used = s["used_tokens"]
        cap = max(max_total_num_tokens, 1)
        g["num_running_reqs"].labels(*sv).set(s["running"])
        g["num_queue_reqs"].labels(*sv).set(s["queue"])
        g["num_grammar_queue_reqs"].labels(*sv).set(0)
        g["gen_throughput"].labels(*sv).set(0)
        g["cache_hit_rate"].labels(*sv).set(round(s["cache_hit_rate"], 4))
        g["token_usage"].labels(*sv).set(round(used / cap, 2 if not self.new else 4))
        g["num_used_tokens"].labels(*sv).set(used)
        g["utilization"].labels(*sv).set(0)
        if self.new:
            evict = min(s["evictable_tokens"], cap - used)
            g["decode_sum_seq_lens"].labels(*sv).set(0)
            g["full_token_usage"].labels(*sv).set(round(used / cap, 4))
            g["kv_used_tokens"].labels(*sv).set(used)
            g["kv_evictable_tokens"].labels(*sv).set(evict)
            g["kv_available_tokens"].labels(*sv).set(max(cap - used - evict, 0))
            g["new_token_ratio"].labels(*sv).set(0)
            g["is_cuda_graph"].labels(*sv).set(1.0 if self.cuda_graph and s["running"] else 0.0)
            last = self._last_counters
            for key, mode in (("prefill_compute", "prefill_compute"),
                              ("prefill_cache", "prefill_cache")):
                delta = s[key] - last[key]
                if delta > 0:
                    self.realtime_tokens.labels(*sv, mode).inc(delta)
            delta = s["passes"] - last["passes"]
            if delta > 0:
                mode = "prefill_breakable" if self.cuda_graph else "prefill_none"
                self.graph_passes.labels(*sv, mode).inc(delta)
            self._last_counters = {k: s[k] for k in last}
        else:
            for name in ("swa_token_usage", "num_running_reqs_offline_batch",
                         "avg_request_queue_latency", "spec_accept_length",
                         "total_retracted_reqs"):
                g[name].labels(*sv).set(0)

    def request_done(self, prompt_tokens: int, cached_tokens: int, e2e_s: float,
                     queue_s: float) -> None:
        """One finished embedding request (health checks are not counted)."""
        ch = self._req_children
        if ch is None:
            rv = self.req_values
            ch = self._req_children = (
                self.ttft.labels(*rv), self.e2e.labels(*rv), self.prompt_tokens.labels(*rv),
                self.generation_tokens.labels(*rv), self.num_requests.labels(*rv),
                self.prompt_hist.labels(*self.tok_values) if self.tokens_hist else None,
                self.generation_hist.labels(*self.tok_values) if self.tokens_hist else None,
                self.uncached_hist.labels(*self.tok_values) if self.new else None,
                self.queue_time.labels(*self.sched_values) if self.new else None)
        ttft, e2e, ptok, gtok, nreq, phist, ghist, uhist, qtime = ch
        ttft.observe(e2e_s)
        e2e.observe(e2e_s)
        ptok.inc(prompt_tokens)
        gtok.inc(0)
        nreq.inc()
        if phist is not None:
            phist.observe(prompt_tokens)
            ghist.observe(0)
        if uhist is not None:
            uhist.observe(prompt_tokens - cached_tokens)
        if qtime is not None:
            qtime.observe(queue_s)
        if cached_tokens > 0:
            if self._cached_child is None:
                self._cached_child = self.cached_tokens.labels(*self.cached_values)
            self._cached_child.inc(cached_tokens)

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """Exposition body and content type for an ``Accept`` header."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

