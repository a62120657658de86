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
from typing import Any

from backends import procs
from console import config as fleet_config
from console.control import ControlError, SupervisorNotRunning, SyncControlClient
from console.statedir import ENV_STATE_DIR, StateDir

SPIN_STATES = {"starting", "restarting", "backoff", "stopping", "draining", "crashed"}
CLIENT_TIMEOUT_S = 10.0
SETTLED_STATES = {"ready", "degraded", "failed", "stopped", "drained"}
QUEUED_GRACE_S = 10.0
"""A just-started supervisor lists the workers waiting for their first start (one per
card at a time) as "stopped"; for this long that is read as "queued", not as settled."""


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


def _explicit_state_dir(args: argparse.Namespace) -> str | None:
    return getattr(args, "state_dir", None) or os.environ.get(ENV_STATE_DIR) or None


def fleet_state_dir(args: argparse.Namespace, cfg: fleet_config.FleetConfig) -> StateDir:
    """The state directory of a loaded fleet: ``--state-dir``, else ``$EMBEDOPS_STATE_DIR``,
    else the fleet file's (its ``state_dir`` or the XDG default). The same order as
    `state_dir_for`, so `up` and the client commands always meet on one socket."""
    explicit = _explicit_state_dir(args)
    return StateDir(explicit) if explicit else StateDir(cfg.state_path)


def state_dir_for(args: argparse.Namespace) -> StateDir:
    """The state directory a client command addresses."""
    explicit = _explicit_state_dir(args)
    if explicit:
        return StateDir(explicit)
    path = fleet_config.config_path(getattr(args, "config", None))
    if not path.exists():
        raise CommandError(f"no fleet file at {path} and no --state-dir: say which fleet "
                           f"(--config FILE, --state-dir DIR or ${ENV_STATE_DIR})")
    return fleet_state_dir(args, _load(args))


def _client(args: argparse.Namespace) -> SyncControlClient:
    return SyncControlClient(state_dir_for(args).socket_path, timeout=CLIENT_TIMEOUT_S)


def _call(args: argparse.Namespace, method: str, path: str, body: Any = None,
          *, wait: bool = True) -> Any:
    """One control call. Reads, and actions sent without waiting, time out after
    `CLIENT_TIMEOUT_S`; a waited action (``?wait=1``) lasts as long as the action does
    (a restart takes the worker's startup time), so it has no time limit."""
    params = {"wait": "1"} if wait and method != "GET" else None
    with _client(args) as client:
        if method == "GET":
            return client.get(path)
        return client.request(method, path, json=body, params=params,
                              timeout=None if params else CLIENT_TIMEOUT_S)[1]


# ------------------------------------------------------------------ supervise / up / down


def _add_supervise(p: argparse.ArgumentParser) -> None:
    _add_fleet_options(p)
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")


def _run_supervise(args: argparse.Namespace) -> int:
    from console.daemon import run_supervisor

    cfg = _load(args)
    return run_supervisor(cfg, fleet_state_dir(args, cfg), verbose=args.verbose)


def _add_up(p: argparse.ArgumentParser) -> None:
    _add_fleet_options(p)
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds to wait for every worker (default: the startup budget + 60)")


def _run_up(args: argparse.Namespace) -> int:
    from console.daemon import FatalError, spawn_supervisor, supervisor_answers

    cfg = _load(args)
    sd = fleet_state_dir(args, cfg)
    if supervisor_answers(sd):
        print(f"embedops: a supervisor already runs fleet {cfg.name} ({sd.root})")
    else:
        path = fleet_config.config_path(args.config).absolute()
        try:
            ident = spawn_supervisor(path, sd)
        except FatalError as exc:
            raise CommandError(str(exc)) from exc
        print(f"embedops: started supervisor pid {ident.pid} for fleet {cfg.name} "
              f"(log {sd.supervisor_log})", flush=True)
    timeout = args.timeout or cfg.startup_timeout_s + 60
    try:
        return _wait_ready(SyncControlClient(sd.socket_path), timeout)
    except SupervisorNotRunning as exc:
        raise CommandError(f"the supervisor stopped answering while the workers started; "
                           f"see {sd.supervisor_log}") from exc


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
                elif _queued(w, snap):
                    phase = "queued"
                parts.append(f"{w['name']}: {phase}")
            elapsed = time.monotonic() - t0
            line = f"[{elapsed:5.1f}s] " + (" · ".join(parts) or "starting the balancer")
            if line != last:
                print(("\r" + line + "\x1b[K") if tty else line, end="" if tty else "\n",
                      flush=True)
                last = line
            # ready is not enough: `up` returns once the balancer routes to every ready worker
            has_balancer = snap["balancer"]["url"] is not None
            settled = all(w["state"] in SETTLED_STATES and not _queued(w, snap)
                          and (w["routed"] or not has_balancer
                               or w["state"] not in ("ready", "degraded"))
                          for w in workers)
            if settled and workers:
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


def _queued(w: dict[str, Any], snap: dict[str, Any]) -> bool:
    """Whether `w` is still waiting for its first start under a fresh supervisor."""
    return (w["state"] == "stopped" and w["pid"] is None and not w["restarts"]
            and (snap["supervisor"]["uptime_s"] or 0.0) < QUEUED_GRACE_S)


DOWN_TIMEOUT_S = 180.0


def _add_down(p: argparse.ArgumentParser) -> None:
    _add_fleet_options(p)
    p.add_argument("--keep-workers", action="store_true",
                   help="stop only the supervisor; workers and balancer keep running")


def _run_down(args: argparse.Namespace) -> int:
    sd = state_dir_for(args)
    stop = not args.keep_workers
    try:
        with SyncControlClient(sd.socket_path, timeout=CLIENT_TIMEOUT_S) as client:
            pid = client.get("/v1/status")["supervisor"]["pid"]
            # pinned before it is asked to go: `down` returns once that process is gone
            supervisor = procs.identify(pid) if isinstance(pid, int) else None
            client.post("/v1/shutdown", json={"stop_workers": stop})
    except SupervisorNotRunning:
        print("embedops: no supervisor is running for this fleet", file=sys.stderr)
        return 1
    deadline = time.monotonic() + DOWN_TIMEOUT_S
    from console.daemon import supervisor_answers

    while supervisor_answers(sd) or (supervisor is not None and procs.verify(supervisor)):
        if time.monotonic() > deadline:
            print(f"embedops: the supervisor still runs after {DOWN_TIMEOUT_S:g} s; "
                  f"see {sd.supervisor_log}", file=sys.stderr)
            return 1
        time.sleep(0.2)
    print("embedops: fleet stopped" if stop
          else "embedops: supervisor stopped; workers left running")
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
    # names in full (unmanaged-<port> is 15 wide): two truncated names would look alike
    nw = max([14, *(len(w["name"]) + 1 for w in snap["workers"])])
    cols = f"{'NAME':<{nw}}{'STATE':<11}{'ROUTED':<7}{'PID':>8}{'PORT':>7}{'GPU':>4}" \
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
            f"{w['name']:<{nw}}{w['state']:<11}{'yes' if w['routed'] else 'no':<7}"
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
            if not args.yes and not _confirm(f"kill {args.worker} now (SIGKILL, no drain)? "
                                             "type the worker name to confirm: ", args.worker):
                return 1
            body = {"confirm": True}
        return _print_outcome(_call(args, "POST", f"/v1/workers/{args.worker}/{action}", body,
                                    wait=not args.no_wait))
    return run


def _confirm(prompt: str, expected: str) -> bool:
    """Ask on stdin for `expected`; False (with a message) on anything else or EOF."""
    try:
        answer = input(prompt)
    except EOFError:
        print("\nembedops: no answer on stdin; nothing done (pass --yes to skip the question)",
              file=sys.stderr)
        return False
    if answer.strip() != expected:
        print("embedops: not confirmed; nothing done", file=sys.stderr)
        return False
    return True


def _print_outcome(result: dict[str, Any]) -> int:
    if "outcome" not in result:
        print(f"embedops: accepted (action {result.get('action_id')})")
        return 0
    stream = sys.stdout if result["outcome"] == "ok" else sys.stderr
    who = f"{result['action']} {result['worker']}" if result.get("worker") else result["action"]
    print(f"{who}: {result['outcome']}: {result['message']} ({result['duration_s']:.1f} s)",
          file=stream)
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
    if not args.yes and not _confirm(f"rolling restart of every worker of fleet "
                                     f"{snap['fleet']}: type the fleet name to confirm: ",
                                     snap["fleet"]):
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
        result = _call(args, "POST", "/v1/validate", {"target": args.target})
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
    with _client(args) as client:
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


def _add_bench(p: argparse.ArgumentParser) -> None:
    from console.bench import add_arguments

    _add_fleet_options(p)
    add_arguments(p)


def _run_bench(args: argparse.Namespace) -> int:
    from console.bench import BenchError, run

    def snapshot() -> dict[str, Any]:
        try:
            sd = state_dir_for(args)
        except CommandError as exc:
            raise CommandError(f"{exc}; or benchmark a server with --url URL") from exc
        try:
            with SyncControlClient(sd.socket_path, timeout=CLIENT_TIMEOUT_S) as client:
                return dict(client.get("/v1/status"))
        except SupervisorNotRunning as exc:
            raise CommandError(f"no supervisor answers for the fleet in {sd.root}: start it "
                               "with `embedops up`, or benchmark a server with --url URL"
                               ) from exc

    try:
        return run(args, snapshot)
    except BenchError as exc:
        raise CommandError(str(exc)) from exc


def _add_drill(p: argparse.ArgumentParser) -> None:
    from console.drill import add_arguments

    _add_fleet_options(p)
    add_arguments(p)


def _run_drill(args: argparse.Namespace) -> int:
    from console.drill import DrillError, run

    try:
        return run(args, lambda: state_dir_for(args))
    except DrillError as exc:
        raise CommandError(str(exc)) from exc


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
    ("bench", ("open-loop load on the fleet's balancer (or --url): latency, throughput, "
               "the balancer's added latency (--direct)"), _add_bench, _run_bench),
    ("drill", ("inject a fault (kill, hang, stall, errors, drain, rollout, leak) under load "
               "and measure detection, ejection and recovery (--sim: on a throwaway fleet)"),
     _add_drill, _run_drill),
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
