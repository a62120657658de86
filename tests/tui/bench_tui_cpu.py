"""What the console costs, attached to a real sim fleet at the default 1 s refresh.

Not a pass/fail test (not collected); prints JSON.

    .venv/bin/python tests/tui/bench_tui_cpu.py [--workers 8,64] [--seconds 20]
        [--presses 10] [--canned]

For each N: a sim fleet of N workers (real sim processes behind a real sglang-router,
N/4 simulated cards) under a supervisor running in THIS process (`tests.chaos.fleet`),
and the console in a CHILD process (`--child`), headless (`App.run_test`, 160×48), so
the child's own rusage is the console's cost alone. The child measures:

* ``main_screen`` / ``detail_screen``: CPU (% of one core, user+system) and polls/s over
  `--seconds` after a 3 s warm-up, on the fleet table and on a worker's detail screen
  (plots, series poll every 2 s, live log tail);
* ``rss_mib`` / ``max_rss_mib``: its resident memory at the end and its peak;
* ``key_to_ack_ms``: `--presses` times ``d`` (drain, then undrain: it toggles) on a
  worker, from the key press to the supervisor's reply to the POST (``ack``), and to
  the new state on the worker's row (``on_row``); P50, P95, max.

Terminal output is not included (headless driver). The supervisor, router and workers
are not measured (see tests/perf/bench_supervisor.py); the box's busy % is reported for
context (a shared box: noise). Discovery of other SGLang servers on the box is switched
off so the table holds exactly N rows (``--discover`` keeps it).

``--canned`` replaces the fleet by `tests.tui.static_supervisor` in a child process
with N ready workers whose figures change every second (the console's cost without any
fleet on the box; no key-to-ack).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from console.control import ControlClient
from console.tui.app import EmbedopsApp
from console.tui.screens.detail import DetailScreen
from console.tui.widgets.fleet_table import FleetTable

TARGET_CPU_PCT = {8: 5.0, 64: 15.0}
TARGET_RSS_MIB = 150.0
SIZE = (160, 48)

CANNED_SERVER = """
import random, sys, time
from tests.tui.static_supervisor import StaticSupervisor, _worker, default_snapshot
n = int(sys.argv[3])
snap = default_snapshot()
snap["workers"] = [_worker(f"w{i + 1}", port=30001 + i, gpu=i % 8) for i in range(n)]
for g in snap["gpus"]:
    g["workers"] = {}
sup = StaticSupervisor(sys.argv[1], snap).start()
print("ready", flush=True)
end = time.monotonic() + float(sys.argv[2])
rng = random.Random(1)

def jiggle(s):
    for w in s["workers"]:
        w["rps"] = round(rng.uniform(5, 50), 1)
        w["p50_ms"] = round(rng.uniform(5, 15), 1)
        w["p95_ms"] = round(w["p50_ms"] * rng.uniform(1.2, 3), 1)
        w["running"] = rng.randrange(4)
        w["gpu_mem_mib"] = 34000 + rng.randrange(500)
    s["time"] += 1.0

while time.monotonic() < end:
    time.sleep(1.0)
    sup.mutate(jiggle)
sup.stop()
"""


# ---------------------------------------------------------------------------- the child


def cpu_s() -> float:
    """This process's CPU seconds (user + system)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def pct(values: list[float]) -> dict[str, float]:
    """P50 / P95 / max of `values` (ms), rounded."""
    if not values:
        return {}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50": round(statistics.median(ordered), 1), "p95": round(p95, 1),
            "max": round(ordered[-1], 1), "n": len(ordered)}


async def _until(pilot: Any, cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await pilot.pause(0.01)


async def _window(pilot: Any, app: EmbedopsApp, seconds: float) -> dict[str, float]:
    await pilot.pause(3.0)  # warm-up: first renders, plots, log backlog
    c0, t0, p0 = cpu_s(), time.monotonic(), app.polls
    await pilot.pause(seconds)
    c1, t1, p1 = cpu_s(), time.monotonic(), app.polls
    return {"cpu_pct_of_one_core": round(100 * (c1 - c0) / (t1 - t0), 2),
            "polls_per_s": round((p1 - p0) / (t1 - t0), 2)}


def idle(app: EmbedopsApp, name: str) -> bool:
    """No action runs on worker `name` (as the console last saw it)."""
    w = app.snapshot.worker(name) if app.snapshot is not None else None
    return w is not None and w.action is None


async def _key_to_ack(pilot: Any, app: EmbedopsApp, presses: int) -> dict[str, Any]:
    """Press ``d`` `presses` times on the last worker: time to the reply, to the row."""
    table = app.screen.query_one(FleetTable)
    name = table.order[-1]
    table.move_cursor(row=len(table.order) - 1)
    await pilot.pause(0.2)
    replies: list[float] = []
    client = app.client
    real_post = client.post

    async def timed_post(*args: Any, **kw: Any) -> Any:
        try:
            return await real_post(*args, **kw)
        finally:
            replies.append(time.monotonic())

    client.post = timed_post  # type: ignore[method-assign]
    ack: list[float] = []
    on_row: list[float] = []
    try:
        for _ in range(presses):
            w = app.snapshot.worker(name) if app.snapshot else None
            want_drained = w is not None and w.state not in ("draining", "drained")
            n = len(replies)
            t0 = time.monotonic()
            await pilot.press("d")
            await _until(pilot, lambda: len(replies) > n, 30, "no reply")  # noqa: B023
            ack.append(1000 * (replies[n] - t0))

            def shown() -> bool:
                text = table.cell_text(name, "state")
                drained = "drain" in text
                return drained if want_drained else text.endswith(("ready", "degraded"))  # noqa: B023

            await _until(pilot, shown, 60, "row never changed")
            on_row.append(1000 * (time.monotonic() - t0))
            # let the action finish before the next press (undrain of a draining worker
            # would be refused as busy)
            await _until(pilot, lambda: idle(app, name), 60, "action still running")
    finally:
        client.post = real_post  # type: ignore[method-assign]
    return {"worker": name, "ack_ms": pct(ack), "on_row_ms": pct(on_row)}


async def child_run(socket: str, seconds: float, presses: int) -> dict[str, Any]:
    """The console's own figures (runs in the child process)."""
    app = EmbedopsApp(ControlClient(socket, timeout=10.0), refresh_s=1.0, close_client=True,
                      remember_theme=False)
    out: dict[str, Any] = {"refresh_s": 1.0, "size": f"{SIZE[0]}x{SIZE[1]}"}
    async with app.run_test(size=SIZE) as pilot:
        await _until(pilot, lambda: app.snapshot is not None, 30, "no snapshot")
        out["rows"] = len(app.snapshot.workers) if app.snapshot else 0
        out["main_screen"] = await _window(pilot, app, seconds)
        if presses:
            out["key_to_ack"] = await _key_to_ack(pilot, app, presses)
        await pilot.press("enter")
        await _until(pilot, lambda: isinstance(app.screen, DetailScreen), 10, "no detail")
        out["detail_screen"] = await _window(pilot, app, seconds)
    out["rss_mib"] = round(psutil.Process().memory_info().rss / 2**20, 1)
    out["max_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def run_child(socket: Path, seconds: float, presses: int) -> dict[str, Any]:
    """Start the console child on `socket`; its JSON."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "XDG_CONFIG_HOME": tempfile.mkdtemp()}
    done = subprocess.run([sys.executable, __file__, "--child", str(socket),
                           "--seconds", str(seconds), "--presses", str(presses)],
                          cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=4 * seconds + 60 * max(1, presses) + 120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"console child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


# ---------------------------------------------------------------------------- the parent


def verdict(n: int, fig: dict[str, Any]) -> dict[str, Any]:
    """The figures against the issue's targets."""
    target = TARGET_CPU_PCT.get(n)
    worst = max(fig["main_screen"]["cpu_pct_of_one_core"],
                fig["detail_screen"]["cpu_pct_of_one_core"])
    return {"cpu_target_pct": target, "cpu_worst_screen_pct": worst,
            "cpu_ok": None if target is None else worst <= target,
            "rss_target_mib": TARGET_RSS_MIB, "rss_ok": fig["max_rss_mib"] <= TARGET_RSS_MIB}


def real_fleet(n: int, args: argparse.Namespace) -> dict[str, Any]:
    """N sim workers under an in-process supervisor; the console in a child."""
    from backends import procs
    from tests.chaos.fleet import Fleet

    if not args.discover:
        async def no_servers(*a: Any, **kw: Any) -> list[Any]:
            return []
        procs.discover_sglang_servers_async = no_servers  # type: ignore[assignment]
    gpus = max(2, (n + 3) // 4)
    fleet = Fleet(Path(tempfile.mkdtemp(prefix=f"bench-tui-{n}-")), n, gpus=gpus,
                  mem_fraction=0.2, load_s=0.2, warmup_s=0.1, name=f"bench{n}")
    try:
        t0 = time.monotonic()
        fleet.start(timeout_s=args.start_timeout)
        ready_s = time.monotonic() - t0
        psutil.cpu_percent(None)
        fig = run_child(fleet.sd.socket_path, args.seconds, args.presses)
        fig.update(workers=n, simulated_gpus=gpus, fleet_ready_after_s=round(ready_s, 1),
                   box_busy_pct=psutil.cpu_percent(None), verdict=verdict(n, fig))
        return fig
    finally:
        fleet.close()
        shutil.rmtree(fleet.root, ignore_errors=True)


def canned(n: int, args: argparse.Namespace) -> dict[str, Any]:
    """N canned workers in a static control server (child process)."""
    from tests.tui.static_supervisor import remove_dir, short_socket_dir

    directory = short_socket_dir()
    socket = directory / "control.sock"
    server = subprocess.Popen([sys.executable, "-c", CANNED_SERVER, str(socket),
                               str(4 * args.seconds + 120), str(n)],
                              cwd=REPO, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)},
                              start_new_session=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        fig = run_child(socket, args.seconds, 0)
        fig.update(workers=n, canned=True, verdict=verdict(n, fig))
        return fig
    finally:
        server.kill()  # our own child, by its Popen handle
        server.wait(10)
        remove_dir(directory)


def main() -> None:
    """Parse, run, print JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", default="8,64", help="comma-separated fleet sizes")
    ap.add_argument("--seconds", type=float, default=20.0, help="window per screen")
    ap.add_argument("--presses", type=int, default=10, help="d presses for key-to-ack")
    ap.add_argument("--canned", action="store_true", help="static server, no fleet")
    ap.add_argument("--discover", action="store_true", help="list other SGLang servers too")
    ap.add_argument("--start-timeout", type=float, default=300.0)
    ap.add_argument("--child", metavar="SOCKET", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(child_run(args.child, args.seconds, args.presses))))
        return
    runs = [(canned if args.canned else real_fleet)(int(n), args)
            for n in args.workers.split(",")]
    print(json.dumps({"cpus": os.cpu_count(), "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
