"""nginx config rendering: content, round trip of the recorded membership, and
`nginx -t` acceptance of what is rendered (when the binary is installed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from backends.balancer import BalancerError
from backends.balancer_nginx import (
    NginxSettings,
    parse_upstream,
    render_nginx_conf,
    render_upstream_conf,
)

NGINX = shutil.which("nginx")
needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx not on PATH (apt-get install nginx)")


def _write(prefix: Path, settings: NginxSettings, members: list[str], gen: int) -> Path:
    for sub in ("body", "proxy", "fcgi", "uwsgi", "scgi"):
        (prefix / "tmp" / sub).mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(render_nginx_conf(settings, prefix))
    (prefix / "upstream.conf").write_text(render_upstream_conf(settings, members, gen))
    return conf


def _nginx_t(prefix: Path, conf: Path) -> subprocess.CompletedProcess[str]:
    assert NGINX is not None
    return subprocess.run([NGINX, "-t", "-p", f"{prefix}/", "-c", str(conf),
                           "-e", str(prefix / "error.log")],
                          capture_output=True, text=True, timeout=30)


def test_nginx_conf_has_the_retry_and_timeout_directives(tmp_path: Path) -> None:
    s = NginxSettings(port=18080, read_timeout_s=7, next_upstream_tries=4,
                      next_upstream_timeout_s=12)
    text = render_nginx_conf(s, tmp_path)
    assert "listen 127.0.0.1:18080;" in text
    assert ("proxy_next_upstream error timeout http_502 http_503 http_504 non_idempotent;"
            in text)
    assert "proxy_next_upstream_tries 4;" in text
    assert "proxy_next_upstream_timeout 12s;" in text
    assert "proxy_read_timeout 7s;" in text
    assert "daemon off;" in text
    # every path nginx writes lives inside the prefix
    for directive in ("pid", "error_log", "client_body_temp_path", "proxy_temp_path"):
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(directive + " "))
        assert str(tmp_path.resolve()) in line, line
    assert "proxy_next_upstream_timeout" not in render_nginx_conf(NginxSettings(), tmp_path)


def test_upstream_round_trip_and_server_lines() -> None:
    s = NginxSettings(max_fails=2, fail_timeout_s=5, keepalive=8)
    members = ["http://127.0.0.1:30001", "http://[::1]:30002"]
    text = render_upstream_conf(s, members, 7)
    assert parse_upstream(text) == (members, 7)
    assert "server 127.0.0.1:30001 max_fails=2 fail_timeout=5s;" in text
    assert "server [::1]:30002 max_fails=2 fail_timeout=5s;" in text
    assert "keepalive 8;" in text
    assert 'default "7";' in text and 'default "2";' in text


def test_empty_upstream_has_a_placeholder_and_zero_members() -> None:
    text = render_upstream_conf(NginxSettings(), [], 1)
    assert "server 127.0.0.1:1 down;" in text
    assert '$embedops_members { default "0"; }' in text
    assert parse_upstream(text) == ([], 1)


def test_parse_refuses_a_foreign_file() -> None:
    with pytest.raises(BalancerError):
        parse_upstream("upstream x { server 127.0.0.1:1; }\n")


@needs_nginx
@pytest.mark.parametrize("members", [
    [], ["http://127.0.0.1:30001"], ["http://127.0.0.1:30001", "http://[::1]:30002"],
])
def test_rendered_config_passes_nginx_t(tmp_path: Path, members: list[str]) -> None:
    conf = _write(tmp_path, NginxSettings(port=18081), members, 3)
    res = _nginx_t(tmp_path, conf)
    assert res.returncode == 0, res.stderr


@needs_nginx
def test_nginx_t_catches_an_unresolvable_member(tmp_path: Path) -> None:
    conf = _write(tmp_path, NginxSettings(port=18082), ["http://no-such-host.invalid:1"], 2)
    res = _nginx_t(tmp_path, conf)
    assert res.returncode != 0
    assert "host not found" in res.stderr
