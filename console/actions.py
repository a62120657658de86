"""Operator actions: drain, undrain, restart, kill, retune, rollout, adopt, add, remove,
validate, silence and sim faults.

Each action is ``async (supervisor, worker runtime | None, args) -> (outcome, message)``
and is started through `Supervisor.start_action`, which takes care of "one action per
worker", the audit log and the timeline. Values are validated before anything changes;
an `ActionError` refuses the action with a message naming the field and the reason.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import httpx

from backends import procs
from backends.sglang import effect_warnings, parse_launch_argv
from console.model import Engine, WorkerSpec, WorkerState
from console.policy import ROUTED_STATES, Aborted, Blocked, next_rollout_step
from console.runtime import WorkerRuntime
from console.supervisor import ActionError

if TYPE_CHECKING:
    from console.supervisor import Supervisor

S = WorkerState
Outcome = tuple[str, str]
ActionBody = Callable[["Supervisor", WorkerRuntime | None, dict[str, Any]], Awaitable[Outcome]]

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
RETUNE_FIELDS: dict[str, tuple[str, type]] = {
    "mem_fraction_static": ("--mem-fraction-static", float),
    "cuda_graph": ("--cuda-graph-backend-prefill", bool),
    "max_running_requests": ("--max-running-requests", int),
    "chunked_prefill_size": ("--chunked-prefill-size", int),
}


def _need(w: WorkerRuntime | None) -> WorkerRuntime:
    if w is None:
        raise ActionError("this action needs a worker", status=400, code="bad_args")
    return w


def _progress(sup: Supervisor, w: WorkerRuntime) -> None:
    """Describe where the worker stands, for its row in the fleet table."""
    if w.action is None:
        return
    state = w.state
    if state is S.DRAINING:
        if not w.action.progress.startswith("draining"):
            w.action.progress = "draining"
        return
    if state is S.STARTING:
        since = w.lifecycle.status(sup.clock()).since
        elapsed = int(sup.clock() - since)
        w.action.progress = f"starting {elapsed // 60}:{elapsed % 60:02d}"
    else:
        w.action.progress = state.value


async def _wait(sup: Supervisor, w: WorkerRuntime, done: Callable[[], bool],
                timeout_s: float) -> bool:
    deadline = sup.clock() + timeout_s
    while not done():
        _progress(sup, w)
        if sup.clock() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def _restart_budget(sup: Supervisor, w: WorkerRuntime) -> float:
    return (sup.policy.drain_timeout_s + sup.cfg.restart.stop_grace_s
            + 2 * w.lifecycle.startup_budget() + 30)


async def drain(sup: Supervisor, w: WorkerRuntime | None, args: dict[str, Any]) -> Outcome:
    """Take the worker out of the balancer and wait until nothing runs on it."""
    w = _need(w)
    await sup._apply(w, w.lifecycle.begin_drain(sup.clock()))
    await _wait(sup, w, lambda: w.state is not S.DRAINING, sup.policy.drain_timeout_s + 10)
    if w.state is S.DRAINED:
        return "ok", "drained: out of the balancer, 0 in flight"
    return "failed", f"drain ended in state {w.state.value}"


async def undrain(sup: Supervisor, w: WorkerRuntime | None, args: dict[str, Any]) -> Outcome:
    """Put a drained worker back into the balancer."""
    w = _need(w)
    await sup._apply(w, w.lifecycle.undrain(sup.clock()))
    if _serving(sup, w):
        return "ok", "back in the balancer"
    return "ok", f"undrained; {w.state.value} until probes pass"


async def restart(sup: Supervisor, w: WorkerRuntime | None, args: dict[str, Any]) -> Outcome:
    """Planned restart: drain → stop → start → ready → back in the balancer."""
    w = _need(w)
    old = w.identity
    await sup._apply(w, w.lifecycle.begin_restart(sup.clock()))
    ok = await _wait(sup, w, lambda: _settled(sup, w, old), _restart_budget(sup, w))
    if ok and _serving(sup, w):
        pid = w.identity.pid if w.identity else "?"
        return "ok", f"restarted: pid {pid}, ready and routed"
    return "failed", f"restart did not complete: {w.state.value} ({w.lifecycle.status(sup.clock()).reason})"


def _serving(sup: Supervisor, w: WorkerRuntime) -> bool:
    """Ready and listed by the balancer: clients reach it (ready alone is not enough:
    sglang-router registers asynchronously)."""
    return w.state in ROUTED_STATES and (sup.balancer is None or w.in_balancer)


def _settled(sup: Supervisor, w: WorkerRuntime, old: procs.ProcessIdentity | None) -> bool:
    """A restart is over: a new generation is routed, or it failed."""
    if w.state in (S.FAILED, S.STOPPED):
        return True
    return _serving(sup, w) and w.identity is not None and w.identity != old


async def kill(sup: Supervisor, w: WorkerRuntime | None, args: dict[str, Any]) -> Outcome:
    """SIGKILL the worker's process group now; it stays stopped."""
    w = _need(w)
    if args.get("confirm") is not True:
        raise ActionError("kill needs {\"confirm\": true}", status=400, code="confirm")
    await sup._apply(w, w.lifecycle.kill(sup.clock()))
    await _wait(sup, w, lambda: w.state is S.STOPPED, 30)
    if w.state is S.STOPPED:
        return "ok", "killed; the worker stays stopped (restart brings it back)"
    return "failed", f"kill ended in state {w.state.value}"


def retune_spec(sup: Supervisor, w: WorkerRuntime, args: dict[str, Any]) -> WorkerSpec:
    """The worker's spec with the requested settings, validated; `ActionError` names the
    field and the valid range."""
    changes: dict[str, Any] = {}
    unknown = sorted(set(args) - set(RETUNE_FIELDS))
    if unknown:
        raise ActionError(f"unknown setting(s) {unknown}; retune accepts "
                          f"{sorted(RETUNE_FIELDS)}", status=400, code="bad_args")
    if not args:
        raise ActionError("nothing to retune: give at least one setting", status=400,
                          code="bad_args")
    for name, value in args.items():
        _flag, kind = RETUNE_FIELDS[name]
        if kind is bool:
            if not isinstance(value, bool):
                raise ActionError(f"{name}: expected true or false", status=400, code="bad_args")
        elif kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or not 0 < value < 1:
                raise ActionError(f"{name}: {value!r} is outside the valid range (0, 1)",
                                  status=400, code="bad_args")
            value = float(value)
        else:
            low = -1 if name == "chunked_prefill_size" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low \
                    or (name == "chunked_prefill_size" and value == 0):
                raise ActionError(f"{name}: {value!r} must be an integer ≥ {low}"
                                  + (" (-1 disables chunking, 0 is not allowed)"
                                     if low < 0 else ""), status=400, code="bad_args")
        changes[name] = value
    new = replace(w.spec, **changes)
    if new == w.spec:
        raise ActionError("the worker already runs with these settings", status=400,
                          code="no_change")
    if "mem_fraction_static" in changes and new.gpu is not None:
        total = sum((o.spec.mem_fraction_static or 0.0) for o in sup.workers.values()
                    if o is not w and o.spec.gpu == new.gpu) + (new.mem_fraction_static or 0.0)
        if total > 1.0 + 1e-9:
            raise ActionError(f"mem_fraction_static: GPU {new.gpu} would be over-committed "
                              f"(sum of fractions {total:.2f} > 1)", status=400, code="bad_args")
    catalogue = sup.cfg.catalogue or None
    if catalogue is not None:
        argv = list(sup.cfg.launch_command(new).argv)
        problems = [p for p in catalogue.check_args(argv[argv.index("--is-embedding"):])
                    if getattr(p, "severity", "error") == "error"]
        if problems:
            raise ActionError("; ".join(str(p) for p in problems), status=400, code="bad_flag")
    return new


async def retune(sup: Supervisor, w: WorkerRuntime | None, args: dict[str, Any]) -> Outcome:
    """Restart with new settings; roll back to the old ones if it does not become ready."""
    w = _need(w)
    if w.raw_argv:
        raise ActionError(f"{w.name} runs a verbatim adopted command line; add it to the "
                          "config file to retune it", status=400, code="bad_args")
    new = retune_spec(sup, w, args)
    old_spec, old = w.spec, w.identity
    warnings = effect_warnings(new, sup.cfg.sglang_version)
    w.previous_spec = old_spec
    w.spec = new
    w.rollback_reason = None
    try:
        await sup._apply(w, w.lifecycle.begin_restart(sup.clock(), trial=True))
    except Exception:
        w.spec, w.previous_spec = old_spec, None
        raise
    await _wait(sup, w, lambda: _settled(sup, w, old) and w.spec in (new, old_spec)
                and (w.spec == new or w.previous_spec is None), _restart_budget(sup, w) * 2)
    changed = ", ".join(f"{k}={v}" for k, v in args.items())
    note = ("; note: " + "; ".join(warnings)) if warnings else ""
    if _serving(sup, w) and w.spec == new:
        return "ok", f"retuned {changed}: ready with the new settings{note}"
    if w.spec == old_spec:
        ready = "ready again" if w.state in ROUTED_STATES else f"now {w.state.value}"
        reason = w.rollback_reason or w.lifecycle.status(sup.clock()).reason
        return "rolled_back", (f"{changed} did not become ready ({reason}); rolled back to "
                               f"the previous settings, {ready}")
    return "failed", f"retune ended in state {w.state.value}"


async def rollout(sup: Supervisor, w: WorkerRuntime | None, args: dict[str, Any]) -> Outcome:
    """Rolling restart of every serving worker, one at a time, never below N−1 routed;
    stops at the first failure."""
    members = [x for x in sup.workers.values() if x.lifecycle.status(sup.clock()).serving]
    names = [x.name for x in members]
    started: list[str] = []
    failed: list[str] = []
    deadline = sup.clock() + sum(_restart_budget(sup, x) for x in members) + 60
    soak = float(args.get("soak_s", 0.0))
    while sup.clock() < deadline:
        states = {n: sup.workers[n].state for n in names if n in sup.workers}
        ready_since = {n: since for n in states
                       if (since := sup.workers[n].lifecycle.ready_since) is not None}
        step = next_rollout_step(states, started, failed=failed, ready_since=ready_since,
                                 now=sup.clock(), soak_s=soak)
        if step is None:
            return "ok", f"rolled {len(started)} workers, one at a time"
        if isinstance(step, Aborted):
            return "failed", step.reason
        if isinstance(step, Blocked):
            await asyncio.sleep(0.1)
            continue
        target = sup.workers[step]
        started.append(step)
        sup._event("rollout", step, f"rollout step {len(started)}/{len(names)}")
        from console.runtime import ActionProgress
        target.action = ActionProgress("rollout", "rollout", time.time())
        try:
            outcome, message = await restart(sup, target, {})
        finally:
            target.action = None
        if outcome != "ok":
            failed.append(step)
            return "failed", f"stopped at {step}: {message}"
    return "failed", "rollout did not finish within its time budget"


async def adopt(sup: Supervisor, w: WorkerRuntime | None, args: dict[str, Any]) -> Outcome:
    """Bring an unmanaged SGLang server under supervision: drain, stop, relaunch with
    the same command line."""
    pid = args.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool):
        raise ActionError("adopt needs {\"pid\": <launcher pid>}", status=400, code="bad_args")
    found = sup.unmanaged.get(pid)
    if found is None or found.identity is None:
        raise ActionError(f"pid {pid} is not an unmanaged SGLang server seen by this "
                          "supervisor", status=404, code="not_found")
    argv = procs.read_argv(found.identity)
    if not argv:
        raise ActionError(f"cannot read the command line of pid {pid}", status=409)
    name = args.get("name") or f"adopted-{found.spec.port}"
    if not NAME_RE.match(name) or name in sup.workers:
        raise ActionError(f"name {name!r} is invalid or taken", status=400, code="bad_args")
    settings = parse_launch_argv(argv)
    mem = settings.get("mem_fraction_static")
    spec = replace(found.spec, name=name, api_key=settings.get("api_key") or None,  # type: ignore[arg-type]
                   mem_fraction_static=mem if isinstance(mem, float) else None)
    env = (("CUDA_VISIBLE_DEVICES", str(spec.gpu)),) if spec.gpu is not None else ()
    spec = replace(spec, env=env)
    sup.unmanaged.pop(pid, None)
    task = sup._probe_tasks.pop(found.name, None)
    if task:
        task.cancel()
    runtime = sup._add_adopted(spec, found.identity, tuple(argv))
    await sup._apply(runtime, runtime.lifecycle.adopt(sup.clock()))
    old = runtime.identity
    ok = await _wait(sup, runtime, lambda: _settled(sup, runtime, old), _restart_budget(sup, runtime))
    if ok and _serving(sup, runtime):
        return "ok", f"adopted pid {pid} as {name}: relaunched under supervision"
    return "failed", f"adoption of pid {pid} ended in state {runtime.state.value}"


async def add(sup: Supervisor, w: WorkerRuntime | None, args: dict[str, Any]) -> Outcome:
    """Add a worker (fleet defaults apply) and start it."""
    spec = sup.new_worker_spec(args)
    runtime = sup._add_runtime(spec, config_spec=None, saved=None)
    sup._update_gpu_urls()
    sup._ensure_probe_task(runtime)
    await sup._apply(runtime, runtime.lifecycle.start(sup.clock()))
    ok = await _wait(sup, runtime, lambda: _serving(sup, runtime)
                     or runtime.state in (S.FAILED, S.BACKOFF), _restart_budget(sup, runtime))
    if ok and _serving(sup, runtime):
        return "ok", f"added {spec.name} on port {spec.port}: ready and routed"
    return "failed", f"{spec.name} added but {runtime.state.value}"


async def remove(sup: Supervisor, w: WorkerRuntime | None, args: dict[str, Any]) -> Outcome:
    """Drain and stop a worker, then forget it."""
    w = _need(w)
    if w.state not in (S.STOPPED, S.FAILED):
        await sup._apply(w, w.lifecycle.begin_stop(sup.clock()))
        await _wait(sup, w, lambda: w.state in (S.STOPPED, S.FAILED), _restart_budget(sup, w))
    if w.state not in (S.STOPPED, S.FAILED):
        return "failed", f"could not stop {w.name} ({w.state.value}); not removed"
    sup._forget(w)
    return "ok", f"removed {w.name}"


async def validate(sup: Supervisor, w: WorkerRuntime | None, args: dict[str, Any]) -> Outcome:
    """Deployment checks against the balancer or one worker; the table is in the message."""
    result = await sup.validate(args.get("target") or (w.name if w else "balancer"))
    sup.last_validation = result
    failed = [c["name"] for c in result["checks"] if not c["ok"]]
    if not failed:
        return "ok", f"all {len(result['checks'])} checks passed against {result['url']}"
    return "failed", f"failed: {', '.join(failed)} (against {result['url']})"


async def silence(sup: Supervisor, w: WorkerRuntime | None, args: dict[str, Any]) -> Outcome:
    """Silence an alert key (``rule[worker]``) or a whole rule for ``for_s`` seconds."""
    key = args.get("key")
    for_s = args.get("for_s", 1800)
    if not isinstance(key, str) or not key:
        raise ActionError("silence needs an alert key", status=400, code="bad_args")
    if isinstance(for_s, bool) or not isinstance(for_s, (int, float)) or not 0 < for_s <= 7 * 86400:
        raise ActionError("for_s must be between 0 and 7 days", status=400, code="bad_args")
    sup.alerts.silence(key, sup.clock() + float(for_s))
    return "ok", f"silenced {key} for {for_s / 60:g} min"


async def sim_fault(sup: Supervisor, w: WorkerRuntime | None, args: dict[str, Any]) -> Outcome:
    """Switch a fault on a simulated worker (demo and drills)."""
    w = _need(w)
    if w.spec.engine != Engine.SIM:
        raise ActionError("faults can only be injected into simulated workers", status=400,
                          code="not_sim")
    async with httpx.AsyncClient(timeout=5.0) as http:
        r = await http.post(f"{w.spec.url}/_sim/faults", json=args)
    if r.status_code != 200:
        return "failed", f"sim answered {r.status_code}: {r.text[:200]}"
    on = {k: v for k, v in r.json().items() if v not in (None, False, 0, 0.0)}
    return "ok", f"faults now {on or 'none'}"


ACTIONS: dict[str, ActionBody] = {
    "drain": drain, "undrain": undrain, "restart": restart, "kill": kill, "retune": retune,
    "rollout": rollout, "adopt": adopt, "add": add, "remove": remove, "validate": validate,
    "silence": silence, "sim_fault": sim_fault,
}
"""Action name → body."""

__all__ = ["ACTIONS", "retune_spec"]
