"""Pure parts of `embedops bench`: option parsing, merging, verdicts, the table."""

from __future__ import annotations

import argparse

import pytest

from console.bench import (
    BenchError,
    added_latency,
    check_url,
    find_max_verdict,
    fleet_target,
    format_table,
    merge_errors,
    next_rate,
    parse_rates,
)


def test_parse_rates() -> None:
    assert parse_rates("50,100, 200") == [50.0, 100.0, 200.0]
    assert parse_rates("0.5") == [0.5]
    for bad, why in (("0", "positive"), ("-3", "positive"), ("inf", "positive"),
                     ("x", "not a number"), ("10,,20", "empty"), ("nan", "positive")):
        with pytest.raises(argparse.ArgumentTypeError, match=why):
            parse_rates(bad)


def test_check_url() -> None:
    assert check_url("http://127.0.0.1:8000/") == "http://127.0.0.1:8000"
    for bad, why in (("https://h:1", "only http://"), ("http://:80", "no host"),
                     ("http://h:1/v1/embeddings", "base URL"), ("http://h:99999", "Port out of range")):
        with pytest.raises(BenchError, match=why):
            check_url(bad)


def test_fleet_target_takes_routed_workers_only() -> None:
    snap = {"fleet": "f", "balancer": {"kind": "sglang-router", "url": "http://127.0.0.1:1/"},
            "workers": [{"name": "a", "url": "http://127.0.0.1:2", "routed": True},
                        {"name": "b", "url": "http://127.0.0.1:3", "routed": False}]}
    t = fleet_target(snap)
    assert t.url == "http://127.0.0.1:1" and t.source == "fleet"
    assert t.workers == [{"name": "a", "url": "http://127.0.0.1:2"}]
    with pytest.raises(BenchError, match="has no balancer"):
        fleet_target({**snap, "balancer": {"kind": "none", "url": None}})


def test_merge_errors_adds_counts_and_status_codes() -> None:
    acc: dict = {}
    merge_errors(acc, {"timeout": 1, "http_5xx": {"503": 2}, "http_4xx": {}})
    merge_errors(acc, {"timeout": 2, "http_5xx": {"500": 1, "503": 1}, "http_4xx": {}})
    assert acc == {"timeout": 3, "http_5xx": {"500": 1, "503": 3}, "http_4xx": {}}


def test_added_latency() -> None:
    through = {"p50": 1.5, "p95": 3.0, "p99": 4.0}
    direct = {"p50": 1.0, "p95": 3.5, "p99": None}
    assert added_latency(through, direct) == {"p50": 0.5, "p95": -0.5, "p99": None}


def _row(rate: float, *, errors: int = 0, p99: float | None = 5.0,
         achieved: float | None = None) -> dict:
    return {"rate": rate, "error_total": errors, "latency_ms": {"p99": p99},
            "achieved_rps": rate if achieved is None else achieved}


def test_find_max_verdict() -> None:
    assert find_max_verdict(_row(100), 10.0) is None
    assert "3 errors" in (find_max_verdict(_row(100, errors=3), 10.0) or "")
    assert "P99 12 ms > 10 ms" in (find_max_verdict(_row(100, p99=12.0), 10.0) or "")
    assert "no successful" in (find_max_verdict(_row(100, p99=None), 10.0) or "")
    assert "client-bound" in (find_max_verdict(_row(100, achieved=80.0), 10.0) or "")
    assert next_rate(100) == 150 and next_rate(15) == 23


def test_table_has_a_row_per_rate_and_the_errors() -> None:
    lat = {"p50": 1.0, "p95": 2.0, "p99": 3.0}
    run = {"rate": 50.0, "sent": 100, "ok": 98, "error_total": 2, "ok_rps": 49.0,
           "tokens_per_s": 490.0, "latency_ms": lat, "errors": {"http_5xx": {"503": 2}},
           "client_cpu_pct": 5.0,
           "direct": {"latency_ms": {"p50": 0.5, "p95": 1.0, "p99": 2.5}, "error_total": 0,
                      "errors": {}},
           "added_latency_ms": {"p50": 0.5, "p95": 1.0, "p99": 0.5}}
    report = {"target": {"source": "url", "url": "http://h:1", "model": "m"},
              "input": {"kind": "short", "tokens_per_input": 10, "batch": 1},
              "duration_s": 2.0, "direct": True, "runs": [run],
              "find_max": {"max_rate_passed": 50.0, "p99_bound_ms": 10.0,
                           "stopped_because": "x"}}
    text = format_table(report)
    assert "+P50" in text and "+0.50" in text
    assert "errors at 50/s: http_5xx 503x2" in text
    assert "find-max: 50 req/s" in text
