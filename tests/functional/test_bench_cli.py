"""`embedops bench` as a subprocess against a live sim fleet (real router) and one worker."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from backends.promtext import parse_metrics
from tests.chaos.fleet import MODEL, Fleet
from tests.conftest import REPO, free_port
from tests.functional.test_cli_fleet import clean_env, embedops_argv

CMD_TIMEOUT_S = 90.0


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    f = Fleet(tmp_path_factory.mktemp("bench"), 2)
    try:
        f.start(timeout_s=90)
        yield f
    finally:
        f.close()


def bench(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*embedops_argv(), "bench", *args], check=False, cwd=cwd,
                          env=clean_env(), capture_output=True, text=True,
                          timeout=CMD_TIMEOUT_S)


def bench_json(*args: str) -> tuple[dict, str]:
    r = bench(*args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout), r.stderr


def served(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=5).text
    return parse_metrics(text).counter("sglang:num_requests_total") or 0.0


def worker_urls(fleet: Fleet) -> list[str]:
    return [f"http://127.0.0.1:{d.port}" for d in fleet.defs]


def check_run(run: dict, rate: float, seconds: float) -> None:
    """Sanity of one per-rate row: counts, ordering, rates."""
    expected = rate * seconds
    assert abs(run["sent"] - expected) <= max(2, 0.1 * expected), run
    assert run["ok"] >= 0.95 * run["sent"], run
    assert run["error_total"] == run["sent"] - run["ok"], run
    lat = run["latency_ms"]
    assert lat["n"] == run["ok"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"], lat
    assert run["achieved_rps"] == pytest.approx(rate, rel=0.25), run
    assert 0 < run["ok_rps"] <= rate * 1.05, run
    assert set(run["errors"]) >= {"timeout", "connect", "http_5xx"}


def test_fleet_json_progress_and_really_served(fleet: Fleet) -> None:
    urls = worker_urls(fleet)
    before = sum(served(u) for u in urls)
    out, err = bench_json("--state-dir", str(fleet.sd.root), "--rate", "20", "--duration", "2")
    after = sum(served(u) for u in urls)
    assert out["schema"] == 1 and out["mode"] == "rates" and out["direct"] is False
    t = out["target"]
    assert t["source"] == "fleet" and t["url"] == fleet.router_url
    assert t["fleet"] == "chaos" and t["balancer"] == "sglang-router" and t["model"] == MODEL
    assert {w["name"] for w in t["workers"]} == {"w1", "w2"} and "api_key" not in t
    assert [r["rate"] for r in out["runs"]] == [20.0]
    run = out["runs"][0]
    check_run(run, 20, 2)
    assert run["direct"] is None and run["added_latency_ms"] is None
    # tokens/s is the server's own count (usage.prompt_tokens) times the ok rate
    inp = out["input"]
    assert inp["kind"] == "short" and inp["batch"] == 1 and inp["tokens_per_request"] > 3
    assert run["tokens_per_s"] == pytest.approx(run["ok_rps"] * inp["tokens_per_request"],
                                                rel=0.01)
    # every ok answer really came from a worker (plus the calibration request)
    assert after - before >= run["ok"] + 1
    progress = [ln for ln in err.splitlines() if ln.startswith("[bench]")]
    assert any("rate 20/s" in ln and "sent" in ln for ln in progress), err
    assert any("done" in ln for ln in progress), err


def test_fleet_direct_reports_added_latency(fleet: Fleet) -> None:
    out, _ = bench_json("--state-dir", str(fleet.sd.root), "--rate", "20", "--duration", "2",
                        "--direct")
    run = out["runs"][0]
    check_run(run, 20, 2)
    direct = run["direct"]
    check_run(direct, 20, 2)
    # the same rate spread evenly over the two workers
    assert {w["name"] for w in direct["workers"]} == {"w1", "w2"}
    for w in direct["workers"]:
        assert abs(w["sent"] - 20) <= 3 and w["ok"] == w["sent"], w
        assert w["url"] in worker_urls(fleet)
    added = run["added_latency_ms"]
    for q in ("p50", "p95", "p99"):
        assert added[q] == pytest.approx(run["latency_ms"][q] - direct["latency_ms"][q],
                                         abs=0.002)
    # a loopback hop cannot plausibly cost (or save) more than the whole request
    assert abs(added["p50"]) < run["latency_ms"]["p50"]


def test_url_of_one_worker_with_512_token_batches(fleet: Fleet) -> None:
    url = worker_urls(fleet)[0]
    before = served(url)
    out, _ = bench_json("--url", url, "--rate", "20", "--duration", "2", "--input", "512",
                        "--batch", "2")
    assert out["target"]["source"] == "url" and out["target"]["url"] == url
    assert out["target"]["model"] == MODEL and out["target"]["input_limit"] > 512
    inp = out["input"]
    assert inp["kind"] == "512" and inp["batch"] == 2
    assert 512 <= inp["tokens_per_input"] <= 520  # sim: one token per short word + EOS
    assert inp["tokens_per_request"] == pytest.approx(2 * inp["tokens_per_input"], abs=1)
    run = out["runs"][0]
    check_run(run, 20, 2)
    assert run["tokens_per_s"] == pytest.approx(run["ok_rps"] * inp["tokens_per_request"],
                                                rel=0.01)
    assert served(url) - before >= run["ok"]


def test_url_table_and_find_max(fleet: Fleet) -> None:
    url = worker_urls(fleet)[1]
    r = bench("--url", url, "--rate", "10", "--duration", "1", "--quiet")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # --quiet: no progress
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"embedops bench: {url}")
    assert "P99 ms" in lines[2] and "TOK/S" in lines[2]
    cols = lines[3].split()
    assert cols[0] == "10" and 9 <= int(cols[1]) <= 11 and cols[1] == cols[2], lines
    # a bound nothing meets: stops after the first step, no rate passed
    out, _ = bench_json("--url", url, "--find-max", "--rate", "10", "--duration", "0.5",
                        "--p99-bound-ms", "0.001")
    assert out["mode"] == "find_max" and len(out["runs"]) == 1
    assert out["find_max"]["max_rate_passed"] is None
    assert "P99" in out["find_max"]["stopped_because"]
    # a generous bound: climbs x1.5 until --max-rate
    out, _ = bench_json("--url", url, "--find-max", "--rate", "10", "--duration", "0.5",
                        "--p99-bound-ms", "5000", "--max-rate", "16")
    assert [r["rate"] for r in out["runs"]] == [10.0, 15.0]
    assert out["find_max"]["max_rate_passed"] == 15.0
    assert "max-rate" in out["find_max"]["stopped_because"]


@pytest.mark.parametrize(("args", "status", "message"), [
    (["--rate", "0"], 2, "--rate: '0': a rate must be a positive number"),
    (["--rate", "50,abc"], 2, "--rate: 'abc' is not a number"),
    (["--duration", "-1", "--url", "http://127.0.0.1:9"], 2, "--duration: '-1': must be > 0"),
    (["--url", "ftp://127.0.0.1:1"], 1, "only http:// URLs are supported"),
    (["--url", "http://127.0.0.1:1/v1/embeddings"], 1, "give the base URL"),
    (["--url", "http://127.0.0.1:{closed}"], 1, "cannot reach the server"),
    (["--url", "http://127.0.0.1:{closed}", "--direct"], 1, "--direct with --url needs"),
    (["--state-dir", "{tmp}/no-fleet"], 1, "no supervisor answers for the fleet"),
    ([], 1, "no fleet file at"),
    (["--url", "http://127.0.0.1:9", "--find-max", "--rate", "10,20"], 1,
     "--find-max takes one starting --rate"),
])
def test_clear_errors(tmp_path: Path, args: list[str], status: int, message: str) -> None:
    closed = free_port()
    argv = [a.format(closed=closed, tmp=tmp_path) for a in args]
    t0 = time.monotonic()
    r = bench(*argv, cwd=tmp_path)
    assert r.returncode == status, (r.stdout, r.stderr)
    assert message in r.stderr, r.stderr
    assert r.stdout == ""
    assert not (tmp_path / "no-fleet").exists()  # nothing created
    assert time.monotonic() - t0 < 30
