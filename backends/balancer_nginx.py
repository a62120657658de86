"""nginx adapter: a private nginx with a rendered ``upstream.conf`` and ``nginx -s reload``.

Layout under ``<state_dir>/nginx`` (the nginx prefix): ``nginx.conf`` (static, written
at start), ``upstream.conf`` (the only file rewritten), ``error.log``, ``nginx.pid``,
``tmp/``. The master runs with ``daemon off`` so the spawned process *is* the master and
its process group holds the workers.

A membership change renders ``upstream.conf``, runs ``nginx -t`` (on failure the old file
is put back and the error reported), sends ``nginx -s reload`` and waits for the ack:
the new generation is served on ``/_embedops/generation`` and every worker process of
the old generation is gone or titled "is shutting down" (it has closed its listening
socket and only finishes its in-flight requests). See reference/balancer.md §12.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import os
import re
import shutil
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil

from backends import balancer_process as bp
from backends.balancer import (
    BalancerError,
    DrainResult,
    RoutedWorker,
    drain_with,
    normalize_url,
)
from backends.procs import ProcessIdentity
from console.model import LaunchCommand

__all__ = ["Nginx", "NginxSettings", "parse_upstream", "render_nginx_conf",
           "render_upstream_conf"]

_MEMBERS_MARK = "# embedops-members: "
_GEN_MARK = "# embedops-generation: "


@dataclass(frozen=True)
class NginxSettings:
    """How to run nginx; values follow reference/balancer.md §12."""

    port: int = 8000
    host: str = "127.0.0.1"
    nginx_bin: str = "nginx"
    worker_processes: int = 1
    read_timeout_s: int = 60
    """Must exceed the slowest legitimate embedding request (else it is retried, then 502)."""
    send_timeout_s: int = 60
    connect_timeout_s: int = 1
    next_upstream_tries: int = 3
    next_upstream_timeout_s: int = 0
    """Bound on all tries of one request; 0 = no bound."""
    max_fails: int = 1
    fail_timeout_s: int = 10
    keepalive: int = 32
    max_body_mb: int = 64
    """Largest request body; bodies are buffered in memory (never spooled to disk)."""
    start_timeout_s: float = 15.0
    reload_timeout_s: float = 10.0

    @property
    def url(self) -> str:
        """Client-facing base URL."""
        return f"http://{self.host}:{self.port}"


def render_nginx_conf(settings: NginxSettings, prefix: Path) -> str:
    """The static ``nginx.conf`` for `prefix` (absolute paths everywhere)."""
    p = prefix.resolve()
    s = settings
    tries = f"      proxy_next_upstream_timeout {s.next_upstream_timeout_s}s;\n" \
        if s.next_upstream_timeout_s > 0 else ""
    return f"""# Rendered by embedops; static. Only upstream.conf is rewritten.
daemon off;
worker_processes {s.worker_processes};
pid {p}/nginx.pid;
error_log {p}/error.log notice;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {p}/tmp/body;
  proxy_temp_path {p}/tmp/proxy;
  fastcgi_temp_path {p}/tmp/fcgi;
  uwsgi_temp_path {p}/tmp/uwsgi;
  scgi_temp_path {p}/tmp/scgi;

  include {p}/upstream.conf;

  server {{
    listen {s.host}:{s.port};
    # Keep bodies and responses in memory: as root, nginx workers run as `nobody`,
    # which may not be able to reach temp files under the state directory.
    client_max_body_size {s.max_body_mb}m;
    client_body_buffer_size {s.max_body_mb}m;

    location = /_embedops/generation {{
      default_type text/plain;
      return 200 "$embedops_generation\\n";
    }}
    location / {{
      if ($embedops_members = 0) {{
        return 503 '{{"error":"no worker in rotation"}}\\n';
      }}
      proxy_pass http://embedops_workers;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_max_temp_file_size 0;
      # POST is non-idempotent: without `non_idempotent` nginx does not resend a
      # request already sent to a worker that then died (5 x 502 in the reference test).
      proxy_next_upstream error timeout http_502 http_503 http_504 non_idempotent;
      proxy_next_upstream_tries {s.next_upstream_tries};
{tries}      proxy_connect_timeout {s.connect_timeout_s}s;
      proxy_read_timeout {s.read_timeout_s}s;
      proxy_send_timeout {s.send_timeout_s}s;
    }}
  }}
}}
"""


def render_upstream_conf(settings: NginxSettings, members: Sequence[str],
                         generation: int) -> str:
    """``upstream.conf`` for normalised worker URLs `members` at `generation`."""
    lines = [
        "# Rendered by embedops; rewritten on every membership change.",
        _GEN_MARK + str(generation),
        _MEMBERS_MARK + json.dumps(builtins.list(members)),
        f'map "" $embedops_generation {{ default "{generation}"; }}',
        f'map "" $embedops_members {{ default "{len(members)}"; }}',
        "upstream embedops_workers {",
    ]
    for url in members:
        parts = urlsplit(url)
        host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
        lines.append(f"  server {host}:{parts.port} max_fails={settings.max_fails} "
                     f"fail_timeout={settings.fail_timeout_s}s;")
    if not members:
        # an upstream needs a server; requests never reach it (503 above)
        lines.append("  server 127.0.0.1:1 down;")
    lines += [f"  keepalive {settings.keepalive};", "}", ""]
    return "\n".join(lines)


def parse_upstream(text: str) -> tuple[builtins.list[str], int]:
    """Members and generation recorded in an ``upstream.conf`` rendered by this module."""
    members: builtins.list[str] | None = None
    generation: int | None = None
    for line in text.splitlines():
        if line.startswith(_MEMBERS_MARK):
            members = [str(u) for u in json.loads(line[len(_MEMBERS_MARK):])]
        elif line.startswith(_GEN_MARK):
            generation = int(line[len(_GEN_MARK):])
    if members is None or generation is None:
        raise BalancerError("upstream.conf was not rendered by embedops (markers missing)")
    return members, generation


class Nginx:
    """`Balancer` on a private nginx (passive health only: `healthy` is ``None``)."""

    kind = "nginx"

    def __init__(self, settings: NginxSettings, state_dir: Path, *,
                 http: httpx.AsyncClient | None = None) -> None:
        self.settings = settings
        self.prefix = (Path(state_dir) / "nginx").resolve()
        self.conf_path = self.prefix / "nginx.conf"
        self.upstream_path = self.prefix / "upstream.conf"
        self.log_path = self.prefix / "error.log"
        self._identity: ProcessIdentity | None = None
        self._members: builtins.list[str] = []
        self._generation = 0
        self._lock = asyncio.Lock()
        self._http = http
        self._own_http = http is None

    @property
    def url(self) -> str:
        """Client-facing base URL."""
        return self.settings.url

    @property
    def identity(self) -> ProcessIdentity | None:
        """Identity of the nginx master process."""
        return self._identity

    @property
    def generation(self) -> int:
        """Generation of the membership last made live."""
        return self._generation

    # -- process ---------------------------------------------------------------------

    def _bin(self) -> str:
        found = shutil.which(self.settings.nginx_bin)
        if found is None:
            raise BalancerError(f"nginx binary {self.settings.nginx_bin!r} not found on PATH")
        return found

    def _argv(self, *extra: str) -> tuple[str, ...]:
        return (self._bin(), "-p", f"{self.prefix}/", "-c", str(self.conf_path),
                "-e", str(self.log_path), *extra)

    async def start(self, workers: Sequence[str] = ()) -> None:
        """Write the config, check it, spawn the master detached, wait for generation 1;
        `workers` are the first upstream members."""
        if self._identity is not None and bp.alive(self._identity):
            raise BalancerError("nginx already started by this object")
        s = self.settings
        if bp.port_in_use(s.host, s.port):
            raise BalancerError(f"port {s.host}:{s.port} is already in use")
        for sub in ("body", "proxy", "fcgi", "uwsgi", "scgi"):
            (self.prefix / "tmp" / sub).mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(render_nginx_conf(s, self.prefix))
        members = builtins.list(dict.fromkeys(normalize_url(u) for u in workers))
        self._members, self._generation = members, 1
        _atomic_write(self.upstream_path, render_upstream_conf(s, members, 1))
        await self._check_config()
        self._identity = await bp.spawn_until_ready(
            LaunchCommand(argv=self._argv()), self.prefix / "stderr.log",
            lambda: self._serves_generation(1), timeout_s=s.start_timeout_s,
            what="nginx", cwd=self.prefix, listen=(s.host, s.port))

    @classmethod
    async def adopt(cls, settings: NginxSettings, state_dir: Path,
                    identity: ProcessIdentity, *,
                    http: httpx.AsyncClient | None = None) -> Nginx:
        """Attach to a running nginx; membership is read back from ``upstream.conf``.

        If the live generation differs from the file's (a change was written but its
        reload not acknowledged), the file is made live with a reload.
        """
        bp.check_adoptable(identity, settings.host, settings.port, "nginx")
        ngx = cls(settings, state_dir, http=http)
        ngx._identity = identity
        try:
            members, gen = parse_upstream(ngx.upstream_path.read_text())
        except OSError as e:
            await ngx.close()
            raise BalancerError(f"nginx state unreadable: {e}") from e
        ngx._members, ngx._generation = members, gen
        if not await ngx._serves_generation(gen):
            async with ngx._lock:
                await ngx._apply(members, keep_old_on_failure=False)
        return ngx

    async def stop(self) -> None:
        """Stop nginx (SIGTERM to the group = fast shutdown, SIGKILL after the grace)."""
        try:
            if self._identity is not None:
                await bp.stop_process(self._identity, grace_s=5.0, what="nginx")
        finally:
            await self.close()

    async def close(self) -> None:
        """Close the HTTP client; nginx keeps running."""
        if self._http is not None and self._own_http:
            await self._http.aclose()
            self._http = None

    async def healthy(self) -> bool:
        """The master is the recorded process and nginx answers its generation endpoint."""
        if self._identity is None or not bp.alive(self._identity):
            return False
        return await self._generation_served() is not None

    # -- membership ------------------------------------------------------------------

    async def list(self) -> builtins.list[RoutedWorker]:
        """Members in upstream order (nginx has no per-worker health, load or circuit)."""
        return [RoutedWorker(url=u, healthy=None) for u in self._members]

    async def state(self, url: str) -> RoutedWorker | None:
        """A member's entry, or ``None`` when it is not in the upstream."""
        url = normalize_url(url)
        return RoutedWorker(url=url, healthy=None) if url in self._members else None

    async def add(self, url: str, *, api_key: str | None = None) -> RoutedWorker:
        """Add a server to the upstream and reload (idempotent).

        nginx passes the client's own ``Authorization`` header through; it cannot hold
        a per-worker key, so `api_key` is refused rather than silently ignored.
        """
        if api_key:
            raise BalancerError("nginx cannot attach a per-worker API key; clients' own "
                                "Authorization header is passed through")
        url = normalize_url(url)
        async with self._lock:
            if url not in self._members:
                await self._apply([*self._members, url])
        return RoutedWorker(url=url, healthy=None)

    async def remove(self, url: str) -> bool:
        """Drop a server from the upstream and reload; returns once no nginx worker
        process of the old configuration accepts connections."""
        url = normalize_url(url)
        async with self._lock:
            if url not in self._members:
                return False
            await self._apply([u for u in self._members if u != url])
        return True

    async def drain(self, url: str, running_requests: Callable[[], Awaitable[int | None]],
                    *, timeout_s: float, poll_s: float = 0.2) -> DrainResult:
        """`remove` (old nginx workers finish their requests), then wait for 0 running."""
        url = normalize_url(url)
        return await drain_with(url, lambda: self.remove(url), running_requests,
                                timeout_s=timeout_s, poll_s=poll_s)

    # -- reload ----------------------------------------------------------------------

    async def _apply(self, members: builtins.list[str], *,
                     keep_old_on_failure: bool = True) -> None:
        """Render, test, reload and wait for the ack; roll the file back on failure."""
        if self._identity is None or not bp.alive(self._identity):
            raise BalancerError("nginx is not running")
        old_text = self.upstream_path.read_text() if self.upstream_path.exists() else None
        gen = self._generation + 1
        _atomic_write(self.upstream_path, render_upstream_conf(self.settings, members, gen))
        try:
            await self._check_config()
            before = self._worker_pids()
            await self._reload()
            await self._await_reload(gen, before)
        except BalancerError:
            if keep_old_on_failure and old_text is not None:
                _atomic_write(self.upstream_path, old_text)
            raise
        self._members, self._generation = members, gen

    async def _check_config(self) -> None:
        rc, out = await _run(self._argv("-t"))
        if rc != 0:
            raise BalancerError(f"nginx -t rejected the configuration: {_nginx_msg(out)}")

    async def _reload(self) -> None:
        assert self._identity is not None
        if not bp.alive(self._identity):
            raise BalancerError("nginx master exited")
        pid_file = self.prefix / "nginx.pid"
        try:
            recorded = int(pid_file.read_text().strip())
        except (OSError, ValueError) as e:
            raise BalancerError(f"nginx pid file unreadable: {e}") from e
        if recorded != self._identity.pid:
            raise BalancerError(f"nginx pid file says {recorded}, the verified master is "
                                f"{self._identity.pid}; not reloading")
        rc, out = await _run(self._argv("-s", "reload"))
        if rc != 0:
            raise BalancerError(f"nginx -s reload failed: {_nginx_msg(out)}")

    async def _await_reload(self, gen: int, before: set[int]) -> None:
        deadline = time.monotonic() + self.settings.reload_timeout_s
        while True:
            if await self._serves_generation(gen) and not self._old_workers_accepting(before):
                return
            if time.monotonic() >= deadline:
                raise BalancerError(
                    f"nginx did not take generation {gen} within "
                    f"{self.settings.reload_timeout_s:g}s; error.log:\n"
                    f"{bp.log_tail(self.log_path)}")
            await asyncio.sleep(0.02)

    def _worker_pids(self) -> set[int]:
        assert self._identity is not None
        try:
            return {c.pid for c in psutil.Process(self._identity.pid).children()}
        except psutil.NoSuchProcess:
            return set()

    @staticmethod
    def _old_workers_accepting(before: set[int]) -> bool:
        for pid in before:
            try:
                title = " ".join(psutil.Process(pid).cmdline())
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            except psutil.AccessDenied:
                return True
            if "shutting down" not in title:
                return True
        return False

    async def _generation_served(self) -> int | None:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=2.0)
            self._own_http = True
        try:
            # a fresh connection each time: a kept-alive one may sit on an old worker
            r = await self._http.get(self.url + "/_embedops/generation",
                                     headers={"Connection": "close"})
        except httpx.HTTPError:
            return None
        if r.status_code != 200:
            return None
        try:
            return int(r.text.strip())
        except ValueError:
            return None

    async def _serves_generation(self, gen: int) -> bool:
        return await self._generation_served() == gen


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def _run(argv: Sequence[str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=30.0)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return -1, f"{argv[0]} timed out"
    return proc.returncode if proc.returncode is not None else -1, out.decode(errors="replace")


def _nginx_msg(out: str) -> str:
    lines = [ln for ln in out.splitlines()
             if "[emerg]" in ln or "[alert]" in ln or "[crit]" in ln or "failed" in ln]
    return re.sub(r"\s+", " ", "; ".join(lines or out.splitlines()[-3:])).strip()
