"""``[metrics] scrape_interval_s`` / ``gpu_interval_s``: defaults, validation, the GPU
sampling period on a compressed trend clock, and the "no data" age that follows them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from console.config import (
    LEAK_HORIZON_S,
    LEAK_WINDOW_SAMPLES,
    ConfigError,
    MetricsConfig,
    load_config,
)
from console.stats import LeakTrend
from tests.conftest import MINIMAL_SIM_FLEET

BASE = MINIMAL_SIM_FLEET
REPO = Path(__file__).resolve().parents[2]


def cfg_of(tmp_path: Path, extra: str = "") -> Any:
    path = tmp_path / "fleet.toml"
    path.write_text(BASE + extra)
    return load_config(path, environ={"HOME": str(tmp_path)})


def test_defaults_are_two_seconds(tmp_path: Path) -> None:
    cfg = cfg_of(tmp_path)
    assert (cfg.metrics.scrape_interval_s, cfg.metrics.gpu_interval_s) == (2.0, 2.0)
    assert cfg.metrics.gpu_sample_s() == 2.0
    assert not [w for w in cfg.warnings if w.path.startswith("metrics.")]


def test_set_in_the_metrics_table(tmp_path: Path) -> None:
    cfg = cfg_of(tmp_path, "\n[metrics]\nscrape_interval_s = 0.5\ngpu_interval_s = 5\n")
    assert (cfg.metrics.scrape_interval_s, cfg.metrics.gpu_interval_s) == (0.5, 5.0)


@pytest.mark.parametrize("field", ["scrape_interval_s", "gpu_interval_s"])
@pytest.mark.parametrize("value", ["0", "-1", '"fast"'])
def test_must_be_positive_numbers(tmp_path: Path, field: str, value: str) -> None:
    with pytest.raises(ConfigError) as err:
        cfg_of(tmp_path, f"\n[metrics]\n{field} = {value}\n")
    assert [p.path for p in err.value.problems] == [f"metrics.{field}"], err.value.problems


def test_scrape_slower_than_the_probe_timeout_floor_warns(tmp_path: Path) -> None:
    cfg = cfg_of(tmp_path, "\n[metrics]\nscrape_interval_s = 5\n")
    warned = [w for w in cfg.warnings if w.path == "metrics.scrape_interval_s"]
    assert len(warned) == 1 and "hang rule" in warned[0].reason
    cfg = cfg_of(tmp_path, "\n[probe]\ntimeout_floor_s = 6\n\n[metrics]\nscrape_interval_s = 5\n")
    assert not [w for w in cfg.warnings if w.path == "metrics.scrape_interval_s"]


def test_compressed_trend_clock_samples_the_gpu_often_enough() -> None:
    # the constants the shortening uses are LeakTrend's own
    trend = LeakTrend()
    assert trend.horizon_s == LEAK_HORIZON_S and trend.min_samples < LEAK_WINDOW_SAMPLES
    assert MetricsConfig(trend_time_scale=1).gpu_sample_s() == 2.0
    assert MetricsConfig(trend_time_scale=120).gpu_sample_s() == pytest.approx(1.0)
    assert MetricsConfig(trend_time_scale=120, gpu_interval_s=0.5).gpu_sample_s() == 0.5
    for scale in (1.0, 30.0, 120.0, 600.0):
        period = MetricsConfig(trend_time_scale=scale).gpu_sample_s()
        # the leak trend's 1 h window (trend time) holds enough samples to fit a slope
        assert (LEAK_HORIZON_S / scale) / period >= trend.min_samples, scale


def test_a_leak_trend_at_the_sampling_period_can_fire() -> None:
    """Sampled every `gpu_sample_s` on a 120x trend clock, a steady leak is a trend within
    the window (and would not be at the 2 s period: too few samples)."""
    scale = 120.0

    def slope_after(period: float) -> float | None:
        trend = LeakTrend()
        t = 0.0
        while t <= LEAK_HORIZON_S / scale:
            trend.observe(t * scale, 10_000.0 + 3.3 * t * scale)
            t += period
        return trend.leak_slope(t * scale)

    assert slope_after(MetricsConfig(trend_time_scale=scale).gpu_sample_s()) is not None
    assert slope_after(2.0) is None


def test_documented_in_the_example_fleet_file() -> None:
    example = (REPO / "console" / "fleet.example.toml").read_text()
    assert "scrape_interval_s = 2" in example and "gpu_interval_s = 2" in example
