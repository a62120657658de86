"""Benchmark: how many single-input embedding requests/s one simulated worker sustains.

Run: ``.venv/bin/python tests/perf/bench_sim_worker.py [--rates 500,1000,1500] [--duration 5]``

Starts one ``backends.sim.worker`` with the zero-latency model in its own process group,
warms it up, drives the open-loop load generator at each rate, prints JSON (per rate:
sent, ok, errors, latency percentiles, achieved rate, CPU seconds of the generator and of
the worker's process tree), then kills the worker by its recorded process group.
Target from the issue: ≥ 1,000 req/s sustained with 0 errors. Not a pass/fail test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from backends.sim.loadgen import LoadSpec, run_load  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _machine() -> dict[str, object]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import uvloop  # noqa: F401
        has_uvloop = True
    except ImportError:
        has_uvloop = False
    return {"cpus": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
            "platform": platform.platform(), "loadavg_1m_at_start": os.getloadavg()[0],
            "uvloop": has_uvloop}


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a process and its live descendants."""
    total = 0.0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _self_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="500,1000,1500", help="comma-separated req/s")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per rate")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds at the first rate, unreported")
    ap.add_argument("--deadline-s", type=float, default=5.0)
    ap.add_argument("--verify", choices=("cheap", "full"), default="cheap")
    ap.add_argument("--vary-text", action="store_true",
                    help="a different text per request (defeats any per-text cache)")
    ap.add_argument("--input-tokens", type=int, default=None, help="about N tokens per input")
    ap.add_argument("--worker-arg", action="append", default=[],
                    help="extra worker argument (repeat; e.g. --worker-arg=--sim-dim=1024)")
    args = ap.parse_args()
    rates = [float(r) for r in args.rates.split(",") if r.strip()]

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = Path(tempfile.mkdtemp(prefix="bench-sim-")) / "worker.log"
    argv = [sys.executable, "-m", "backends.sim.worker", "--model-path", "sim/Qwen3-Embedding-4B",
            "--is-embedding", "--host", "127.0.0.1", "--port", str(port), "--enable-metrics",
            "--sim-load-s", "0.2", "--sim-warmup-s", "0.1",
            "--sim-base-latency-ms", "0", "--sim-per-token-us", "0", *args.worker_arg]
    # a private simulated-GPU registry: other sim workers on the box do not take its memory
    env = {**os.environ, "PYTHONPATH": str(REPO), "EMBEDOPS_SIM_GPU_DIR": str(log.parent / "gpu")}
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=str(REPO), env=env, start_new_session=True)
    pgid = proc.pid  # own session: the group id is the leader's pid
    result: dict[str, object] = {
        "machine": _machine(), "worker_argv": argv[1:],
        "load": {"duration_s": args.duration, "verify": args.verify, "vary_text": args.vary_text,
                 "input_tokens": args.input_tokens, "inputs_per_request": 1},
        "runs": []}
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited with {proc.returncode}; log {log}:\n"
                                   + log.read_text()[-2000:])
            try:
                if httpx.get(url + "/health", timeout=3).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker not ready in 60 s; log {log}")
            time.sleep(0.1)

        if args.warmup > 0:
            run_load(LoadSpec(url=url, rate=rates[0], duration_s=args.warmup,
                              deadline_s=args.deadline_s))
        for rate in rates:
            w0, s0, t0 = _tree_cpu_s(proc.pid), _self_cpu_s(), time.monotonic()
            rep = run_load(LoadSpec(url=url, rate=rate, duration_s=args.duration, dimension=2560,
                                    deadline_s=args.deadline_s, verify=args.verify,
                                    vary_text=args.vary_text, input_tokens=args.input_tokens))
            wall = time.monotonic() - t0
            w1, s1 = _tree_cpu_s(proc.pid), _self_cpu_s()
            result["runs"].append({  # type: ignore[union-attr]
                "rate": rate, "sent": rep.sent, "ok": rep.ok, "errors": rep.error_total,
                "errors_by_kind": rep.errors, "achieved_rps": rep.achieved_rps,
                "ok_rps": rep.ok_rps, "latency_ms": rep.latency_ms,
                "send_lag_ms_p99": rep.send_lag_ms["p99"], "max_in_flight": rep.max_in_flight,
                "connections": rep.connections_opened,
                "cpu_pct_worker_tree": round(100 * (w1 - w0) / wall, 1),
                "cpu_pct_loadgen": round(100 * (s1 - s0) / wall, 1),
                "error_samples": rep.error_samples,
            })
        runs = result["runs"]
        result["target_1000rps_zero_errors_met"] = any(
            r["rate"] >= 1000 and r["errors"] == 0 and r["achieved_rps"] >= 0.98 * r["rate"]
            and r["ok_rps"] >= 0.95 * r["rate"] for r in runs)  # type: ignore[index, union-attr]
    finally:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait(timeout=10)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
