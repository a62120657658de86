"""backends.promtext on SGLang expositions: 0.5.23 (Appendix A), 0.5.2 (§3.5), OpenMetrics."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client import Histogram as PromHistogram
from prometheus_client.exposition import generate_latest as text_exposition
from prometheus_client.openmetrics.exposition import ALLOWUTF8
from prometheus_client.openmetrics.exposition import generate_latest as om_exposition

from backends.promtext import (
    Histogram,
    MetricsParseError,
    detect_reset,
    parse_metrics,
)

DATA = Path(__file__).resolve().parent.parent / "data"
MODEL = "Qwen/Qwen3-Embedding-4B"


@pytest.fixture(scope="module")
def v0523():
    return parse_metrics((DATA / "sglang_0523_metrics.txt").read_text())


@pytest.fixture(scope="module")
def v052():
    return parse_metrics((DATA / "sglang_052_metrics.txt").read_text())


def test_gauges_by_colon_name(v0523):
    assert v0523.gauge("sglang:num_running_reqs") == 0.0
    assert v0523.gauge("sglang:kv_available_tokens") == 412100.0
    assert v0523.gauge("sglang:weight_memory_usage_gb") == pytest.approx(7.56)
    assert v0523.gauge("sglang:max_total_num_tokens", tp_rank=0) == 412136.0
    assert v0523.gauge("sglang:does_not_exist") is None
    assert v0523.gauge("sglang:num_running_reqs", tp_rank=1) is None


def test_counter_with_or_without_total_and_label_sum(v0523):
    assert v0523.counter("sglang:num_requests_total") == 3.0
    assert v0523.counter("sglang:num_requests") == 3.0
    # summed across endpoints, or filtered to one
    assert v0523.counter("sglang:http_requests_total") == 10.0
    assert v0523.counter("sglang:http_requests_total", endpoint="/health") == 4.0
    assert v0523.counter("sglang:http_responses_total",
                         {"endpoint": "/v1/embeddings", "status_code": "200"}) == 3.0
    assert v0523.counter("sglang:realtime_tokens_total", mode="prefill_cache") == 9.0
    assert v0523.label_values("sglang:realtime_tokens_total", "mode") == {
        "prefill_compute", "prefill_cache"}


def test_gauge_sum_includes_pid_labelled_series(v0523):
    assert v0523.gauge("sglang:num_retracted_reqs", pid="15310") == 0.0
    assert v0523.samples("sglang:num_retracted_reqs")[0].labels["pid"] == "15310"


def test_histogram_buckets_count_sum(v0523):
    h = v0523.histogram("sglang:e2e_request_latency_seconds")
    assert isinstance(h, Histogram)
    assert h.count == 3.0
    assert h.sum == pytest.approx(0.072)
    edges = [le for le, _ in h.buckets]
    assert edges[:3] == [0.1, 0.2, 0.4]
    assert edges[-2] == 2400.0 and math.isinf(edges[-1])
    assert len(edges) == 23
    assert all(c == 3.0 for _, c in h.buckets)
    assert v0523.has("sglang:e2e_request_latency_seconds")
    assert v0523.histogram("sglang:e2e_request_latency_seconds", is_streaming="true") is None
    assert v0523.histogram("sglang:nope") is None
    # queue time has a 0.0 edge and non-uniform counts
    q = v0523.histogram("sglang:queue_time_seconds")
    assert q.buckets[0] == (0.0, 0.0) and q.buckets[1] == (0.001, 2.0)


def test_v052_flavour(v052):
    assert v052.gauge("sglang:num_queue_reqs", engine_type="unified") == 5.0
    assert v052.gauge("sglang:engine_startup_time") == 31.5
    assert v052.counter("sglang:num_aborted_requests") == 1.0
    assert v052.counter("sglang:num_requests_total", model_name=MODEL) == 10.0
    assert v052.counter("sglang:num_requests_total", engine_type="unified") is None
    h = v052.histogram("sglang:e2e_request_latency_seconds", model_name=MODEL)
    assert h.count == 10.0 and h.sum == pytest.approx(6.67)
    assert dict(h.buckets)[0.1] == 3.0 and dict(h.buckets)[0.2] == 5.0
    assert dict(h.buckets)[2.0] == 9.0 and h.buckets[-1] == (math.inf, 10.0)
    assert not v052.has("sglang:queue_time_seconds")


def _registry(requests: int, observations: list[float], *, extra_series: bool = False):
    reg = CollectorRegistry()
    c = Counter("sglang:num_requests_total", "Number of requests processed.",
                ["model_name", "tp_rank"], registry=reg)
    c.labels(MODEL, "0").inc(requests)
    if extra_series:
        c.labels(MODEL, "1").inc(2)
    g = Gauge("sglang:num_running_reqs", "The number of running requests.",
              ["model_name"], registry=reg)
    g.labels(MODEL).set(4)
    h = PromHistogram("sglang:e2e_request_latency_seconds", "e2e",
                      ["model_name", "tp_rank"], buckets=[0.1, 0.2, 0.4], registry=reg)
    for x in observations:
        h.labels(MODEL, "0").observe(x)
    if extra_series:
        h.labels(MODEL, "1").observe(0.3)
    return reg


@pytest.mark.parametrize("fmt", ["text", "openmetrics-escaped", "openmetrics-utf8"])
def test_same_answers_in_every_format(fmt):
    reg = _registry(7, [0.05, 0.15, 0.15, 1.0], extra_series=True)
    if fmt == "text":
        body = text_exposition(reg).decode()
        snap = parse_metrics(body, content_type="text/plain; version=0.0.4; charset=utf-8")
    elif fmt == "openmetrics-escaped":
        # prometheus_client 0.26 default: sample names get ':' escaped to '_'
        body = om_exposition(reg).decode()
        assert "sglang_num_requests_total" in body
        snap = parse_metrics(body)
    else:
        body = om_exposition(reg, escaping=ALLOWUTF8).decode()
        assert "sglang:num_requests_total{" in body
        snap = parse_metrics(body, content_type="application/openmetrics-text; version=1.0.0")
    assert snap.counter("sglang:num_requests_total") == 9.0
    assert snap.counter("sglang:num_requests_total", tp_rank="0") == 7.0
    assert snap.gauge("sglang:num_running_reqs") == 4.0
    h = snap.histogram("sglang:e2e_request_latency_seconds")
    assert h.buckets == ((0.1, 1.0), (0.2, 3.0), (0.4, 4.0), (math.inf, 5.0))
    assert h.count == 5.0
    assert h.sum == pytest.approx(1.65)
    assert snap.histogram("sglang:e2e_request_latency_seconds", tp_rank="1").count == 1.0
    kinds = {s.kind for s in snap.samples("sglang:num_requests_total")}
    assert kinds == {"counter"}


def test_histogram_merge_keeps_only_common_edges():
    text = "\n".join([
        "# TYPE x histogram",
        'x_bucket{w="a",le="0.1"} 1', 'x_bucket{w="a",le="0.5"} 2', 'x_bucket{w="a",le="+Inf"} 3',
        'x_count{w="a"} 3', 'x_sum{w="a"} 1.0',
        'x_bucket{w="b",le="0.5"} 4', 'x_bucket{w="b",le="+Inf"} 4',
        'x_count{w="b"} 4', 'x_sum{w="b"} 1.5', "",
    ])
    h = parse_metrics(text).histogram("x")
    assert h.buckets == ((0.5, 6.0), (math.inf, 7.0))
    assert h.count == 7.0 and h.sum == 2.5


def test_malformed_raises():
    with pytest.raises(MetricsParseError):
        parse_metrics('sglang:x{a="1" 2\n')
    with pytest.raises(MetricsParseError):
        parse_metrics('x{a="1" 2\n# EOF\n')


def test_detect_reset():
    def snap(requests, obs, extra=False):
        return parse_metrics(text_exposition(_registry(requests, obs, extra_series=extra)).decode())

    a = snap(5, [0.05, 0.3])
    assert not detect_reset(a, a)
    assert not detect_reset(a, snap(6, [0.05, 0.3, 0.3]))
    assert not detect_reset(a, snap(5, [0.05, 0.3], extra=True))  # new series appear: fine
    assert detect_reset(a, snap(1, [0.05, 0.3, 0.3]))  # counter went down
    assert detect_reset(a, snap(9, [0.05]))  # histogram count went down
    assert detect_reset(a, parse_metrics(""))  # series vanished after a restart
    # gauges going down is normal
    g1 = parse_metrics("# TYPE g gauge\ng 5\n")
    g2 = parse_metrics("# TYPE g gauge\ng 1\n")
    assert not detect_reset(g1, g2)


def test_openmetrics_escaped_single_series_uses_openmetrics_parser():
    # one series per family: prometheus_client's OpenMetrics parser reads it directly,
    # and the untyped escaped samples still get their family's type
    body = om_exposition(_registry(3, [0.05, 0.3])).decode()
    assert body.rstrip().endswith("# EOF")
    snap = parse_metrics(body)
    assert snap.counter("sglang:num_requests_total") == 3.0
    assert {s.kind for s in snap.samples("sglang:num_requests_total")} == {"counter"}
    assert snap.histogram("sglang:e2e_request_latency_seconds").buckets[-1] == (math.inf, 2.0)
    assert "sglang:e2e_request_latency_seconds" in snap.families
