"""Fault drills around starting workers (reference/reliability.md §4): F7 port owned by a
foreign process, F8 model path missing, F9 crash loop, F12 bad config, F16 PID reuse,
F17 startup hang beyond the budget.

Each drill has its own small fleet (the faults are set up before the supervisor starts).
Figures are printed (``-s``); timing asserts carry CI slack.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from backends import procs as bprocs
from console.config import ConfigError, load_config
from tests.chaos.fleet import (
    ROUTED,
    Fleet,
    StatusSampler,
    WorkerDef,
    row,
    running_fleet,
)
from tests.conftest import REPO, ProcessGroups, free_port

pytestmark = pytest.mark.slow

# A process that is not ours: it records every catchable signal it receives and
# optionally listens on a port. It must never be signalled by the supervisor.
DECOY = r"""
import signal, socket, sys, time
log = open(sys.argv[1], "a", buffering=1)
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
          signal.SIGUSR2, signal.SIGCONT):
    signal.signal(s, lambda n, f: log.write(f"{n}\n"))
if len(sys.argv) > 2:
    sock = socket.socket()
    sock.bind(("127.0.0.1", int(sys.argv[2])))
    sock.listen(8)
print("ready", flush=True)
end = time.monotonic() + 300
while time.monotonic() < end:
    time.sleep(0.2)
"""


def _report(name: str, **figures: object) -> None:
    print(f"\n[{name}] " + json.dumps(figures, default=str))


def _decoy(groups: ProcessGroups, tmp: Path, port: int | None = None) -> tuple[subprocess.Popen, Path]:
    signals = tmp / f"decoy-{port}.signals"
    signals.touch()
    ready = tmp / f"decoy-{port}.out"
    argv = [sys.executable, "-c", DECOY, str(signals)] + ([str(port)] if port else [])
    proc = groups.spawn(argv, log=ready)
    deadline = time.monotonic() + 20
    while "ready" not in ready.read_text() and time.monotonic() < deadline:
        assert proc.poll() is None, ready.read_text()
        time.sleep(0.05)
    return proc, signals


def _untouched(proc: subprocess.Popen, signals: Path) -> None:
    assert proc.poll() is None, "the foreign process died"
    assert psutil.Process(proc.pid).status() != psutil.STATUS_STOPPED
    assert signals.read_text() == "", f"foreign process got signals: {signals.read_text()!r}"


# ---------------------------------------------------------------------------- F7


def test_f7_port_owned_by_foreign_process(tmp_path: Path, procs: ProcessGroups) -> None:
    """F7a: another process listens on w2's port: w2 goes FAILED at preflight with an
    alert naming the owner pid, nothing is launched into EADDRINUSE, the owner is never
    signalled, w1 is unaffected, and there is no restart loop."""
    port = free_port()
    decoy, signals = _decoy(procs, tmp_path, port)
    fleet = Fleet(tmp_path / "fleet", [WorkerDef("w1", gpu=0), WorkerDef("w2", gpu=1, port=port)])
    try:
        with StatusSampler(fleet) as sampler:
            fleet.start(wait_ready=False)
            fleet.wait_routed(["w1"], timeout_s=60)
            _, failed_s = fleet.wait_for(lambda s: row(s, "w2")["state"] == "failed",
                                         timeout_s=30, what="w2 failed")

            def alert(s: dict) -> dict | None:
                return next((a for a in s["alerts"] if a["worker"] == "w2"
                             and a["rule"] == "worker_failed" and a["state"] == "firing"), None)

            found, _ = fleet.wait_for(alert, timeout_s=10, what="worker_failed alert")
            time.sleep(3.0)  # no restart loop
        t_failed = sampler.first(lambda s: row(s, "w2")["state"] == "failed")
        t_alert = sampler.first(lambda s: alert(s) is not None)
        w2 = fleet.worker("w2")
        _report("F7", failed_after_start_s=round(failed_s, 2),
                alert_after_failed_s=None if t_alert is None or t_failed is None
                else round(t_alert - t_failed, 2), alert=found["message"], reason=w2["state_reason"])
        assert str(decoy.pid) in found["message"], found
        assert str(decoy.pid) in (w2["state_reason"] or "")
        assert w2["state"] == "failed" and w2["pid"] is None and w2["restarts"] == 0
        assert t_alert is not None and t_failed is not None and t_alert - t_failed < 3.0
        spawns = [e for e in fleet.events("w2") if e["kind"] == "spawn"]
        assert spawns == [], spawns  # 0 blind launches
        log = fleet.sd.worker_log("w2")
        assert not log.exists() or "embedops spawn" not in log.read_text()
        assert fleet.worker("w1")["state"] in ROUTED
        _untouched(decoy, signals)
    finally:
        fleet.close()
    _untouched(decoy, signals)


# ---------------------------------------------------------------------------- F8


def _sglang_toml(model: Path, port: int) -> str:
    return "\n".join([
        'name = "f8"', 'engine = "sglang"', "[model]", f'path = "{model}"', "",
        "[balancer]", 'kind = "none"', "",
        "[[workers]]", 'name = "w1"', f"port = {port}", "gpu = 0", ""])


def test_f8_missing_model_path_rejected_by_config(tmp_path: Path) -> None:
    """F8 (config): a model path that does not exist is rejected with the field named."""
    cfg = tmp_path / "fleet.toml"
    cfg.write_text(_sglang_toml(tmp_path / "no-such-model", free_port()))
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert any(p.path == "model.path" and "does not exist" in p.reason
               for p in err.value.problems), err.value.problems
    out = subprocess.run([sys.executable, "-m", "console.cli", "check", "--config", str(cfg)],
                         cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode != 0 and "model.path" in out.stdout + out.stderr


def test_f8_model_path_gone_fails_preflight(tmp_path: Path) -> None:
    """F8 (preflight): the model directory vanished after the config was checked: the
    worker goes FAILED before anything is launched (no SGLang process, no restart loop,
    an alert)."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"architectures": ["Qwen3ForCausalLM"]}')
    port = free_port()
    (tmp_path / "fleet.toml").write_text(_sglang_toml(model, port))
    cfg = load_config(tmp_path / "fleet.toml")
    (model / "config.json").unlink()
    model.rmdir()
    fleet = Fleet.__new__(Fleet)  # a Fleet around an existing config (sglang engine)
    Fleet.__init__(fleet, tmp_path / "f", [WorkerDef("w1", port=port)])
    fleet.cfg = cfg
    try:
        t0 = time.monotonic()
        fleet.start(wait_ready=False)
        _, took = fleet.wait_for(lambda s: row(s, "w1")["state"] == "failed", timeout_s=20,
                                 what="w1 failed")
        alert, _ = fleet.wait_for(lambda s: next((a for a in s["alerts"]
                                                  if a["rule"] == "worker_failed"), None),
                                  timeout_s=10, what="worker_failed alert")
        time.sleep(2.0)
        w = fleet.worker("w1")
        _report("F8", failed_s=round(took, 2), alert_s=round(time.monotonic() - t0 - 2.0, 2),
                reason=w["state_reason"])
        assert w["state"] == "failed" and w["pid"] is None and w["restarts"] == 0
        assert "does not exist" in (w["state_reason"] or "") and str(model) in w["state_reason"]
        assert str(model) in alert["message"]
        assert not any(e["kind"] == "spawn" for e in fleet.events("w1"))
        assert took < 5.0  # target: alert within 1 s
    finally:
        fleet.close()


# ---------------------------------------------------------------------------- F9


def test_f9_crash_loop_backoff_and_alert(tmp_path: Path) -> None:
    """F9: a worker that fails every start is restarted at once, then after 1, 2, 4, 8 s;
    the crash-loop alert fires at the 5th failure; the healthy worker is untouched."""
    with running_fleet(tmp_path, [WorkerDef("w1", gpu=0),
                                  WorkerDef("w2", gpu=1, extra_args=("--sim-fault", "startup-fail"))],
                       start=False) as fleet:
        fleet.start(wait_ready=False)
        fleet.wait_routed(["w1"], timeout_s=60)
        w1_pid = fleet.worker("w1")["pid"]

        def looping(s: dict) -> dict | None:
            return next((a for a in s["alerts"] if a["rule"] == "crash_loop"
                         and a["worker"] == "w2"), None)

        alert, _ = fleet.wait_for(looping, timeout_s=90, what="crash_loop alert")
        w2 = fleet.worker("w2")
        events = list(reversed(fleet.events("w2")))
        # (an "exit" event may also report leftovers of the old generation being killed)
        exits = [e["time"] for e in events if e["kind"] == "exit" and " exited " in e["message"]]
        spawns = [e["time"] for e in events if e["kind"] == "spawn"]
        planned = [float(m.group(1)) for e in events if e["kind"] == "backoff"
                   for m in [re.search(r"restart in ([\d.]+) s", e["message"])] if m]
        gaps = [round(s - x, 2) for x, s in zip(exits, spawns[1:])]
        lifecycle_alert = [e for e in events if e["kind"] == "alert" and "failures" in e["message"]]
        _report("F9", planned_delays_s=planned, measured_gaps_s=gaps, failures=len(exits),
                alert=alert["message"], state=w2["state"], next_start_in_s=w2["next_start_in_s"])
        assert planned[:3] == [1.0, 2.0, 4.0], planned
        assert gaps[0] < 1.0  # first restart immediate
        for want, got in zip([0.0, *planned], gaps):
            assert want - 0.15 <= got <= want + 2.0, (want, got)
        assert 5 <= len(exits) <= 7  # alert at the 5th failure; <= 7 attempts
        assert lifecycle_alert, "no crash-loop entry in the timeline"
        assert w2["state"] in ("backoff", "starting", "crashed") and w2["state"] != "failed"
        assert fleet.worker("w1")["pid"] == w1_pid
        assert fleet.worker("w1")["restarts"] == 0


# ---------------------------------------------------------------------------- F17


def test_f17_startup_hang_killed_after_budget_with_backoff(tmp_path: Path) -> None:
    """F17: w2 hangs at every start (no warmup, every forward batch hangs from the
    first request: port open, probes time out, /health never 200). It is never
    liveness-killed while starting (no ejection, no "hung" kill, although its probes
    fail); it is killed when the startup budget (5 s) runs out and started again after
    the backoff (0 s, then 1 s); w1 is untouched."""
    budget = 5.0
    with running_fleet(tmp_path, [WorkerDef("w1", gpu=0),
                                  WorkerDef("w2", gpu=1, extra_args=("--skip-server-warmup", "--sim-fault", "hang"))],
                       start=False, startup_timeout_s=budget) as fleet:
        with StatusSampler(fleet, every_s=0.2) as sampler:
            fleet.start(wait_ready=False)
            fleet.wait_routed(["w1"], timeout_s=60)
            w1_pid = fleet.worker("w1")["pid"]

            def third_spawn(s: dict) -> bool:
                return len([e for e in fleet.events("w2") if e["kind"] == "spawn"]) >= 3

            fleet.wait_for(third_spawn, timeout_s=60, every_s=0.3, what="w2 started 3 times")
        events = list(reversed(fleet.events("w2")))
        # the budget runs from the start decision (preflight and spawn included)
        spawns = [e["time"] for e in events if e["kind"] == "transition"
                  and "→ starting" in e["message"]]
        budget_kills = [e["time"] for e in events if e["kind"] == "transition"
                        and "startup budget" in e["message"]]
        stops = [e["time"] for e in events if e["kind"] == "stop"]
        hung = [e["message"] for e in events if "hung" in e["message"]]
        rows = [row(s, "w2") for _, s in sampler.samples
                if any(w["name"] == "w2" for w in s["workers"])]
        states = sorted({r["state"] for r in rows})
        probe_errors = sorted({r["last_probe_error"] for r in rows if r["last_probe_error"]})
        to_kill = [round(k - s, 2) for s, k in zip(spawns, budget_kills)]
        gaps = [round(s - x, 2) for x, s in zip(stops, spawns[1:])]
        w1 = fleet.worker("w1")
        _report("F17", budget_s=budget, start_to_kill_s=to_kill, exit_to_respawn_s=gaps,
                states=states, liveness_kills=len(hung), probe_errors=probe_errors,
                alerts=[e["message"] for e in events if e["kind"] == "alert"][:3])
        assert len(budget_kills) >= 2, events
        for took in to_kill[:2]:
            # killed at the budget, never before (late by a few ticks on a busy box)
            assert budget - 0.2 <= took <= budget + 4.0, to_kill
        assert gaps[0] < 1.0 and 0.8 <= gaps[1] <= 3.0, gaps  # backoff 0 s, then 1 s
        assert hung == []
        # its probes did fail while it started (timeouts once the port is open; a box
        # so busy that the sim cannot even open its port in 5 s shows only refusals)
        assert probe_errors, probe_errors
        assert not {"ready", "degraded", "ejected", "failed"} & set(states), states
        assert w1["pid"] == w1_pid and w1["restarts"] == 0 and w1["state"] in ROUTED


# ---------------------------------------------------------------------------- F12


BAD_EXTRA = """
[probe]
interval_s = -1
"""


def test_f12_bad_config_rejected_running_fleet_untouched(tmp_path: Path) -> None:
    """F12: a bad fleet file (duplicate ports, fractions > 1 on one GPU, unknown key,
    negative threshold) is rejected with field paths by load_config, `embedops check`,
    `embedops up` and `embedops supervise`; the running fleet is not touched."""
    with running_fleet(tmp_path / "fleet", 2) as fleet:
        before = {w["name"]: (w["pid"], w["restarts"]) for w in fleet.status()["workers"]
                  if w["managed"]}
        good = fleet.config_path.read_text()
        bad = good.replace(f"port = {fleet.defs[1].port}", f"port = {fleet.defs[0].port}")
        bad = bad.replace("mem_fraction_static = 0.3", "mem_fraction_static = 0.7", 1)
        bad = bad.replace('name = "w2"\ngpu = 1', 'name = "w2"\ngpu = 0')  # 2 × 0.7 on GPU 0
        bad = bad.replace('[[workers]]\nname = "w2"', '[[workers]]\nname = "w2"\nbogus = 1')
        bad_path = fleet.root / "bad.toml"
        bad_path.write_text(bad + BAD_EXTRA)
        with pytest.raises(ConfigError) as err:
            load_config(bad_path)
        paths = {p.path for p in err.value.problems}
        assert any("port" in p for p in paths), paths
        assert any("bogus" in p for p in paths), paths
        assert "probe.interval_s" in paths, paths
        assert any("sum to 1.4" in p.reason for p in err.value.problems), err.value.problems
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        results = {}
        for cmd in (["check"], ["up", "--state-dir", str(fleet.sd.root)],
                    ["supervise", "--state-dir", str(fleet.sd.root)]):
            out = subprocess.run([sys.executable, "-m", "console.cli", cmd[0], "--config",
                                  str(bad_path), *cmd[1:]], cwd=REPO, env=env,
                                 capture_output=True, text=True, timeout=60, check=False)
            results[cmd[0]] = (out.returncode, (out.stdout + out.stderr)[-300:])
            assert out.returncode != 0, (cmd, out.stdout, out.stderr)
            assert "probe.interval_s" in out.stdout + out.stderr
        # a second supervisor with a GOOD config on the same state dir must refuse too
        out = subprocess.run([sys.executable, "-m", "console.cli", "supervise", "--config",
                              str(fleet.config_path), "--state-dir", str(fleet.sd.root)],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False)
        results["second supervisor"] = (out.returncode, (out.stdout + out.stderr)[-300:])
        assert out.returncode != 0 and "another supervisor" in out.stdout + out.stderr
        time.sleep(1.5)
        after = {w["name"]: (w["pid"], w["restarts"]) for w in fleet.status()["workers"]
                 if w["managed"]}
        _report("F12", problems=sorted(paths), results=results)
        assert after == before
        assert all(w["state"] in ROUTED for w in fleet.status()["workers"] if w["managed"])


# ---------------------------------------------------------------------------- F16


def test_f16_recorded_pid_reused_by_another_process(tmp_path: Path, procs: ProcessGroups) -> None:
    """F16: the state file names a pid (worker and router) that now belongs to an
    unrelated process: it is not adopted and never signalled; the worker and the router
    are started fresh."""
    decoy, signals = _decoy(procs, tmp_path)
    fleet = Fleet(tmp_path / "fleet", [WorkerDef("w1", gpu=0)])
    ctime = psutil.Process(decoy.pid).create_time()
    launch = fleet.cfg.launch_command(fleet.cfg.worker_specs()[0])
    stale = {"pid": decoy.pid, "create_time": ctime - 3600.0,
             "cmdline_hash": bprocs.cmdline_hash(launch.argv)}
    fleet.sd.ensure()
    fleet.sd.write_state({"fleet": "chaos", "workers": {"w1": {"identity": stale, "restarts": 0}},
                          "balancer": {"kind": "sglang-router", "identity": stale}})
    try:
        fleet.start()
        w = fleet.worker("w1")
        evs = fleet.events()
        _report("F16", decoy=decoy.pid, new_pid=w["pid"],
                notes=[e["message"] for e in evs if e["kind"] in ("adopt", "balancer")][:4])
        assert w["pid"] != decoy.pid and w["state"] in ROUTED
        assert any(str(decoy.pid) in e["message"] and "not adopted" in e["message"]
                   for e in evs if e["kind"] == "adopt"), evs
        router = fleet.state()["balancer"]["identity"]
        assert router and router["pid"] != decoy.pid
        _untouched(decoy, signals)
    finally:
        fleet.close()
    _untouched(decoy, signals)
