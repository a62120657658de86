"""`parse_metrics(..., families=...)` keeps exactly what a full parse gives for the kept
families, and skips the others cheaply."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import (
    generate_latest as openmetrics_latest,
)

from backends.promtext import MetricsParseError, MetricsSnapshot, parse_metrics
from console.runtime import E2E, QUEUED, REQUESTS, RESPONSES, RUNNING, SCRAPED_FAMILIES

DATA = Path(__file__).resolve().parents[1] / "data"
SAMPLES = {
    "sglang-0.5.23": (DATA / "sglang_0523_metrics.txt").read_text(),
    "sglang-0.5.2": (DATA / "sglang_052_metrics.txt").read_text(),
}
SUFFIXES = ("", "_total", "_bucket", "_count", "_sum", "_created", "_gcount", "_gsum", "_info")

# Lines that stress the skipping: families that share a wanted family's prefix, an untyped
# sample of a kept name typed by a declaration, a kept family interrupted by others,
# malformed lines only in families that are skipped.
EDGE = """\
# HELP sglang:num_running_reqs_offline_batch shares the prefix of a kept family
# TYPE sglang:num_running_reqs_offline_batch gauge
sglang:num_running_reqs_offline_batch{tp_rank="0"} 9
# HELP sglang:num_running_reqs running
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{tp_rank="0"} 3
sglang:num_running_reqs{tp_rank="1"} 4
other_gauge 1
sglang:num_running_reqs{tp_rank="2"} 5
# TYPE sglang:e2e_request_latency_seconds histogram
sglang:e2e_request_latency_seconds_bucket{le="0.1"} 1
sglang:e2e_request_latency_seconds_bucket{le="+Inf"} 2
sglang:e2e_request_latency_seconds_count 2
sglang:e2e_request_latency_seconds_sum 0.3
# TYPE sglang:num_requests counter
sglang:num_requests_total{model="m"} 7
# TYPE sglang_num_queue_reqs gauge
sglang_num_queue_reqs 2
# TYPE sglang:http_responses_total counter
sglang:http_responses_total{endpoint="/v1/embeddings",status_code="200"} 10
sglang:http_responses_total{endpoint="/v1/embeddings",status_code="500"} 1
# TYPE skipped_hist histogram
skipped_hist_bucket{le="1"} 1
skipped_hist_bucket{le="+Inf"} 1
skipped_hist_count 1
skipped_hist_sum 0.5
"""


def _by_name(snap: MetricsSnapshot) -> dict[str, list[Any]]:
    return snap._by_name  # the index every lookup reads


def canon(snap: MetricsSnapshot, names: set[str]) -> list[tuple[Any, ...]]:
    """Every sample of `names` (alone or with a suffix, colon-folded) with its kind."""
    keep = {n.replace(":", "_").removesuffix("_total") + s for n in names for s in SUFFIXES}
    out = [(s.name, sorted(s.labels.items()), "nan" if math.isnan(s.value) else s.value, s.kind)
           for key, samples in _by_name(snap).items() if key in keep for s in samples]
    return sorted(out, key=repr)


def lookups(snap: MetricsSnapshot) -> tuple[Any, ...]:
    """What `WorkerRuntime.fold_metrics` reads."""
    return (snap.value(RUNNING), snap.value(QUEUED), snap.histogram(E2E), snap.value(REQUESTS),
            sorted((sorted(s.labels.items()), s.value) for s in snap.samples(RESPONSES)),
            snap.has(E2E), snap.label_values(RESPONSES, "status_code"))


@pytest.mark.parametrize("text", list(SAMPLES.values()) + [EDGE],
                         ids=[*SAMPLES, "edge-cases"])
def test_kept_families_exactly_as_full_parse(text: str) -> None:
    full = parse_metrics(text)
    part = parse_metrics(text, families=SCRAPED_FAMILIES)
    assert canon(part, set(SCRAPED_FAMILIES)) == canon(full, set(SCRAPED_FAMILIES))
    assert canon(part, set(SCRAPED_FAMILIES))  # the comparison compared something
    assert lookups(part) == lookups(full)
    assert part.histogram(E2E) is not None and part.value(RUNNING) is not None
    # only kept names are in the index; every other family was dropped
    keep = {n.replace(":", "_").removesuffix("_total") + s for n in SCRAPED_FAMILIES
            for s in SUFFIXES}
    assert set(_by_name(part)) == set(_by_name(full)) & keep
    assert len(part) < len(full)
    assert set(part.families) == {f for f in full.families
                                  if f.replace(":", "_").removesuffix("_total")
                                  in {k.replace(":", "_").removesuffix("_total")
                                      for k in SCRAPED_FAMILIES}}
    assert part.monotonic_series() == {k: v for k, v in full.monotonic_series().items()
                                       if k[0] in keep}


@pytest.mark.parametrize("name", ["sglang:num_running_reqs", "sglang_num_running_reqs"])
def test_any_single_family_and_spellings(name: str) -> None:
    text = SAMPLES["sglang-0.5.23"]
    full = parse_metrics(text)
    part = parse_metrics(text, families=[name])
    assert part.value(RUNNING) == full.value(RUNNING) is not None
    assert part.value(QUEUED) is None and part.histogram(E2E) is None
    # a counter is kept whether named with or without _total
    for spelling in ("sglang:num_requests", "sglang:num_requests_total"):
        assert parse_metrics(text, families=[spelling]).value(REQUESTS) == full.value(REQUESTS)


def test_every_family_of_a_real_scrape_alone() -> None:
    """Each family, kept alone, comes out as in the full parse (no prefix confusion)."""
    text = SAMPLES["sglang-0.5.23"]
    full = parse_metrics(text)
    names = {fam for fam in full.families}
    assert len(names) > 20
    for name in names:
        part = parse_metrics(text, families=[name])
        assert canon(part, {name}) == canon(full, {name}), name


def test_malformed_line_in_a_skipped_family_is_not_read() -> None:
    bad = EDGE + "# TYPE other_thing gauge\nother_thing{a=\"1\" not-a-number\n"
    with pytest.raises(MetricsParseError):
        parse_metrics(bad)
    part = parse_metrics(bad, families=SCRAPED_FAMILIES)
    assert part.value(RUNNING) == 12.0
    # but a malformed line of a kept family still fails the parse
    with pytest.raises(MetricsParseError):
        parse_metrics(EDGE + "sglang:num_queue_reqs nope\n", families=SCRAPED_FAMILIES)


def test_fallback_and_openmetrics_paths_are_filtered_too() -> None:
    reg = CollectorRegistry()
    Gauge("sglang:num_running_reqs", "r", ["tp_rank"], registry=reg).labels("0").set(3)
    Gauge("sglang:token_usage", "t", registry=reg).set(0.5)
    c = Counter("sglang:num_requests", "n", registry=reg)
    c.inc(4)
    h = Histogram("sglang:e2e_request_latency_seconds", "e", buckets=(0.1, 1.0), registry=reg)
    h.observe(0.05)
    h.observe(0.5)
    bodies = {
        "text": (generate_latest(reg).decode(), None),
        # an escaped label the fast parser leaves to prometheus_client
        "text-fallback": (generate_latest(reg).decode() + 'odd{a="\\t"} 1\n', None),
        "openmetrics": (openmetrics_latest(reg).decode(),
                        "application/openmetrics-text; version=1.0.0"),
    }
    for label, (body, ctype) in bodies.items():
        full = parse_metrics(body, content_type=ctype)
        part = parse_metrics(body, content_type=ctype, families=SCRAPED_FAMILIES)
        assert lookups(part) == lookups(full), label
        assert part.value(RUNNING) == 3.0 and part.value(REQUESTS) == 4.0, label
        assert part.value("sglang:token_usage") is None, label
        assert full.value("sglang:token_usage") == 0.5, label


def test_bad_family_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="families"):
        parse_metrics("x 1\n", families=[""])


def test_filtered_parse_is_much_cheaper() -> None:
    text = SAMPLES["sglang-0.5.23"]

    def per_parse_ms(**kw: Any) -> float:
        parse_metrics(text, **kw)
        best = math.inf
        for _ in range(3):  # best of 3: robust on a loaded machine
            t0 = time.perf_counter()
            for _ in range(20):
                parse_metrics(text, **kw)
            best = min(best, (time.perf_counter() - t0) / 20 * 1000)
        return best

    full, part = per_parse_ms(), per_parse_ms(families=SCRAPED_FAMILIES)
    assert part < full / 1.5, (full, part)
