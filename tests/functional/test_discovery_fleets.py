"""Discovery with several fleets on one box: a supervisor attaches (unmanaged) to SGLang
servers nobody manages, and leaves alone the workers another embedops fleet started."""

from __future__ import annotations

import sys
from pathlib import Path

from backends import procs as bprocs
from console.supervisor import FLEET_ENV
from tests.chaos.fleet import running_fleet
from tests.conftest import ProcessGroups, free_port, wait_http


def _sim_argv(port: int) -> list[str]:
    return [sys.executable, "-m", "backends.sim.worker", "--model-path", "sim-model",
            "--is-embedding", "--host", "127.0.0.1", "--port", str(port),
            "--sim-load-s", "0.1", "--sim-warmup-s", "0.1", "--enable-metrics"]


def test_other_fleets_workers_are_not_attached(tmp_path: Path, procs: ProcessGroups) -> None:
    lone, other = free_port(), free_port()
    procs.spawn(_sim_argv(lone), log=tmp_path / "lone.log",
                env={"EMBEDOPS_SIM_GPU_DIR": str(tmp_path / "gpus-lone")})
    procs.spawn(_sim_argv(other), log=tmp_path / "other.log",
                env={"EMBEDOPS_SIM_GPU_DIR": str(tmp_path / "gpus-other"),
                     FLEET_ENV: str(tmp_path / "another-fleet")})
    for port in (lone, other):
        wait_http(f"http://127.0.0.1:{port}/ping", timeout=60)

    with running_fleet(tmp_path / "fleet", 1) as fleet:
        snap = fleet.status()
        ports = {w["port"]: w for w in snap["workers"]}
        # discovery runs once at start: the lone server is listed, unmanaged ...
        assert ports[lone]["managed"] is False and ports[lone]["state"] == "unmanaged"
        # ... the other fleet's worker is not listed at all (that fleet manages it) ...
        assert other not in ports
        # ... and our own worker carries our fleet's marker for other supervisors
        (ours,) = [w for w in snap["workers"] if w["managed"]]
        ident = procs_identity(ours["pid"])
        assert bprocs.read_env_var(ident, FLEET_ENV) == str(fleet.sd.root)


def procs_identity(pid: int) -> bprocs.ProcessIdentity:
    ident = bprocs.identify(pid)
    assert ident is not None, f"worker pid {pid} is gone"
    return ident

