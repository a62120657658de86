"""`embedops demo`: a simulated fleet behind a real sglang-router, with load, and the console.

Everything runs in one state directory (temporary unless ``--state-dir``): the fleet
file the demo writes, the supervisor (started detached, like `embedops up`), the sim
workers, sglang-router, and the open-loop load generator. Quitting stops all of it and
removes the temporary directory; with ``--state-dir`` other terminals can drive the
same fleet (`embedops status`, `drain`, ...) while it runs.
"""

from __future__ import annotations

import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from backends import procs
from console import config as fleet_config
from console.control import SupervisorNotRunning, SyncControlClient
from console.model import LaunchCommand
from console.statedir import StateDir


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def demo_config(workers: int, gpus: int, ports: list[int]) -> str:
    """The demo's fleet file: `workers` sim workers spread over `gpus` cards."""
    per_card = [sum(1 for i in range(workers) if i % gpus == g) for g in range(gpus)]
    fraction = max(0.05, round(0.84 / max(per_card), 2))
    lines = [
        "# written by `embedops demo`", 'name = "demo"', 'engine = "sim"', "",
        "[model]", 'path = "Qwen/Qwen3-Embedding-4B"', 'served_name = "qwen3-embedding-4b"',
        "dimension = 2560", "", "[defaults]", f"mem_fraction_static = {fraction}", "",
        "[balancer]", 'kind = "sglang-router"', f"port = {ports[0]}",
        f"prometheus_port = {ports[1]}", "request_timeout_s = 5",
        "health_check_interval_s = 1", "health_check_timeout_s = 3", "",
        "[restart]", "startup_timeout_s = 30", "stop_grace_s = 5", "drain_timeout_s = 10", "",
        "[sim]", f"gpu_count = {gpus}", "load_s = 2.0", "warmup_s = 1.0",
        "base_latency_ms = 8", "per_token_us = 20", "",
    ]
    for i in range(workers):
        lines += ["[[workers]]", f'name = "sim{i % gpus}-{chr(ord("a") + i // gpus)}"',
                  f"gpu = {i % gpus}", f"port = {ports[2 + i]}", ""]
    return "\n".join(lines)


def _stop_fleet(sd: StateDir, timeout_s: float = 60.0) -> None:
    try:
        with SyncControlClient(sd.socket_path, timeout=10.0) as client:
            client.post("/v1/shutdown", json={"stop_workers": True})
    except (SupervisorNotRunning, OSError):
        return
    except Exception as exc:  # noqa: BLE001 - it may still have got it: wait and see
        print(f"embedops demo: the shutdown request failed: {exc}", file=sys.stderr)
    from console.daemon import supervisor_answers

    deadline = time.monotonic() + timeout_s
    while supervisor_answers(sd) and time.monotonic() < deadline:
        time.sleep(0.2)


class _Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (terminal closed): unwind like ^C so the fleet is stopped."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated(signum)


def _catch_termination() -> dict[int, Any]:
    """Turn SIGTERM/SIGHUP into `_Terminated` where they still have their default action;
    returns the previous handlers for `_restore`."""
    old: dict[int, Any] = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:
            old[sig] = signal.signal(sig, _raise_terminated)
    return old


def _restore(handlers: dict[int, Any]) -> None:
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def run_demo(*, workers: int, gpus: int, rate: float, state_dir: str | None, headless: bool,
             duration: float | None, theme: str | None,
             open_console: Callable[..., int]) -> int:
    """Run the demo; returns the exit status."""
    from console.commands import _wait_ready, format_status
    from console.daemon import FatalError, spawn_supervisor, supervisor_answers

    if not 1 <= workers <= 64 or not 1 <= gpus <= 16 or rate < 0:
        print("embedops: --workers 1..64, --gpus 1..16, --rate >= 0", file=sys.stderr)
        return 2
    handlers = _catch_termination()
    tmp = None if state_dir else tempfile.mkdtemp(prefix="embedops-demo-")
    sd = StateDir(state_dir or tmp)  # type: ignore[arg-type]
    load: procs.ProcessIdentity | None = None
    started = False
    try:
        sd.ensure()
        cfg_path = sd.root / "fleet.toml"
        if supervisor_answers(sd):
            print(f"embedops: a demo fleet already runs in {sd.root}; attaching", flush=True)
        else:
            cfg_path.write_text(demo_config(workers, gpus, _free_ports(2 + workers)))
            cfg = fleet_config.load_config(cfg_path)
            print(f"embedops demo: {workers} simulated workers on {gpus} simulated 80 GB cards "
                  f"behind sglang-router {cfg.balancer.host}:{cfg.balancer.port}")
            print(f"embedops demo: state directory {sd.root}", flush=True)
            try:
                started = True
                spawn_supervisor(cfg_path, sd)
            except FatalError as exc:
                print(f"embedops: {exc}", file=sys.stderr)
                return 1
            if _wait_ready(SyncControlClient(sd.socket_path), 90) != 0:
                print("embedops: the demo fleet did not come up; see "
                      f"{sd.supervisor_log}", file=sys.stderr)
                return 1
            if rate > 0:
                argv = (sys.executable, "-m", "backends.sim.loadgen", "--url",
                        f"http://{cfg.balancer.host}:{cfg.balancer.port}", "--rate", f"{rate:g}",
                        "--model", cfg.model.served_name or cfg.model.path, "--vary-text",
                        "--deadline-s", "10", "--progress", "none", "--quiet")
                load = procs.spawn_detached(LaunchCommand(argv=argv), sd.root / "loadgen.log")
                print(f"embedops demo: load generator at {rate:g} req/s (pid {load.pid})",
                      flush=True)
        if headless:
            return _headless(sd, duration, format_status)
        return open_console(sd, read_only=False, theme=theme, demo=True)
    except _Terminated as exc:
        return 128 + exc.signum
    except KeyboardInterrupt:
        return 130
    finally:
        # finish cleaning up on a 2nd ^C or a SIGTERM
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        _restore(handlers)
        term = {sig: signal.signal(sig, signal.SIG_IGN) for sig in handlers}
        try:
            if load is not None:
                import asyncio

                asyncio.run(procs.stop_group(load, grace_s=3))
            if started:
                print("embedops demo: stopping the fleet...", file=sys.stderr)
                _stop_fleet(sd)
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
        finally:
            signal.signal(signal.SIGINT, old)
            _restore(term)


def _headless(sd: StateDir, duration: float | None,
              fmt: Callable[[dict[str, Any]], str]) -> int:
    """Print a status table every `HEADLESS_EVERY_S` until `duration` has passed."""
    deadline = None if duration is None else time.monotonic() + duration
    with SyncControlClient(sd.socket_path, timeout=10.0) as client:
        while True:
            try:
                snap = client.get("/v1/status")
            except SupervisorNotRunning:
                print(f"embedops: the demo's supervisor stopped answering; see "
                      f"{sd.supervisor_log}", file=sys.stderr)
                return 1
            print(fmt(snap), flush=True)
            print(flush=True)
            if deadline is not None and time.monotonic() + HEADLESS_EVERY_S > deadline:
                time.sleep(max(0.0, deadline - time.monotonic()))
                return 0
            time.sleep(HEADLESS_EVERY_S)


HEADLESS_EVERY_S = 2.0


__all__ = ["demo_config", "run_demo"]
