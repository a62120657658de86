"""The simulated worker's life: startup phases, argument errors, SIGTERM drain and exit
codes, a killed or frozen scheduler — real processes on 127.0.0.1."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from console.supervisor import FLEET_ENV
from tests.conftest import ProcessGroups, free_port, wait_http

MODEL = "Qwen/Qwen3-Embedding-4B"


def _argv(port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "backends.sim.worker", "--model-path", MODEL, "--is-embedding",
            "--host", "127.0.0.1", "--port", str(port), *extra]


def _spawn(procs: ProcessGroups, tmp: Path, *extra: str,
           env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    log = tmp / f"sim-{port}.log"
    # Supervisors of fleets on a shared box discover every SGLang-like server and probe it
    # with real embedding requests; one marked as another fleet's worker is left alone, so
    # their probes cannot move the gauges, counters and drain counts asserted here.
    proc = procs.spawn(_argv(port, *extra), log=log,
                       env={"EMBEDOPS_SIM_GPU_DIR": str(tmp / "gpus"), FLEET_ENV: str(tmp),
                            **(env or {})})
    return proc, f"http://127.0.0.1:{port}", log


def _port_open(url: str) -> bool:
    host, port = url.rsplit("//", 1)[1].split(":")
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, int(port))) == 0


def _wait_exit(proc: subprocess.Popen, timeout: float) -> int:
    return proc.wait(timeout=timeout)


def _wait_log(log: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not logged within {timeout}s:\n{log.read_text()[-3000:]}")


def _descendants(pid: int) -> list[int]:
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _gone(pids: list[int], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p)
                 and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return True
        time.sleep(0.05)
    return False


# ---------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("extra,version,message", [
    (["--health-check-interval", "10"], "0.5.23",
     "sglang serve: error: unrecognized arguments: --health-check-interval 10"),
    (["--num-scheduler-steps", "8"], "0.5.2",
     "launch_server.py: error: unrecognized arguments: --num-scheduler-steps 8"),
    (["--cuda-graph-max-bs", "8"], "0.5.23",
     ("ambiguous option: --cuda-graph-max-bs could match --cuda-graph-max-bs-decode, "
      "--cuda-graph-max-bs-prefill")),
])
def test_bad_flags_exit_2_before_anything_starts(extra: list[str], version: str,
                                                 message: str) -> None:
    r = subprocess.run(_argv(free_port(), "--sim-sglang-version", version, *extra),
                       capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 2
    assert r.stderr.startswith("usage: ")
    assert message in r.stderr


# ---------------------------------------------------------------------------- startup


def test_startup_phases_and_log_lines(procs: ProcessGroups, tmp_path: Path) -> None:
    proc, url, log = _spawn(procs, tmp_path, "--sim-load-s", "1.5", "--sim-warmup-s", "1.5")
    time.sleep(0.5)
    assert not _port_open(url)  # loading weights: connection refused, not 503
    assert wait_http(f"{url}/model_info", timeout=20) == 200
    # warming up: info endpoints answer, /health says 503
    assert httpx.get(f"{url}/health", timeout=5).status_code == 503
    assert httpx.get(f"{url}/v1/models", timeout=5).status_code == 200
    assert httpx.get(f"{url}/ready", timeout=5).status_code == 503
    assert httpx.get(f"{url}/ping", timeout=5).status_code == 503  # 0.5.23: starting
    assert wait_http(f"{url}/health", timeout=20) == 200
    text = log.read_text()
    order = ["Load weight begin. avail mem=", "Load weight end. type=Qwen3ForCausalLM",
             "KV Cache is allocated. #tokens:", "Memory pool end. avail mem=",
             "max_total_num_tokens=", "Uvicorn running on http://127.0.0.1:",
             "The server is fired up and ready to roll!"]
    positions = [text.find(line) for line in order]
    assert all(p >= 0 for p in positions), text
    assert positions == sorted(positions)
    assert proc.poll() is None


def test_port_in_use_exits_1_after_loading(procs: ProcessGroups, tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        log = tmp_path / "busy.log"
        proc = procs.spawn(_argv(port, "--sim-load-s", "0.1"), log=log,
                           env={"EMBEDOPS_SIM_GPU_DIR": str(tmp_path / "gpus")})
        assert _wait_exit(proc, 30) == 1
    assert "address already in use" in log.read_text()


def test_sigterm_while_loading_dies_at_once(procs: ProcessGroups, tmp_path: Path) -> None:
    proc, _, _ = _spawn(procs, tmp_path, "--sim-load-s", "30")
    deadline = time.monotonic() + 10
    while len(_descendants(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    children = _descendants(proc.pid)
    assert len(children) == 2
    t = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert _wait_exit(proc, 5) == -signal.SIGTERM
    assert time.monotonic() - t < 2
    assert _gone(children)  # PR_SET_PDEATHSIG takes the children along


# ---------------------------------------------------------------------------- SIGTERM drain


def _running(url: str, version: str) -> bool:
    """Whether the scheduler reports a request running (0.5.2: /get_load, else /v1/loads)."""
    if version == "0.5.2":
        return httpx.get(f"{url}/get_load", timeout=5).json()["load"] > 0
    return httpx.get(f"{url}/v1/loads", timeout=5).json()["loads"][0]["num_running_reqs"] > 0


def _drain(procs: ProcessGroups, tmp_path: Path, version: str) -> tuple[int, str, list[int]]:
    proc, url, log = _spawn(procs, tmp_path, "--sim-sglang-version", version,
                            "--sim-load-s", "0.2", "--sim-warmup-s", "0.1",
                            "--sim-drain-poll-s", "0.3", "--sim-base-latency-ms", "700")
    wait_http(f"{url}/v1/models", timeout=30)
    _wait_log(log, "fired up and ready to roll", 20)
    results: dict[str, int] = {}

    def slow_request(name: str) -> None:
        results[name] = httpx.post(f"{url}/v1/embeddings", json={"input": name},
                                   timeout=15).status_code

    first = threading.Thread(target=slow_request, args=("in-flight",))
    first.start()
    # SIGTERM only once the scheduler runs it (a fixed sleep raced a loaded machine)
    deadline = time.monotonic() + 10
    while not _running(url, version):
        assert time.monotonic() < deadline, "the first request never reached the scheduler"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    t = time.monotonic()
    assert httpx.get(f"{url}/health", timeout=5).status_code == 503  # at once
    assert time.monotonic() - t < 1.0  # not a deep check (>= 1 s); slack for a loaded box
    second = threading.Thread(target=slow_request, args=("accepted-while-draining",))
    second.start()  # new requests are still accepted while draining
    first.join(15)
    second.join(15)
    children = _descendants(proc.pid)
    code = _wait_exit(proc, 15)
    assert results == {"in-flight": 200, "accepted-while-draining": 200}
    text = log.read_text()
    assert "Health check request received during shutdown. Returning 503." in text
    # 1 or 2 still running at the first polls, depending on when the second request lands
    # on a loaded machine; what matters is a non-zero count, then 0
    assert re.search(r"Gracefully exiting\.\.\. Remaining number of requests [12]\n", text), text
    assert "Gracefully exiting... Remaining number of requests 0" in text
    return code, text, children


def test_sigterm_drains_then_exits_137(procs: ProcessGroups, tmp_path: Path) -> None:
    code, _, children = _drain(procs, tmp_path, "0.5.23")
    assert code == 137  # as observed on 0.5.17, even after a clean drain
    assert _gone(children)


def test_sigterm_on_0_5_2_ends_in_sigkill(procs: ProcessGroups, tmp_path: Path) -> None:
    code, _, children = _drain(procs, tmp_path, "0.5.2")
    assert code == -signal.SIGKILL  # kill_process_tree(include_parent=True): shell shows 137
    assert _gone(children)


# ---------------------------------------------------------------------------- scheduler faults


def _scheduler_pid(url: str) -> int:
    return httpx.get(f"{url}/_sim/gpu", timeout=5).json()["pid"]


def test_killed_scheduler_takes_the_tree_down(procs: ProcessGroups, tmp_path: Path) -> None:
    proc, url, log = _spawn(procs, tmp_path, "--sim-load-s", "0.2", "--sim-warmup-s", "0.1",
                            "--sim-crash-wait-s", "0.5")
    wait_http(f"{url}/ready", timeout=30)
    sched = _scheduler_pid(url)
    children = _descendants(proc.pid)
    os.kill(sched, signal.SIGKILL)
    assert _wait_exit(proc, 10) == 137
    assert (f"Subprocess scheduler_0 (pid={sched}) crashed with exit code -9. "
            "Triggering SIGQUIT for cleanup...") in log.read_text()
    assert _gone(children)


def test_killed_scheduler_on_0_5_2_leaves_a_zombie_server(procs: ProcessGroups,
                                                         tmp_path: Path) -> None:
    proc, url, _ = _spawn(procs, tmp_path, "--sim-sglang-version", "0.5.2", "--sim-load-s", "0.2",
                          "--sim-warmup-s", "0.1", "--sim-crash-wait-s", "0.2",
                          env={"SGLANG_HEALTH_CHECK_TIMEOUT": "1.5"})
    assert wait_http(f"{url}/health", timeout=30) == 200
    os.kill(_scheduler_pid(url), signal.SIGKILL)
    time.sleep(1.0)
    assert proc.poll() is None  # no subprocess watchdog in 0.5.2
    assert httpx.get(f"{url}/ping", timeout=5).status_code == 200
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{url}/v1/embeddings", json={"input": "x"}, timeout=1.0)
    assert httpx.get(f"{url}/health", timeout=10).status_code == 503
    assert httpx.get(f"{url}/_sim/gpu", timeout=5).json()["used_mib"] == 0


def test_frozen_scheduler_then_thawed(procs: ProcessGroups, tmp_path: Path) -> None:
    proc, url, _ = _spawn(procs, tmp_path, "--enable-metrics", "--sim-load-s", "0.2",
                          "--sim-warmup-s", "0.1", env={"SGLANG_HEALTH_CHECK_TIMEOUT": "2"})
    wait_http(f"{url}/ready", timeout=30)
    sched = _scheduler_pid(url)
    os.kill(sched, signal.SIGSTOP)
    try:
        with pytest.raises(httpx.TimeoutException):
            httpx.post(f"{url}/v1/embeddings", json={"input": "frozen"}, timeout=1.0)
        t = time.monotonic()
        assert httpx.get(f"{url}/ping", timeout=2).status_code == 200
        assert time.monotonic() - t < 0.5
        assert httpx.get(f"{url}/metrics", timeout=2).status_code == 200
        t = time.monotonic()
        assert httpx.get(f"{url}/health", timeout=10).status_code == 503
        assert time.monotonic() - t >= 1.9  # SGLANG_HEALTH_CHECK_TIMEOUT
    finally:
        os.kill(sched, signal.SIGCONT)
    r = httpx.post(f"{url}/v1/embeddings", json={"input": "thawed"}, timeout=5)
    assert r.status_code == 200
    assert httpx.get(f"{url}/health", timeout=10).status_code == 200
    assert proc.poll() is None
