"""CPU cost of the console at its default 1 s refresh (headless; prints JSON figures).

Not a pass/fail test. The canned control server runs in a child process so only the
console's own CPU is measured. Terminal output cost is not included (headless driver).

    .venv/bin/python tests/tui/bench_tui_cpu.py [seconds]
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

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from console.control import ControlClient  # noqa: E402
from console.tui.app import EmbedopsApp  # noqa: E402
from tests.tui.static_supervisor import remove_dir, short_socket_dir  # noqa: E402

SERVER = """
import sys, time
from tests.tui.static_supervisor import StaticSupervisor
sup = StaticSupervisor(sys.argv[1]).start()
print("ready", flush=True)
time.sleep(float(sys.argv[2]))
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
    directory = short_socket_dir()
    socket = directory / "control.sock"
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(socket), str(4 * seconds + 60)],
                              cwd=REPO, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)},
                              start_new_session=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        out = {"refresh_s": 1.0, "seconds": seconds, "workers": 5,
               "main_screen": asyncio.run(measure(socket, seconds, detail=False)),
               "detail_screen": asyncio.run(measure(socket, seconds, detail=True))}
        print(json.dumps(out))
    finally:
        server.kill()
        server.wait(10)
        remove_dir(directory)


if __name__ == "__main__":
    main()
