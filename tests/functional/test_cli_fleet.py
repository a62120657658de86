"""The fleet subcommands of `embedops` as real subprocesses, against one real fleet.

One `embedops up` per module starts a detached supervisor, two simulated workers
and a real sglang-router in a temporary state directory; the tests then drive it the
way an operator would (status, drain, restart, retune, kill, validate, logs, silence)
and end with `embedops down`. Every process the fleet ever had is recorded from the
state file, the lock file and the snapshots (pid + start time), and whatever is
still alive at teardown is killed by that recorded process group, never by name.
The tests run in file order and share the fleet; each leaves it with both workers
ready (except the last, `down`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from console.control import SyncControlClient
from console.demo import demo_config
from tests.conftest import REPO, free_port

SCRIPT = Path(sys.executable).parent / "embedops"
FLEET = "clitest"
WORKERS = ("sim0-a", "sim1-a")
CONFIG_FRACTION = 0.84  # demo_config: one worker per card → 0.84 of the card
CMD_TIMEOUT_S = 90.0


def embedops_argv() -> list[str]:
    """The installed console script, or ``python -m console.cli`` without one."""
    return [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "console.cli"]


def clean_env(**extra: str) -> dict[str, str]:
    """Our environment without any EMBEDOPS_* setting, plus `extra`."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDOPS_")}
    return {**base, "PYTHONPATH": str(REPO), **extra}


def small_fleet_toml(name: str = FLEET) -> str:
    """Two sim workers on two cards (they start in parallel), fast startup."""
    text = demo_config(2, 2, [free_port() for _ in range(4)])
    for old, new in (('name = "demo"', f'name = "{name}"'), ("load_s = 2.0", "load_s = 0.3"),
                     ("warmup_s = 1.0", "warmup_s = 0.2")):
        assert old in text, old
        text = text.replace(old, new)
    return text


def wait_for(cond: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    """Poll `cond` until it returns something truthy; bounded by `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"not {what} within {timeout} s (last: {last!r})")


# ------------------------------------------------------------------ process bookkeeping


def _ctime(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def same_process_alive(pid: int, ctime: float) -> bool:
    """Whether `pid` is still the process that started at `ctime` and has not exited."""
    try:
        proc = psutil.Process(pid)
        return (abs(proc.create_time() - ctime) < 0.05
                and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def groups_members(pgids: set[int]) -> list[int]:
    """Live (non-zombie) processes in any of the process groups `pgids`."""
    out = []
    for proc in psutil.process_iter(["status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.pid) in pgids:
                out.append(proc.pid)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return out


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group `pgid`."""
    return groups_members({pgid})


@dataclass
class Recorded:
    """Every fleet process seen: pid → start time (each is its own group's leader)."""

    procs: dict[int, float] = field(default_factory=dict)

    def add(self, pid: int | None, ctime: float | None = None) -> None:
        if pid is None or pid in self.procs:
            return
        ctime = ctime if ctime is not None else _ctime(pid)
        if ctime is not None:
            self.procs[pid] = ctime

    def add_state_file(self, state_dir: Path) -> None:
        """The supervisor, balancer and worker identities of ``state.json`` and the
        pid in ``supervisor.lock``."""
        try:
            data = json.loads((state_dir / "state.json").read_text())
        except (OSError, ValueError):
            data = {}
        self._add_supervisor(data.get("supervisor_pid"), state_dir)
        try:
            lock_pid = (state_dir / "supervisor.lock").read_text().strip()
        except OSError:
            lock_pid = ""
        if lock_pid.isdigit():
            self._add_supervisor(int(lock_pid), state_dir)
        idents = [(data.get("balancer") or {}).get("identity")]
        idents += [w.get("identity") for w in (data.get("workers") or {}).values()]
        for ident in idents:
            if ident:
                self.add(int(ident["pid"]), float(ident["create_time"]))

    def _add_supervisor(self, pid: int | None, state_dir: Path) -> None:
        if not pid or pid in self.procs:
            return
        try:
            cmdline = psutil.Process(pid).cmdline()
        except psutil.Error:
            return
        if "supervise" in cmdline and str(state_dir) in cmdline:  # it is ours
            self.add(pid)

    def alive(self) -> list[int]:
        """Recorded processes still running, and live members of their groups."""
        pids = {p for p, t in self.procs.items() if same_process_alive(p, t)}
        return sorted(pids | set(groups_members(set(self.procs))))

    def kill_all(self) -> None:
        """SIGKILL the recorded groups whose leader is still the recorded process."""
        for pid, ctime in self.procs.items():
            if not same_process_alive(pid, ctime):
                continue
            try:
                if os.getpgid(pid) == pid:
                    os.killpg(pid, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


# ------------------------------------------------------------------ the shared fleet


@dataclass
class Fleet:
    """The module's fleet: paths, ports, the `up` result, and every process it had."""

    root: Path
    config: Path
    state_dir: Path
    balancer_port: int
    worker_ports: dict[str, int]
    up: subprocess.CompletedProcess[str]
    recorded: Recorded
    routed_right_after_up: set[str] = field(default_factory=set)

    def run(self, *args: str, input: str | None = None, state_dir: bool = True,
            env: dict[str, str] | None = None,
            timeout: float = CMD_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        """Run ``embedops ARGS [--state-dir D]`` from a directory without a fleet file."""
        extra = ["--state-dir", str(self.state_dir)] if state_dir else []
        r = subprocess.run([*embedops_argv(), *args, *extra], cwd=self.root,
                           env=clean_env(**(env or {})), capture_output=True, text=True,
                           timeout=timeout, check=False, input=input,
                           stdin=None if input is not None else subprocess.DEVNULL)
        self.recorded.add_state_file(self.state_dir)
        return r

    def snapshot(self) -> dict[str, Any]:
        """GET /v1/status, recording the pids it shows."""
        with SyncControlClient(self.state_dir / "control.sock", timeout=10.0) as client:
            snap: dict[str, Any] = client.get("/v1/status")
        self.recorded.add_state_file(self.state_dir)
        return snap

    def worker(self, name: str, snap: dict[str, Any] | None = None) -> dict[str, Any]:
        snap = snap or self.snapshot()
        return next(w for w in snap["workers"] if w["name"] == name)

    def routed_urls(self) -> set[str]:
        """Worker URLs registered in the real sglang-router (GET /workers)."""
        r = httpx.get(f"http://127.0.0.1:{self.balancer_port}/workers", timeout=5.0)
        r.raise_for_status()
        return {w["url"] for w in r.json()["workers"]}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("clifleet")
    config = root / "fleet-under-test.toml"  # not ./fleet.toml: commands must be told
    config.write_text(small_fleet_toml())
    from console.config import load_config

    cfg = load_config(config)
    state_dir = root / "sd"
    recorded = Recorded()
    f = Fleet(root=root, config=config, state_dir=state_dir, balancer_port=cfg.balancer.port,
              worker_ports={w.name: w.port for w in cfg.workers},
              up=subprocess.CompletedProcess([], 0), recorded=recorded)
    try:
        f.up = f.run("up", "--config", str(config))
        if f.up.returncode == 0:
            f.routed_right_after_up = f.routed_urls()
        yield f
    finally:
        recorded.add_state_file(state_dir)
        if (state_dir / "control.sock").exists():
            subprocess.run([*embedops_argv(), "down", "--state-dir", str(state_dir)], cwd=root,
                           env=clean_env(), capture_output=True, timeout=60, check=False,
                           stdin=subprocess.DEVNULL)
        recorded.kill_all()


def supervisor_pid(fleet: Fleet) -> int:
    return int(fleet.snapshot()["supervisor"]["pid"])


# ------------------------------------------------------------------ up


def test_up_starts_a_background_supervisor_and_reports_each_worker(fleet: Fleet) -> None:
    r = fleet.up
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("embedops: started supervisor pid ")
    pid = int(lines[0].split("pid ")[1].split()[0])
    assert f"for fleet {FLEET} (log {fleet.state_dir / 'supervisor.log'})" in lines[0]
    progress = [line for line in lines if line.startswith("[")]
    assert progress, r.stdout
    for name in WORKERS:  # each worker's phase shown while it started, then ready
        assert any(f"{name}: starting" in line or f"{name}: queued" in line
                   for line in progress), r.stdout
        assert f"{name}: ready" in progress[-1]
    assert lines[-1] == (f"embedops: 2/2 workers ready behind "
                         f"http://127.0.0.1:{fleet.balancer_port}")
    # `up` has exited; the supervisor runs on, detached in its own session
    assert (fleet.state_dir / "supervisor.lock").read_text().strip() == str(pid)
    assert json.loads((fleet.state_dir / "state.json").read_text())["supervisor_pid"] == pid
    assert supervisor_pid(fleet) == pid
    assert os.getsid(pid) == pid
    snap = fleet.snapshot()
    assert {w["name"]: w["state"] for w in snap["workers"] if w["managed"]} == {
        "sim0-a": "ready", "sim1-a": "ready"}
    urls = {f"http://127.0.0.1:{p}" for p in fleet.worker_ports.values()}
    wait_for(lambda: fleet.routed_urls() == urls, 10, "both workers listed by the router")


def test_up_returns_once_the_router_lists_every_worker(fleet: Fleet) -> None:
    assert fleet.up.returncode == 0
    assert fleet.routed_right_after_up == {
        f"http://127.0.0.1:{p}" for p in fleet.worker_ports.values()}


def test_second_up_says_one_already_runs(fleet: Fleet) -> None:
    pid = supervisor_pid(fleet)
    r = fleet.run("up", "--config", str(fleet.config))
    assert r.returncode == 0, r.stderr
    assert f"embedops: a supervisor already runs fleet {FLEET} ({fleet.state_dir})" in r.stdout
    assert "started supervisor" not in r.stdout
    assert "2/2 workers ready" in r.stdout
    assert supervisor_pid(fleet) == pid


def test_second_supervise_is_refused_with_the_pid_of_the_first(fleet: Fleet) -> None:
    pid = supervisor_pid(fleet)
    r = fleet.run("supervise", "--config", str(fleet.config), timeout=30)
    assert r.returncode != 0
    assert f"another supervisor (pid {pid}) already runs fleet '{FLEET}'" in r.stderr
    assert supervisor_pid(fleet) == pid  # the first one is untouched and still answers
    assert (fleet.state_dir / "supervisor.lock").read_text().strip() == str(pid)


# ------------------------------------------------------------------ status


def test_status_table(fleet: Fleet) -> None:
    r = fleet.run("status")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"fleet {FLEET} (sim) · balancer sglang-router up "
                               f"http://127.0.0.1:{fleet.balancer_port}")
    assert lines[1].split()[:6] == ["NAME", "STATE", "ROUTED", "PID", "PORT", "GPU"]
    snap = fleet.snapshot()
    for name in WORKERS:
        w = fleet.worker(name, snap)
        row = next(line for line in lines if line.startswith(name + " "))
        assert row.split()[:6] == [name, "ready", "yes", str(w["pid"]),
                                   str(fleet.worker_ports[name]), str(w["gpu"])]


def test_status_json_has_the_documented_schema(fleet: Fleet) -> None:
    # the state dir from the environment this time
    r = fleet.run("status", "--json", state_dir=False,
                  env={"EMBEDOPS_STATE_DIR": str(fleet.state_dir)})
    assert r.returncode == 0, r.stderr
    snap = json.loads(r.stdout)
    assert {"schema", "time", "fleet", "engine", "read_only", "supervisor", "balancer",
            "workers", "gpus", "alerts", "events"} <= snap.keys()
    assert (snap["schema"], snap["fleet"], snap["engine"], snap["read_only"]) == (
        1, FLEET, "sim", False)
    assert abs(snap["time"] - time.time()) < 60
    assert {"pid", "uptime_s", "version", "state_dir"} <= snap["supervisor"].keys()
    assert snap["supervisor"]["state_dir"] == str(fleet.state_dir)
    assert {"kind", "url", "healthy", "p95_ms", "rps"} <= snap["balancer"].keys()
    assert snap["balancer"]["kind"] == "sglang-router"
    assert snap["balancer"]["url"] == f"http://127.0.0.1:{fleet.balancer_port}"
    assert snap["balancer"]["healthy"] is True
    worker_keys = {
        "name", "state", "managed", "routed", "pid", "port", "url", "gpu",
        "mem_fraction_static", "cuda_graph", "max_running_requests", "chunked_prefill_size",
        "p50_ms", "p95_ms", "latency_source", "rps", "running", "queued", "errors",
        "gpu_mem_mib", "restarts", "uptime_s", "last_probe_ms", "last_probe_ok", "action",
        "next_start_in_s", "drift", "warnings", "argv", "log_path", "sim"}
    managed = {w["name"]: w for w in snap["workers"] if w["managed"]}
    assert set(managed) == set(WORKERS)
    for name, w in managed.items():
        assert worker_keys <= w.keys(), worker_keys - w.keys()
        assert w["state"] == "ready" and w["routed"] is True and w["sim"] is True
        assert w["port"] == fleet.worker_ports[name]
        assert w["url"] == f"http://127.0.0.1:{fleet.worker_ports[name]}"
        assert w["mem_fraction_static"] == CONFIG_FRACTION
        assert w["log_path"] == str(fleet.state_dir / "logs" / f"{name}.log")
        assert w["latency_source"] in ("histogram", "probe", "none")
        assert isinstance(w["pid"], int) and w["action"] is None and w["drift"] == {}
        assert "--port" in w["argv"] and str(w["port"]) in w["argv"]
    assert {w["gpu"] for w in managed.values()} == {0, 1}
    for g in snap["gpus"]:
        assert {"index", "name", "total_mib", "used_mib", "util_pct", "temperature_c",
                "power_w", "error", "workers"} <= g.keys()
    assert {g["index"] for g in snap["gpus"]} == {0, 1}
    for a in snap["alerts"]:
        assert {"key", "rule", "worker", "state", "since", "message", "severity",
                "silenced_until"} <= a.keys()
    assert snap["events"], "the supervisor logged no event while starting two workers"
    for e in snap["events"]:
        assert {"time", "kind", "worker", "message", "outcome"} <= e.keys()


# ------------------------------------------------------------------ operator actions


def test_drain_and_undrain(fleet: Fleet) -> None:
    url_a = f"http://127.0.0.1:{fleet.worker_ports['sim0-a']}"
    url_b = f"http://127.0.0.1:{fleet.worker_ports['sim1-a']}"
    pid = fleet.worker("sim0-a")["pid"]
    r = fleet.run("drain", "sim0-a")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("drain sim0-a: ok: ")
    w = fleet.worker("sim0-a")
    assert (w["state"], w["routed"], w["pid"]) == ("drained", False, pid)
    assert fleet.routed_urls() == {url_b}  # out of the real router, process still running

    r = fleet.run("undrain", "sim0-a")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("undrain sim0-a: ok: ")
    w = fleet.worker("sim0-a")
    assert (w["state"], w["routed"], w["pid"]) == ("ready", True, pid)
    wait_for(lambda: fleet.routed_urls() == {url_a, url_b}, 10, "both workers in the router")


def test_restart_gives_a_new_process(fleet: Fleet) -> None:
    before = fleet.worker("sim1-a")
    old_pid, old_ctime = before["pid"], fleet.recorded.procs[before["pid"]]
    r = fleet.run("restart", "sim1-a")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("restart sim1-a: ok: ")
    after = fleet.worker("sim1-a")
    assert after["state"] == "ready" and after["routed"] is True
    assert after["pid"] not in (None, old_pid)
    assert after["restarts"] == before["restarts"] + 1
    assert not same_process_alive(old_pid, old_ctime)
    assert group_members(old_pid) == []  # its scheduler and detokenizer went too


def test_retune_restarts_with_the_new_value(fleet: Fleet) -> None:
    before = fleet.worker("sim1-a")
    r = fleet.run("retune", "sim1-a", "--mem-fraction-static", "0.5")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("retune sim1-a: ok: ")
    after = fleet.worker("sim1-a")
    assert after["state"] == "ready" and after["pid"] != before["pid"]
    assert after["mem_fraction_static"] == 0.5
    assert after["drift"] == {"mem_fraction_static": {"config": CONFIG_FRACTION,
                                                      "current": 0.5}}
    for argv in (after["argv"], psutil.Process(after["pid"]).cmdline()):
        assert argv[argv.index("--mem-fraction-static") + 1] == "0.5", argv


def test_retune_out_of_range_is_refused_and_changes_nothing(fleet: Fleet) -> None:
    before = fleet.worker("sim1-a")
    r = fleet.run("retune", "sim1-a", "--mem-fraction-static", "1.5")
    assert r.returncode == 1
    assert r.stdout == ""
    assert "mem_fraction_static" in r.stderr and "1.5" in r.stderr
    assert "valid range (0, 1)" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    after = fleet.worker("sim1-a")
    for key in ("state", "pid", "mem_fraction_static", "restarts", "routed"):
        assert after[key] == before[key], key


def test_unknown_worker_is_a_clear_error(fleet: Fleet) -> None:
    for args in (("drain", "nosuch"), ("restart", "nosuch"), ("kill", "nosuch", "--yes"),
                 ("logs", "nosuch", "-n", "5"),
                 ("retune", "nosuch", "--mem-fraction-static", "0.5")):
        r = fleet.run(*args)
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        assert r.stderr.strip() == "embedops: no worker named 'nosuch'", (args, r.stderr)
    assert {w["name"]: w["state"] for w in fleet.snapshot()["workers"] if w["managed"]} == {
        "sim0-a": "ready", "sim1-a": "ready"}


def test_validate_through_the_balancer(fleet: Fleet) -> None:
    r = fleet.run("validate")
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"validate http://127.0.0.1:{fleet.balancer_port}"
    checks = lines[1:]
    assert len(checks) >= 4 and all(c.strip().startswith("PASS") for c in checks), r.stdout
    assert any("bilingual" in c for c in checks)
    assert any("empty input" in c for c in checks)


def test_validate_a_url_needs_no_supervisor(fleet: Fleet, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{fleet.worker_ports['sim0-a']}"
    nobody = tmp_path / "no-supervisor-here"  # proves no control socket is used
    r = subprocess.run([*embedops_argv(), "validate", "--url", url, "--config",
                        str(fleet.config), "--state-dir", str(nobody), "--json"],
                       cwd=tmp_path, env=clean_env(), capture_output=True, text=True,
                       timeout=CMD_TIMEOUT_S, check=False, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert report["ok"] is True and report["url"] == url
    assert len(report["checks"]) >= 4 and all(c["ok"] for c in report["checks"])
    assert not nobody.exists()

    closed = f"http://127.0.0.1:{free_port()}"
    r = subprocess.run([*embedops_argv(), "validate", "--url", closed], cwd=tmp_path,
                       env=clean_env(), capture_output=True, text=True,
                       timeout=CMD_TIMEOUT_S, check=False, stdin=subprocess.DEVNULL)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAIL" in r.stdout and "PASS" not in r.stdout


def test_logs_prints_the_last_lines(fleet: Fleet) -> None:
    r = fleet.run("logs", "sim0-a", "-n", "5")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 5
    log = (fleet.state_dir / "logs" / "sim0-a.log").read_text(errors="replace").splitlines()
    assert all(line in log for line in lines)
    first = log.index(lines[0])  # consecutive, in order
    assert log[first:first + 5] == lines


def test_silence_an_alert_rule(fleet: Fleet) -> None:
    r = fleet.run("silence", "gpu_mem_and_p95", "--for", "10m")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("silence: ok: silenced gpu_mem_and_p95 for 10 min")
    audit = [json.loads(line) for line in
             (fleet.state_dir / "audit.jsonl").read_text().splitlines() if line.strip()]
    assert any(e.get("action") == "silence" and e.get("outcome") == "ok"
               and "gpu_mem_and_p95" in json.dumps(e) for e in audit), audit[-3:]

    r = fleet.run("silence", "gpu_mem_and_p95", "--for", "10x")
    assert r.returncode == 1
    assert "--for '10x': use a number with s, m, h or d" in r.stderr


def test_kill_asks_first_then_kills_and_the_worker_stays_stopped(fleet: Fleet) -> None:
    before = fleet.worker("sim0-a")
    pid, ctime = before["pid"], fleet.recorded.procs[before["pid"]]
    r = fleet.run("kill", "sim0-a")  # stdin closed: no answer
    assert r.returncode == 1
    assert "nothing done" in r.stderr and "Traceback" not in r.stderr
    r = fleet.run("kill", "sim0-a", input="sim1-a\n")  # the wrong name
    assert r.returncode == 1 and "not confirmed; nothing done" in r.stderr
    assert fleet.worker("sim0-a")["pid"] == pid and same_process_alive(pid, ctime)

    r = fleet.run("kill", "sim0-a", "--yes")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("kill sim0-a: ok: ")
    w = fleet.worker("sim0-a")
    assert (w["state"], w["pid"], w["routed"]) == ("stopped", None, False)
    wait_for(lambda: not same_process_alive(pid, ctime) and not group_members(pid), 10,
             "the killed worker's processes gone")
    time.sleep(1.5)  # and nobody restarts it
    assert fleet.worker("sim0-a")["state"] == "stopped"

    r = fleet.run("restart", "sim0-a")  # what the kill message says brings it back
    assert r.returncode == 0, r.stdout + r.stderr
    w = fleet.worker("sim0-a")
    assert w["state"] == "ready" and w["pid"] not in (None, pid)


# ------------------------------------------------------------------ down (last)


def test_down_stops_every_process_of_the_fleet(fleet: Fleet) -> None:
    fleet.snapshot()
    recorded = dict(fleet.recorded.procs)
    assert len(recorded) >= 1 + 1 + 2 + 3  # supervisor, router, workers incl. restarted ones
    assert fleet.recorded.alive(), "nothing of the fleet runs before down"
    r = fleet.run("down")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == "embedops: fleet stopped"
    # `down` returns once the supervisor stopped answering, after it stopped the rest
    assert fleet.recorded.alive() == []
    assert not (fleet.state_dir / "control.sock").exists()
    state = json.loads((fleet.state_dir / "state.json").read_text())
    assert state["balancer"]["identity"] is None
    assert all(w["identity"] is None for w in state["workers"].values())

    r = fleet.run("status")
    assert r.returncode == 1
    assert "no supervisor" in r.stderr and "embedops up" in r.stderr
    assert r.stdout == ""
