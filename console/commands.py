"""Fleet subcommands of `embedops`: supervise, up, down, status, the operator actions,
logs, validate, silence, console and demo.

Each is a pair ``_add_<name>(parser)`` / ``_run_<name>(args) -> int`` listed in
`COMMANDS`; `console.cli` adds them to its table. Clients talk to the supervisor over
the control socket of the fleet's state directory, found from ``--state-dir``,
``$EMBEDOPS_STATE_DIR``, or the fleet file's name.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from console import config as fleet_config
from console.control import ControlError, SupervisorNotRunning, SyncControlClient
from console.statedir import StateDir

SPIN_STATES = {"starting", "restarting", "backoff", "stopping", "draining", "crashed"}


class CommandError(Exception):
    """A user-facing error: printed as ``embedops: <message>``, exit 1."""


# ------------------------------------------------------------------ shared options


def _add_fleet_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", metavar="FILE", default=None,
                   help=f"fleet file (default: ${fleet_config.ENV_CONFIG}, else ./fleet.toml)")
    p.add_argument("--state-dir", metavar="DIR", default=None,
                   help="the fleet's state directory (default: $EMBEDOPS_STATE_DIR, else "
                        "$XDG_STATE_HOME/embedops/<fleet>)")


def _load(args: argparse.Namespace) -> fleet_config.FleetConfig:
    path = fleet_config.config_path(args.config)
    try:
        return fleet_config.load_config(path)
    except fleet_config.ConfigError as exc:
        lines = "\n".join(f"  {p}" for p in exc.problems)
        raise CommandError(f"{path}: the fleet file is invalid; nothing was changed:\n{lines}"
                           ) from exc


def state_dir_for(args: argparse.Namespace) -> StateDir:
    """The state directory a client command addresses."""
    explicit = getattr(args, "state_dir", None) or os.environ.get("EMBEDOPS_STATE_DIR")
    if explicit:
        return StateDir(explicit)
    path = fleet_config.config_path(getattr(args, "config", None))
    if not path.exists():
        raise CommandError(f"no fleet file at {path} and no --state-dir: say which fleet "
                           "(--config FILE, --state-dir DIR or $EMBEDOPS_STATE_DIR)")
    cfg = _load(args)
    return StateDir(cfg.state_path)


def _client(args: argparse.Namespace, timeout: float | None = 10.0) -> SyncControlClient:
    return SyncControlClient(state_dir_for(args).socket_path, timeout=timeout)


def _call(args: argparse.Namespace, method: str, path: str, body: Any = None,
          *, wait: bool = True, timeout: float | None = None) -> Any:
    params = {"wait": "1"} if wait and method != "GET" else None
    with _client(args, timeout=timeout) as client:
        if method == "GET":
            return client.get(path)
        if method == "DELETE":
            return client.delete(path, params=params)
        return client.post(path, json=body, params=params)


# ------------------------------------------------------------------ supervise / up / down


def _add_supervise(p: argparse.ArgumentParser) -> None:
    _add_fleet_options(p)
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")


def _run_supervise(args: argparse.Namespace) -> int:
    from console.daemon import run_supervisor

    cfg = _load(args)
    sd = StateDir(args.state_dir) if args.state_dir else StateDir(cfg.state_path)
    return run_supervisor(cfg, sd, verbose=args.verbose)


def _add_up(p: argparse.ArgumentParser) -> None:
    _add_fleet_options(p)
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds to wait for every worker (default: the startup budget + 60)")


def _run_up(args: argparse.Namespace) -> int:
    from console.daemon import spawn_supervisor, supervisor_answers

    cfg = _load(args)
    sd = StateDir(args.state_dir) if args.state_dir else StateDir(cfg.state_path)
    if supervisor_answers(sd):
        print(f"embedops: a supervisor already runs fleet {cfg.name} ({sd.root})")
    else:
        path = fleet_config.config_path(args.config).absolute()
        ident = spawn_supervisor(path, sd)
        print(f"embedops: started supervisor pid {ident.pid} for fleet {cfg.name} "
              f"(log {sd.supervisor_log})")
    timeout = args.timeout or cfg.startup_timeout_s + 60
    return _wait_ready(SyncControlClient(sd.socket_path), timeout)


def _wait_ready(client: SyncControlClient, timeout_s: float) -> int:
    """Show per-worker progress until every worker is ready or failed."""
    deadline = time.monotonic() + timeout_s
    t0 = time.monotonic()
    tty = sys.stdout.isatty()
    last = ""
    with client:
        while True:
            snap = client.get("/v1/status")
            workers = [w for w in snap["workers"] if w["managed"]]
            parts = []
            for w in workers:
                phase = w["state"]
                if phase == "starting" and w.get("startup_phase"):
                    phase = f"starting ({w['startup_phase']})"
                parts.append(f"{w['name']}: {phase}")
            elapsed = time.monotonic() - t0
            line = f"[{elapsed:5.1f}s] " + " · ".join(parts)
            if line != last:
                print(("\r" + line + "\x1b[K") if tty else line, end="" if tty else "\n",
                      flush=True)
                last = line
            states = {w["state"] for w in workers}
            if states <= {"ready", "degraded", "failed", "stopped", "drained"} and workers:
                if tty:
                    print()
                bad = [w for w in workers if w["state"] not in ("ready", "degraded")]
                for w in bad:
                    print(f"embedops: {w['name']} is {w['state']}: {w.get('state_reason')}",
                          file=sys.stderr)
                print(f"embedops: {len(workers) - len(bad)}/{len(workers)} workers ready "
                      f"behind {snap['balancer']['url'] or 'no balancer'}")
                return 0 if not bad else 1
            if time.monotonic() > deadline:
                if tty:
                    print()
                print(f"embedops: not all workers ready after {timeout_s:g} s", file=sys.stderr)
                return 1
            time.sleep(0.5)


def _add_down(p: argparse.ArgumentParser) -> None:
    _add_fleet_options(p)
    p.add_argument("--keep-workers", action="store_true",
                   help="stop only the supervisor; workers and balancer keep running")


def _run_down(args: argparse.Namespace) -> int:
    sd = state_dir_for(args)
    stop = not args.keep_workers
    try:
        with SyncControlClient(sd.socket_path, timeout=None) as client:
            client.post("/v1/shutdown", json={"stop_workers": stop})
    except SupervisorNotRunning:
        print("embedops: no supervisor is running for this fleet", file=sys.stderr)
        return 1
    deadline = time.monotonic() + 180
    from console.daemon import supervisor_answers

    while supervisor_answers(sd) and time.monotonic() < deadline:
        time.sleep(0.2)
    print("embedops: fleet stopped" if stop else "embedops: supervisor stopped; workers left running")
    return 0


# ------------------------------------------------------------------ status


def _add_status(p: argparse.ArgumentParser) -> None:
    _add_fleet_options(p)
    p.add_argument("--json", action="store_true", help="print the snapshot as JSON (schema 1)")


def _run_status(args: argparse.Namespace) -> int:
    snap = _call(args, "GET", "/v1/status")
    if args.json:
        json.dump(snap, sys.stdout, indent=2)
        print()
        return 0
    print(format_status(snap))
    return 0


def _fmt(value: Any, spec: str = "", na: str = "-") -> str:
    if value is None:
        return na
    return format(value, spec) if spec else str(value)


def format_status(snap: dict[str, Any]) -> str:
    """A plain-text status table (for `embedops status` and headless demo lines)."""
    b = snap["balancer"]
    head = (f"fleet {snap['fleet']} ({snap['engine']}) · balancer {b['kind']} "
            f"{'up' if b['healthy'] else 'DOWN' if b['healthy'] is False else '?'} "
            f"{b['url'] or ''} · fleet P95 {_fmt(b['p95_ms'], '.1f')} ms")
    cols = f"{'NAME':<14}{'STATE':<11}{'ROUTED':<7}{'PID':>8}{'PORT':>7}{'GPU':>4}" \
           f"{'P50':>8}{'P95':>8}{'REQ/S':>8}{'RUN':>5}{'QUEUE':>6}{'ERR':>5}{'GPU MiB':>9}" \
           f"{'MEMF':>6}{'RST':>5}  ACTION"
    rows = [head, cols]
    for w in snap["workers"]:
        action = w["action"]["progress"] or w["action"]["name"] if w.get("action") else ""
        if w["state"] == "backoff" and w.get("next_start_in_s") is not None:
            action = f"restart in {w['next_start_in_s']:.0f}s"
        if not w["managed"]:
            action = "unmanaged"
        rows.append(
            f"{w['name'][:13]:<14}{w['state']:<11}{'yes' if w['routed'] else 'no':<7}"
            f"{_fmt(w['pid']):>8}{w['port']:>7}{_fmt(w['gpu']):>4}"
            f"{_fmt(w['p50_ms'], '.1f'):>8}{_fmt(w['p95_ms'], '.1f'):>8}{_fmt(w['rps'], '.1f'):>8}"
            f"{_fmt(w['running']):>5}{_fmt(w['queued']):>6}{_fmt(w['errors']):>5}"
            f"{_fmt(w['gpu_mem_mib']):>9}{_fmt(w['mem_fraction_static']):>6}"
            f"{w['restarts']:>5}  {action}")
    for a in snap["alerts"]:
        rows.append(f"ALERT {a['state'].upper()} {a['severity']}: {a['message']}")
    return "\n".join(rows)


# ------------------------------------------------------------------ actions


def _add_worker_action(p: argparse.ArgumentParser) -> None:
    _add_fleet_options(p)
    p.add_argument("worker", help="worker name")
    p.add_argument("--no-wait", action="store_true", help="return once the action is accepted")


def _action_runner(action: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        body: dict[str, Any] = {}
        if action == "kill":
            if not args.yes:
                answer = input(f"kill {args.worker} now (SIGKILL, no drain)? type the worker "
                               "name to confirm: ")
                if answer.strip() != args.worker:
                    print("embedops: not confirmed; nothing done", file=sys.stderr)
                    return 1
            body = {"confirm": True}
        return _print_outcome(_call(args, "POST", f"/v1/workers/{args.worker}/{action}", body,
                                    wait=not args.no_wait))
    return run


def _print_outcome(result: dict[str, Any]) -> int:
    if "outcome" not in result:
        print(f"embedops: accepted (action {result.get('action_id')})")
        return 0
    stream = sys.stdout if result["outcome"] == "ok" else sys.stderr
    print(f"{result['action']} {result.get('worker') or ''}: {result['outcome']}: "
          f"{result['message']} ({result['duration_s']:.1f} s)", file=stream)
    return 0 if result["outcome"] == "ok" else 1


def _add_kill(p: argparse.ArgumentParser) -> None:
    _add_worker_action(p)
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")


def _add_retune(p: argparse.ArgumentParser) -> None:
    _add_worker_action(p)
    p.add_argument("--mem-fraction-static", type=float, help="new --mem-fraction-static (0..1)")
    p.add_argument("--cuda-graph", choices=("on", "off"), help="CUDA graphs on or off")
    p.add_argument("--max-running-requests", type=int)
    p.add_argument("--chunked-prefill-size", type=int)


def _run_retune(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {}
    for field in ("mem_fraction_static", "max_running_requests", "chunked_prefill_size"):
        if getattr(args, field) is not None:
            body[field] = getattr(args, field)
    if args.cuda_graph is not None:
        body["cuda_graph"] = args.cuda_graph == "on"
    if not body:
        print("embedops: give at least one setting to change", file=sys.stderr)
        return 2
    return _print_outcome(_call(args, "POST", f"/v1/workers/{args.worker}/retune", body,
                                wait=not args.no_wait))


def _add_rollout(p: argparse.ArgumentParser) -> None:
    _add_fleet_options(p)
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--soak", type=float, default=0.0, metavar="S",
                   help="seconds a restarted worker must stay ready before the next")


def _run_rollout(args: argparse.Namespace) -> int:
    snap = _call(args, "GET", "/v1/status")
    if not args.yes:
        answer = input(f"rolling restart of every worker of fleet {snap['fleet']}: type the "
                       "fleet name to confirm: ")
        if answer.strip() != snap["fleet"]:
            print("embedops: not confirmed; nothing done", file=sys.stderr)
            return 1
    return _print_outcome(_call(args, "POST", "/v1/rollout", {"soak_s": args.soak}))


def _add_adopt(p: argparse.ArgumentParser) -> None:
    _add_fleet_options(p)
    p.add_argument("pid", type=int, help="pid of an unmanaged SGLang launcher (see status)")
    p.add_argument("--name", help="name for the adopted worker")


def _run_adopt(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"pid": args.pid}
    if args.name:
        body["name"] = args.name
    return _print_outcome(_call(args, "POST", "/v1/adopt", body))


def _add_add(p: argparse.ArgumentParser) -> None:
    _add_fleet_options(p)
    p.add_argument("name")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--gpu", type=int)
    p.add_argument("--mem-fraction-static", type=float)


def _run_add(args: argparse.Namespace) -> int:
    body = {"name": args.name, "port": args.port}
    if args.gpu is not None:
        body["gpu"] = args.gpu
    if args.mem_fraction_static is not None:
        body["mem_fraction_static"] = args.mem_fraction_static
    return _print_outcome(_call(args, "POST", "/v1/workers", body))


def _run_remove(args: argparse.Namespace) -> int:
    return _print_outcome(_call(args, "DELETE", f"/v1/workers/{args.worker}"))


def _add_validate(p: argparse.ArgumentParser) -> None:
    _add_fleet_options(p)
    p.add_argument("target", nargs="?", default="balancer",
                   help="'balancer' (default) or a worker name")
    p.add_argument("--url", help="check this URL directly, without a supervisor")
    p.add_argument("--model", default=None, help="model name to send (with --url)")
    p.add_argument("--dimension", type=int, default=None, help="expected dimension (with --url)")
    p.add_argument("--json", action="store_true")


def _run_validate(args: argparse.Namespace) -> int:
    if args.url:
        import asyncio

        from console.validate import run_validation

        model, dim = args.model, args.dimension
        if model is None or dim is None:
            path = fleet_config.config_path(args.config)
            cfg = _load(args) if path.exists() else None
            model = model or (cfg.model.served_name or cfg.model.path if cfg else "default")
            dim = dim or (cfg.model.dimension if cfg else 2560)
        report = asyncio.run(run_validation(args.url, model=model, dimension=dim,
                                            api_key=os.environ.get("EMBEDOPS_API_KEY")))
    else:
        result = _call(args, "POST", "/v1/validate", {"target": args.target}, timeout=None)
        report = result.get("report") or {"url": args.target, "ok": False, "checks": []}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"validate {report['url']}")
        for c in report["checks"]:
            print(f"  {'PASS' if c['ok'] else 'FAIL'}  {c['name']:<32} {c['detail']}")
    return 0 if report["ok"] else 1


def _add_logs(p: argparse.ArgumentParser) -> None:
    _add_fleet_options(p)
    p.add_argument("worker")
    p.add_argument("-n", "--lines", type=int, default=100)
    p.add_argument("-f", "--follow", action="store_true")


def _run_logs(args: argparse.Namespace) -> int:
    path = f"/v1/workers/{args.worker}/logs"
    params = {"lines": str(args.lines)}
    with _client(args, timeout=None) as client:
        if args.follow:
            for item in client.stream(path, {**params, "follow": "1"}):
                print(item.get("line", ""), flush=True)
            return 0
        for line in client.get(path, params)["lines"]:
            print(line)
    return 0


def _add_silence(p: argparse.ArgumentParser) -> None:
    _add_fleet_options(p)
    p.add_argument("alert", help="alert key (rule[worker]) or rule name")
    p.add_argument("--for", dest="duration", default="30m", help="e.g. 30m, 2h, 90s")


def parse_duration(text: str) -> float:
    """``30m`` → 1800.0; plain numbers are seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip()
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError as exc:
        raise CommandError(f"--for {text!r}: use a number with s, m, h or d") from exc


def _run_silence(args: argparse.Namespace) -> int:
    from urllib.parse import quote

    body = {"for_s": parse_duration(args.duration)}
    return _print_outcome(_call(args, "POST", f"/v1/alerts/{quote(args.alert, safe='')}/silence",
                                body))


# ------------------------------------------------------------------ console & demo


def _add_console(p: argparse.ArgumentParser) -> None:
    _add_fleet_options(p)
    p.add_argument("--read-only", action="store_true", help="observe only: no actions")
    p.add_argument("--theme", default=None, help="dark, light or ansi")
    p.add_argument("--no-start", action="store_true",
                   help="do not start a supervisor when none answers")


def _run_console(args: argparse.Namespace) -> int:
    from console.daemon import spawn_supervisor, supervisor_answers

    sd = state_dir_for(args)
    if not supervisor_answers(sd):
        if args.no_start:
            raise CommandError(f"no supervisor answers on {sd.socket_path}")
        path = fleet_config.config_path(args.config).absolute()
        print(f"embedops: starting a supervisor for {path}...", file=sys.stderr)
        spawn_supervisor(path, sd)
    return _open_console(sd, read_only=args.read_only, theme=args.theme, demo=False)


def _open_console(sd: StateDir, *, read_only: bool, theme: str | None, demo: bool) -> int:
    from console.tui.app import run_console

    result = run_console(sd.socket_path, read_only=read_only, theme=theme, demo=demo)
    return result if isinstance(result, int) else 0


def _add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=4, help="simulated workers (default 4)")
    p.add_argument("--gpus", type=int, default=2, help="simulated 80 GB cards (default 2)")
    p.add_argument("--rate", type=float, default=50.0,
                   help="built-in load, requests/s through the balancer (0: none)")
    p.add_argument("--state-dir", default=None,
                   help="keep the demo fleet here (default: a temporary directory); "
                        "other terminals can then use embedops status/drain/... with it")
    p.add_argument("--headless", action="store_true",
                   help="print status lines instead of opening the console")
    p.add_argument("--duration", type=float, default=None,
                   help="with --headless: stop after this many seconds")
    p.add_argument("--theme", default=None)


def _run_demo(args: argparse.Namespace) -> int:
    from console.demo import run_demo

    return run_demo(workers=args.workers, gpus=args.gpus, rate=args.rate,
                    state_dir=args.state_dir or os.environ.get("EMBEDOPS_STATE_DIR"),
                    headless=args.headless, duration=args.duration, theme=args.theme,
                    open_console=_open_console)


Command = tuple[str, str, Callable[[argparse.ArgumentParser], None],
                Callable[[argparse.Namespace], int]]

COMMANDS: list[Command] = [
    ("demo", "run a simulated fleet behind a real sglang-router, with load, and open the console",
     _add_demo, _run_demo),
    ("console", "open the console on a fleet (starts its supervisor if none answers)",
     _add_console, _run_console),
    ("supervise", "run the fleet's supervisor in the foreground (for systemd)",
     _add_supervise, _run_supervise),
    ("up", "start the supervisor in the background and wait until every worker is ready",
     _add_up, _run_up),
    ("down", "drain and stop the workers, the balancer and the supervisor", _add_down, _run_down),
    ("status", "show the fleet (--json: the documented snapshot)", _add_status, _run_status),
    ("drain", "take a worker out of the balancer and wait until it is idle",
     _add_worker_action, _action_runner("drain")),
    ("undrain", "put a drained worker back into the balancer",
     _add_worker_action, _action_runner("undrain")),
    ("restart", "drain, stop, start and re-admit a worker",
     _add_worker_action, _action_runner("restart")),
    ("kill", "SIGKILL a worker now (confirmation asked); it stays stopped", _add_kill,
     _action_runner("kill")),
    ("retune", "restart a worker with new settings; rolled back if it does not become ready",
     _add_retune, _run_retune),
    ("rollout", "rolling restart of every worker, never below N-1 ready", _add_rollout,
     _run_rollout),
    ("adopt", "bring an unmanaged SGLang server under supervision", _add_adopt, _run_adopt),
    ("add", "add a worker to the fleet and start it", _add_add, _run_add),
    ("remove", "drain, stop and forget a worker", _add_worker_action, _run_remove),
    ("validate", "post-deployment checks against the balancer, a worker or a URL",
     _add_validate, _run_validate),
    ("logs", "print (or follow) a worker's log", _add_logs, _run_logs),
    ("silence", "silence an alert for a while", _add_silence, _run_silence),
]
"""(name, help, add_arguments, run) of every fleet subcommand."""


def run_guarded(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a subcommand, turning expected failures into one clear line and exit 1."""
    try:
        return run(args)
    except CommandError as exc:
        print(f"embedops: {exc}", file=sys.stderr)
        return 1
    except SupervisorNotRunning as exc:
        print(f"embedops: no supervisor answers for this fleet ({exc}); start one with "
              "`embedops up`", file=sys.stderr)
        return 1
    except ControlError as exc:
        print(f"embedops: {exc.message if hasattr(exc, 'message') else exc}", file=sys.stderr)
        return 1


__all__ = ["COMMANDS", "CommandError", "format_status", "parse_duration", "run_guarded",
           "state_dir_for"]
