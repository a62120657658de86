"""`embedops supervise`, plus timing records for bench_supervisor.py.

    python tests/perf/supervisor_recorder.py --config F --state-dir D --out FILE

Runs the real supervisor (`console.daemon.run_supervisor`) in this process, after
wrapping two methods to time them: every scrape cycle (one concurrent ``/metrics``
round over all workers, the durations the supervisor keeps in ``cycle_times``) and every
probe (`Supervisor._probe_once`: one embedding request plus the decision it feeds)
(managed workers only), and the balancer's /metrics scrape inside each cycle.
Each record is (CLOCK_MONOTONIC end time, seconds), kept in flat arrays; SIGUSR1 writes
them to ``--out`` as JSON. CLOCK_MONOTONIC is system-wide on Linux, so the benchmark can
cut the records to its own measurement window. The overhead: one array append per
event, nothing per second.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from array import array
from collections import deque
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import console.supervisor as sup_mod
from console import config as fleet_config
from console.daemon import run_supervisor
from console.statedir import StateDir

CYCLES = array("d")
PROBES = array("d")
ROUTER_SCRAPES = array("d")


class _RecordingDeque(deque):  # type: ignore[type-arg]
    def append(self, x: float) -> None:
        CYCLES.append(time.monotonic())
        CYCLES.append(x)
        super().append(x)


def _install(*, discover: bool) -> None:
    orig_init = sup_mod.Supervisor.__init__
    orig_probe = sup_mod.Supervisor._probe_once
    orig_router = sup_mod.Supervisor._scrape_balancer

    def init(self: Any, *a: Any, **k: Any) -> None:
        orig_init(self, *a, **k)
        self.cycle_times = _RecordingDeque(self.cycle_times, maxlen=self.cycle_times.maxlen)

    async def probe(self: Any, w: Any) -> None:
        t0 = time.perf_counter()
        try:
            await orig_probe(self, w)
        finally:
            if w.managed:
                PROBES.append(time.monotonic())
                PROBES.append(time.perf_counter() - t0)

    async def scrape_router(self: Any) -> None:
        t0 = time.perf_counter()
        try:
            await orig_router(self)
        finally:
            ROUTER_SCRAPES.append(time.monotonic())
            ROUTER_SCRAPES.append(time.perf_counter() - t0)

    async def no_servers() -> list[Any]:
        return []

    sup_mod.Supervisor.__init__ = init  # type: ignore[method-assign]
    sup_mod.Supervisor._probe_once = probe  # type: ignore[method-assign]
    sup_mod.Supervisor._scrape_balancer = scrape_router  # type: ignore[method-assign]
    if not discover:
        sup_mod.procs.discover_sglang_servers_async = no_servers  # type: ignore[assignment]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--no-discover", action="store_true",
                    help="attach no SGLang servers found on the box (on a shared machine,"
                         " other people's workers would otherwise be probed and scraped too)")
    ap.add_argument("--profile", default=None, metavar="FILE",
                    help="also run under cProfile; each SIGUSR1 writes the stats since the previous"
                         " SIGUSR1 to FILE")
    args = ap.parse_args()
    out = Path(args.out)
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()

    def dump(*_: object) -> None:
        nonlocal profiler
        if profiler is not None:
            # the stats since the previous dump: the bench's last window alone
            profiler.dump_stats(args.profile)
            profiler = cProfile.Profile()
            profiler.enable()
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "cycles": list(CYCLES),
                                   "probes": list(PROBES),
                                   "router_scrapes": list(ROUTER_SCRAPES)}))
        tmp.replace(out)

    signal.signal(signal.SIGUSR1, dump)
    _install(discover=not args.no_discover)
    cfg = fleet_config.load_config(Path(args.config))
    return run_supervisor(cfg, StateDir(args.state_dir))


if __name__ == "__main__":
    raise SystemExit(main())
