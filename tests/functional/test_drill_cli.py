"""`embedops drill kill --sim --json` as a real subprocess: it starts a throwaway sim fleet
(detached supervisor, 3 sim workers, real sglang-router), kills a worker with SIGKILL under
open-loop load, prints the figures as JSON, and stops everything it started."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil

from backends import procs
from tests.conftest import REPO

TIMEOUT_S = 150.0


def _leftovers(state_dir: Path) -> list[int]:
    """Processes recorded by the fleet's state file that still verify."""
    try:
        data = json.loads((state_dir / "state.json").read_text())
    except (OSError, ValueError):
        return []
    idents = [w.get("identity") for w in (data.get("workers") or {}).values()]
    idents.append((data.get("balancer") or {}).get("identity"))
    alive = []
    for raw in idents:
        if raw:
            ident = procs.ProcessIdentity.from_json(raw)
            if procs.verify(ident):
                alive.append(ident.pid)
    sup = data.get("supervisor_pid")
    if sup and psutil.pid_exists(sup):
        with contextlib.suppress(psutil.Error):
            if "supervise" in psutil.Process(sup).cmdline() and str(state_dir) in " ".join(
                    psutil.Process(sup).cmdline()):
                alive.append(sup)
    return alive


def test_drill_kill_sim_json(tmp_path: Path) -> None:
    state_dir = tmp_path / "drill"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDOPS_")}
    env["PYTHONPATH"] = str(REPO)
    argv = [sys.executable, "-m", "console.cli", "drill", "kill", "--sim", "--json",
            "--state-dir", str(state_dir), "--rate", "30"]
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        for pid in _leftovers(state_dir):  # only if the drill failed to clean up
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
    assert proc.returncode in (0, 1), err[-2000:]
    result = json.loads(out)
    assert {"schema", "scenario", "fault", "fleet", "engine", "throwaway", "worker", "figures",
            "targets", "passed", "notes"} <= result.keys()
    assert (result["scenario"], result["fault"], result["engine"], result["throwaway"]) == (
        "kill", "F1", "sim", True)
    fig = result["figures"]
    print(f"\n[drill kill] {json.dumps(fig)}")
    load = fig["load"]
    assert load["errors"] == 0 and load["ok"] == load["sent"] and load["sent"] >= 60, load
    assert fig["detection_s"] is not None and 0 <= fig["detection_s"] < 2.5  # target 0.5 s
    assert fig["recovery_s"] is not None and fig["recovery_s"] < 30
    assert fig["restart_decided_s"] is not None
    assert result["targets"]["errors"] == {"target": 0, "value": 0, "met": True}
    assert result["targets"]["detection_s"]["value"] == fig["detection_s"]
    assert result["passed"] == (proc.returncode == 0) == all(
        t["met"] for t in result["targets"].values())
    # it stopped what it started
    assert _leftovers(state_dir) == []
    assert "ready behind" in err  # its progress went to stderr, the JSON alone to stdout
