"""Running the supervisor as a process: lock, control socket, signals, logging.

`run_supervisor` is what `embedops supervise` does in the foreground (fit for
systemd: logs to stderr, exits non-zero on a fatal error); `spawn_supervisor` starts
that same command detached, as `embedops up` and the console do when no supervisor
answers for the fleet (like tmux starts its server).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from backends import eventloop, procs
from console.api import install_routes
from console.config import FleetConfig
from console.control import ControlServer, SupervisorNotRunning, SyncControlClient
from console.model import LaunchCommand
from console.statedir import LockHeld, StateDir, SupervisorLock
from console.supervisor import Supervisor

if TYPE_CHECKING:
    from console.exporter import Exporter

log = logging.getLogger("embedops")


class FatalError(RuntimeError):
    """The supervisor cannot run (lock held, socket in use, bad config)."""


def setup_logging(verbose: bool = False) -> None:
    """Log lines to stderr, one per event (journald adds its own timestamps)."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)


async def serve(cfg: FleetConfig, state_dir: StateDir, *, read_only_uids: set[int] | None = None,
                ready: asyncio.Event | None = None) -> int:
    """Run one supervisor until SIGTERM/SIGINT (workers keep running) or a `shutdown`
    call; returns the exit status."""
    state_dir.ensure()
    lock = SupervisorLock(state_dir.lock_path)
    try:
        lock.acquire()
    except LockHeld as exc:
        raise FatalError(f"another supervisor (pid {exc.pid}) already runs fleet {cfg.name!r} "
                         f"in {state_dir.root}") from exc
    try:
        sup = Supervisor(cfg, state_dir)
        server = ControlServer(state_dir.socket_path, read_only_uids=read_only_uids)
        install_routes(server, sup)
        await server.start()
        loop = asyncio.get_running_loop()
        # Signal handlers only exist for the main thread (an in-process supervisor on
        # another thread, as in the tests, is stopped through the control API).
        signals = ((signal.SIGTERM, signal.SIGINT)
                   if threading.current_thread() is threading.main_thread() else ())
        for sig in signals:
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(sup.shutdown()))
        try:
            try:
                await sup.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(sup.shutdown(), timeout=30)
                raise
            log.info("control socket %s", state_dir.socket_path)
            exporter = _start_exporter(sup, cfg)
            if ready is not None:
                ready.set()
            try:
                await sup.wait_stopping()
            finally:
                if exporter is not None:
                    await asyncio.to_thread(exporter.stop)
            # the state file is written last: wait for the whole shutdown, then let an
            # in-flight shutdown reply go out before the socket closes
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(sup.wait_closed(), timeout=60)
            await asyncio.sleep(0.2)
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
            await server.stop()
        return 0
    finally:
        lock.release()


def _start_exporter(sup: Supervisor, cfg: FleetConfig) -> Exporter | None:
    """Serve ``[exporter]``'s Prometheus endpoint when configured; a port that cannot be
    bound is reported (event + log) and the fleet runs on without it."""
    if cfg.exporter.port is None:
        return None
    from console.exporter import start_exporter

    where = f"{cfg.exporter.host}:{cfg.exporter.port}"
    try:
        exporter = start_exporter(sup, host=cfg.exporter.host, port=cfg.exporter.port)
    except OSError as exc:
        sup._event("exporter", None, f"cannot serve Prometheus metrics on {where}: {exc}")
        return None
    sup._event("exporter", None, f"Prometheus metrics on http://{where}/metrics")
    return exporter


def run_supervisor(cfg: FleetConfig, state_dir: StateDir, *, verbose: bool = False) -> int:
    """`embedops supervise`: foreground, logs to stderr."""
    setup_logging(verbose)
    try:
        return eventloop.run(serve(cfg, state_dir))
    except FatalError as exc:
        log.error("%s", exc)
        return 1


def supervisor_answers(state_dir: StateDir) -> bool:
    """Whether a supervisor answers on the fleet's control socket."""
    try:
        with SyncControlClient(state_dir.socket_path, timeout=3.0) as client:
            client.get("/v1/status")
        return True
    except (SupervisorNotRunning, OSError):
        return False
    except Exception:  # noqa: BLE001 - it answered, even if with an error
        return True


def spawn_supervisor(config_path: Path, state_dir: StateDir, *, timeout_s: float = 30.0
                     ) -> procs.ProcessIdentity:
    """Start ``embedops supervise`` detached (own session; log in the state dir) and wait
    until its control socket answers. Raises `FatalError` with the log tail otherwise."""
    state_dir.ensure()
    argv = (sys.executable, "-m", "console.cli", "supervise", "--config", str(config_path),
            "--state-dir", str(state_dir.root))
    identity = procs.spawn_detached(LaunchCommand(argv=argv), state_dir.supervisor_log)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if supervisor_answers(state_dir):
            return identity
        code = procs.returncode(identity)
        if code is not None:
            raise FatalError(f"the supervisor exited with code {code}:\n"
                             + _tail(state_dir.supervisor_log))
        time.sleep(0.1)
    raise FatalError(f"the supervisor did not answer within {timeout_s:g} s:\n"
                     + _tail(state_dir.supervisor_log))


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


__all__ = ["FatalError", "run_supervisor", "serve", "setup_logging", "spawn_supervisor",
           "supervisor_answers"]
