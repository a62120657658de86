"""A balancer as a detached process: port check, spawn until it answers, adoption checks.

Process-group handling itself (spawn in its own session, identity, group stop) is
`backends.procs`; this module only adds what a balancer needs around it.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import psutil

from backends import procs
from backends.balancer import BalancerError
from backends.procs import ProcessIdentity
from console.model import LaunchCommand

__all__ = ["alive", "listens_on", "log_tail", "port_in_use", "spawn_until_ready", "stop_process"]

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def port_in_use(host: str, port: int) -> bool:
    """True when `host:port` cannot be bound (something else holds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Both the router (tokio) and nginx bind with SO_REUSEADDR; mimic them so a
        # socket in TIME_WAIT does not count as "in use".
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def alive(identity: ProcessIdentity) -> bool:
    """Same pid and start time, not a zombie (the command line may have been retitled)."""
    try:
        p = psutil.Process(identity.pid)
        return (abs(p.create_time() - identity.create_time) < 0.01
                and p.status() != psutil.STATUS_ZOMBIE)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def listens_on(pid: int, host: str, port: int) -> bool:
    """True when process `pid` holds a listening TCP socket on `host:port`."""
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
               and c.laddr.ip in (host, "0.0.0.0", "::") for c in conns)


def log_tail(path: Path, lines: int = 12) -> str:
    """The last `lines` lines of a log file, colour codes removed ("" if unreadable)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(_ANSI.sub("", text).splitlines()[-lines:])


async def spawn_until_ready(cmd: LaunchCommand, log_path: Path,
                            ready: Callable[[], Awaitable[bool]], *, timeout_s: float,
                            what: str, cwd: Path | None = None,
                            listen: tuple[str, int] | None = None) -> ProcessIdentity:
    """Spawn `cmd` detached and wait until `ready()`; return its settled identity.

    Both sglang-router (``sglang::router``) and nginx (``nginx: master process``)
    retitle themselves after exec, so the identity is taken again once the process
    answers; the pid and start time must still match the spawned process, and with
    `listen` it must hold that listening socket itself (so a stranger that grabbed the
    port in the meantime is not mistaken for it). On failure
    the process group is stopped and `BalancerError` carries the log tail.
    """
    spawned = await asyncio.to_thread(procs.spawn_detached, cmd, log_path, cwd=cwd)
    deadline = time.monotonic() + timeout_s
    while True:
        if await ready():
            break
        if not alive(spawned):
            raise BalancerError(f"{what} exited during start-up; log {log_path}:\n"
                                f"{log_tail(log_path)}")
        if time.monotonic() >= deadline:
            await procs.stop_group(_settled(spawned) or spawned, grace_s=2.0)
            raise BalancerError(f"{what} did not answer within {timeout_s:g}s; log "
                                f"{log_path}:\n{log_tail(log_path)}")
        await asyncio.sleep(0.05)
    settled = _settled(spawned)
    if settled is None:
        raise BalancerError(f"{what} (pid {spawned.pid}) vanished right after start-up")
    if listen is not None and not listens_on(settled.pid, *listen):
        await procs.stop_group(settled, grace_s=2.0)
        raise BalancerError(f"{what} (pid {settled.pid}) answers but does not hold "
                            f"{listen[0]}:{listen[1]}")
    return settled


def _settled(spawned: ProcessIdentity) -> ProcessIdentity | None:
    """The identity of `spawned` as it is now (after any retitle), or None if gone."""
    now = procs.identify(spawned.pid)
    if now is None or abs(now.create_time - spawned.create_time) >= 0.01:
        return None
    return now


def check_adoptable(identity: ProcessIdentity, host: str, port: int, what: str) -> None:
    """Raise `BalancerError` unless `identity` verifies and that process listens on the port."""
    if not procs.verify(identity):
        raise BalancerError(f"{what} pid {identity.pid}: identity does not verify "
                            "(exited, or the pid belongs to another process)")
    if not listens_on(identity.pid, host, port):
        raise BalancerError(f"{what} pid {identity.pid} does not listen on {host}:{port}")


async def stop_process(identity: ProcessIdentity, *, grace_s: float, what: str) -> None:
    """Stop the balancer's process group; no-op when it is already gone.

    Raises `BalancerError` when the identity no longer verifies while the pid is still
    alive (never signal an unverified process) or when group members survive.
    """
    if not alive(identity):
        return
    result = await procs.stop_group(identity, grace_s=grace_s)
    if result.refused:
        raise BalancerError(f"{what} pid {identity.pid} not stopped: {result.refused}")
    if result.survivors:
        raise BalancerError(f"{what} pid {identity.pid}: survivors after stop: "
                            f"{result.survivors}")
