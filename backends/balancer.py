"""The load balancer in front of the workers: protocol, shared data, drain, factory.

Two adapters implement `Balancer`:

* `backends.balancer_router.SglangRouter`: sglang-router 0.3.2 driven through its
  ``/workers`` REST API (the default; see reference/balancer.md §5).
* `backends.balancer_nginx.Nginx`: nginx with a rendered ``upstream.conf`` and
  ``nginx -s reload`` (the fallback; reference/balancer.md §12).

Both run the balancer as a detached process in its own session, so it keeps serving
clients while the supervisor restarts; a new supervisor takes it over with
`adopt_balancer` after verifying the recorded `ProcessIdentity`.
"""

from __future__ import annotations

import asyncio
import builtins
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from backends.balancer_nginx import NginxSettings
    from backends.procs import ProcessIdentity
    from backends.balancer_router import RouterSettings

__all__ = [
    "Balancer",
    "BalancerError",
    "DrainResult",
    "RoutedWorker",
    "adopt_balancer",
    "create_balancer",
    "drain_with",
    "normalize_url",
]


class BalancerError(RuntimeError):
    """A balancer operation failed; the message says what the balancer answered."""


@dataclass(frozen=True)
class RoutedWorker:
    """One worker as the balancer sees it.

    Fields a balancer does not know are ``None`` (nginx has no active health checks,
    no circuit breaker and no per-worker load).
    """

    url: str
    """Worker base URL, normalised (``http://host:port``)."""
    healthy: bool | None
    """The balancer's own health verdict; ``None`` = this balancer does not track it."""
    worker_id: str | None = None
    """The balancer's id for the worker (sglang-router: a UUID)."""
    load: int | None = None
    """The balancer's load figure for the worker (sglang-router ``load``)."""
    circuit: str | None = None
    """Circuit breaker: ``closed``, ``open``, ``half_open``; ``None`` when unknown."""
    pending: bool = False
    """Registration still running (not routed yet)."""

    @property
    def routable(self) -> bool:
        """Whether the balancer may currently send it traffic, as far as it tells."""
        return (not self.pending and self.healthy is not False
                and self.circuit not in ("open",))


@dataclass(frozen=True)
class DrainResult:
    """Outcome of `Balancer.drain`."""

    url: str
    removed: bool
    """True when the worker was in the balancer and was taken out by this call."""
    in_flight: int | None
    """The worker's running requests at the last reading (``None`` = could not read)."""
    elapsed_s: float
    """Seconds from the start of the call to its end."""
    timed_out: bool
    """The bound ran out before the worker reached 0 running requests."""
    error: str | None = None
    """Last error of the running-requests reader, if any."""

    @property
    def drained(self) -> bool:
        """True when the worker is out of rotation and nothing is running on it."""
        return self.in_flight == 0 and not self.timed_out


@runtime_checkable
class Balancer(Protocol):
    """A load balancer process whose membership embedops controls."""

    kind: str
    """``"sglang-router"`` or ``"nginx"``."""

    @property
    def url(self) -> str:
        """Client-facing base URL (``http://127.0.0.1:<port>``)."""
        ...

    @property
    def identity(self) -> ProcessIdentity | None:
        """Identity of the balancer process (``None`` before `start`)."""
        ...

    async def start(self, workers: Sequence[str] = ()) -> None:
        """Spawn the balancer detached and wait until it answers; raise `BalancerError`.

        `workers` (URLs of workers that need no per-worker API key) are in rotation from
        the start, without `add` calls (sglang-router registers them in the background
        once its port is open; nginx has them in its first ``upstream.conf``).
        """
        ...

    async def stop(self) -> None:
        """Stop the balancer's process group (verified identity) and release resources."""
        ...

    async def close(self) -> None:
        """Release this object's resources and leave the balancer process running."""
        ...

    async def healthy(self) -> bool:
        """True when the balancer process is ours and answers on its URL."""
        ...

    async def add(self, url: str, *, api_key: str | None = None) -> RoutedWorker:
        """Put a worker into rotation (idempotent); return its state."""
        ...

    async def remove(self, url: str) -> bool:
        """Take a worker out of rotation, acknowledged; False when it was not in it."""
        ...

    async def list(self) -> builtins.list[RoutedWorker]:
        """All workers the balancer knows, in its order."""
        ...

    async def state(self, url: str) -> RoutedWorker | None:
        """One worker's state, or ``None`` when the balancer does not know it."""
        ...

    async def drain(self, url: str, running_requests: Callable[[], Awaitable[int | None]],
                    *, timeout_s: float, poll_s: float = 0.2) -> DrainResult:
        """Remove from rotation, then wait (bounded) until the worker runs nothing."""
        ...


def normalize_url(url: str) -> str:
    """``http://host:port`` for a worker URL; raise `BalancerError` for anything else.

    Only plain ``http`` URLs with an explicit port and no path, query or credentials are
    accepted: the string ends up in a router registry or an nginx config file.
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as e:
        raise BalancerError(f"invalid worker URL {url!r}: {e}") from None
    if parts.scheme != "http":
        raise BalancerError(f"invalid worker URL {url!r}: only http:// is supported")
    if not parts.hostname or port is None:
        raise BalancerError(f"invalid worker URL {url!r}: host and port are required")
    if parts.username or parts.password or parts.query or parts.fragment \
            or parts.path not in ("", "/"):
        raise BalancerError(f"invalid worker URL {url!r}: expected http://host:port")
    host = parts.hostname
    if not all(c.isalnum() or c in ".-:" for c in host):
        raise BalancerError(f"invalid worker URL {url!r}: bad host")
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


async def drain_with(url: str, remove: Callable[[], Awaitable[bool]],
                     running_requests: Callable[[], Awaitable[int | None]], *,
                     timeout_s: float, poll_s: float = 0.2, confirmations: int = 2,
                     clock: Callable[[], float] = time.monotonic,
                     sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> DrainResult:
    """The drain procedure shared by the adapters.

    Calls `remove` (which must return only once the balancer acknowledged the removal),
    then polls `running_requests` every `poll_s` until it has read 0 `confirmations`
    times in a row, or until `timeout_s` (counted from the call) runs out. Two readings
    are the default because a request the balancer dispatched just before the removal
    may still be on its way into the worker when the first reading is taken. A reader
    that raises counts as an unknown reading (``None``) and never as 0.
    """
    start = clock()
    removed = await remove()
    zeros = 0
    last: int | None = None
    error: str | None = None
    while True:
        try:
            last = await running_requests()
        except Exception as e:  # noqa: BLE001 - any reader failure is "unknown", reported
            last, error = None, f"{type(e).__name__}: {e}"
        zeros = zeros + 1 if last == 0 else 0
        elapsed = clock() - start
        if zeros >= max(1, confirmations):
            return DrainResult(url, removed, 0, elapsed, False, error)
        if elapsed >= timeout_s:
            return DrainResult(url, removed, last, elapsed, True, error)
        await sleep(min(poll_s, max(0.0, timeout_s - elapsed)))


def create_balancer(settings: RouterSettings | NginxSettings, state_dir: Path) -> Balancer:
    """A not-yet-started balancer for `settings`; its files live under `state_dir`."""
    from backends.balancer_nginx import Nginx, NginxSettings
    from backends.balancer_router import RouterSettings, SglangRouter

    if isinstance(settings, RouterSettings):
        return SglangRouter(settings, state_dir)
    if isinstance(settings, NginxSettings):
        return Nginx(settings, state_dir)
    raise TypeError(f"unknown balancer settings {type(settings).__name__}")


async def adopt_balancer(settings: RouterSettings | NginxSettings, state_dir: Path,
                         identity: ProcessIdentity) -> Balancer:
    """Take over a running balancer recorded as `identity` (verified) at `settings`' URL."""
    from backends.balancer_nginx import Nginx, NginxSettings
    from backends.balancer_router import RouterSettings, SglangRouter

    if isinstance(settings, RouterSettings):
        return await SglangRouter.adopt(settings, state_dir, identity)
    if isinstance(settings, NginxSettings):
        return await Nginx.adopt(settings, state_dir, identity)
    raise TypeError(f"unknown balancer settings {type(settings).__name__}")
