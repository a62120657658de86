"""A fleet behind nginx instead of sglang-router: the supervisor renders the upstream
file, starts nginx, and clients get embeddings through it (skips without nginx)."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from console import config as fleet_config
from console.supervisor import balancer_settings
from tests.chaos.fleet import MODEL, Fleet, Load, summary

pytestmark = pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")


def _nginx_fleet(root: Path) -> Fleet:
    fleet = Fleet(root, 2)
    text = fleet.config_path.read_text()
    assert 'kind = "sglang-router"' in text
    fleet.config_path.write_text(text.replace('kind = "sglang-router"', 'kind = "nginx"'))
    fleet.cfg = fleet_config.load_config(fleet.config_path)
    return fleet


def test_settings_map_the_config(tmp_path: Path) -> None:
    fleet = _nginx_fleet(tmp_path)
    settings = balancer_settings(fleet.cfg)
    assert settings is not None and type(settings).__name__ == "NginxSettings"
    assert settings.port == fleet.router_port
    assert settings.read_timeout_s == 2  # the fleet's request_timeout_s
    assert settings.max_fails == fleet.cfg.balancer.nginx_max_fails


def test_fleet_serves_through_nginx(tmp_path: Path) -> None:
    fleet = _nginx_fleet(tmp_path)
    try:
        fleet.start()
        snap = fleet.status()
        assert snap["balancer"]["kind"] == "nginx" and snap["balancer"]["healthy"] is True
        assert all(w["routed"] for w in snap["workers"] if w["managed"])
        r = httpx.post(f"{fleet.router_url}/v1/embeddings",
                       json={"model": MODEL, "input": "through nginx"}, timeout=10)
        assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) > 0
        # a planned drain under load loses nothing behind nginx either
        with Load(fleet.router_url, rate=30) as load:
            fleet.post("/v1/workers/w1/drain", {})
        figures = summary(load.report)
        assert figures["errors"] == 0 and figures["sent"] > 0, figures
        assert not fleet.worker("w1")["routed"]
    finally:
        fleet.close()
