"""The supervisor's port preflight: a socket left without an owner (our previous
generation still being torn down) gets a moment to clear; a foreign owner is refused
at once (F7). The port check is replaced by a scripted one; nothing is started."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from backends import procs
from console import supervisor as sup_mod
from console.config import load_config
from console.statedir import StateDir
from console.supervisor import Supervisor
from tests.chaos.fleet import WorkerDef, fleet_toml

UNKNOWN = procs.PortOwner(pid=None, name=None, cmdline=(), detail="in use by an unknown process")
FOREIGN = procs.PortOwner(pid=4242, name="nginx", cmdline=("nginx",), detail="listening")


@pytest.fixture
async def sup(tmp_path: Path) -> AsyncIterator[Supervisor]:
    path = tmp_path / "fleet.toml"
    path.write_text(fleet_toml([WorkerDef("w1", port=39001)], router_port=39002,
                               prom_port=39003))
    s = Supervisor(load_config(path), StateDir(tmp_path / "state"))
    yield s
    await s._http.aclose()


def _script(monkeypatch: pytest.MonkeyPatch, answers: list[procs.PortOwner | None]) -> list[int]:
    calls: list[int] = []

    async def owner(port: int, host: str = "127.0.0.1") -> procs.PortOwner | None:
        calls.append(port)
        return answers.pop(0) if answers else None

    monkeypatch.setattr(procs, "port_owner_async", owner)
    return calls


async def test_unowned_socket_is_given_time_to_clear(sup: Supervisor,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _script(monkeypatch, [UNKNOWN, UNKNOWN, UNKNOWN, None])
    w = sup._add_runtime(sup.cfg.worker_specs()[0], config_spec=None, saved=None)
    assert await sup._preflight(w) is None
    assert len(calls) == 4


async def test_unowned_socket_that_stays_is_refused(sup: Supervisor,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sup_mod, "PORT_SETTLE_S", 0.3)
    _script(monkeypatch, [UNKNOWN] * 100)
    w = sup._add_runtime(sup.cfg.worker_specs()[0], config_spec=None, saved=None)
    t0 = time.monotonic()
    why = await sup._preflight(w)
    assert why is not None and "unknown process" in why and "39001" in why
    assert 0.25 <= time.monotonic() - t0 < 2.0


async def test_foreign_owner_is_refused_at_once(sup: Supervisor,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _script(monkeypatch, [FOREIGN] * 100)
    w = sup._add_runtime(sup.cfg.worker_specs()[0], config_spec=None, saved=None)
    t0 = time.monotonic()
    why = await sup._preflight(w)
    assert why is not None and "pid 4242 (nginx)" in why and "no signal sent" in why
    assert time.monotonic() - t0 < 0.5 and len(calls) == 1
