"""`embedops drill SCENARIO`: inject one fault under open-loop load and measure what the
fleet does, against the targets of reference/reliability.md §4.

Scenarios (F-numbers of the fault table):

========  =====  ==========================================================================
kill      F1     SIGKILL of a worker's process (identity verified first)
hang      F2     the worker stops completing anything (sim ``hang``; real: SIGSTOP group)
stall     F2b    embeddings never complete while ``/health`` still says 200 (sim only)
errors    F4     every embedding request answers 500 (sim only)
drain     F13    planned drain of a worker, then undrain
rollout   F14    rolling restart of every worker
leak      F6     GPU memory leak (sim only): the leak alert fires, auto-remediation drains
                 and restarts the worker before it runs out of memory
========  =====  ==========================================================================

Target fleet: the one of the current state directory (``--config`` / ``--state-dir`` /
``$EMBEDOPS_STATE_DIR``, as every client command), where a real-SGLang fleet asks for
confirmation unless ``--yes``; or, with ``--sim``, a throwaway simulated fleet (the demo's
fleet file, `console.demo.demo_config`, plus a compressed memory-trend clock and a leak
rule with auto-remediation) that the drill starts and stops itself.

Load: `backends.sim.loadgen.LoadGen` (open loop, latency from the scheduled send time)
through the balancer, ``--rate`` requests/s, from 1.5 s before the fault until the fleet
has recovered. Workers started with ``--api-key`` need the key on every request: as
``embedops bench`` and ``validate --url``, the drill sends ``Authorization: Bearer
$EMBEDOPS_API_KEY`` when that variable is set. Times come from the supervisor's
timeline (wall clock, same host):

* detection: first event about the victim after the fault (exit seen, failed probe,
  alert pending);
* ejection: the victim removed from the balancer;
* restart decided: the victim's transition to ``restarting`` / ``crashed`` / ``stopping``;
* recovery: the victim routed again with a new process (drain: undrained and routed).

Output: a table, or with ``--json`` one object (`SCHEMA`); exit 0 when every target was
met, 1 otherwise or when the drill could not run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from backends import procs
from backends.sim.loadgen import BackgroundLoad, LoadReport, LoadSpec
from console.control import SyncControlClient
from console.statedir import StateDir

SCHEMA = 1
WARMUP_S = 1.5
"""Load before the fault (the baseline)."""
TAIL_S = 1.0
"""Load after recovery (requests in flight at recovery finish inside the run)."""
ROUTED = ("ready", "degraded")
SIM_TREND_SCALE = 120
"""The throwaway fleet's `metrics.trend_time_scale`: one real second is two minutes of
memory trend, so the leak rule (full in < 6 h) fires within seconds of a fast leak."""
LEAK_FILL_S = 150.0
"""The leak scenario leaks at (free memory of the victim's card) / this: the card would be
full after this many real seconds (5 h of trend time on the throwaway fleet)."""


@dataclass(frozen=True)
class Scenario:
    """One drill: its fault-table number, what it does, and its targets."""

    fault: str
    what: str
    targets: dict[str, float]
    """Figure name → the largest acceptable value (``errors`` 0: no client error)."""
    sim_only: bool = False


SCENARIOS: dict[str, Scenario] = {
    "kill": Scenario("F1", "kill -9 of a worker process under load",
                     {"detection_s": 0.5, "errors": 0}),
    "hang": Scenario("F2", "a worker stops completing requests (hung scheduler)",
                     {"ejection_s": 3.0, "restart_decided_s": 8.0, "errors": 0}),
    "stall": Scenario("F2b", "embeddings never complete while /health says 200",
                      {"ejection_s": 3.0, "restart_decided_s": 8.0, "errors": 0},
                      sim_only=True),
    "errors": Scenario("F4", "every embedding request on one worker answers 500",
                       {"errors": 0}, sim_only=True),
    "drain": Scenario("F13", "planned drain of one worker under load, then undrain",
                      {"errors": 0}),
    "rollout": Scenario("F14", "rolling restart of every worker under load",
                        {"errors": 0}),
    "leak": Scenario("F6", "GPU memory leak: trend alert, then planned drain + restart",
                     {"errors": 0}, sim_only=True),
}


class DrillError(Exception):
    """The drill cannot run (no fleet, a worker missing, refused): one clear line."""


# ------------------------------------------------------------------ options


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``embedops drill`` (the fleet options are added by the caller)."""
    p.add_argument("scenario", choices=sorted(SCENARIOS), help="the fault to inject")
    p.add_argument("--sim", action="store_true",
                   help="run against a throwaway simulated fleet (3 workers, 2 cards) that "
                        "the drill starts and stops (in --state-dir if given, else a "
                        "temporary directory)")
    p.add_argument("--yes", "-y", action="store_true",
                   help="do not ask before injecting a fault into a real-SGLang fleet")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--rate", type=float, default=40.0,
                   help="open-loop load through the balancer, requests/s (default 40); "
                        "sent with the bearer key $EMBEDOPS_API_KEY when set")
    p.add_argument("--worker", default=None,
                   help="the victim (default: the first routed worker; leak: the one with "
                        "the most free card memory)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="longest wait for the fleet to recover, seconds (default 60)")


# ------------------------------------------------------------------ load


class _Load(BackgroundLoad):
    """The drill's load: a failure of the generator is a `DrillError`."""

    def stop(self, timeout_s: float = 60.0) -> LoadReport:
        try:
            return super().stop(timeout_s)
        except Exception as exc:
            raise DrillError(f"the load generator failed: {exc!r}") from exc


def load_figures(report: LoadReport) -> dict[str, Any]:
    """The load part of the result."""
    return {"rate": report.rate_target, "sent": report.sent, "ok": report.ok,
            "errors": report.error_total,
            "errors_by_kind": {k: v for k, v in report.errors.items() if v},
            "p50_ms": report.latency_ms.get("p50"), "p99_ms": report.latency_ms.get("p99"),
            "max_ms": report.latency_ms.get("max"), "error_samples": report.error_samples[:5]}


# ------------------------------------------------------------------ the fleet


class _Fleet:
    """The drill's view of a running fleet, through its control socket."""

    def __init__(self, sd: StateDir) -> None:
        self.sd = sd
        self.client = SyncControlClient(sd.socket_path, timeout=30.0)

    def status(self) -> dict[str, Any]:
        return dict(self.client.get("/v1/status"))

    def events(self) -> list[dict[str, Any]]:
        """Timeline events, oldest first."""
        return list(reversed(self.client.get("/v1/events", params={"limit": 500})["events"]))

    def post(self, path: str, body: Any = None, *, wait: bool = True) -> Any:
        return self.client.request("POST", path, json=body or {},
                                   params={"wait": "1"} if wait else None, timeout=None)[1]

    def fault(self, worker: str, faults: dict[str, Any]) -> None:
        out = self.post(f"/v1/sim/{worker}/fault", faults)
        if out.get("outcome") != "ok":
            raise DrillError(f"{worker}: could not set {faults}: {out.get('message')}")

    def identity(self, worker: str) -> procs.ProcessIdentity:
        raw = ((self.sd.read_state().get("workers") or {}).get(worker) or {}).get("identity")
        if not raw:
            raise DrillError(f"{worker}: no process recorded in the state file")
        ident = procs.ProcessIdentity.from_json(raw)
        if not procs.verify(ident):
            raise DrillError(f"{worker}: recorded pid {ident.pid} does not verify (pid, start "
                             "time, command line); no signal sent")
        return ident

    def wait(self, cond: Callable[[dict[str, Any]], bool], timeout_s: float,
             samples: list[dict[str, Any]] | None = None) -> float | None:
        """Poll until `cond(snapshot)`; the wall time it held, or None at the timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            snap = self.status()
            if samples is not None:
                samples.append(snap)
            if cond(snap):
                return time.time()
            time.sleep(0.1)
        return None


def _row(snap: dict[str, Any], name: str) -> dict[str, Any]:
    for w in snap["workers"]:
        if w["name"] == name:
            return dict(w)
    raise DrillError(f"no worker named {name!r} in the fleet")


def _routed_new(name: str, old_pid: int | None) -> Callable[[dict[str, Any]], bool]:
    def cond(snap: dict[str, Any]) -> bool:
        r = _row(snap, name)
        return r["state"] in ROUTED and r["routed"] and r["pid"] not in (None, old_pid)
    return cond


def _all_routed(snap: dict[str, Any]) -> bool:
    managed = [w for w in snap["workers"] if w["managed"]]
    return bool(managed) and all(w["state"] in ROUTED and w["routed"] for w in managed)


def _pick_victim(snap: dict[str, Any], wanted: str | None, scenario: str) -> str:
    managed = [w for w in snap["workers"] if w["managed"]]
    if wanted is not None:
        row = _row(snap, wanted)
        if not row["managed"]:
            raise DrillError(f"{wanted} is not managed by the supervisor")
        return wanted
    routed = sorted((w for w in managed if w["state"] in ROUTED and w["routed"]),
                    key=lambda w: w["name"])
    if not routed:
        raise DrillError("no routed worker to inject a fault into")
    if scenario == "leak":
        return max(routed, key=lambda w: _card_free_mib(snap, w) or 0)["name"]
    return str(routed[0]["name"])


def _card_free_mib(snap: dict[str, Any], w: dict[str, Any]) -> float | None:
    gpu = w["gpu"] if w["gpu"] is not None else 0
    for g in snap["gpus"]:
        if g["index"] == gpu and g["used_mib"] is not None and g["total_mib"]:
            return float(g["total_mib"] - g["used_mib"])
    return None


def _first(events: list[dict[str, Any]], after: float, pred: Callable[[dict[str, Any]], bool]
           ) -> dict[str, Any] | None:
    return next((e for e in events if e["time"] >= after and pred(e)), None)


def _since(event: dict[str, Any] | None, t0: float) -> float | None:
    return None if event is None else round(event["time"] - t0, 3)


def _to_state(e: dict[str, Any], *targets: str) -> bool:
    return e["kind"] == "transition" and any(f"→ {t}:" in e["message"] for t in targets)


# ------------------------------------------------------------------ scenarios


@dataclass
class _Run:
    """What one scenario measured."""

    worker: str | None
    t_fault: float
    figures: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _inject(fleet: _Fleet, scenario: str, victim: str, sim: bool, snap: dict[str, Any]
            ) -> Callable[[], None]:
    """The action that injects the fault (a callable, so its time can be taken)."""
    if scenario == "kill":
        ident = fleet.identity(victim)
        return lambda: os.kill(ident.pid, signal.SIGKILL)
    if scenario == "hang":
        if sim:
            return lambda: fleet.fault(victim, {"hang": True})
        ident = fleet.identity(victim)
        return lambda: os.killpg(ident.pid, signal.SIGSTOP)  # a group leader (own session)
    if scenario == "stall":
        return lambda: fleet.fault(victim, {"stall": True})
    if scenario == "errors":
        return lambda: fleet.fault(victim, {"error_rate": 1.0})
    if scenario == "leak":
        row = _row(snap, victim)
        rate = max(50.0, round((_card_free_mib(snap, row) or 40000.0) / LEAK_FILL_S))
        return lambda: fleet.fault(victim, {"leak_mib_s": rate})
    raise AssertionError(scenario)


def _fault_drill(fleet: _Fleet, scenario: str, victim: str, sim: bool, timeout_s: float
                 ) -> _Run:
    snap = fleet.status()
    old_pid = _row(snap, victim)["pid"]
    inject = _inject(fleet, scenario, victim, sim, snap)
    t_fault = time.time()
    inject()
    run = _Run(victim, t_fault)
    samples: list[dict[str, Any]] = []
    back = fleet.wait(_routed_new(victim, old_pid), timeout_s, samples)
    run.figures["recovery_s"] = None if back is None else round(back - t_fault, 3)
    if back is None:
        run.notes.append(f"{victim} was not routed with a new process within {timeout_s:g} s")
        if scenario in ("stall", "errors", "hang", "leak") and sim:
            with contextlib.suppress(Exception):
                fleet.fault(victim, {"clear": True})
    run.figures["states_seen"] = sorted({_row(s, victim)["state"] for s in samples})
    return run


def _drain_drill(fleet: _Fleet, victim: str, timeout_s: float) -> _Run:
    t_fault = time.time()
    run = _Run(victim, t_fault)
    out = fleet.post(f"/v1/workers/{victim}/drain")
    run.figures["drain_s"] = out.get("duration_s")
    run.figures["drain_outcome"] = out.get("outcome")
    if out.get("outcome") != "ok":
        run.notes.append(f"drain: {out.get('outcome')}: {out.get('message')}")
    t_undrain = time.time()
    fleet.post(f"/v1/workers/{victim}/undrain")
    back = fleet.wait(lambda s: _row(s, victim)["state"] in ROUTED and _row(s, victim)["routed"],
                      timeout_s)
    run.figures["recovery_s"] = None if back is None else round(back - t_undrain, 3)
    return run


def _rollout_drill(fleet: _Fleet, timeout_s: float) -> _Run:
    t_fault = time.time()
    run = _Run(None, t_fault)
    samples: list[dict[str, Any]] = []
    stop = threading.Event()

    def sample() -> None:
        with SyncControlClient(fleet.sd.socket_path, timeout=10.0) as c:
            while not stop.is_set():
                with contextlib.suppress(Exception):
                    samples.append(c.get("/v1/status"))
                stop.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        out = fleet.post("/v1/rollout")
    finally:
        stop.set()
        sampler.join(15)
    run.figures["rollout_s"] = out.get("duration_s")
    run.figures["rollout_outcome"] = out.get("outcome")
    if out.get("outcome") != "ok":
        run.notes.append(f"rollout: {out.get('outcome')}: {out.get('message')}")
    managed = len([w for w in fleet.status()["workers"] if w["managed"]])
    routed = [sum(1 for w in s["workers"] if w["managed"] and w["routed"]) for s in samples]
    run.figures["workers"] = managed
    run.figures["min_routed"] = min(routed) if routed else None
    back = fleet.wait(_all_routed, timeout_s)
    run.figures["recovery_s"] = None if back is None else round(back - t_fault, 3)
    return run


def _timeline(run: _Run, events: list[dict[str, Any]], scenario: str) -> None:
    """Detection, ejection and restart-decision times from the supervisor's events."""
    if run.worker is None:
        return
    mine = [e for e in events if e["worker"] == run.worker]
    t0 = run.t_fault
    if scenario not in ("drain", "rollout"):
        run.figures["detection_s"] = _since(_first(mine, t0, lambda e: e["kind"] in (
            "exit", "probe", "transition", "alert")), t0)
    run.figures["ejection_s"] = _since(_first(
        mine, t0, lambda e: e["kind"] == "balancer" and "removed" in e["message"]), t0)
    if scenario not in ("drain", "rollout"):
        run.figures["restart_decided_s"] = _since(_first(
            mine, t0, lambda e: _to_state(e, "restarting", "crashed", "stopping", "draining")
        ), t0)
    if scenario == "leak":
        pending = _first(mine, t0, lambda e: e["kind"] == "alert" and " pending" in e["message"])
        firing = _first(mine, t0, lambda e: e["kind"] == "alert" and " firing" in e["message"])
        run.figures["alert"] = None if firing is None else firing["message"]
        run.figures["alert_pending_s"] = _since(pending, t0)
        run.figures["alert_firing_s"] = _since(firing, t0)
        run.figures["remediated"] = _first(mine, t0, lambda e: e["kind"] == "remediation"
                                           ) is not None
        run.figures["crashed"] = _first(mine, t0, lambda e: e["kind"] == "exit") is not None


def _verdict(figures: dict[str, Any], targets: dict[str, float]) -> tuple[dict[str, Any], bool]:
    checks: dict[str, Any] = {}
    for name, limit in targets.items():
        value = figures["load"]["errors"] if name == "errors" else figures.get(name)
        checks[name] = {"target": limit, "value": value,
                        "met": value is not None and value <= limit}
    passed = all(c["met"] for c in checks.values()) and figures.get("recovery_s") is not None
    if figures.get("crashed"):
        passed = False
    return checks, passed


# ------------------------------------------------------------------ the throwaway fleet


SIM_ALERTS = f"""
# added by `embedops drill --sim`: a compressed memory-trend clock and a leak rule that
# restarts the worker by itself (the seed rule as shipped)
[metrics]
trend_time_scale = {SIM_TREND_SCALE}

[[alerts]]
name = "gpu_mem_high_and_slow"
when = [
  {{ metric = "gpu_memory_pct", op = ">", value = 92 }},
  {{ metric = "p95_latency_s", op = ">", value = 1.2 }},
]
for = "5m"
severity = "critical"
remediation = "restart"

[[alerts]]
name = "gpu_memory_leak"
when = [{{ metric = "memory_time_to_full_h", op = "<", value = 6 }}]
for = "5s"
summary = "GPU memory keeps growing: full in under 6 h"
auto_remediate = true
remediation = "restart"
"""


SIM_STARTUP = (("load_s = 2.0", "load_s = 0.5"), ("warmup_s = 1.0", "warmup_s = 0.3"))
"""The throwaway fleet's sim workers load faster than the demo's (shorter drills)."""


def sim_fleet_toml(workers: int = 3, gpus: int = 2) -> str:
    """The throwaway fleet's file: the demo's (`console.demo.demo_config`), faster sim
    startup, plus `SIM_ALERTS`."""
    from console.demo import _free_ports, demo_config

    text = demo_config(workers, gpus, _free_ports(2 + workers)).replace(
        'name = "demo"', 'name = "drill"')
    for old, new in SIM_STARTUP:
        text = text.replace(old, new)
    return text + SIM_ALERTS


@contextlib.contextmanager
def sim_fleet(root: str | None = None, *, quiet: bool = True) -> Iterator[StateDir]:
    """A throwaway simulated fleet under a detached supervisor, in `root` (kept) or a
    temporary directory (removed); its workers and balancer are stopped on exit."""
    from console import config as fleet_config
    from console.commands import _wait_ready
    from console.daemon import FatalError, spawn_supervisor, supervisor_answers
    from console.demo import _stop_fleet

    tmp = None if root else tempfile.mkdtemp(prefix="embedops-drill-")
    sd = StateDir(root or tmp)  # type: ignore[arg-type]
    ident: procs.ProcessIdentity | None = None
    started = False
    try:
        sd.ensure()
        if supervisor_answers(sd):
            raise DrillError(f"a fleet already runs in {sd.root}: --sim starts its own; "
                             "drop --sim to drill that fleet")
        path = sd.root / "fleet.toml"
        path.write_text(sim_fleet_toml())
        fleet_config.load_config(path)  # a broken file fails here, before anything starts
        started = True
        try:
            ident = spawn_supervisor(path, sd)
        except FatalError as exc:
            raise DrillError(str(exc)) from exc
        with contextlib.redirect_stdout(sys.stderr if quiet else sys.stdout):
            ready = _wait_ready(SyncControlClient(sd.socket_path, timeout=10.0), 90)
        if ready != 0:
            raise DrillError(f"the simulated fleet did not come up; see {sd.supervisor_log}")
        yield sd
    finally:
        if started:
            _stop_fleet(sd)
        if ident is not None:
            deadline = time.monotonic() + 10.0
            while procs.returncode(ident) is None and time.monotonic() < deadline:
                time.sleep(0.1)  # reap our supervisor child
            if procs.verify(ident):  # it did not stop: end it
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(ident.pid, signal.SIGKILL)
                procs.returncode(ident)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------ running a drill


def drill(sd: StateDir, scenario: str, *, sim: bool, rate: float, worker: str | None,
          timeout_s: float, progress: Callable[[str], None],
          api_key: str | None = None) -> dict[str, Any]:
    """Run `scenario` against the fleet of `sd`; returns the result object. `api_key`:
    bearer key of the fleet's workers (sent with the load and the model lookup)."""
    spec = SCENARIOS[scenario]
    fleet = _Fleet(sd)
    snap = fleet.status()
    if spec.sim_only and snap["engine"] != "sim":
        raise DrillError(f"{scenario} needs simulated workers (its fault is a sim switch); "
                         "use --sim")
    if fleet.wait(_all_routed, 30) is None:
        raise DrillError("not every worker is routed; the drill starts from a healthy fleet")
    snap = fleet.status()
    url = snap["balancer"]["url"]
    if not url:
        raise DrillError("this fleet has no balancer to send the load through")
    from console.bench import discover_model

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(timeout=5.0, headers=headers) as http:
        model = discover_model(http, [url]) or "default"
    victim = None if scenario == "rollout" else _pick_victim(snap, worker, scenario)
    progress(f"[drill] {scenario} ({spec.fault}) on fleet {snap['fleet']}"
             + (f", worker {victim}" if victim else "") + f", {rate:g} req/s through {url}")
    load = _Load(LoadSpec(url=url, rate=rate, model=model, deadline_s=15.0, vary_text=True,
                          max_connections=64, api_key=api_key)).start()
    try:
        time.sleep(WARMUP_S)
        if scenario == "drain":
            assert victim is not None
            run = _drain_drill(fleet, victim, timeout_s)
        elif scenario == "rollout":
            run = _rollout_drill(fleet, timeout_s)
        else:
            assert victim is not None
            run = _fault_drill(fleet, scenario, victim, snap["engine"] == "sim", timeout_s)
        time.sleep(TAIL_S)
    finally:
        report = load.stop()
    _timeline(run, fleet.events(), scenario)
    figures: dict[str, Any] = {**run.figures, "load": load_figures(report)}
    checks, passed = _verdict(figures, spec.targets)
    return {"schema": SCHEMA, "scenario": scenario, "fault": spec.fault, "what": spec.what,
            "fleet": snap["fleet"], "engine": snap["engine"], "throwaway": sim,
            "worker": run.worker, "figures": figures, "targets": checks, "passed": passed,
            "notes": run.notes}


def _fmt_s(value: Any) -> str:
    return "-" if value is None else f"{value:.2f} s"


def format_result(result: dict[str, Any]) -> str:
    """The human table of a result."""
    f = result["figures"]
    load = f["load"]
    head = (f"drill {result['scenario']} ({result['fault']}: {result['what']}) on fleet "
            f"{result['fleet']}" + (f", worker {result['worker']}" if result["worker"] else ""))
    lines = [head, f"  requests sent      {load['sent']} at {load['rate']:g}/s, ok {load['ok']}, "
                   f"client errors {load['errors']}"
                   + (f" {load['errors_by_kind']}" if load["errors_by_kind"] else "")]
    for key, label in (("detection_s", "detection"), ("ejection_s", "ejection"),
                       ("restart_decided_s", "restart decided"), ("drain_s", "drain"),
                       ("rollout_s", "rollout"), ("alert_firing_s", "alert firing"),
                       ("recovery_s", "recovery")):
        if key in f:
            target = result["targets"].get(key)
            mark = "" if target is None else (
                f"   target ≤ {target['target']:g} s: {'ok' if target['met'] else 'MISSED'}")
            lines.append(f"  {label:<18} {_fmt_s(f[key])}{mark}")
    if "min_routed" in f:
        lines.append(f"  capacity           ≥ {f['min_routed']} of {f['workers']} routed")
    if f.get("alert"):
        lines.append(f"  alert              {f['alert']}")
    if "errors" in result["targets"]:
        met = result["targets"]["errors"]["met"]
        lines.append(f"  client errors      {load['errors']}   target 0: "
                     f"{'ok' if met else 'MISSED'}")
    lines.append(f"  latency            p50 {load['p50_ms']} ms, p99 {load['p99_ms']} ms, "
                 f"max {load['max_ms']} ms")
    lines += [f"  note: {n}" for n in result["notes"]]
    lines.append("PASSED" if result["passed"] else "FAILED (a target was missed)")
    return "\n".join(lines)


def _confirm_real(snap: dict[str, Any], scenario: str) -> bool:
    prompt = (f"drill {scenario} injects a real fault into fleet {snap['fleet']} "
              f"(engine {snap['engine']}); type the fleet name to confirm: ")
    try:
        answer = input(prompt)
    except EOFError:
        print("\nembedops: no answer on stdin; nothing done (pass --yes to skip the question)",
              file=sys.stderr)
        return False
    if answer.strip() != snap["fleet"]:
        print("embedops: not confirmed; nothing done", file=sys.stderr)
        return False
    return True


def run(args: argparse.Namespace, state_dir: Callable[[], StateDir]) -> int:
    """``embedops drill``: `state_dir` finds the current fleet (unused with ``--sim``)."""
    if not args.rate > 0:
        raise DrillError("--rate must be > 0")

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    def go(sd: StateDir) -> dict[str, Any]:
        return drill(sd, args.scenario, sim=args.sim, rate=args.rate, worker=args.worker,
                     timeout_s=args.timeout, progress=progress,
                     api_key=os.environ.get("EMBEDOPS_API_KEY") or None)

    if args.sim:
        progress("[drill] starting a throwaway simulated fleet...")
        with sim_fleet(getattr(args, "state_dir", None)) as sd:
            result = go(sd)
    else:
        sd = state_dir()
        with SyncControlClient(sd.socket_path, timeout=10.0) as c:
            snap = c.get("/v1/status")
        if snap["engine"] != "sim" and not args.yes and not _confirm_real(snap, args.scenario):
            return 1
        result = go(sd)
    print(json.dumps(result, indent=2) if args.json else format_result(result), flush=True)
    return 0 if result["passed"] else 1


__all__ = ["SCENARIOS", "DrillError", "Scenario", "add_arguments", "drill", "format_result",
           "load_figures", "run", "sim_fleet"]
