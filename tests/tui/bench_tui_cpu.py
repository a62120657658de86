"""CPU cost of the console at its default 1 s refresh (headless; prints JSON figures).

Not a pass/fail test. The canned control server runs in a child process so only the
console's own CPU is measured. Terminal output cost is not included (headless driver).
With a worker count, the canned fleet has that many ready workers whose figures (req/s,
P50/P95, running, GPU MiB) change every second, so every refresh updates cells.

    .venv/bin/python tests/tui/bench_tui_cpu.py [seconds] [workers,...]   # e.g. 20 8,64
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from console.control import ControlClient
from console.tui.app import EmbedopsApp
from tests.tui.static_supervisor import remove_dir, short_socket_dir

SERVER = """
import random, sys, time
from tests.tui.static_supervisor import StaticSupervisor, _worker, default_snapshot
n = int(sys.argv[3])
snap = default_snapshot()
if n:
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
    if n:
        sup.mutate(jiggle)
sup.stop()
"""


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def measure(socket: Path, seconds: float, detail: bool) -> dict[str, float]:
    app = EmbedopsApp(ControlClient(socket), refresh_s=1.0, close_client=True,
                      remember_theme=False)
    async with app.run_test(size=(160, 48)) as pilot:
        deadline = time.monotonic() + 20
        while app.snapshot is None and time.monotonic() < deadline:
            await pilot.pause(0.1)
        if detail:
            await pilot.press("enter")
        await pilot.pause(3.0)  # warm-up: first renders, plots, log backlog
        c0, t0, p0 = cpu_s(), time.monotonic(), app.polls
        await pilot.pause(seconds)
        c1, t1, p1 = cpu_s(), time.monotonic(), app.polls
    return {"cpu_pct_of_one_core": round(100 * (c1 - c0) / (t1 - t0), 2),
            "polls_per_s": round((p1 - p0) / (t1 - t0), 2)}


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 20.0
    counts = [int(n) for n in sys.argv[2].split(",")] if len(sys.argv) > 2 else [0]
    if counts != [0]:
        out = {"refresh_s": 1.0, "seconds": seconds,
               "runs": [one(seconds, n) for n in counts]}
        print(json.dumps(out))
        return
    print(json.dumps(one(seconds, 0)))


def one(seconds: float, workers: int) -> dict[str, object]:
    """Main and detail screen against a canned fleet of `workers` (0: the 5-worker default)."""
    directory = short_socket_dir()
    socket = directory / "control.sock"
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(socket), str(4 * seconds + 60),
                               str(workers)],
                              cwd=REPO, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)},
                              start_new_session=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        return {"refresh_s": 1.0, "seconds": seconds, "workers": workers or 5,
                "main_screen": asyncio.run(measure(socket, seconds, detail=False)),
                "detail_screen": asyncio.run(measure(socket, seconds, detail=True)),
                "rss_mib_now": round(psutil.Process().memory_info().rss / 2**20, 1),
                "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    finally:
        server.kill()
        server.wait(10)
        remove_dir(directory)


if __name__ == "__main__":
    main()
